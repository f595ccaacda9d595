"""The denoiser's children that int8 leaves in floating point (`static_int8`, `openvino_runtime`'s int8)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Left in floating point by published int8 diffusion recipes (and measured here: see `static_int8`):
# the timestep/condition embeddings feed every block, and the first and last convolutions touch the
# latents directly.
SENSITIVE = (
    "conv_in",
    "conv_out",
    "time_embedding",
    "add_embedding",
    "time_text_embed",
    "pos_embed",
    "x_embedder",
    "context_embedder",
    "proj_out",
)


def kept_float(denoiser: torch.nn.Module | None, requested: Sequence[str]) -> tuple[str, ...]:
    """The children a ``keep_float`` option names, ``"auto"`` standing for those of `SENSITIVE` the
    denoiser has.

    Example:
        >>> from sdopt.testing import tiny_pipeline
        >>> kept_float(tiny_pipeline("sd").unet, ["auto", "mid_block"])
        ('conv_in', 'conv_out', 'time_embedding', 'mid_block')
    """
    children = dict(denoiser.named_children()) if denoiser is not None else {}
    present = tuple(name for name in SENSITIVE if name in children)
    return tuple(name for wanted in requested for name in (present if wanted == "auto" else (wanted,)))
