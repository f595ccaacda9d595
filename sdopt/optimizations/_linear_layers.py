"""Finding the Linear layers a quantizer may replace."""

from __future__ import annotations

from typing import Any

import torch


def plain_linears(module: torch.nn.Module, min_features: int) -> list[tuple[torch.nn.Module, str, torch.nn.Linear]]:
    """(parent, attribute, layer) for every plain float ``nn.Linear`` in ``module`` (not a subclass, not
    already holding a quantized tensor, not the base layer of a LoRA wrapper, whose adapters read its
    weight) with at least ``min_features`` input and output features. The separate projections an
    attention layer keeps beside its fused ones (``fuse_qkv``) are left out: fused, they are never
    called, and they are views of the fused weights, which a quantizer would turn into copies."""
    found = []
    for parent in module.modules():
        if _is_lora_wrapper(parent):
            continue
        unused = fused_away(parent)
        for attribute, child in parent.named_children():
            if (
                attribute not in unused
                and type(child) is torch.nn.Linear
                and type(child.weight) in (torch.Tensor, torch.nn.Parameter)
                and child.weight.is_floating_point()
                and min(child.in_features, child.out_features) >= min_features
            ):
                found.append((parent, attribute, child))
    return found


def quantized_linears(module: torch.nn.Module | None) -> int:
    """How many ``nn.Linear`` layers in ``module`` hold a quantized tensor-subclass weight (torchao's)."""
    if module is None:
        return 0
    return sum(
        isinstance(layer, torch.nn.Linear) and type(layer.weight) not in (torch.Tensor, torch.nn.Parameter)
        for layer in module.modules()
    )


FUSED_PROJECTIONS = {
    # fused layer -> the separate projections diffusers concatenated into it
    "to_qkv": ("to_q", "to_k", "to_v"),
    "to_kv": ("to_k", "to_v"),
    "to_added_qkv": ("add_q_proj", "add_k_proj", "add_v_proj"),
}


def fused_away(module: torch.nn.Module) -> set[str]:
    """Names of ``module``'s projections replaced by fused layers (diffusers' ``fused_projections``)."""
    if not getattr(module, "fused_projections", False):
        return set()
    return {name for fused, names in FUSED_PROJECTIONS.items() if fused in module._modules for name in names}


def _is_lora_wrapper(module: torch.nn.Module) -> bool:
    """peft's LoRA layers (``lora.Linear``...) hold the original layer as ``base_layer``."""
    return hasattr(module, "base_layer") and (hasattr(module, "lora_A") or type(module).__module__.startswith("peft."))


def linear_storage(
    anatomy: Any, sizes: dict[str, float], min_features: int, bytes_per_element: float
) -> dict[str, float]:
    """``sizes`` with the denoiser's replaceable Linear weights at ``bytes_per_element`` (a quantizer's
    ``storage``), whatever dtype the steps planned before give them."""
    from sdopt.footprint import component_bytes, planned_element_size

    name = anatomy.denoiser_name
    if name in sizes:
        now, before = component_bytes(anatomy).get(name, 0.0), sizes[name]
        for _, _, layer in plain_linears(anatomy.denoiser, min_features):
            planned = planned_element_size(layer.weight, now, before)
            sizes[name] -= layer.weight.numel() * max(0.0, planned - bytes_per_element)
    return sizes
