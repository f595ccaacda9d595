"""Generate at a lower internal resolution and upscale to the requested size."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sdopt.anatomy import Anatomy
from sdopt.calls import (
    CallLayer,
    call_layers,
    call_parameters,
    default_size,
    latents_per_token,
    pixels_per_latent,
    wrap_call,
)
from sdopt.capabilities import Capabilities
from sdopt.optimization import Optimization, Undo, register, within
from sdopt.requirements import Requirements


@dataclass(frozen=True)
class ResolutionConfig:
    """``scale``: internal size as a fraction of the requested one (per side)."""

    scale: float = field(default=0.75, metadata=within(0.25, 1, below=True))


# Families whose pipelines were run at the rounded sizes below (tests/test_zoo.py). Elsewhere the
# accepted sizes are not known: Lumina wants multiples of 16, SanaVideo of 32, HunyuanDiT and
# AuraFlow index position embeddings by size.
_VERIFIED_FAMILIES = ("sd1", "sd2", "sdxl", "sd3", "flux", "pixart", "kandinsky", "chroma")
# Call arguments holding images the latents are derived from or aligned with: pipelines taking one
# are skipped (those inputs would have to be resized with the latents, and diffusers declares them
# all optional, required or not); a call passing its own latents runs at the requested size.
_SPATIAL_INPUTS = ("image", "mask_image", "control_image", "masked_image_latents", "video", "control_video")
# Where pipelines put their results: images, or video frames.
_RESULTS = ("images", "frames")


@register
class Resolution(Optimization):
    """Denoising cost grows with the pixel count: at ``scale=0.75`` each step does ~56% of the work.
    The pipeline runs at the scaled size (rounded to its latent grid: VAE factor x patch size, at
    least 16 px) and the images (or video frames) are upscaled to the size asked for: Lanczos for
    PIL images, antialiased bicubic for arrays and tensors. Without height/width the pipeline's own
    default size is the one upscaled to. Pipelines taking an image, mask or control input are
    skipped (those inputs would need resizing with the latents), and a call passing its own
    ``latents`` runs at their size. Clearly lossy (softer detail); for the ``ultra`` tier and
    explicit use, on the families it was verified on.

    Examples:
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
    requires = Requirements(families=_VERIFIED_FAMILIES)
    lossy = True

    def check(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> str | None:
        if self.name in call_layers(anatomy.pipeline):
            return "already active (a previous optimize() wraps the pipeline's call with it)"
        if not 0.25 <= config.scale < 1.0:
            return f"scale must be in [0.25, 1), got {config.scale}"
        parameters = call_parameters(anatomy.pipeline)
        if "height" not in parameters or "width" not in parameters:
            return f"{anatomy.pipeline_class} takes no height/width (e.g. img2img follows its input image)"
        spatial = [name for name in _SPATIAL_INPUTS if name in parameters]
        if spatial:
            inputs = ", ".join(spatial)
            return f"{anatomy.pipeline_class} takes {inputs}, which would need resizing with the latents"
        if default_size(anatomy) is None:
            return f"the default output size of {anatomy.pipeline_class} cannot be read from its components"
        return None

    def describe(self, config: Any, anatomy: Anatomy) -> str:
        return f"denoised at {config.scale:.0%} of the requested size per side, then upscaled"

    def apply(self, pipe: Any, anatomy: Anatomy, caps: Capabilities, config: Any) -> Undo:
        grid = max(16, pixels_per_latent(anatomy) * latents_per_token(anatomy))
        default = default_size(anatomy)
        assert default is not None  # check() made sure
        return wrap_call(pipe, _LowerResolution(self.name, config.scale, grid, default))


class _LowerResolution(CallLayer):
    def __init__(self, name: str, scale: float, grid: int, default: int) -> None:
        super().__init__(name)
        self.scale, self.grid, self.default = scale, grid, default

    def requested(self, kwargs: dict[str, Any]) -> tuple[int, int]:
        return kwargs.get("height") or self.default, kwargs.get("width") or self.default

    def adjust(self, pipe: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if kwargs.get("latents") is not None:
            return kwargs  # the caller's latents fix the size
        height, width = self.requested(kwargs)
        kwargs["height"] = max(self.grid, round(height * self.scale / self.grid) * self.grid)
        kwargs["width"] = max(self.grid, round(width * self.scale / self.grid) * self.grid)
        return kwargs

    def finish(self, pipe: Any, output: Any, kwargs: dict[str, Any]) -> Any:
        if kwargs.get("output_type") == "latent" or kwargs.get("latents") is not None:
            return output
        size = self.requested(kwargs)
        if isinstance(output, tuple):
            return (_upscale(output[0], size), *output[1:])
        for attribute in _RESULTS:
            if hasattr(output, attribute):
                setattr(output, attribute, _upscale(getattr(output, attribute), size))
                break
        return output


def _upscale(images: Any, size: tuple[int, int]) -> Any:
    import numpy as np
    import torch

    height, width = size
    if isinstance(images, list):
        if images and isinstance(images[0], list):  # video frames: a list of PIL frames per video
            return [_upscale(frames, size) for frames in images]
        from PIL import Image

        return [image.resize((width, height), Image.Resampling.LANCZOS) for image in images]
    if isinstance(images, np.ndarray):  # (..., height, width, channels) in [0, 1]
        lead = images.shape[:-3]
        flat = torch.from_numpy(images.reshape(-1, *images.shape[-3:])).permute(0, 3, 1, 2)
        resized = torch.nn.functional.interpolate(flat, size=size, mode="bicubic", antialias=True)
        return resized.clamp(0, 1).permute(0, 2, 3, 1).numpy().reshape(*lead, height, width, images.shape[-1])
    if isinstance(images, torch.Tensor):  # (..., channels, height, width)
        lead = images.shape[:-2]
        flat = images.float().reshape(-1, 1, *images.shape[-2:])
        resized = torch.nn.functional.interpolate(flat, size=size, mode="bicubic", antialias=True)
        return resized.clamp(0, 1).reshape(*lead, height, width).to(images.dtype)
    return images
