"""Keep a VAE callable and its output sane when it runs in a dtype other than float32.

diffusers pipelines hand the denoiser's latents to ``vae.decode`` unconverted (a dtype mismatch
when the VAE keeps float32), and a float16 VAE can overflow into NaN or an all-black image
(SDXL's original VAE). diffusers has no hook for either, so the VAE's ``decode``/``encode`` get an
instance-level wrapper: inputs follow the VAE's dtype, decoded images leave in float32, and a
decoded image that is not finite or entirely black under reduced precision is decoded again in
float32, with a warning.
"""

from __future__ import annotations

import types
import warnings
from typing import Any

import torch

from sdopt.optimization import Undo

_REDUCED = (torch.float16, torch.bfloat16)
_BLACK = -0.99  # decoder output is in [-1, 1]; everything at the bottom is a black image


def guard_vae(vae: Any) -> Undo:
    """Install the wrappers on ``vae``; the undo removes them.

    They are objects holding the VAE and its bound methods (not closures), so ``copy.deepcopy``
    gives a copied pipeline wrappers around its own VAE, and the pipeline can be pickled."""
    vae.__dict__["decode"] = GuardedDecode(vae, vae.decode)
    if getattr(vae, "encode", None) is not None:
        vae.__dict__["encode"] = _GuardedEncode(vae, vae.encode)

    def undo() -> None:
        vae.__dict__.pop("decode", None)
        vae.__dict__.pop("encode", None)

    return undo


class _GuardedEncode:
    def __init__(self, vae: Any, original: Any) -> None:
        self.vae, self.original = vae, original

    def __call__(self, pixels: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return self.original(pixels.to(self.vae.dtype), *args, **kwargs)


class GuardedDecode:
    def __init__(self, vae: Any, original: Any) -> None:
        self.vae, self.original = vae, original

    def __call__(self, latents: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        vae = self.vae
        output = self.original(latents.to(vae.dtype), *args, **kwargs)
        if vae.dtype not in _REDUCED:
            return output
        image = (output[0] if isinstance(output, tuple) else output.sample).float()
        bad = _bad_images(image)
        if bad.any():
            warnings.warn(
                f"sdopt: the {vae.dtype} VAE produced {int(bad.sum())} NaN/black image(s); "
                "decoding them again in float32",
                RuntimeWarning,
                stacklevel=2,
            )
            image[bad] = _decode_in_float32(vae, self.original, latents[bad], args, kwargs).float()
        # Images leave in float32: some pipelines call .numpy() on them, which refuses bfloat16.
        if isinstance(output, tuple):
            return (image, *output[1:])
        output.sample = image
        return output


def _bad_images(image: torch.Tensor) -> torch.Tensor:
    flat = image.detach().flatten(1)
    return ~torch.isfinite(flat).all(dim=1) | (flat.float().amax(dim=1) <= _BLACK)


def _decode_in_float32(vae: Any, decode: Any, latents: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
    # PyTorch's own decode, past a stand-in such as openvino_runtime's (which would convert a float32 copy).
    if not isinstance(decode, types.MethodType):
        decode = getattr(decode, "original", decode)
    dtype = vae.dtype
    vae.to(torch.float32)  # widening and narrowing back restores the same weights exactly
    try:
        output = decode(latents.to(torch.float32), *args, **kwargs)
    finally:
        vae.to(dtype)
    return output[0] if isinstance(output, tuple) else output.sample
