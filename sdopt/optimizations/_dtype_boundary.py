"""A dtype boundary around a model computing in reduced precision, so its neighbours need not care.

Pipelines assume every component shares one dtype: an image encoder left in float32 feeds float32
embeddings to a bfloat16 UNet ("mat1 and mat2 must have the same dtype"), and a pixel-space
pipeline such as DDPM hands the UNet's bfloat16 output straight to ``.numpy()`` ("unsupported
ScalarType BFloat16"). diffusers has no such boundary (``enable_layerwise_casting`` casts weights,
not a model's inputs and outputs), so it is a hook in diffusers' own registry: floating inputs are
cast to the model's dtype, floating outputs to float32. The undo removes the hook.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from sdopt.optimizations._attributes import HOOK_ATTRIBUTES, remember_attributes
from sdopt.optimizations.base import Undo

HOOK_NAME = "sdopt_dtype_boundary"


def add_dtype_boundary(model: torch.nn.Module) -> Undo:
    """Cast ``model``'s floating inputs to its dtype and its floating outputs to float32."""
    from diffusers.hooks import HookRegistry, ModelHook

    class DtypeBoundary(ModelHook):
        def pre_forward(self, module: Any, *args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
            dtype = module.dtype
            return _cast(args, dtype), {key: _cast(value, dtype) for key, value in kwargs.items()}

        def post_forward(self, module: Any, output: Any) -> Any:
            return _cast(output, torch.float32)

    restore = remember_attributes(model, HOOK_ATTRIBUTES)
    HookRegistry.check_if_exists_or_initialize(model).register_hook(DtypeBoundary(), HOOK_NAME)

    def undo() -> None:
        registry: Any = model._diffusers_hook
        registry.remove_hook(HOOK_NAME, recurse=False)
        restore()

    return undo


def has_dtype_boundary(model: Any) -> bool:
    registry = getattr(model, "_diffusers_hook", None)
    return registry is not None and registry.get_hook(HOOK_NAME) is not None


def _cast(value: Any, dtype: torch.dtype) -> Any:
    """``value`` with its floating tensors (also inside tuples, lists, dicts and output dataclasses) in ``dtype``."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() and value.dtype != dtype else value
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_cast(item, dtype) for item in value)
    if isinstance(value, list):
        return [_cast(item, dtype) for item in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # diffusers' BaseOutput
        for field in dataclasses.fields(value):
            item = getattr(value, field.name)
            if item is not None:
                setattr(value, field.name, _cast(item, dtype))
        return value
    if type(value) is dict:
        return {key: _cast(item, dtype) for key, item in value.items()}
    return value
