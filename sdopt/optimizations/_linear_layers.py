"""Finding the Linear layers a quantizer may replace."""

from __future__ import annotations

import torch


def plain_linears(module: torch.nn.Module, min_features: int) -> list[tuple[torch.nn.Module, str, torch.nn.Linear]]:
    """(parent, attribute, layer) for every plain float ``nn.Linear`` in ``module`` (not a subclass, not
    already holding a quantized tensor) with at least ``min_features`` input and output features."""
    found = []
    for parent in module.modules():
        for attribute, child in parent.named_children():
            if (
                type(child) is torch.nn.Linear
                and type(child.weight) in (torch.Tensor, torch.nn.Parameter)
                and child.weight.is_floating_point()
                and min(child.in_features, child.out_features) >= min_features
            ):
                found.append((parent, attribute, child))
    return found
