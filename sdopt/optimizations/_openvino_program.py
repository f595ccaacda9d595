"""How a module method becomes an OpenVINO program and back: `convert` traces it at a call's static shapes,
`compile_program` compiles it for the CPU (`compiled_blob` / `import_program` keep that work for a new
process), and `Program` feeds it a call's arguments and shapes its outputs
like PyTorch's (`output_layout`; `layout_record` / `layout_from_record` keep that layout on disk so that a
cached model can answer a call before PyTorch has).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch.utils import _pytree


class Program:
    """A compiled OpenVINO model and how to feed it a call's arguments and shape its outputs like PyTorch's.

    Its inputs and outputs are float32 where the call's were bfloat16 or float16 (numpy has no bfloat16):
    they are widened on the way in and narrowed back to the dtypes PyTorch returned on the way out."""

    def __init__(
        self,
        compiled: Any,
        tensor_positions: list[int],
        output_spec: Any,
        output_dtypes: list[torch.dtype],
        backing: Any = None,
    ) -> None:
        self.compiled = compiled
        self.tensor_positions = tensor_positions
        self.output_spec = output_spec
        self.output_dtypes = output_dtypes
        # What an imported model reads its weights from (a mapped blob): OpenVINO keeps using that memory, so it
        # lives as long as the model, and is set after it so that it is released after it.
        self.backing = backing

    def __call__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        leaves = _pytree.tree_leaves((args, kwargs))
        inputs = [widened(leaves[position]).detach().cpu().contiguous().numpy() for position in self.tensor_positions]
        results = self.compiled(inputs)
        outputs = [torch.from_numpy(results[index]).to(dtype) for index, dtype in enumerate(self.output_dtypes)]
        return _pytree.tree_unflatten(outputs, self.output_spec)


class _Flat(torch.nn.Module):
    """``method`` as a function of the call's tensors only (what ``convert_model`` traces); the other
    arguments are the call's own, baked in (they are part of the signature). Reduced-precision inputs
    arrive in float32 and are narrowed to the call's dtypes inside the trace; floating outputs leave
    in float32 (see `Program`)."""

    def __init__(self, module: torch.nn.Module, method: Callable[..., Any], leaves: list[Any], spec: Any) -> None:
        super().__init__()
        self.inner = module  # registered, so the trace sees its weights as the module's
        self.method = method
        self.leaves = leaves
        self.spec = spec
        self.positions = [index for index, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        leaves = list(self.leaves)
        for position, tensor in zip(self.positions, tensors, strict=True):
            leaves[position] = tensor.to(self.leaves[position].dtype)
        args, kwargs = _pytree.tree_unflatten(leaves, self.spec)
        return tuple(widened(output) for output in _pytree.tree_leaves(self.method(*args, **kwargs)))


def detached(tree: Any) -> Any:
    """``tree`` with each tensor detached (a kept call holds no autograd graph)."""
    return _pytree.tree_map(lambda leaf: leaf.detach() if isinstance(leaf, torch.Tensor) else leaf, tree)


def widened(tensor: torch.Tensor) -> torch.Tensor:
    """float32 for a bfloat16 or float16 tensor (what crosses into and out of OpenVINO), else itself."""
    return tensor.float() if tensor.dtype in (torch.bfloat16, torch.float16) else tensor


def convert(module: torch.nn.Module, method: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``openvino.convert_model`` of ``method`` (bound to ``module``) at this call's static shapes; the
    module's training flags are put back afterwards (convert_model switches what it traces to eval mode)."""
    import openvino as ov

    leaves, spec = _pytree.tree_flatten((args, kwargs))
    tensors = [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]
    flat = _Flat(module, method, leaves, spec)
    modes = [(child, child.training) for child in module.modules()]
    try:
        with warnings.catch_warnings():
            # Branches on values are baked in for this signature; its output is checked against PyTorch.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            example = tuple(widened(tensor) for tensor in tensors)
            return ov.convert_model(flat, example_input=example, share_weights=shareable(module))
    finally:
        for child, training in modes:
            child.training = training


