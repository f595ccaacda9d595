"""A dtype boundary around a model computing in reduced precision, so its neighbours need not care.

Pipelines assume every component shares one dtype: an image encoder left in float32 feeds float32
embeddings to a bfloat16 UNet ("mat1 and mat2 must have the same dtype"), and a pixel-space
pipeline such as DDPM hands the UNet's bfloat16 output straight to ``.numpy()`` ("unsupported
ScalarType BFloat16"). diffusers has no such boundary (``enable_layerwise_casting`` casts weights,
not a model's inputs and outputs). It is a pair of PyTorch module hooks rather than a diffusers
hook: the hook functions are stateless module-level functions that receive the module, so a
``copy.deepcopy`` or a pickled copy of the pipeline keeps a boundary of its own (diffusers' hook
registry replaces ``forward`` with a closure over the original module, which a copy would share).
Floating inputs of two or more dimensions (latents, embeddings) are cast to the model's dtype;
timesteps and other 0-d/1-d inputs stay as the pipeline made them (diffusers computes time
embeddings in float32 on purpose: 961 would become 960 in bfloat16). Floating outputs leave in the
dtype the latents came in, so the pipeline's own dtype flow is what it would be without the boundary
(HunyuanDiT derives its time embedding's dtype from the latents'), or in float32 for pixel-space
pipelines, whose denoiser output is the image. The undo removes both hooks.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from sdopt.optimization import Undo


def add_dtype_boundary(model: torch.nn.Module, *, float32_outputs: bool = False) -> Undo:
    """Cast ``model``'s floating inputs to its dtype, and its floating outputs back to the dtype of its
    first floating input (``float32_outputs``: to float32)."""
    before = model.register_forward_pre_hook(_inputs_to_model_dtype, with_kwargs=True)
    after = model.register_forward_hook(_outputs_to_float32 if float32_outputs else _outputs_to_input_dtype)

    def undo() -> None:
        after.remove()
        before.remove()
        model.__dict__.pop(_INPUT_DTYPE, None)

    return undo


_INPUT_DTYPE = "_sdopt_input_dtype"


def has_dtype_boundary(model: Any) -> bool:
    return any(hook is _inputs_to_model_dtype for hook in getattr(model, "_forward_pre_hooks", {}).values())


def _inputs_to_model_dtype(
    module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    dtype = module.dtype
    first = next((v for v in [*args, *kwargs.values()] if isinstance(v, torch.Tensor) and v.is_floating_point()), None)
    module.__dict__[_INPUT_DTYPE] = first.dtype if first is not None else torch.float32
    return _cast(args, dtype, min_dims=2), {key: _cast(value, dtype, min_dims=2) for key, value in kwargs.items()}


def _outputs_to_input_dtype(module: Any, args: Any, output: Any) -> Any:
    return _cast(output, module.__dict__.get(_INPUT_DTYPE, torch.float32))


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
