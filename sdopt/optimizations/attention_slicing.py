"""Compute attention in slices of heads to lower peak memory (UNet denoisers)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sdopt.anatomy import Anatomy
from sdopt.capabilities import Capabilities
from sdopt.optimization import Optimization, Undo, register, within
from sdopt.optimizations._attention import attention_modules, restore_processors, save_processors
from sdopt.requirements import Requirements


@dataclass(frozen=True)
class AttentionSlicingConfig:
    """``slice_size``: "auto" (half the heads at a time), "max" (one at a time) or a head count."""

    slice_size: str | int = field(default="auto", metadata=within(1))


@register
class AttentionSlicing(Optimization):
    """Sliced attention through diffusers' ``set_attention_slice``: less memory, somewhat slower.

    Only modules with ``set_attention_slice`` (UNets, ControlNets) honour it; diffusers silently
    ignores it on SD3/Flux/PixArt transformers, so there it is skipped with that reason.

    Examples:
        >>> from sdopt import optimize
        >>> from sdopt.testing import tiny_pipeline
        >>> pipe = tiny_pipeline("sd")
        >>> report = optimize(pipe, tier=None, extra=[{"name": "attention_slicing", "slice_size": "max"}])
        >>> {type(m.processor).__name__ for m in pipe.unet.modules() if hasattr(m, "processor")}
        {'SlicedAttnProcessor'}
    """

    name = "attention_slicing"
    kind = "memory"
    summary = "attention computed in slices of heads (lower peak memory, slower)"
    Config = AttentionSlicingConfig
    requires = Requirements(denoiser_kinds=("unet",))
    group = "attention"
    effect = "memory"

    def check(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> str | None:
        if isinstance(config.slice_size, str) and config.slice_size not in ("auto", "max"):
            return f"slice_size must be 'auto', 'max' or an int, got {config.slice_size!r}"
        if isinstance(config.slice_size, int) and config.slice_size < 1:  # 0 divided every later call by zero
            return f"slice_size must be 'auto', 'max' or a head count >= 1, got {config.slice_size}"
        denoiser = anatomy.denoiser
        name = type(denoiser).__name__
        if not hasattr(denoiser, "set_attention_slice"):
            return f"{name} has no set_attention_slice (diffusers would silently ignore it)"
        modules = attention_modules(denoiser)
        if not modules:
            return f"{name} has no attention layers"
        if all(type(m.processor).__name__.startswith("Sliced") for m in modules):
            return "already active"
        if any("IPAdapter" in type(m.processor).__name__ for m in modules):
            # set_attention_slice would replace the IP-Adapter processors, dropping the image prompt.
            return f"{name} has IP-Adapter attention processors, which sliced attention would replace"
        return None

    def describe(self, config: Any, anatomy: Anatomy) -> str:
        return f"attention computed in slices (slice_size={config.slice_size})"

    def apply(self, pipe: Any, anatomy: Anatomy, caps: Capabilities, config: Any) -> Undo:
        # The denoiser and every other model that slices (ControlNets), as diffusers' pipeline-level
        # enable_attention_slicing does.
        models: list[Any] = [
            model
            for model in anatomy.modules().values()
            if hasattr(model, "set_attention_slice") and attention_modules(model)
        ]
        saved = [entry for model in models for entry in save_processors(model)]
        try:
            for model in models:
                model.set_attention_slice(config.slice_size)
        except Exception:
            restore_processors(saved)
            raise
        return lambda: restore_processors(saved)
