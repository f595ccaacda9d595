"""4-bit NF4 weights (bitsandbytes) for the denoiser's Linear layers: for when memory, not speed, is short."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from sdopt.anatomy import Anatomy
from sdopt.capabilities import Capabilities
from sdopt.optimization import Optimization, Undo, register, within
from sdopt.optimizations._linear_layers import linear_storage, plain_linears
from sdopt.originals import keep, own_tensors
from sdopt.requirements import Requirements
from sdopt.undo import UndoStack

_COMPUTE_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class Quantize4bitConfig:
    """``quant_type``: "nf4" (normal-float, the QLoRA default) or "fp4"; ``compute_dtype``: the dtype the
    dequantized weights are multiplied in ("auto": the layer's current dtype); ``min_features``: smaller
    Linear layers stay as they are."""

    quant_type: Literal["nf4", "fp4"] = "nf4"
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    min_features: int = field(default=0, metadata=within(0))


@register
class Quantize4bit(Optimization):
    """Swaps the denoiser's Linear layers for bitsandbytes ``Linear4bit``: their weights take about a
    quarter of the bf16 memory (an eighth of float32). Each GEMM dequantizes first, so it is slower,
    not faster: use it when the model does not fit otherwise (the ``low-memory`` tier, on small GPUs).
    Works on loaded pipelines by module swap (bitsandbytes >= 0.48 runs 4-bit on CPU too). To load
    straight into 4-bit without a full-precision copy on the GPU, use ``sdopt.load(..., quantize="4bit")``.
    Undo puts the original Linear modules back, their weights re-read from where undo's originals are
    kept (docs/memory.md): exact.

    Examples:
        >>> from sdopt import plan
        >>> from sdopt.testing import tiny_pipeline, fake_capabilities
        >>> caps = fake_capabilities("cpu")  # an imaginary machine without bitsandbytes
        >>> plan(tiny_pipeline("sd"), tier=None, extra=["quantize_4bit"], caps=caps).skipped[0].reason
        'needs bitsandbytes (not installed); pip install sdopt[bnb]'
    """

    name = "quantize_4bit"
    kind = "quantization"
    summary = "4-bit NF4 weights (bitsandbytes) for the denoiser's Linear layers; saves memory, costs speed"
    Config = Quantize4bitConfig
    lossy = True  # 4-bit weights change details visibly on some models
    effect = "memory"
    requires = Requirements(packages=("bitsandbytes",))

    def check(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> str | None:
        if caps.device == "mps":
            return "bitsandbytes has no MPS kernels"
        if anatomy.denoiser is None:
            return "the pipeline has no denoiser"
        if any(type(module).__name__ == "Linear4bit" for module in anatomy.denoiser.modules()):
            return "the denoiser already has 4-bit layers"
        if not plain_linears(anatomy.denoiser, config.min_features):
            return f"no Linear layer with at least {config.min_features} input and output features"
        return None

    def storage(self, anatomy: Anatomy, config: Any, sizes: dict[str, float]) -> dict[str, float]:
        return linear_storage(anatomy, sizes, config.min_features, 0.5)

    def describe(self, config: Any, anatomy: Anatomy) -> str:
        count = 0
        if anatomy.denoiser is not None:  # described before and after the swap
            swapped = sum(type(module).__name__ == "Linear4bit" for module in anatomy.denoiser.modules())
            count = len(plain_linears(anatomy.denoiser, config.min_features)) + swapped
        return f"{count} Linear layers of the denoiser in 4-bit {config.quant_type.upper()} (bitsandbytes)"

    def apply(self, pipe: Any, anatomy: Anatomy, caps: Capabilities, config: Any) -> Undo:
        import bitsandbytes as bnb

        layers = plain_linears(anatomy.denoiser, config.min_features)
        # The float layers leave the pipeline: their weights go where undo's originals are kept.
        kept = keep(own_tensors([linear for _, _, linear in layers], within=anatomy.denoiser), owner=anatomy.denoiser)
        undo = UndoStack()
        undo.push(kept.restore)  # last, once the float layers are back

        try:
            for parent, attribute, linear in layers:
                device = linear.weight.device
                dtype = linear.weight.dtype
                compute = dtype if config.compute_dtype == "auto" else _COMPUTE_DTYPES[config.compute_dtype]
                layer = bnb.nn.Linear4bit(
                    linear.in_features,
                    linear.out_features,
                    bias=linear.bias is not None,
                    compute_dtype=compute,
                    quant_type=config.quant_type,
                    device="meta",
                )
                layer.weight = bnb.nn.Params4bit(
                    linear.weight.detach().to("cpu", copy=True),
                    requires_grad=False,
                    quant_type=config.quant_type,
                )
                if linear.bias is not None:
                    layer.bias = torch.nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
                layer = layer.to(device)  # quantizes the weight on the way
                setattr(parent, attribute, layer)
                undo.push(functools.partial(setattr, parent, attribute, linear))
            kept.release()
        except Exception:
            undo()
            raise
        return undo
