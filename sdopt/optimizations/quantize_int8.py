"""int8 weights and int8 activations (quantized on the fly) for the denoiser's Linear layers."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from sdopt.anatomy import Anatomy
from sdopt.capabilities import Capabilities
from sdopt.optimization import Optimization, Undo, register, within
from sdopt.optimizations._linear_layers import linear_storage, plain_linears
from sdopt.optimizations._torchao import quantize_weights
from sdopt.originals import keep, own_tensors
from sdopt.undo import UndoStack


@dataclass(frozen=True)
class QuantizeInt8Config:
    """``backend``: "auto" (PyTorch's own dynamic int8 on CPU, torchao on CUDA), "pytorch" or "torchao".
    ``min_features``: Linear layers with fewer input or output features stay in floating point
    (the quantize/dequantize overhead outweighs the smaller GEMM there)."""

    backend: Literal["auto", "pytorch", "torchao"] = "auto"
    min_features: int = field(default=128, metadata=within(0))


@register
class QuantizeInt8(Optimization):
    """Linear layers of the denoiser run int8 x int8 GEMMs, activations quantized per call.

    On CPU with PyTorch's dynamic quantization (fbgemm, per-channel weights): measured here on a
    Linear 1280->5120 over 2048 tokens, 60 ms vs 120 ms float32 (bf16 was 190 ms on this CPU,
    which has no AMX). On CUDA through torchao, which is only fast when the denoiser is also
    compiled (reported ~20x slower eager), so it is planned only together with ``torch_compile``.
    Inputs in another dtype (e.g. bf16 after ``half_precision``) are computed in float32 and cast back.
    Undo puts the original Linear modules (CPU path) or weight tensors (torchao) back, their weights
    re-read from where undo's originals are kept (docs/memory.md): exact.

    Examples:
        >>> from sdopt import optimize
        >>> from sdopt.testing import tiny_pipeline, fake_capabilities
        >>> pipe = tiny_pipeline("sd")
        >>> report = optimize(pipe, tier=None, extra=[{"name": "quantize_int8", "min_features": 0}],
        ...                   caps=fake_capabilities("cpu"))
        >>> type(pipe.unet.time_embedding.linear_1).__name__
        'DynamicInt8Linear'
        >>> report.undo()
        >>> type(pipe.unet.time_embedding.linear_1).__name__
        'Linear'
    """

    name = "quantize_int8"
    kind = "quantization"
    summary = "int8 weights and activations for the denoiser's Linear layers"
    Config = QuantizeInt8Config
    lossy = True  # int8 weights and activations: more than the float drift of a cast (static_int8: 36.9 dB)
    effect = "speed+memory"
    conflicts = ("quantize_4bit", "quantize_fp8")

    def resolve(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> Any:
        backend = config.backend
        if backend == "auto":
            backend = "pytorch" if caps.device == "cpu" else "torchao"
        return QuantizeInt8Config(backend, config.min_features)

    def check(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> str | None:
        backend = self.resolve(anatomy, caps, config).backend
        if anatomy.denoiser is None:
            return "the pipeline has no denoiser"
        if backend == "pytorch":
            if caps.device != "cpu":
                return f"PyTorch's dynamic int8 runs on CPU only (this plan targets {caps.device}); use backend torchao"
            if "fbgemm" not in torch.backends.quantized.supported_engines and "x86" not in (
                torch.backends.quantized.supported_engines
            ):
                return "this torch build has no x86 quantized engine (fbgemm)"
        elif backend == "torchao":
            if not caps.package_usable("torchao"):
                return "needs torchao (not installed or not usable here); pip install sdopt[torchao]"
            if caps.device == "mps":
                return "torchao's int8 kernels do not run on MPS"
        if _already_quantized(anatomy.denoiser):
            return "the denoiser is already quantized"
        if not plain_linears(anatomy.denoiser, config.min_features):
            return f"no Linear layer with at least {config.min_features} input and output features"
        return None

    def companions(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> Mapping[str, str]:
        if config.backend == "torchao" and caps.device == "cuda":
            return {"torch_compile": "torchao's int8 kernels are ~20x slower than bf16 without compilation"}
        return {}

    def storage(self, anatomy: Anatomy, config: Any, sizes: dict[str, float]) -> dict[str, float]:
        return linear_storage(anatomy, sizes, config.min_features, 1)

    def describe(self, config: Any, anatomy: Anatomy) -> str:
        # Described before and after applying: count the layers still to swap and those swapped.
        count = _count(anatomy.denoiser, config.min_features)
        engine = "PyTorch dynamic quantization" if config.backend == "pytorch" else "torchao"
        return f"{count} Linear layers of the denoiser in int8 ({engine})"

    def apply(self, pipe: Any, anatomy: Anatomy, caps: Capabilities, config: Any) -> Undo:
        denoiser = anatomy.denoiser
        if config.backend == "pytorch":
            return _swap_linears(denoiser, config.min_features)
        return _torchao_int8(denoiser, config.min_features)


class DynamicInt8Linear(torch.nn.Module):
    """A Linear layer computed by PyTorch's dynamic int8 kernel, for inputs of any float dtype."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        from torch.ao.nn.quantized.dynamic import Linear as QuantizedLinear
        from torch.ao.quantization import per_channel_dynamic_qconfig

        # A float32 view of the layer for from_float; built on meta so no throwaway weights are initialised.
        source = torch.nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        source.weight = torch.nn.Parameter(linear.weight.detach().float(), requires_grad=False)
        if linear.bias is not None:
            source.bias = torch.nn.Parameter(linear.bias.detach().float(), requires_grad=False)
        source.qconfig = per_channel_dynamic_qconfig  # type: ignore[assignment]
        with warnings.catch_warnings():
            # torch announces the removal of its quantized dtypes in favour of torchao; until then
            # this is the int8 path that runs fast on x86 CPUs without compilation.
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
            self.quantized = QuantizedLinear.from_float(source)
        self.in_features = linear.in_features
        self.out_features = linear.out_features

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002  # nn.Linear's name: callers pass input=...
        if input.dtype == torch.float32:
            return self.quantized(input)
        return self.quantized(input.float()).to(input.dtype)


def _count(denoiser: torch.nn.Module | None, min_features: int) -> int:
    """The layers still to quantize plus those quantized (swapped modules, or torchao's tensor-subclass
    weights, which `plain_linears` no longer lists once applied)."""
    if denoiser is None:
        return 0
    quantized = sum(_is_quantized_layer(module) for module in denoiser.modules())
    return len(plain_linears(denoiser, min_features)) + quantized


def _is_quantized_layer(module: torch.nn.Module) -> bool:
    if isinstance(module, DynamicInt8Linear):
        return True
    weight = getattr(module, "weight", None)
    return isinstance(module, torch.nn.Linear) and weight is not None and type(weight) not in _PLAIN_TENSORS


_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)


def _already_quantized(module: torch.nn.Module) -> bool:
    """Whether another quantizer (or this one) got there first."""
    return any(_is_quantized_layer(child) for child in module.modules())


def _swap_linears(denoiser: torch.nn.Module, min_features: int) -> Undo:
    layers = plain_linears(denoiser, min_features)
    replacements = [DynamicInt8Linear(linear) for _, _, linear in layers]
    # The float layers leave the pipeline: their weights go where undo's originals are kept, and free memory.
    kept = keep(own_tensors([linear for _, _, linear in layers], within=denoiser), owner=denoiser)
    undo = UndoStack()
    undo.push(kept.restore)  # last, once the float layers are back
    try:
        for (parent, attribute, linear), replacement in zip(layers, replacements, strict=True):
            setattr(parent, attribute, replacement)
            undo.push(functools.partial(setattr, parent, attribute, linear))
        kept.release()
    except Exception:
        undo()
        raise
    return undo


def _torchao_int8(denoiser: torch.nn.Module, min_features: int) -> Undo:
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig

    return quantize_weights(denoiser, min_features, Int8DynamicActivationInt8WeightConfig())
