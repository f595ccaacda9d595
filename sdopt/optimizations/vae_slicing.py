"""Decode (and encode) a batch of images one image at a time."""

from __future__ import annotations

from typing import Any

from sdopt.anatomy import Anatomy
from sdopt.capabilities import Capabilities
from sdopt.optimization import Optimization, Undo, register
from sdopt.optimizations._attributes import remember_attributes
from sdopt.requirements import Requirements


@register
class VaeSlicing(Optimization):
    """``vae.enable_slicing()``: peak VAE memory of one image for any batch size.

    Pipelines no longer have ``enable_vae_slicing``; this calls the VAE's own method. It only
    changes batches of more than one image (several prompts or ``num_images_per_prompt``).

    Examples:
        >>> from sdopt import optimize
        >>> from sdopt.testing import tiny_pipeline
        >>> pipe = tiny_pipeline("sd")
        >>> report = optimize(pipe, tier=None, extra=["vae_slicing"])
        >>> pipe.vae.use_slicing
        True
    """

    name = "vae_slicing"
    kind = "memory"
    summary = "VAE decodes a batch one image at a time (lower peak memory for batches)"
    requires = Requirements(needs_vae=True)
    effect = "memory"

    def check(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> str | None:
        vae = anatomy.vae
        if not hasattr(vae, "use_slicing") or not hasattr(vae, "enable_slicing"):
            return f"{type(vae).__name__} does not support slicing"
        if vae.use_slicing:
            return "already enabled"
        return None

    def describe(self, config: Any, anatomy: Anatomy) -> str:
        return "VAE slicing on (takes effect for batches of 2+ images)"

    def apply(self, pipe: Any, anatomy: Anatomy, caps: Capabilities, config: Any) -> Undo:
        vae = anatomy.vae
        undo = remember_attributes(vae, ("use_slicing",))
        vae.enable_slicing()
        return undo
