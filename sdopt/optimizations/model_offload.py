"""Keep components in CPU memory and move each to the accelerator only while it runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sdopt.anatomy import Anatomy
from sdopt.capabilities import Capabilities
from sdopt.optimization import Undo, register
from sdopt.optimizations._offload import OffloadBase, accelerate_offload, resolve_device


@dataclass(frozen=True)
class ModelOffloadConfig:
    """``device``: the accelerator ("auto": the target device); ``only_if_needed``: apply only when the
    pipeline's weights do not fit the device but its largest component does."""

    device: str = "auto"
    only_if_needed: bool = True


@register
class ModelOffload(OffloadBase):
    """diffusers' ``enable_model_cpu_offload``: peak memory of the largest component, small slowdown.

    Examples:
        >>> from sdopt import plan
        >>> from sdopt.testing import tiny_pipeline, fake_capabilities
        >>> result = plan(tiny_pipeline("sd"), tier=None, extra=["model_offload"], caps=fake_capabilities("t4-16gb"))
        >>> result.skipped[0].reason[:34]
        'not needed at this budget: weights'
    """

    name = "model_offload"
    summary = "components wait in CPU memory and move to the accelerator one at a time"
    Config = ModelOffloadConfig
    offload_regime = "model"

    def check(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> str | None:
        if getattr(anatomy.pipeline, "model_cpu_offload_seq", None) is None:
            return f"{anatomy.pipeline_class} declares no model_cpu_offload_seq"
        if getattr(anatomy.pipeline, "_all_hooks", None):
            return "already active"
        return None

    def describe(self, config: Any, anatomy: Anatomy) -> str:
        return f"model CPU offload (onto {config.device})"

    def resolve(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> Any:
        return ModelOffloadConfig(resolve_device(config.device, caps), config.only_if_needed)

    def apply(self, pipe: Any, anatomy: Anatomy, caps: Capabilities, config: Any) -> Undo:
        return accelerate_offload(pipe, lambda: pipe.enable_model_cpu_offload(device=config.device))
