"""Run the pipeline in the reduced-precision dtype the device computes fastest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from sdopt.anatomy import Anatomy, inspect_pipeline
from sdopt.capabilities import Capabilities
from sdopt.optimization import Optimization, Undo, register
from sdopt.optimizations._components import chosen_components, unknown_components
from sdopt.optimizations._dtype_boundary import add_dtype_boundary, has_dtype_boundary
from sdopt.optimizations._vae_guard import guard_vae
from sdopt.originals import keep
from sdopt.undo import UndoStack

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class HalfPrecisionConfig:
    """``dtype``: "auto" (by device: see `Capabilities.half_dtype`), "bfloat16" or "float16".

    ``vae``: "auto" keeps SDXL's VAE in float32 under float16 (it overflows to NaN/black images),
    "half" casts it anyway, "float32" always keeps the VAE in float32.
    ``components``: which components to cast; empty means denoiser, text encoders, VAEs and ControlNets.
    """

    dtype: Literal["auto", "bfloat16", "float16"] = "auto"
    vae: Literal["auto", "half", "float32"] = "auto"
    components: tuple[str, ...] = ()


@register
class HalfPrecision(Optimization):
    """Casts weights to bfloat16 or float16, choosing by hardware, and keeps the pipeline callable.

    bf16 is ~3.9x faster than fp32 for an SD1.5 image on a 2-core AMX CPU (PSNR 47 dB vs fp32),
    and slower than fp32 on CPUs without AMX-BF16 (measured 1.5x slower with AVX-512-BF16 alone on a
    VM hiding AMX): there it is skipped. Modules a
    model marks ``_keep_in_fp32_modules`` (e.g. T5's ``wo``) stay float32 under float16. The VAE's
    ``decode``/``encode`` are guarded (see ``_vae_guard``): inputs follow the VAE's dtype (diffusers
    pipelines do not cast, and fail when the VAE keeps float32), and a NaN or all-black image from a
    reduced-precision VAE is decoded again in float32 with a warning, so no black SDXL images.
    The denoiser and the other diffusers models cast get a dtype boundary (see ``_dtype_boundary``):
    float32 inputs from components left in float32 (image encoders) are cast to their dtype, and in
    pixel-space pipelines their outputs come back in float32, so no bfloat16 reaches ``.numpy()``.
    Undo puts the original float32 tensors back from where undo's originals are kept (the checkpoint,
    a spill file, see docs/memory.md), so it is exact and keeping them costs no memory.

    Examples:
        >>> import torch
        >>> from sdopt import optimize
        >>> from sdopt.testing import tiny_pipeline, fake_capabilities
        >>> pipe = tiny_pipeline("sd")
        >>> report = optimize(pipe, tier=None, extra=["half_precision"], caps=fake_capabilities("cpu-amx"))
        >>> pipe.unet.dtype, pipe.vae.dtype
        (torch.bfloat16, torch.bfloat16)
        >>> report.undo()
        >>> pipe.unet.dtype
        torch.float32
    """

    name = "half_precision"
    kind = "precision"
    summary = "weights and activations in bfloat16/float16, chosen by the hardware"
    Config = HalfPrecisionConfig
    effect = "speed+memory"

    def resolve(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> Any:
        # `vae="auto"` is decided when applied, by the VAE then in place (tiny_vae or
        # vae_fp16_fix may swap it first).
        dtype = caps.half_dtype if config.dtype == "auto" else config.dtype
        return HalfPrecisionConfig(dtype=dtype, vae=config.vae, components=config.components)  # type: ignore[arg-type]

    def check(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> str | None:
        resolved = self.resolve(anatomy, caps, config)
        if resolved.dtype == "float32":
            if caps.device == "cpu":
                return (
                    "float32 is fastest on this CPU: it has no bf16 units that beat float32 (AMX-BF16, "
                    "or a measured speedup); bfloat16 would run slower"
                )
            return f"no reduced-precision dtype is faster than float32 on {caps.device}"
        unknown = unknown_components(anatomy, config.components)
        if unknown:
            return unknown
        castable = any(
            _castable(module, _DTYPES[dtype], planning=True) for module, dtype in self._targets(anatomy, resolved)
        )
        if not castable and not _unguarded_vaes(anatomy):
            return f"already {resolved.dtype}"
        return None

    def storage(self, anatomy: Anatomy, config: Any, sizes: dict[str, float]) -> dict[str, float]:
        names = {id(module): name for name, module in anatomy.modules().items()}
        for module, dtype_name in self._targets(anatomy, config):
            dtype = _DTYPES[dtype_name]
            saved = sum(
                t.numel() * (t.element_size() - dtype.itemsize) for t in _castable(module, dtype, planning=True)
            )
            sizes[names[id(module)]] -= saved
        return sizes

    def compute_itemsize(self, config: Any) -> int | None:
        return 2 if config.dtype in ("bfloat16", "float16") else None

    def describe(self, config: Any, anatomy: Anatomy) -> str:
        vae = anatomy.vae
        kept = vae is not None and _vae_stays_float32(anatomy, vae, config)
        return f"weights in {config.dtype}" + (" (VAE kept in float32)" if kept else "")

    def apply(self, pipe: Any, anatomy: Anatomy, caps: Capabilities, config: Any) -> Undo:
        # Pipelines cast components themselves during a call (SDXL img2img/inpaint move a force_upcast
        # VAE to float32 to encode, then to the UNet's float16), so undo also reverts what the pipeline
        # did while optimized: the tensors not cast here are kept too, in case (free for host memory).
        plan = [(module, _DTYPES[name]) for module, name in self._targets(anatomy, config)]
        casts = [(module, dtype, _castable(module, dtype)) for module, dtype in plan]
        cast_ids = {id(tensor) for _, _, tensors in casts for tensor in tensors}
        untouched = [
            keep(
                [t for t in [*module.parameters(), *module.buffers()] if id(t) not in cast_ids],
                owner=module,
                in_case=True,
            )
            for module in anatomy.modules().values()
        ]
        undo = UndoStack()
        for originals in untouched:  # restored last, after the casts' own originals and guards
            undo.push(originals.restore)
        try:
            for module, dtype, tensors in casts:
                undo.push(keep(tensors, owner=module).restore)  # in the checkpoint or a spill file (sdopt.originals)
                for tensor in tensors:
                    tensor.data = tensor.data.to(dtype)
                if _needs_boundary(anatomy, module, dtype):
                    # Pixel-space pipelines (no VAE) turn the denoiser's output into the image itself.
                    undo.push(add_dtype_boundary(module, float32_outputs=anatomy.vae is None))
            reduced = any(dtype != torch.float32 and tensors for _, dtype, tensors in casts)
            if reduced:
                # A denoiser or ControlNet left out of ``components`` gets the reduced-precision embeddings
                # of the encoders that were cast (SDXL's pooled embeddings: "mat1 and mat2 must have the same
                # dtype", measured on an H100): a boundary casts them to its own dtype.
                cast_modules = {id(module) for module, _, tensors in casts if tensors}
                for module in _diffusers_models(anatomy):
                    if id(module) not in cast_modules and not has_dtype_boundary(module):
                        undo.push(add_dtype_boundary(module, float32_outputs=anatomy.vae is None))
            # The latents follow the encoders' dtype: once anything is cast, every VAE is guarded.
            for vae in _unguarded_vaes(inspect_pipeline(pipe), every=reduced):
                undo.push(guard_vae(vae))
        except Exception:
            undo()
            raise
        return undo

    @staticmethod
    def _targets(anatomy: Anatomy, config: Any) -> list[tuple[torch.nn.Module, str]]:
        modules = anatomy.modules()
        names = chosen_components(anatomy, config.components)
        targets = []
        for name in names:
            if name not in modules:
                continue
            keep = name in anatomy.vae_names and _vae_stays_float32(anatomy, modules[name], config)
            targets.append((modules[name], "float32" if keep else config.dtype))
        return targets


def _vae_stays_float32(anatomy: Anatomy, vae: Any, config: Any) -> bool:
    if config.vae != "auto":
        return bool(config.vae == "float32")
    # SDXL's original VAE overflows in float16 (diffusers marks it force_upcast); the fp16-fix
    # VAE and AutoencoderTiny declare force_upcast=False and are safe.
    force_upcast = getattr(getattr(vae, "config", None), "force_upcast", True)
    return bool(config.dtype == "float16" and anatomy.family == "sdxl" and force_upcast)


def _needs_boundary(anatomy: Anatomy, module: torch.nn.Module, dtype: torch.dtype) -> bool:
    """diffusers models (denoiser, ControlNets, adapters) in reduced precision get a dtype boundary;
    VAEs have their own guard, and transformers' text encoders are cast by the pipelines themselves."""
    return (
        dtype in (torch.float16, torch.bfloat16)
        and type(module).__module__.startswith("diffusers.")
        and module not in [getattr(anatomy.pipeline, name) for name in anatomy.vae_names]
        and not has_dtype_boundary(module)
    )


