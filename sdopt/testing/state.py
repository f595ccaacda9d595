"""Snapshots of everything an optimization may change, and their differences."""

from __future__ import annotations

import json
import types
from collections.abc import Mapping
from typing import Any

import torch


def pipeline_state(pipe: Any) -> dict[str, Any]:
    """A snapshot of everything an optimization may change, for exact before/after comparisons.

    Covers, per component: the module object's identity and class, every parameter and buffer
    (name, dtype, device, shape, stride and a copy of the values), attention processor classes
    and identities, forward hooks and diffusers hook-registry entries, and attribute flags such
    as ``use_slicing``; plus the scheduler's class and config and diffusers' process-wide
    attention backend. Compare two snapshots with `state_differences`.

    Examples:
        >>> from sdopt.testing import tiny_pipeline, pipeline_state, state_differences
        >>> pipe = tiny_pipeline("sd")
        >>> before = pipeline_state(pipe)
        >>> state_differences(before, pipeline_state(pipe))
        []
    """
    state: dict[str, Any] = {
        "process": _process_state(),
        "pipeline_config": json.dumps(dict(pipe.config), sort_keys=True, default=repr),
        "pipeline_class": (type(pipe).__qualname__, id(type(pipe))),
    }
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            state[name] = _module_state(component)
        elif component is None or isinstance(component, (str, int, float, bool)):
            state[name] = component
        else:
            config = getattr(component, "config", None)
            state[name] = {
                "id": id(component),
                "class": type(component).__name__,
                "config": json.dumps(dict(config), sort_keys=True, default=repr) if config is not None else None,
            }
    return state


def _process_state() -> dict[str, Any]:
    try:
        from diffusers.models.attention_dispatch import _AttentionBackendRegistry

        backend = str(_AttentionBackendRegistry.get_active_backend()[0])
    except Exception:  # older diffusers without the dispatcher
        backend = None
    return {"attention_backend": backend}


_FLAG_ATTRIBUTES = (
    "use_slicing",
    "use_tiling",
    "tile_sample_min_size",
    "tile_latent_min_size",
    "tile_overlap_factor",
    "fused_projections",
    "original_attn_processors",
    "sliceable_head_dim",
)


def _module_state(module: torch.nn.Module) -> dict[str, Any]:
    tensors = {}
    for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        tensors[name] = (
            tensor.dtype,
            tensor.device.type,
            tuple(tensor.shape),
            tensor.stride(),
            tensor.detach().to("cpu", copy=True),
        )
    submodules = {}
    for name, sub in module.named_modules():
        entry: dict[str, Any] = {"class": type(sub).__name__, "id": id(sub)}
        processor = getattr(sub, "processor", None)
        if processor is not None:
            entry["processor"] = (type(processor).__name__, id(processor))
        hooks = (
            len(sub._forward_hooks),
            len(sub._forward_pre_hooks),
            type(getattr(sub, "_diffusers_hook", None)).__name__,
            tuple(getattr(getattr(sub, "_diffusers_hook", None), "hooks", {}) or ()),
            getattr(sub, "_hf_hook", None) is not None,
        )
        entry["hooks"] = hooks
        entry["instance_functions"] = sorted(
            key for key, value in sub.__dict__.items() if isinstance(value, (types.FunctionType, types.MethodType))
        )
        for attribute in _FLAG_ATTRIBUTES:
            if attribute in sub.__dict__:
                entry[attribute] = repr(sub.__dict__[attribute])
        submodules[name] = entry
    return {
        "id": id(module),
        "class": type(module).__name__,
        "training": module.training,
        "tensors": tensors,
        "modules": submodules,
    }


def state_differences(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between two `pipeline_state` snapshots ([] if identical)."""
    differences: list[str] = []
    _diff("", before, after, differences)
    return differences


def _diff(path: str, a: Any, b: Any, out: list[str]) -> None:
    if len(out) > 50:
        return
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(a, b)
        )
        if not same:
            out.append(f"{path}: tensor values differ")
        return
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in sorted(set(a) | set(b), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in a:
                out.append(f"{where}: added")
            elif key not in b:
                out.append(f"{where}: removed")
            else:
                _diff(where, a[key], b[key], out)
        return
    if isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b):
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            _diff(f"{path}[{index}]", x, y, out)
        return
    if a != b:
        out.append(f"{path}: {a!r} -> {b!r}")
