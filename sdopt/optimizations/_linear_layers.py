"""Finding the Linear layers a quantizer may replace."""

from __future__ import annotations

import torch


def plain_linears(module: torch.nn.Module, min_features: int) -> list[tuple[torch.nn.Module, str, torch.nn.Linear]]:
    """(parent, attribute, layer) for every plain float ``nn.Linear`` in ``module`` (not a subclass, not
    already holding a quantized tensor, not the base layer of a LoRA wrapper, whose adapters read its
    weight) with at least ``min_features`` input and output features."""
    found = []
    for parent in module.modules():
        if _is_lora_wrapper(parent):
            continue
        for attribute, child in parent.named_children():
            if (
                type(child) is torch.nn.Linear
                and type(child.weight) in (torch.Tensor, torch.nn.Parameter)
                and child.weight.is_floating_point()
                and min(child.in_features, child.out_features) >= min_features
            ):
                found.append((parent, attribute, child))
    return found


def _is_lora_wrapper(module: torch.nn.Module) -> bool:
    """peft's LoRA layers (``lora.Linear``...) hold the original layer as ``base_layer``."""
    return hasattr(module, "base_layer") and (hasattr(module, "lora_A") or type(module).__module__.startswith("peft."))
