"""Decode (and encode) large images in overlapping tiles."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sdopt.anatomy import Anatomy
from sdopt.capabilities import Capabilities
from sdopt.optimization import Optimization, Undo, register, within
from sdopt.optimizations._attributes import remember_attributes
from sdopt.requirements import Requirements

_TILE_ATTRIBUTES = ("use_tiling", "tile_sample_min_size", "tile_latent_min_size", "tile_overlap_factor")


@dataclass(frozen=True)
class VaeTilingConfig:
    """``tile_size``: tile edge in pixels (0 keeps the VAE's default, its ``sample_size``);
    ``overlap``: overlap between tiles as a fraction of the tile (0 keeps the VAE's default)."""

    tile_size: int = field(default=0, metadata=within(0))
    overlap: float = field(default=0.0, metadata=within(0, 1, below=True))


@register
class VaeTiling(Optimization):
    """``vae.enable_tiling()``: VAE memory bounded by the tile size, whatever the image size.

    Only images larger than the tile (default: the VAE's ``sample_size``, 512 px for SD1.5,
    1024 px for SDXL) are tiled; smaller ones decode exactly as before. Tiles are blended
    where they overlap, so outputs differ slightly from an untiled decode.

    Examples:
        >>> from sdopt import optimize
        >>> from sdopt.testing import tiny_pipeline
        >>> pipe = tiny_pipeline("sd")
        >>> report = optimize(pipe, tier=None, extra=[{"name": "vae_tiling", "tile_size": 32}])
        >>> pipe.vae.use_tiling, pipe.vae.tile_sample_min_size
        (True, 32)
    """

    name = "vae_tiling"
    kind = "memory"
    summary = "VAE decodes large images in overlapping tiles (bounded memory)"
    Config = VaeTilingConfig
    requires = Requirements(needs_vae=True)
    effect = "memory"
    lossy = True  # tiles are blended where they overlap: close to, not equal to, an untiled decode
    tiles_decode = True

    def check(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> str | None:
        vae = anatomy.vae
        if not hasattr(vae, "use_tiling") or not hasattr(vae, "enable_tiling"):
            return f"{type(vae).__name__} does not support tiling"
        if config.tile_size < 0 or not 0.0 <= config.overlap < 1.0:
            return f"tile_size must be >= 0 and overlap in [0, 1), got {config.tile_size}, {config.overlap}"
        if config.tile_size and config.tile_size % _downscale(vae):
            return f"tile_size {config.tile_size} is not a multiple of the VAE's downscale factor {_downscale(vae)}"
        if vae.use_tiling and not config.tile_size and not config.overlap:
            return "already enabled"
        return None

    def resolve(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> Any:
        vae = anatomy.vae
        return VaeTilingConfig(
            tile_size=config.tile_size or int(getattr(vae, "tile_sample_min_size", 0) or 0),
            overlap=config.overlap or float(getattr(vae, "tile_overlap_factor", 0.0) or 0.0),
        )

    def describe(self, config: Any, anatomy: Anatomy) -> str:
        return f"VAE tiling for images larger than {config.tile_size} px (overlap {config.overlap:g})"

    def apply(self, pipe: Any, anatomy: Anatomy, caps: Capabilities, config: Any) -> Undo:
        vae = anatomy.vae
        undo = remember_attributes(vae, _TILE_ATTRIBUTES)
        vae.enable_tiling()
        if config.tile_size and hasattr(vae, "tile_sample_min_size"):
            vae.tile_sample_min_size = config.tile_size
            if hasattr(vae, "tile_latent_min_size"):
                vae.tile_latent_min_size = config.tile_size // _downscale(vae)
        if config.overlap and hasattr(vae, "tile_overlap_factor"):
            vae.tile_overlap_factor = config.overlap
        return undo


def _downscale(vae: Any) -> int:
    """Pixels per latent along one side (8 for the usual 4-level VAEs)."""
    blocks = getattr(getattr(vae, "config", None), "block_out_channels", None)
    if blocks:
        return int(2 ** (len(blocks) - 1))
    return int(getattr(vae, "spatial_scale_factor", 8) or 8)
