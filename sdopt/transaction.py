"""What makes applying an optimization atomic: a cheap record of everything an ``apply`` can change.

``apply`` methods are written to clean up after themselves, but code they call (diffusers, accelerate,
torchao) can raise halfway, after registering hooks or swapping layers, and a cleanup written for the
cases its author foresaw misses the others (diffusers' first-block cache left two hooks on Bria's
blocks when it failed on the third). So the core records, before each ``apply``, the state it can
touch by reference (no tensor is copied), and puts it back when ``apply`` raises:

- the pipeline's class and attributes (components, scheduler, offload bookkeeping, config);
- for every module of every component: its attributes (instance-level ``forward``/``decode``
  wrappers, attention processors, hook registries, flags such as ``use_slicing``), its children,
  parameters, buffers and hook dictionaries, and each parameter's and buffer's data, dtype,
  device and layout (``tensor.data`` is rebound, never copied);
- objects held in module attributes (attention processors, diffusers hook registries): their
  attributes, one level of containers deep;
- process-wide settings optimizations touch: diffusers' active attention backend and the
  ``TORCHINDUCTOR_CACHE_DIR`` environment variable.

In-place writes into existing tensor storage are not recorded: no optimization does them.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch

Restore = Callable[[], None]

_ENVIRONMENT = ("TORCHINDUCTOR_CACHE_DIR",)
_SCALARS = (str, int, float, bool, bytes, type(None), torch.dtype, torch.device)


def record(pipe: Any, *, accelerator_data: bool = True) -> Restore:
    """Record the state of ``pipe`` (and the process-wide settings); the returned function puts it back.

    With ``accelerator_data=False`` the data of tensors on an accelerator is not referenced (it would
    stay in device memory as long as the record lives); their Parameter objects are still put back.

    Examples:
        >>> from diffusers.models.attention_processor import AttnProcessor
        >>> from sdopt.testing import tiny_pipeline, pipeline_state, state_differences
        >>> from sdopt.transaction import record
        >>> pipe = tiny_pipeline("sd")
        >>> before = pipeline_state(pipe)
        >>> restore = record(pipe)
        >>> pipe.unet.set_attn_processor(AttnProcessor()); pipe.vae.enable_slicing(); _ = pipe.unet.half()
        >>> pipe.scheduler = None
        >>> restore()
        >>> state_differences(before, pipeline_state(pipe))
        []
    """
    restores = [_record_object(pipe)]
    seen: set[int] = set()
    for component in list(pipe.__dict__.values()):
        if isinstance(component, torch.nn.Module):
            for module in component.modules():
                if id(module) not in seen:
                    seen.add(id(module))
                    restores.append(_record_module(module, accelerator_data))
    restores.append(_record_globals())

    def restore() -> None:
        # Tensors first (a restored container may hold them), the pipeline's own attributes last.
        for put_back in reversed(restores):
            put_back()

    return restore


def _record_object(obj: Any) -> Restore:
    """An object's class and attributes, with its dict/list/set attributes copied one level deep."""
    cls = obj.__class__
    attributes = dict(obj.__dict__)
    contents = {key: copy for key, value in attributes.items() if (copy := _copy_container(value)) is not None}

    def restore() -> None:
        if obj.__class__ is not cls:
            obj.__class__ = cls
        obj.__dict__.clear()
        obj.__dict__.update(attributes)
        for key, content in contents.items():
            _refill(attributes[key], content)

    return restore


def _record_module(module: torch.nn.Module, accelerator_data: bool) -> Restore:
    """A module's tensors' data, the objects it holds, and its class and attributes (children,
    parameters, buffers and hook dictionaries are container attributes, copied one level deep)."""
    tensors = [
        (tensor, tensor.data, tensor.requires_grad)
        for tensor in [*module._parameters.values(), *module._buffers.values()]
        if tensor is not None and (accelerator_data or tensor.device.type in ("cpu", "meta"))
    ]
    held = [_record_object(value) for value in module.__dict__.values() if _is_plain_object(value)]
    restore_module = _record_object(module)

    def restore() -> None:
        for tensor, data, requires_grad in tensors:
            if tensor.data is not data:
                tensor.data = data
            if tensor.requires_grad != requires_grad:
                tensor.requires_grad_(requires_grad)
        for put_back in held:
            put_back()
        restore_module()

    return restore


def _is_plain_object(value: Any) -> bool:
    """Objects whose own attributes an apply may change: attention processors, hook registries."""
    return (
        hasattr(value, "__dict__")
        and not isinstance(value, (torch.nn.Module, torch.Tensor, type, *_SCALARS))
        and not callable(getattr(value, "__func__", None))  # bound methods
        and type(value).__module__.split(".")[0] in ("diffusers", "sdopt", "accelerate", "peft")
    )


def _copy_container(value: Any) -> Any:
    """A shallow copy of a mutable container (not of immutable ones such as diffusers' FrozenDict)."""
    if type(value) in (dict, OrderedDict):
        return dict(value)
    if type(value) is list:
        return list(value)
    if type(value) is set:
        return set(value)
    return None


def _refill(container: Any, content: Any) -> None:
    if isinstance(container, dict):
        # By identity: values may be tensors, whose == is element-wise.
        same = len(container) == len(content) and all(
            key is other_key and value is other_value
            for (key, value), (other_key, other_value) in zip(container.items(), content.items(), strict=True)
        )
        if not same:
            container.clear()
            container.update(content)
    elif isinstance(container, list):
        container[:] = content
    elif isinstance(container, set):
        container.clear()
        container.update(content)


def _record_globals() -> Restore:
    environment = {name: os.environ.get(name) for name in _ENVIRONMENT}
    backend = _active_attention_backend()

    def restore() -> None:
        for name, value in environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if backend is not None:
            from diffusers.models.attention_dispatch import _AttentionBackendRegistry

            _AttentionBackendRegistry._active_backend = backend

    return restore


def _active_attention_backend() -> Any:
    try:
        from diffusers.models.attention_dispatch import _AttentionBackendRegistry
    except ImportError:  # diffusers without the attention dispatcher
        return None
    return _AttentionBackendRegistry._active_backend
