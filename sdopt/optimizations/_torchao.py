"""Replacing Linear weights by torchao's quantized tensors in place, with an exact undo."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from sdopt.optimization import Undo
from sdopt.optimizations._attributes import remember_attributes
from sdopt.optimizations._linear_layers import plain_linears
from sdopt.originals import keep, own_tensors


def quantize_weights(
    denoiser: torch.nn.Module,
    min_features: int,
    config: Any,
    quantize: Callable[..., Any] | None = None,
) -> Undo:
    """Quantize the denoiser's plain Linear layers of ``min_features`` or more with the torchao
    ``config`` (``quantize``: torchao's ``quantize_`` unless given). torchao replaces each weight
    Parameter by a quantized tensor subclass in place; the original Parameter objects are kept, their
    data where undo's originals are kept, and put back on undo."""
    if quantize is None:
        from torchao.quantization import quantize_

        quantize = quantize_

    layers = [layer for _, _, layer in plain_linears(denoiser, min_features)]
    targets = {id(layer) for layer in layers}
    weights = [(layer, layer.weight) for layer in layers]
    # Only the weights no other layer holds (a tied weight stays in use) are freed once quantized.
    own = {id(tensor) for tensor in own_tensors(layers, within=denoiser)}
    kept = keep([weight for _, weight in weights if id(weight) in own], owner=denoiser)
    # torchao also gives each layer an instance-level extra_repr.
    restore = [remember_attributes(layer, ("extra_repr",)) for layer in layers]

    def undo() -> None:
        for put_back in restore:
            put_back()
        kept.restore()
        for layer, weight in weights:
            layer.weight = weight

    try:
        quantize(denoiser, config, filter_fn=lambda module, _name: id(module) in targets)
        kept.release()
    except Exception:
        undo()
        raise
    return undo
