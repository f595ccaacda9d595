"""A dtype boundary around a model computing in reduced precision, so its neighbours need not care.

Pipelines assume every component shares one dtype: an image encoder left in float32 feeds float32
embeddings to a bfloat16 UNet ("mat1 and mat2 must have the same dtype"), and a pixel-space
pipeline such as DDPM hands the UNet's bfloat16 output straight to ``.numpy()`` ("unsupported
ScalarType BFloat16"). diffusers has no such boundary (``enable_layerwise_casting`` casts weights,
not a model's inputs and outputs). It is a pair of PyTorch module hooks rather than a diffusers
hook: the hook functions are stateless module-level functions that receive the module, so a
``copy.deepcopy`` or a pickled copy of the pipeline keeps a boundary of its own (diffusers' hook
registry replaces ``forward`` with a closure over the original module, which a copy would share).
Floating inputs of two or more dimensions (latents, embeddings) are cast to the model's dtype,
floating outputs to float32; timesteps and other 0-d/1-d inputs stay as they are (diffusers computes
time embeddings in float32 on purpose: 961 would become 960 in bfloat16). The undo removes both.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from sdopt.optimizations.base import Undo


def add_dtype_boundary(model: torch.nn.Module) -> Undo:
    """Cast ``model``'s floating inputs to its dtype and its floating outputs to float32."""
    before = model.register_forward_pre_hook(_inputs_to_model_dtype, with_kwargs=True)
    after = model.register_forward_hook(_outputs_to_float32)

    def undo() -> None:
        after.remove()
        before.remove()

    return undo


def has_dtype_boundary(model: Any) -> bool:
    return any(hook is _inputs_to_model_dtype for hook in getattr(model, "_forward_pre_hooks", {}).values())


def _inputs_to_model_dtype(
    module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    dtype = module.dtype
    return _cast(args, dtype, min_dims=2), {key: _cast(value, dtype, min_dims=2) for key, value in kwargs.items()}


def _outputs_to_float32(module: Any, args: Any, output: Any) -> Any:
    return _cast(output, torch.float32)


def _cast(value: Any, dtype: torch.dtype, min_dims: int = 0) -> Any:
    """``value`` with its floating tensors of at least ``min_dims`` dimensions (also inside tuples,
    lists, dicts and output dataclasses) in ``dtype``."""
    if isinstance(value, torch.Tensor):
        wanted = value.is_floating_point() and value.dtype != dtype and value.dim() >= min_dims
        return value.to(dtype) if wanted else value
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_cast(item, dtype, min_dims) for item in value)
    if isinstance(value, list):
        return [_cast(item, dtype, min_dims) for item in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # diffusers' BaseOutput
        for field in dataclasses.fields(value):
            item = getattr(value, field.name)
            if item is not None:
                setattr(value, field.name, _cast(item, dtype, min_dims))
        return value
    if type(value) is dict:
        return {key: _cast(item, dtype, min_dims) for key, item in value.items()}
    return value
