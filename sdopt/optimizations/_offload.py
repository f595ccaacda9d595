"""Shared by the offload optimizations: their common declaration, the regime the planned footprint calls
for, and putting modules back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from sdopt.anatomy import Anatomy
from sdopt.capabilities import Capabilities
from sdopt.footprint import Footprint
from sdopt.optimization import Optimization, Undo
from sdopt.optimizations._attributes import HOOK_ATTRIBUTES, remember_attributes
from sdopt.requirements import Requirements


class OffloadBase(Optimization):
    """What the three offloads declare alike: an accelerator, one offload per plan, no compile, memory
    only, and decided by the memory budget (each sets `offload_regime`; ``Config`` has
    ``only_if_needed``)."""

    kind = "memory"
    requires = Requirements(devices=("cuda", "xpu", "mps"))
    group = "offload"
    conflicts = ("torch_compile",)
    effect = "memory"

    def check_budget(self, anatomy: Anatomy, caps: Capabilities, config: Any, footprint: Footprint) -> str | None:
        assert self.offload_regime is not None
        return check_regime(self.offload_regime, footprint, config.only_if_needed)


def check_regime(wanted: str, footprint: Footprint, only_if_needed: bool) -> str | None:
    """A skip reason unless the planned footprint calls for the ``wanted`` kind of offload."""
    if not only_if_needed or footprint.regime == wanted:
        return None
    needs = "no" if footprint.regime == "none" else footprint.regime
    return (
        f"not needed at this budget: {footprint.describe()} calls for {needs} offload (only_if_needed=False forces it)"
    )


def remember_placement(pipe: Any, attributes: tuple[str, ...]) -> Undo:
    """Record every component's device, its modules' hook attributes and some pipeline attributes;
    the undo puts them all back (call it after removing the hooks)."""
    modules = {name: m for name, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
    devices = {name: p.device for name, m in modules.items() if (p := next(m.parameters(), None)) is not None}
    restore_hooks = [remember_attributes(sub, HOOK_ATTRIBUTES) for m in modules.values() for sub in m.modules()]
    restore_pipe = remember_attributes(pipe, attributes)

    def undo() -> None:
        for restore in restore_hooks:
            restore()
        for name, device in devices.items():
            module = getattr(pipe, name)
            if next(module.parameters()).device != device:
                module.to(device)
        restore_pipe()

    return undo


def accelerate_offload(pipe: Any, enable: Callable[[], None]) -> Undo:
    """Run one of diffusers' accelerate-based ``enable_*_cpu_offload`` calls; the undo removes its
    hooks and puts devices and attributes back (also when ``enable`` raises midway)."""
    restore = remember_placement(pipe, ("_offload_gpu_id", "_offload_device", "_all_hooks"))

    def undo() -> None:
        pipe.remove_all_hooks()
        restore()

    try:
        enable()
    except Exception:
        undo()
        raise
    return undo


def resolve_device(config_device: str, caps: Capabilities) -> str:
    return caps.device if config_device == "auto" else config_device
