"""Swap SDXL's VAE for the fp16-safe one, so the whole pipeline can run in float16."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from sdopt.anatomy import Anatomy
from sdopt.capabilities import Capabilities
from sdopt.optimization import HUB_ID_IN_PRESETS, Optimization, Undo, register
from sdopt.requirements import Requirements
from sdopt.weights import NotDownloaded, is_stand_in, load_failure, load_pretrained, swap_vae

DEFAULT_SOURCE = "madebyollin/sdxl-vae-fp16-fix"


@dataclass(frozen=True)
class VaeFp16FixConfig:
    """``source``: hub id or local directory of an fp16-safe SDXL ``AutoencoderKL``."""

    source: str = field(default=DEFAULT_SOURCE, metadata=HUB_ID_IN_PRESETS)


@register
class VaeFp16Fix(Optimization):
    """SDXL's original VAE overflows in float16 (NaN, black images), so ``half_precision`` keeps it
    in float32 there. The fp16-fix VAE (same architecture, rescaled internals, ``force_upcast``
    false) decodes correctly in float16; with it in place ``half_precision`` casts the VAE too.
    Only relevant where the pipeline runs in float16 (older CUDA, MPS); bfloat16 has float32's range.
    When the weights cannot be loaded it is skipped with the reason and the VAE stays float32.

    Examples:
        >>> from sdopt import plan
        >>> from sdopt.testing import tiny_pipeline, fake_capabilities
        >>> result = plan(tiny_pipeline("sdxl"), tier=None, extra=["vae_fp16_fix"], caps=fake_capabilities("a100-80gb"))
        >>> result.skipped[0].reason
        'only needed when SDXL runs in float16 (here: bfloat16)'
    """

    name = "vae_fp16_fix"
    speed_judged = False  # exists so half_precision can keep the VAE in float16
    kind = "vae"
    summary = "swap SDXL's VAE for the fp16-safe one so it can run in float16"
    Config = VaeFp16FixConfig
    requires = Requirements(families=("sdxl",), needs_vae=True)
    before = ("half_precision", "channels_last", "fuse_qkv", "vae_slicing", "vae_tiling")
    effect = "speed+memory"

    def check(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> str | None:
        vae = anatomy.vae
        denoiser_dtype = getattr(anatomy.denoiser, "dtype", None)
        if caps.half_dtype != "float16" and denoiser_dtype != torch.float16:
            return f"only needed when SDXL runs in float16 (here: {caps.half_dtype})"
        if type(vae).__name__ != "AutoencoderKL":
            return f"the VAE is a {type(vae).__name__}, not SDXL's AutoencoderKL"
        if not getattr(vae.config, "force_upcast", True):
            return "the VAE is already fp16-safe (force_upcast is false)"
        try:
            fixed = load_pretrained("AutoencoderKL", config.source)
        except NotDownloaded:
            return None  # a plan stays offline: optimize downloads it, then checks it (apply)
        except Exception as error:
            return load_failure("the fp16-safe VAE", config.source, error) + "; the VAE stays float32"
        return _mismatch(vae, fixed, config.source)

    def describe(self, config: Any, anatomy: Anatomy) -> str:
        random = " (random weights of its published architecture: not cached here)" if is_stand_in(anatomy.vae) else ""
        return f"VAE replaced by the fp16-safe {config.source}{random}"

    def apply(self, pipe: Any, anatomy: Anatomy, caps: Capabilities, config: Any) -> Undo:
        wrong = _mismatch(anatomy.vae, load_pretrained("AutoencoderKL", config.source), config.source)
        if wrong:  # only reachable when the plan was made before the weights were downloaded
            raise ValueError(wrong)
        return swap_vae(pipe, anatomy.vae_names[0], "AutoencoderKL", config.source)


def _mismatch(vae: Any, fixed: Any, source: str) -> str | None:
    for key in ("latent_channels", "block_out_channels"):
        if tuple(_as_tuple(fixed.config.get(key))) != tuple(_as_tuple(vae.config.get(key))):
            return f"{source} does not match this VAE ({key} differs): not an SDXL VAE"
    return None


def _as_tuple(value: Any) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)