def _diffusers_models(anatomy: Anatomy) -> list[torch.nn.Module]:
    """The denoiser and ControlNets, when they are diffusers models (they take the encoders' outputs)."""
    modules = anatomy.modules()
    names = [anatomy.denoiser_name, *anatomy.controlnet_names]
    return [
        modules[name] for name in names if name in modules and type(modules[name]).__module__.startswith("diffusers.")
    ]


def _keep_in_fp32(module: torch.nn.Module) -> set[str]:
    return set(getattr(module, "_keep_in_fp32_modules", None) or ())


def _castable(module: torch.nn.Module, dtype: torch.dtype, *, planning: bool = False) -> list[torch.Tensor]:
    """Floating tensors of ``module`` not yet in ``dtype``, minus float32-only ones under float16.

    Tensors on the meta device are left out when applying (accelerate keeps offloaded weights
    there, to be loaded in their own dtype), but count when planning a pipeline built on meta
    (``sdopt plan --arch sdxl``) that has no accelerate hooks."""
    keep = _keep_in_fp32(module) if dtype == torch.float16 else set()
    meta_counts = planning and not any(hasattr(sub, "_hf_hook") for sub in module.modules())
    tensors = []
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if (
            not tensor.is_floating_point()
            or tensor.dtype == dtype
            or (tensor.device.type == "meta" and not meta_counts)
        ):
            continue
        if keep and keep & set(name.split(".")):
            continue
        tensors.append(tensor)
    return tensors


def _unguarded_vaes(anatomy: Anatomy, *, every: bool = False) -> list[Any]:
    """VAEs running in another dtype than the denoiser, or in reduced precision, without the guard
    (e.g. a pipeline loaded with torch_dtype=float16, or SDXL with its VAE kept in float32); with
    ``every``, all VAEs without the guard."""
    denoiser_dtype = getattr(anatomy.denoiser, "dtype", None)
    vaes = [getattr(anatomy.pipeline, name) for name in anatomy.vae_names]
    return [
        vae
        for vae in vaes
        if "decode" not in vae.__dict__ and (every or vae.dtype != denoiser_dtype or vae.dtype != torch.float32)
    ]
