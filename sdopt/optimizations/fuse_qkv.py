"""Fuse the query/key/value projections of attention layers into one matrix multiplication."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sdopt.anatomy import Anatomy
from sdopt.capabilities import Capabilities
from sdopt.optimization import Optimization, Undo, register
from sdopt.optimizations._attention import attention_modules, restore_processors, save_processors
from sdopt.optimizations._attributes import remember_attributes
from sdopt.optimizations._linear_layers import FUSED_PROJECTIONS
from sdopt.undo import UndoStack


@dataclass(frozen=True)
class FuseQKVConfig:
    """``targets``: "denoiser" and/or "vae" (each fused where its model class supports it)."""

    targets: tuple[str, ...] = ("denoiser", "vae")


@register
class FuseQKV(Optimization):
    """Fewer, larger GEMMs in attention, through diffusers' model-level ``fuse_qkv_projections``.

    The pipeline-level ``pipe.fuse_qkv_projections()`` exists only on SD/SDXL pipelines and,
    with a non-KL VAE, raises after fusing the UNet; the model-level method works on UNets, SD3,
    Flux, PixArt and ``AutoencoderKL``, with identical outputs. diffusers keeps the separate
    projections next to the fused ones (attention weights twice); here they become row views of
    the fused weights, so fusing costs no memory at rest (only while it runs, the concatenation).
    Moving the pipeline afterwards (``pipe.to(...)``, an offload) copies each parameter on its own and
    ends the sharing, hence the conflict with the offloads.

    Examples:
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
    # Fusion concatenates float weights: it goes before any quantizer that replaces them (torchao's
    # int8 tensors have no ``aten.cat``: on an H200, int8 first made fusion fail and roll back).
    after = ("half_precision",)
    before = ("torch_compile", "quantize_int8", "quantize_fp8", "quantize_4bit", "static_int8")
    # The separate projections are views of the fused weights; an offload moves each parameter on its
    # own (module.to), which turns the views into copies and holds attention weights twice.
    conflicts = ("model_offload", "group_offload", "sequential_offload")

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

    def describe(self, config: Any, anatomy: Anatomy) -> str:
        return f"fused QKV projections in {' and '.join(config.targets)}"

    def apply(self, pipe: Any, anatomy: Anatomy, caps: Capabilities, config: Any) -> Undo:
        undo = UndoStack()
        try:
            for model in self._models(anatomy, config).values():
                if _why_not_fusable(model) is None:
                    undo.push(_fuse(model), type(model).__name__)
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
    processors = [type(module.processor).__name__ for module in attention_modules(model)]
    if any("Added" in processor for processor in processors):
        return f"{name} has added KV projections, which diffusers cannot fuse"
    if any("IPAdapter" in processor for processor in processors):
        # Fusion sets its fused processor everywhere; it does not take the image embeddings (measured:
        # AttributeError at call time on SD1.5 with an IP-Adapter loaded).
        return f"{name} has IP-Adapter attention processors, which fusion would replace"
    quantized = _quantized_projection(model)
    if quantized:
        return (
            f"{name}'s attention projections are already quantized ({quantized}); fusion concatenates float "
            "weights, so it must come before quantization"
        )
    if not _fusable_modules(model):
        return f"{name} has no unfused attention layers with separate to_q/to_k/to_v Linear projections"
    return None


def _quantized_projection(model: Any) -> str | None:
    """The type of the first quantized to_q/to_k/to_v of an unfused attention layer: a module swapped in
    for the Linear layer (one with ``in_features``) or a Linear layer holding a tensor-subclass weight."""
    for module in attention_modules(model):
        if getattr(module, "fused_projections", False):
            continue
        for name in ("to_q", "to_k", "to_v"):
            layer = getattr(module, name, None)
            if isinstance(layer, torch.nn.Linear):
                if type(layer.weight) not in (torch.Tensor, torch.nn.Parameter):
                    return type(layer.weight).__name__
            elif layer is not None and hasattr(layer, "in_features"):
                return type(layer).__name__
    return None


def _share_fused_memory(modules: list[torch.nn.Module], before: dict[torch.nn.Module, set[str]]) -> list[torch.Tensor]:
    """Make the separate projections views into the fused layer that replaced them.

    diffusers keeps them next to the fused layers (attention weights held twice), and processors a
    pipeline sets at call time (PAG's, IP-Adapter's) or that do not support fusion (LTX's) still
    read them: as row slices of the fused weights they keep their values and cost no memory.
    Returns the tensors made views."""
    shared = []
    for module in modules:
        for fused_name, names in FUSED_PROJECTIONS.items():
            fused = module._modules.get(fused_name)
            if fused_name in before[module] or not isinstance(fused, torch.nn.Linear):
                continue  # not added by this fusion
            layers = [getattr(module, name) for name in names]
            start = 0
            for layer in layers:
                rows = layer.weight.shape[0]
                for part in ("weight", "bias"):
                    tensor, whole = getattr(layer, part), getattr(fused, part)
                    if tensor is not None and whole is not None:
                        tensor.data = whole.data[start : start + rows]
                        shared.append(tensor)
                start += rows
    return shared


def _fuse(model: Any) -> Undo:
    # diffusers' unfuse_qkv_projections() only restores the processors on most models: the
    # fused Linear layers (to_qkv, to_kv, to_added_qkv) stay registered, `fused_projections`
    # stays True and the model keeps `original_attn_processors`. We record what existed before
    # and put back exactly that, without calling it (see the undo below).
    modules = attention_modules(model)
    children = {module: set(module._modules) for module in modules}
    restore_flags = [remember_attributes(module, ("fused_projections",)) for module in modules]
    restore_model_attribute = remember_attributes(model, ("original_attn_processors",))
    processors = save_processors(model)

    model.fuse_qkv_projections()
    shared = _share_fused_memory(modules, children)

    def own_memory_again() -> None:  # run again after an interrupt: one more copy of equal values
        for tensor in shared:
            tensor.data = tensor.data.clone()  # the separate weights own their memory again

    def remove_added() -> None:
        for module, names in children.items():
            for added in set(module._modules) - names:
                module._modules.pop(added, None)

    # One entry per action, run newest first: an interrupted undo (Ctrl-C) resumes at the action it was
    # in, and each action can run again.
    undo = UndoStack()
    undo.push(restore_model_attribute)
    for restore in restore_flags:
        undo.push(restore)
    undo.push(remove_added)
    # diffusers' unfuse_qkv_projections() only sets original_attn_processors back, through a
    # set_attn_processor that pops from that dict as it goes (interrupted, it leaves it half empty):
    # the very processor objects go back module by module instead, which can run again.
    undo.push(lambda: restore_processors(processors))
    undo.push(own_memory_again)
    return undo
