"""Stream weights to the accelerator layer by layer: the smallest footprint, the slowest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sdopt.anatomy import Anatomy
from sdopt.capabilities import Capabilities
from sdopt.optimization import Undo, register
from sdopt.optimizations._offload import OffloadBase, accelerate_offload, resolve_device


@dataclass(frozen=True)
class SequentialOffloadConfig:
    """``device``: the accelerator ("auto": the target device); ``only_if_needed``: apply only when
    the memory budget is too small for group offload."""

    device: str = "auto"
    only_if_needed: bool = True


@register
class SequentialOffload(OffloadBase):
    """diffusers' ``enable_sequential_cpu_offload`` (accelerate hooks on every leaf module).

    Examples:
        >>> from sdopt import plan
        >>> from sdopt.testing import tiny_pipeline, fake_capabilities
        >>> result = plan(tiny_pipeline("sd"), tier=None, extra=["sequential_offload"], caps=fake_capabilities("cpu"))
        >>> result.skipped[0].reason
        'needs device cuda or xpu or mps (this machine: cpu)'
    """

    name = "sequential_offload"
    summary = "weights stream to the accelerator leaf module by leaf module (smallest footprint, slow)"
    Config = SequentialOffloadConfig
    offload_regime = "sequential"

    def check(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> str | None:
        if any(hasattr(module, "_hf_hook") for module in anatomy.modules().values()):
            return "accelerate offload hooks are already installed"
        return None

    def describe(self, config: Any, anatomy: Anatomy) -> str:
        return f"sequential CPU offload (onto {config.device})"

    def resolve(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> Any:
        return SequentialOffloadConfig(resolve_device(config.device, caps), config.only_if_needed)

    def apply(self, pipe: Any, anatomy: Anatomy, caps: Capabilities, config: Any) -> Undo:
        return accelerate_offload(pipe, lambda: pipe.enable_sequential_cpu_offload(device=config.device))
