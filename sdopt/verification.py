"""``optimize(..., verify=True)``: prove the optimized pipeline runs before handing it back.

Some failures only show when the pipeline runs: a kernel the device lacks, a hook a model does not
expect, a dtype a pipeline does not convert. With ``verify=True`` the optimized pipeline makes one
minimal real call inside the transaction (2 steps at a quarter of its default size, prompt and any
image inputs made up); if it raises, the steps are applied again one at a time, each followed by the
same call, to find the first one after which it fails. That step is reported failed with the error
and the pipeline is re-planned without it. If the untouched pipeline cannot make the call either
(inputs the verification cannot make up), verification is reported as inconclusive and the steps stay.
"""

from __future__ import annotations

import contextvars
from typing import Any

import numpy as np
import torch

from sdopt.anatomy import Anatomy, inspect_pipeline
from sdopt.footprint import default_height, latents_per_token, pixels_per_latent
from sdopt.optimizations._call_wrapper import call_parameters

_IMAGE_INPUTS = ("image", "control_image", "mask_image")


def verification_kwargs(pipe: Any) -> dict[str, Any]:
    """Keyword arguments of a minimal real call of ``pipe`` (whatever its layers of sdopt wrappers).

    Examples:
        >>> from sdopt.testing import tiny_pipeline
        >>> from sdopt.verification import verification_kwargs
        >>> kwargs = verification_kwargs(tiny_pipeline("sd"))
        >>> kwargs["num_inference_steps"], kwargs["height"], kwargs["width"]
        (2, 64, 64)
    """
    anatomy = inspect_pipeline(pipe)
    parameters = call_parameters(pipe)
    size = _small_size(anatomy)
    kwargs: dict[str, Any] = {}
    if "prompt" in parameters:
        kwargs["prompt"] = "a lighthouse on a cliff at dawn"
    if "num_inference_steps" in parameters:
        kwargs["num_inference_steps"] = 2
    if "height" in parameters and "width" in parameters and size is not None:
        kwargs["height"] = kwargs["width"] = size
    if "generator" in parameters:
        kwargs["generator"] = torch.Generator("cpu").manual_seed(0)
    if "output_type" in parameters:
        kwargs["output_type"] = "np"
    if "num_frames" in parameters:
        kwargs["num_frames"] = 9  # valid for 4k+1 (Wan, CogVideoX) and 8k+1 (LTX) frame counts
    for name in _IMAGE_INPUTS:
        if name in parameters:
            kwargs[name] = placeholder_image(size or 64, mask=name == "mask_image")
    if "ip_adapter_image" in parameters and _has_ip_adapter(anatomy):
        kwargs["ip_adapter_image"] = placeholder_image(size or 64)
    return kwargs


_verifying = contextvars.ContextVar("sdopt_verifying", default=False)


def verifying() -> bool:
    """Whether the current call is sdopt's own verification call (call-time optimizations that learn
    from calls, like static int8's calibration, leave it alone)."""
    return _verifying.get()


def run_verification(pipe: Any) -> None:
    """Make the minimal call; raises what the pipeline raises."""
    token = _verifying.set(True)
    try:
        with torch.inference_mode():
            pipe(**verification_kwargs(pipe))
    finally:
        _verifying.reset(token)


def _small_size(anatomy: Anatomy) -> int | None:
    default = default_height(anatomy)
    if default is None:
        return None
    grid = 8 * pixels_per_latent(anatomy) * latents_per_token(anatomy)  # room for 3 downsamplings
    return max(grid, default // 4 // grid * grid)


def _has_ip_adapter(anatomy: Anatomy) -> bool:
    denoiser = anatomy.denoiser
    return denoiser is not None and getattr(denoiser, "encoder_hid_proj", None) is not None


def placeholder_image(height: int, width: int | None = None, *, mask: bool = False) -> Any:
    """A made-up input image (a colour gradient) or mask (right half white) for calls sdopt makes itself.

    Examples:
        >>> from sdopt.verification import placeholder_image
        >>> placeholder_image(64, 32).size
        (32, 64)
    """
    from PIL import Image

    width = width or height
    if mask:
        pixels = np.zeros((height, width), dtype=np.uint8)
        pixels[:, width // 2 :] = 255
        return Image.fromarray(pixels)
    rows, columns = np.meshgrid(np.linspace(0, 255, width, dtype=np.uint8), np.linspace(0, 255, height, dtype=np.uint8))
    return Image.fromarray(np.stack([rows, columns, 255 - rows], axis=-1))
