"""How closely a converted or quantized module's output follows PyTorch's: the signal-to-noise ratio that
`openvino_runtime` and `static_int8` check their programs against (their ``min_snr_db``)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.utils import _pytree


def snr_db(reference: Any, output: Any) -> float:
    """Signal-to-noise ratio of ``output`` against ``reference`` over all their tensors (any nesting:
    lists of calls, tuples of outputs), pooled, in dB; NaN when either is not finite, so that a check
    written ``not snr >= floor`` refuses it.

    Example:
        >>> import torch
        >>> round(snr_db(torch.ones(4), torch.full((4,), 1.1)), 1), snr_db([torch.ones(2)], [torch.ones(2)])
        (20.0, inf)
    """
    signal = noise = 0.0
    wanted = [leaf for leaf in _pytree.tree_leaves(reference) if isinstance(leaf, torch.Tensor)]
    got = [leaf for leaf in _pytree.tree_leaves(output) if isinstance(leaf, torch.Tensor)]
    for want, have in zip(wanted, got, strict=True):
        signal += want.double().pow(2).sum().item()
        noise += (have.double() - want.double()).pow(2).sum().item()
    if not (math.isfinite(signal) and math.isfinite(noise)):
        return math.nan  # a non-finite output (or reference) is no measure of agreement
    if noise == 0.0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf
