"""Memory-efficient attention kernels from xformers (CUDA only)."""

from __future__ import annotations

from typing import Any

from sdopt.anatomy import Anatomy
from sdopt.capabilities import Capabilities
from sdopt.optimization import Optimization, Undo, register
from sdopt.optimizations._attention import (
    restore_processor_backends,
    restore_processors,
    save_processor_backends,
    save_processors,
)
from sdopt.requirements import Requirements


@register
class Xformers(Optimization):
    """``enable_xformers_memory_efficient_attention()`` on the denoiser and the pipeline's other
    models with attention (VAE, ControlNets, as diffusers' pipeline-level method does), only where
    xformers is installed AND its kernels ran in the capability probe on this device (never on CPU:
    its ops do not load there). With PyTorch 2's SDPA the gain is usually small; tiers prefer
    ``sdpa``/``attention_backend``.

    Examples:
        >>> from sdopt import plan
        >>> from sdopt.testing import tiny_pipeline, fake_capabilities
        >>> result = plan(tiny_pipeline("sd"), tier=None, extra=["xformers"], caps=fake_capabilities("t4-16gb"))
        >>> result.skipped[0].reason
        'needs xformers (not installed); pip install sdopt[xformers]'
    """

    name = "xformers"
    kind = "attention"
    summary = "xformers memory-efficient attention kernels (CUDA)"
    requires = Requirements(devices=("cuda",), packages=("xformers",))
    group = "attention"
    effect = "speed+memory"

    def check(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> str | None:
        if not hasattr(anatomy.denoiser, "enable_xformers_memory_efficient_attention"):
            return f"{type(anatomy.denoiser).__name__} has no enable_xformers_memory_efficient_attention"
        return None

    def describe(self, config: Any, anatomy: Anatomy) -> str:
        return "xformers memory-efficient attention in the denoiser and the other models with attention"

    def apply(self, pipe: Any, anatomy: Anatomy, caps: Capabilities, config: Any) -> Undo:
        # Every model with attention (denoiser, VAE, ControlNets), as the pipeline-level method does.
        models: list[Any] = [
            m for m in anatomy.modules().values() if hasattr(m, "enable_xformers_memory_efficient_attention")
        ]
        processors = [entry for model in models for entry in save_processors(model)]
        backends = [entry for model in models for entry in save_processor_backends(model)]

        def undo() -> None:
            restore_processors(processors)
            restore_processor_backends(backends)

        try:
            for model in models:
                model.enable_xformers_memory_efficient_attention()
        except Exception:
            undo()
            raise
        return undo
