"""Step distillation by LoRA: the family's published LCM-LoRA fused into the UNet, 4 steps, no CFG."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sdopt._noise import diffusers_quiet
from sdopt.anatomy import Anatomy
from sdopt.calls import call_layers, call_parameters, wrap_call
from sdopt.capabilities import Capabilities
from sdopt.optimization import HUB_ID_IN_PRESETS, Optimization, Undo, register, within
from sdopt.optimizations._attributes import remember_attributes
from sdopt.optimizations._sampling import StepCount, rebuild
from sdopt.originals import keep
from sdopt.requirements import Requirements
from sdopt.undo import UndoStack

# LCM-LoRA (Luo et al. 2023) for both families: published by the LCM authors for SD1.5 and SDXL
# alike, loaded by diffusers' load_lora_weights as is, with diffusers' own LCMScheduler and a
# documented 4-8 step, guidance 1.0 recipe. Hyper-SD and TCD reach similar quality but need a file
# name per step count (Hyper-SD) or their own scheduler with a stochastic gamma (TCD).
PUBLISHED = {
    "sd1": "latent-consistency/lcm-lora-sdv1-5",
    "sdxl": "latent-consistency/lcm-lora-sdxl",
}
WEIGHT_NAME = "pytorch_lora_weights.safetensors"
# LCM-LoRA's adapters: rank 64 on these UNet layers (their published adapter configs).
RANK = 64
TARGETS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_shortcut",
    "downsamplers.0.conv",
    "upsamplers.0.conv",
    "time_emb_proj",
)
_ADAPTER = "sdopt_distill"
_STAND_IN = "_sdopt_stand_in_lora"


# Bytes held above the pipeline while the LoRA is loaded and fused, in multiples of the UNet's (measured 1.21).
_FUSING_PEAK = 1.25


@dataclass(frozen=True)
class DistillLoraConfig:
    """``source``: a hub id or local path of the LoRA ("auto": the family's LCM-LoRA, `PUBLISHED`);
    ``steps``: the step count calls run with (an explicit larger value is lowered to it; LCM-LoRA
    is made for 4-8); ``guidance_scale``: 1.0 turns classifier-free guidance off (one UNet batch per step)."""

    source: str = field(default="auto", metadata=HUB_ID_IN_PRESETS)
    steps: int = field(default=4, metadata=within(1, 8))
    guidance_scale: float = field(default=1.0, metadata=within(0, 30))


@register
class DistillLora(Optimization):
    """Fuses a step-distillation LoRA into the UNet (diffusers' ``load_lora_weights``, ``fuse_lora``,
    then ``unload_lora_weights``, so the UNet is plain layers again with fused weights and costs
    nothing per step), switches to the matching LCM scheduler, and makes calls run ``steps`` steps
    without classifier-free guidance: from 20-50 steps at batch 2 to 4 at batch 1. Lossy (a
    different model). The LoRA must be in a local directory, the Hugging Face cache, or reachable;
    otherwise it is skipped with that reason. Undo puts back the fused layers' original weights
    (from where undo's originals are kept, docs/memory.md), the scheduler and the call: exact.

    Examples:
        >>> from sdopt import plan
        >>> from sdopt.testing import tiny_pipeline
        >>> result = plan(tiny_pipeline("sd"), tier=None, extra=["distill_lora"])
        >>> result.skipped[0].reason
        'latent-consistency/lcm-lora-sdv1-5 is not in the local Hugging Face cache and HF_HUB_OFFLINE is set'
    """

    name = "distill_lora"
    speed_judged = False  # its gain is fewer steps without CFG, set by the call
    kind = "sampling"
    summary = "the family's step-distillation LoRA (LCM-LoRA) fused, LCM scheduler, 4 steps, no CFG"
    Config = DistillLoraConfig
    requires = Requirements(families=tuple(PUBLISHED), denoiser_kinds=("unet",))
    conflicts = ("scheduler", "step_budget", "guidance")
    before = ("static_int8", "quantize_int8", "quantize_4bit", "half_precision", "weight_storage", "fuse_qkv")
    lossy = True

    def resolve(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> Any:
        if config.source != "auto":
            return config
        return DistillLoraConfig(PUBLISHED.get(anatomy.family, ""), config.steps, config.guidance_scale)

    def check(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> str | None:
        if not 1 <= config.steps <= 8:
            return f"steps must be 1-8 for a step-distilled model, got {config.steps}"
        if anatomy.distillation:
            return f"the model is already step-distilled ({anatomy.distillation})"
        if not hasattr(anatomy.pipeline, "load_lora_weights"):
            return f"{anatomy.pipeline_class} cannot load LoRA weights"
        if not _peft_importable():  # not among the probed packages: loading LoRA needs no device kernels
            return "loading LoRA weights needs peft (not installed); pip install sdopt[lora]"
        if self.name in call_layers(anatomy.pipeline):
            return "already active (a previous optimize() fused a distillation LoRA)"
        if "num_inference_steps" not in call_parameters(anatomy.pipeline):
            return f"{anatomy.pipeline_class} takes no num_inference_steps"
        from sdopt.weights import stand_ins_allowed

        unavailable = _unavailable(self.resolve(anatomy, caps, config).source)
        return None if stand_ins_allowed() and PUBLISHED.get(anatomy.family) else unavailable

    def build_bytes(self, anatomy: Anatomy, config: Any, sizes: dict[str, float]) -> float:
        # Loading and fusing the LoRA: measured 1.21x SD1.5's float32 UNet (3.20 GB) above the pipeline at the
        # peak, +0.68 GB after (benchmarks/RESULTS.md, "OpenVINO over half precision"); SDXL's float32 UNet at
        # that ratio is what OOM-killed ultra on a 24 GB host.
        name = anatomy.denoiser_name
        return sizes.get(name, 0.0) * _FUSING_PEAK if name is not None else 0.0

    def describe(self, config: Any, anatomy: Anatomy) -> str:
        what = (
            f"{config.source} fused into the UNet, LCMScheduler, {config.steps} steps, "
            f"guidance {config.guidance_scale:g} (CFG off at 1.0)"
        )
        if anatomy.denoiser is not None and anatomy.denoiser.__dict__.get(_STAND_IN):
            what += f"; the LoRA: random weights of its published architecture (rank {RANK}), not downloadable here"
        return what

    def apply(self, pipe: Any, anatomy: Anatomy, caps: Capabilities, config: Any) -> Undo:
        from sdopt.weights import stand_ins_allowed

        unet = anatomy.denoiser
        scheduler_name = anatomy.scheduler_name or "scheduler"
        original_scheduler = getattr(pipe, scheduler_name)
        restore_attributes = remember_attributes(unet, ("peft_config", "_hf_peft_config_loaded", _STAND_IN))
        lora: Any = config.source
        stand_in = bool(_unavailable(config.source)) and stand_ins_allowed()
        if stand_in:  # a --arch bench: random weights of the published rank and layers
            lora = random_lora(unet, seed=0)
        undo = UndoStack()
        try:
            with diffusers_quiet():  # "no LoRA keys for the text encoder", LCMScheduler's unused settings
                pipe.load_lora_weights(lora, adapter_name=_ADAPTER, **_weight_name(lora))
            targets = [module.base_layer for module in unet.modules() if hasattr(module, "base_layer")]
            weights = [tensor for layer in targets for tensor in (layer.weight, layer.bias) if tensor is not None]
            kept = keep(weights, owner=unet)
            undo.push(kept.restore)
            # safe_fusing: the fused weights are new tensors (and checked for NaN), the originals untouched.
            pipe.fuse_lora(components=["unet"], lora_scale=1.0, safe_fusing=True, adapter_names=[_ADAPTER])
            pipe.unload_lora_weights()
            restore_attributes()
            if stand_in:
                unet.__dict__[_STAND_IN] = True
                undo.push(restore_attributes)
            with diffusers_quiet():
                setattr(pipe, scheduler_name, rebuild(original_scheduler, "LCMScheduler", {}))
            undo.push(lambda: setattr(pipe, scheduler_name, original_scheduler))
            undo.push(wrap_call(pipe, _DistilledCall(self.name, config.steps, config.guidance_scale)))
        except Exception:
            _remove_adapter(pipe)
            undo()
            restore_attributes()
            raise
        return undo


class _DistilledCall(StepCount):
    """step_budget's capped step count, and classifier-free guidance set to ``guidance_scale``."""

    def __init__(self, name: str, steps: int, guidance_scale: float) -> None:
        super().__init__(name, steps, cap=True)
        self.guidance_scale = guidance_scale

    def adjust(self, pipe: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        kwargs = super().adjust(pipe, kwargs)
        if "guidance_scale" in call_parameters(pipe):
            kwargs["guidance_scale"] = self.guidance_scale
        return kwargs


def random_lora(unet: torch.nn.Module, *, rank: int = RANK, seed: int = 0, scale: float = 1e-3) -> dict[str, Any]:
    """A LoRA state dict (peft format, ``unet.`` prefixed, as ``load_lora_weights`` takes it) with
    random weights of LCM-LoRA's rank on its target layers: for offline tests and ``--arch`` benches.

    Examples:
        >>> from sdopt.testing import tiny_pipeline
        >>> state = random_lora(tiny_pipeline("sd").unet, rank=4)
        >>> tuple(state["unet.down_blocks.0.resnets.0.conv1.lora_A.weight"].shape)
        (4, 8, 3, 3)
    """
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, Any] = {}
    for name, module in unet.named_modules():
        if not any(name == target or name.endswith("." + target) for target in TARGETS):
            continue
        down: tuple[int, ...]
        up: tuple[int, ...]
        if isinstance(module, torch.nn.Linear):
            down = (rank, module.in_features)
            up = (module.out_features, rank)
        elif isinstance(module, torch.nn.Conv2d):
            down = (rank, module.in_channels, *module.kernel_size)
            up = (module.out_channels, rank, 1, 1)
        else:
            continue
        state[f"unet.{name}.lora_A.weight"] = torch.randn(down, generator=generator) / down[1] ** 0.5
        state[f"unet.{name}.lora_B.weight"] = torch.randn(up, generator=generator) * scale
    return state


def _weight_name(lora: Any) -> dict[str, str]:
    if isinstance(lora, dict) or (Path(lora).is_file()):
        return {}
    return {"weight_name": WEIGHT_NAME}


def _remove_adapter(pipe: Any) -> None:
    with contextlib.suppress(Exception):  # nothing was loaded, or it is already gone
        pipe.unload_lora_weights()


def _peft_importable() -> bool:
    try:
        import peft  # noqa: F401
    except ImportError:
        return False
    return True


def _unavailable(source: str) -> str | None:
    """Why ``source`` cannot be loaded here (neither a local path, nor cached, nor reachable), or None."""
    if not source:
        return "no published distillation LoRA for this family"
    if Path(source).exists():
        return None
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(source, WEIGHT_NAME), str):
        return None
    if constants.HF_HUB_OFFLINE:
        return f"{source} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
    from sdopt.weights import hub_unreachable

    unreachable = hub_unreachable()
    return f"{source} is not in the local Hugging Face cache and {unreachable}" if unreachable else None
