"""PT2E static int8 with torchao's X86InductorQuantizer, and inductor's frozen-weight compile of the result."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

Sample = tuple[tuple[Any, ...], dict[str, Any]]

# The inductor lowerings of x86 int8 convolutions and linears (onednn qconv/qlinear), as counted
# by torch._dynamo.utils.counters["inductor"] when a frozen int8 graph compiles.
_INT8_LOWERINGS = (
    "qconv_unary_lower_count",
    "qconv2d_binary_lower_count",
    "qconv2d_binary_unary_lower_count",
    "qlinear_unary_lower_count",
    "qlinear_binary_lower_count",
)


def register_int8_fusions() -> None:
    """Make inductor lower int8 patterns to oneDNN's int8 kernels.

    torchao registers those fusion passes when its x86 quantizer module is imported; without them a
    converted graph compiles to dequantize + float32 convolutions, silently as slow as float32.
    """
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer  # noqa: F401  # registers the passes


def quantize(module: torch.nn.Module, samples: Sequence[Sample], exclude: Sequence[str] = ()) -> Any:
    """The ``torch.export.ExportedProgram`` of ``module`` with static int8 convolutions and linears.

    Activation ranges are calibrated on ``samples`` (positional and keyword arguments of real
    calls); the submodules named in ``exclude`` (and everything inside them) stay floating point.
    """
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86

    args, kwargs = samples[0]
    with torch.no_grad():
        graph = torch.export.export(module, args, kwargs, strict=False).module()
        quantizer = x86.X86InductorQuantizer()
        quantizer.set_global(x86.get_default_x86_inductor_quantization_config())
        for name in exclude:
            quantizer.set_module_name_qconfig(name, None)
        prepared = prepare_pt2e(graph, quantizer)
        for sample_args, sample_kwargs in samples:
            prepared(*sample_args, **sample_kwargs)
        converted = convert_pt2e(prepared)
        _drop_unused_parameters(converted)
        return torch.export.export(converted, args, kwargs, strict=False)


def _drop_unused_parameters(graph: torch.fx.GraphModule) -> None:
    # convert_pt2e leaves the float weights of the layers it quantized registered, unused: exported
    # again they would be saved and held beside their int8 copies (4.3 GB instead of ~1 GB for SD1.5).
    used = {node.target for node in graph.graph.nodes if node.op == "get_attr"}
    for name, _ in list(graph.named_parameters()):
        if name not in used:
            owner, _, attribute = name.rpartition(".")
            delattr(graph.get_submodule(owner) if owner else graph, attribute)


def quantized_node_count(program: Any) -> int:
    """How many weights of ``program`` are int8 (one dequantize_per_channel per quantized conv or linear)."""
    target = torch.ops.quantized_decomposed.dequantize_per_channel.default
    return sum(1 for node in program.graph.nodes if node.op == "call_function" and node.target == target)


def compile_frozen(program: Any) -> Callable[..., Any]:
    """``torch.compile`` of the program's module; it compiles at its first call, which must run
    inside `compiling` so that weights are frozen and the int8 fusions fire."""
    register_int8_fusions()
    return torch.compile(program.module(), dynamic=False)


@contextlib.contextmanager
def compiling(cache_dir: str) -> Iterator[None]:
    """Inductor's settings for the first (compiling) call: frozen weights, its on-disk caches in ``cache_dir``.

    A cache dir the user chose (``TORCHINDUCTOR_CACHE_DIR``) is left alone.
    """
    import torch._inductor.config as inductor_config

    from sdopt.optimizations._inductor import inductor_cache_dir

    with inductor_cache_dir(cache_dir), inductor_config.patch(freezing=True), warnings.catch_warnings():
        # inductor's int8 lowering builds zero points with torch.tensor(tensor): noise, not a user problem
        warnings.filterwarnings("ignore", message="To copy construct from a tensor", category=UserWarning)
        yield


def int8_lowerings() -> int:
    """Int8 convolutions and linears inductor has lowered to oneDNN kernels in this process so far."""
    from torch._dynamo.utils import counters

    return sum(counters["inductor"][name] for name in _INT8_LOWERINGS)