def compile_program(
    model: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    precision: str,
    output_spec: Any,
    dtypes: list[torch.dtype],
) -> Program:
    """``model`` compiled for the CPU at ``precision`` and this call's shapes, its outputs shaped by
    ``output_spec`` in ``dtypes``."""
    import openvino as ov

    tensors = [leaf for leaf in _pytree.tree_leaves((args, kwargs)) if isinstance(leaf, torch.Tensor)]
    model.reshape({index: ov.PartialShape(list(tensor.shape)) for index, tensor in enumerate(tensors)})
    compiled = ov.Core().compile_model(model, "CPU", _config(precision))
    return _program(compiled, args, kwargs, output_spec, dtypes)


def import_program(
    blob: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    precision: str,
    output_spec: Any,
    dtypes: list[torch.dtype],
) -> Program:
    """A model `compiled_blob` exported, imported for this call from ``blob`` (a uint8 numpy array, mapped from
    its file: OpenVINO shares that memory instead of copying it, and the program keeps it alive) with no
    compile (under a second for a UNet block where compiling takes seconds), its outputs shaped by
    ``output_spec`` in ``dtypes``."""
    import openvino as ov

    compiled = ov.Core().import_model(ov.Tensor(blob, shared_memory=True), "CPU", _config(precision))
    return _program(compiled, args, kwargs, output_spec, dtypes, backing=blob)


def compiled_blob(program: Program) -> memoryview:
    """``program``'s compiled model as OpenVINO exports it (for `import_program` on this CPU), not copied."""
    import io

    stream = io.BytesIO()
    program.compiled.export_model(stream)
    return stream.getbuffer()


def _config(precision: str) -> dict[str, Any]:
    return {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": torch.get_num_threads()}


def _program(
    compiled: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    spec: Any,
    dtypes: list[torch.dtype],
    backing: Any = None,
) -> Program:
    leaves = _pytree.tree_leaves((args, kwargs))
    positions = [index for index, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]
    return Program(compiled, positions, spec, dtypes, backing)


def output_layout(reference: Any, label: str) -> tuple[Any, list[torch.dtype]]:
    """The pytree spec and leaf dtypes of a method's output (``reference``, PyTorch's answer to a call)."""
    leaves, spec = _pytree.tree_flatten(reference)
    if not leaves or not all(isinstance(leaf, torch.Tensor) for leaf in leaves):
        raise TypeError(f"{label} returns something other than tensors")
    return spec, [leaf.dtype for leaf in leaves]


def layout_record(program: Program) -> dict[str, Any] | None:
    """``program``'s output layout as JSON-ready data, or None where pytree cannot name the output type."""
    try:
        spec = _pytree.treespec_dumps(program.output_spec)
    except Exception:
        return None
    return {"spec": spec, "dtypes": [str(dtype).removeprefix("torch.") for dtype in program.output_dtypes]}


def layout_from_record(record: dict[str, Any]) -> tuple[Any, list[torch.dtype]]:
    """What `layout_record` wrote, read back (raises on anything else)."""
    dtypes = [getattr(torch, str(name)) for name in record["dtypes"]]
    if not all(isinstance(dtype, torch.dtype) for dtype in dtypes):
        raise TypeError(f"not dtypes: {record['dtypes']!r}")
    return _pytree.treespec_loads(record["spec"]), dtypes


def shareable(module: torch.nn.Module) -> bool:
    """Whether the converted model may share the module's weight memory. Not for reduced-precision weights
    stored non-contiguously (channels_last convolutions): OpenVINO 2026.4 crashed the process (SIGSEGV)
    saving such a model (measured: SD1.5's UNet in bfloat16 after channels_last); the
    converted model then copies them (contiguous), for the conversion's duration."""
    return all(
        tensor.is_contiguous() or tensor.dtype == torch.float32 for tensor in module.parameters() if tensor.dim() > 1
    )
