"""Generate at a lower internal resolution and upscale to the requested size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sdopt.anatomy import Anatomy
from sdopt.capabilities import Capabilities
from sdopt.optimizations._call_wrapper import call_parameters, wrap_call
from sdopt.optimizations.base import Optimization, Undo
from sdopt.registry import register


@dataclass(frozen=True)
class ResolutionConfig:
    """``scale``: internal size as a fraction of the requested one (per side)."""

    scale: float = 0.75


@register
class Resolution(Optimization):
    """Denoising cost grows with the pixel count: at ``scale=0.75`` each step does ~56% of the work.
    The pipeline runs at the scaled size (rounded to its latent grid) and the images are upscaled
    to the size asked for: Lanczos for PIL images, antialiased bicubic for arrays and tensors.
    Clearly lossy (softer detail); for the ``ultra`` tier and explicit use.

    Example:
        >>> from sdopt import optimize
        >>> from sdopt.testing import tiny_pipeline, call_kwargs
        >>> pipe = tiny_pipeline("sd")
        >>> report = optimize(pipe, tier=None, extra=[{"name": "resolution", "scale": 0.5}])
        >>> pipe(**call_kwargs("sd", size=64)).images.shape
        (1, 64, 64, 3)
        >>> report.undo()
    """

    name = "resolution"
    kind = "sampling"
    summary = "denoise at a lower resolution, then upscale to the requested size"
    Config = ResolutionConfig
    lossy = True

    def check(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> str | None:
        if not 0.25 <= config.scale < 1.0:
            return f"scale must be in [0.25, 1), got {config.scale}"
        parameters = call_parameters(anatomy.pipeline)
        if "height" not in parameters or "width" not in parameters:
            return f"{anatomy.pipeline_class} takes no height/width (e.g. img2img follows its input image)"
        return None

    def describe(self, config: Any, anatomy: Anatomy) -> str:
        return f"denoised at {config.scale:.0%} of the requested size per side, then upscaled"

    def apply(self, pipe: Any, anatomy: Anatomy, caps: Capabilities, config: Any) -> Undo:
        # Flux packs 2x2 latent patches: its sizes must be multiples of twice the VAE factor.
        grid = pipe.vae_scale_factor * (2 if anatomy.family == "flux" else 1)

        def requested(kwargs: dict[str, Any]) -> tuple[int, int]:
            default = getattr(pipe, "default_sample_size", 64) * pipe.vae_scale_factor
            return kwargs.get("height") or default, kwargs.get("width") or default

        def adjust(kwargs: dict[str, Any]) -> dict[str, Any]:
            height, width = requested(kwargs)
            kwargs["height"] = max(grid, round(height * config.scale / grid) * grid)
            kwargs["width"] = max(grid, round(width * config.scale / grid) * grid)
            return kwargs

        def finish(output: Any, kwargs: dict[str, Any]) -> Any:
            if kwargs.get("output_type") == "latent":
                return output
            size = requested(kwargs)
            if isinstance(output, tuple):
                return (_upscale(output[0], size), *output[1:])
            output.images = _upscale(output.images, size)
            return output

        return wrap_call(pipe, adjust, finish)


def _upscale(images: Any, size: tuple[int, int]) -> Any:
    import numpy as np
    import torch

    height, width = size
    if isinstance(images, list):  # PIL images
        from PIL import Image

        return [image.resize((width, height), Image.Resampling.LANCZOS) for image in images]
    if isinstance(images, np.ndarray):  # (batch, height, width, channels) in [0, 1]
        tensor = torch.from_numpy(images).permute(0, 3, 1, 2)
        resized = torch.nn.functional.interpolate(tensor, size=size, mode="bicubic", antialias=True)
        return resized.clamp(0, 1).permute(0, 2, 3, 1).numpy()
    if isinstance(images, torch.Tensor):  # (batch, channels, height, width)
        resized = torch.nn.functional.interpolate(images.float(), size=size, mode="bicubic", antialias=True)
        return resized.clamp(0, 1).to(images.dtype)
    return images
