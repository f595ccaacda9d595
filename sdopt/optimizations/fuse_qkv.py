"""Fuse the query/key/value projections of attention layers into one matrix multiplication."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sdopt.anatomy import Anatomy
from sdopt.capabilities import Capabilities
from sdopt.optimizations._attention import attention_modules, restore_processors, save_processors
from sdopt.optimizations._attributes import remember_attributes
from sdopt.optimizations.base import Optimization, Undo
from sdopt.registry import register


@dataclass(frozen=True)
class FuseQKVConfig:
    """``targets``: "denoiser" and/or "vae" (each fused where its model class supports it)."""

    targets: tuple[str, ...] = ("denoiser", "vae")


@register
class FuseQKV(Optimization):
    """Fewer, larger GEMMs in attention, through diffusers' model-level ``fuse_qkv_projections``.

    The pipeline-level ``pipe.fuse_qkv_projections()`` exists only on SD/SDXL pipelines and,
    with a non-KL VAE, raises after fusing the UNet; the model-level method works on UNets, SD3,
    Flux, PixArt and ``AutoencoderKL``, with identical outputs. It keeps the separate
    projections too, so attention weights take ~2x memory while fused.

    Example:
        >>> from sdopt import optimize
        >>> from sdopt.testing import tiny_pipeline
        >>> pipe = tiny_pipeline("flux")
        >>> report = optimize(pipe, tier=None, extra=["fuse_qkv"])
        >>> any(getattr(m, "fused_projections", False) for m in pipe.transformer.modules())
        True
    """

    name = "fuse_qkv"
    kind = "attention"
    summary = "fused QKV projections in the denoiser's (and the VAE's) attention"
    Config = FuseQKVConfig
    after = ("half_precision", "quantize_int8", "quantize_4bit")
    before = ("torch_compile",)

    def check(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> str | None:
        unknown = set(config.targets) - {"denoiser", "vae"}
        if unknown:
            return f"unknown target(s) {', '.join(sorted(unknown))}; use 'denoiser' and/or 'vae'"
        reasons = {}
        for target, model in self._models(anatomy, config).items():
            reasons[target] = _why_not_fusable(model)
        if reasons and not all(reasons.values()):
            return None
        detail = "; ".join(f"{target}: {why}" for target, why in reasons.items()) or "no denoiser or VAE"
        return f"nothing to fuse ({detail})"

    def storage(self, anatomy: Anatomy, config: Any, sizes: dict[str, float]) -> dict[str, float]:
        # diffusers keeps the separate projections next to the fused ones: q/k/v weights count twice.
        names = {id(module): name for name, module in anatomy.modules().items()}
        for model in self._models(anatomy, config).values():
            if _why_not_fusable(model) is None and id(model) in names:
                sizes[names[id(model)]] += sum(
                    p.numel() * p.element_size()
                    for module in _fusable_modules(model)
                    for name in ("to_q", "to_k", "to_v")
                    for p in getattr(module, name).parameters()
                )
        return sizes

    def describe(self, config: Any, anatomy: Anatomy) -> str:
        return f"fused QKV projections in {' and '.join(config.targets)}"

    def apply(self, pipe: Any, anatomy: Anatomy, caps: Capabilities, config: Any) -> Undo:
        undos: list[Undo] = []

        def undo() -> None:
            for undo_one in reversed(undos):
                undo_one()

        try:
            for model in self._models(anatomy, config).values():
                if _why_not_fusable(model) is None:
                    undos.append(_fuse(model))
        except Exception:
            undo()  # the denoiser may be fused already when the VAE fails: leave nothing half-applied
            raise
        return undo

    @staticmethod
    def _models(anatomy: Anatomy, config: Any) -> dict[str, Any]:
        found = {"denoiser": anatomy.denoiser, "vae": anatomy.vae}
        return {target: found[target] for target in config.targets if found.get(target) is not None}


def _fusable_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [
        module
        for module in attention_modules(model)
        if hasattr(module, "fuse_projections")
        and getattr(module, "_supports_qkv_fusion", True)
        and not getattr(module, "fused_projections", False)
        and _has_separate_projections(module)
    ]


def _has_separate_projections(module: torch.nn.Module) -> bool:
    """diffusers' fusion concatenates to_q/to_k/to_v Linear weights; attention classes built otherwise
    (PRX's) still inherit fuse_projections and fail in it."""
    return all(isinstance(getattr(module, name, None), torch.nn.Linear) for name in ("to_q", "to_k", "to_v"))


def _why_not_fusable(model: Any) -> str | None:
    name = type(model).__name__
    if not hasattr(model, "fuse_qkv_projections"):
        return f"{name} has no fuse_qkv_projections"
    if any("Added" in type(module.processor).__name__ for module in attention_modules(model)):
        return f"{name} has added KV projections, which diffusers cannot fuse"
    if not _fusable_modules(model):
        return f"{name} has no unfused attention layers with separate to_q/to_k/to_v Linear projections"
    return None


def _fuse(model: Any) -> Undo:
    # diffusers' unfuse_qkv_projections() only restores the processors on most models: the
    # fused Linear layers (to_qkv, to_kv, to_added_qkv) stay registered, `fused_projections`
    # stays True and the model keeps `original_attn_processors`. We record what existed before
    # and remove exactly what fusion added.
    modules = attention_modules(model)
    children = {module: set(module._modules) for module in modules}
    restore_flags = [remember_attributes(module, ("fused_projections",)) for module in modules]
    restore_model_attribute = remember_attributes(model, ("original_attn_processors",))
    processors = save_processors(model)

    model.fuse_qkv_projections()

    def undo() -> None:
        model.unfuse_qkv_projections()
        restore_processors(processors)
        for module, names in children.items():
            for added in set(module._modules) - names:
                del module._modules[added]
        for restore in restore_flags:
            restore()
        restore_model_attribute()

    return undo
