"""Shared by the offload optimizations: the memory budget, and putting modules back where they were."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from sdopt.anatomy import Anatomy
from sdopt.capabilities import Capabilities
from sdopt.optimizations._attributes import HOOK_ATTRIBUTES, remember_attributes
from sdopt.optimizations.base import Undo

GB = 2**30
# Room left for activations, the CUDA context and fragmentation: 15% of the device, at least 1.5 GB.
_HEADROOM_SHARE, _HEADROOM_MIN_GB = 0.15, 1.5
# Below this budget even one block of a large denoiser may not fit: offload leaf by leaf.
SEQUENTIAL_BELOW_GB = 2.0


@dataclass(frozen=True)
class Budget:
    """Weights of the pipeline (in the dtype it will run in) against the device memory available."""

    total_gb: float
    largest_gb: float
    largest: str
    available_gb: float

    @property
    def regime(self) -> str:
        """ "none" (all fits), "model" (one component at a time fits), "group" or "sequential"."""
        if self.total_gb <= self.available_gb:
            return "none"
        if self.largest_gb <= self.available_gb:
            return "model"
        return "group" if self.available_gb >= SEQUENTIAL_BELOW_GB else "sequential"

    def describe(self) -> str:
        return (
            f"weights {self.total_gb:.1f} GB (largest: {self.largest} {self.largest_gb:.1f} GB) "
            f"vs {self.available_gb:.1f} GB usable"
        )


def budget(anatomy: Anatomy, caps: Capabilities) -> Budget:
    bytes_per_weight = 2 if caps.half_dtype in ("bfloat16", "float16") else 4
    sizes = {
        name: sum(p.numel() * (bytes_per_weight if p.is_floating_point() else p.element_size()) for p in m.parameters())
        / GB
        for name, m in anatomy.modules().items()
    }
    largest = max(sizes, key=lambda name: sizes[name]) if sizes else "-"
    gpu = caps.gpu
    memory = gpu.free_memory_gb if gpu is not None and gpu.free_memory_gb is not None else caps.device_memory_gb
    available = max(0.0, memory - max(_HEADROOM_MIN_GB, _HEADROOM_SHARE * memory))
    return Budget(sum(sizes.values()), sizes.get(largest, 0.0), largest, available)


def check_regime(wanted: str, anatomy: Anatomy, caps: Capabilities, only_if_needed: bool) -> str | None:
    """A skip reason unless the memory budget calls for the ``wanted`` kind of offload."""
    if not only_if_needed:
        return None
    found = budget(anatomy, caps)
    if found.regime == wanted:
        return None
    needs = {"none": "no", "model": "model", "group": "group", "sequential": "sequential"}[found.regime]
    return f"not needed at this budget: {found.describe()} calls for {needs} offload (only_if_needed=False forces it)"


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
