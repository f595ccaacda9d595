"""Choose the kernel behind diffusers' attention dispatcher (flash, sage, cuDNN...) for the device."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from sdopt.anatomy import Anatomy
from sdopt.capabilities import Capabilities
from sdopt.optimization import Optimization, Undo, register
from sdopt.optimizations._attention import restore_processor_backends, save_processor_backends

# Backends that run without CUDA; diffusers accepts the others on CPU and fails at the first forward.
_RUNS_ON_CPU = {"native", "_native_math"}
# Backends that need an optional package, and which one.
_NEEDS_PACKAGE = {"flash": "flash_attn", "flash_varlen": "flash_attn", "sage": "sageattention", "xformers": "xformers"}
# Flash kernels take no attention mask and compute in float16/bfloat16 only: "auto" picks them only
# for families whose transformers pass no mask (Flux, Wan), and only with reduced-precision weights.
_MASK_FREE_FAMILIES = ("flux", "wan")
_FLASH = ("flash", "_native_flash", "flash_varlen")


@dataclass(frozen=True)
class AttentionBackendConfig:
    """``backend``: "auto" (chosen by rule), "measure" (the fastest installed backend, timed on this
    device at the model's attention shape when applied) or a diffusers backend name."""

    backend: str = "auto"


@register
class AttentionBackend(Optimization):
    """``denoiser.set_attention_backend(...)`` on transformer denoisers whose processors go through
    diffusers' dispatcher (Flux, Wan, QwenImage...; not UNets, SD3 or PixArt, where it is a no-op
    and therefore skipped). "auto" picks flash-attn if installed and working, else PyTorch's flash
    SDPA kernel on sm_80+, for families whose transformers pass no attention mask (Flux, Wan: flash
    kernels take none), and only together with ``half_precision`` when the weights are float32
    (flash kernels compute in float16/bfloat16 only). diffusers also switches a process-wide active
    backend, which its ``reset_attention_backend`` does not restore: sdopt puts it back right away
    (the processors carry the choice), so other pipelines of the process are never affected.

    Examples:
        >>> from sdopt import optimize
        >>> from sdopt.testing import tiny_pipeline
        >>> pipe = tiny_pipeline("flux")
        >>> report = optimize(pipe, tier=None, extra=[{"name": "attention_backend", "backend": "_native_math"}])
        >>> report.applied[0].config
        {'backend': '_native_math'}
        >>> report.undo()
    """

    name = "attention_backend"
    kind = "attention"
    summary = "the fastest working kernel behind diffusers' attention dispatcher"
    Config = AttentionBackendConfig
    group = "attention"

    def resolve(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> Any:
        if config.backend != "auto":
            return config  # "measure" is resolved when applied, on the device
        gpu = caps.gpu
        if gpu is None or anatomy.family not in _MASK_FREE_FAMILIES:
            return AttentionBackendConfig("native")
        if caps.package_usable("flash_attn"):
            return AttentionBackendConfig("flash")
        if gpu.flash_sdpa:
            return AttentionBackendConfig("_native_flash")
        return AttentionBackendConfig("native")

    def companions(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> Mapping[str, str]:
        denoiser_dtype = getattr(anatomy.denoiser, "dtype", None)
        if config.backend in _FLASH and denoiser_dtype not in (torch.float16, torch.bfloat16):
            return {"half_precision": f"the {config.backend} kernels compute in float16/bfloat16 only"}
        return {}

    def check(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> str | None:
        denoiser = anatomy.denoiser
        if denoiser is None or not hasattr(denoiser, "set_attention_backend"):
            return "the denoiser has no set_attention_backend (diffusers model without the dispatcher)"
        if not save_processor_backends(denoiser):
            return (
                f"no attention processor of {type(denoiser).__name__} uses diffusers' dispatcher "
                "(set_attention_backend would change nothing)"
            )
        from diffusers.models.attention_dispatch import AttentionBackendName

        backend = self.resolve(anatomy, caps, config).backend
        if backend == MEASURE:
            return None if len(candidates(anatomy, caps)) > 1 else f"only one backend can run here ({caps.device})"
        known = {member.value for member in AttentionBackendName}
        if backend not in known:
            return f"unknown backend {backend!r}; diffusers knows: {', '.join(sorted(known))}"
        if config.backend == "auto" and backend == "native":
            if caps.gpu is not None and anatomy.family not in _MASK_FREE_FAMILIES:
                return (
                    f"the native SDPA backend (the default) is kept: flash kernels take no attention mask and "
                    f"are chosen automatically only for {', '.join(_MASK_FREE_FAMILIES)} (this pipeline: "
                    f"{anatomy.family})"
                )
            return f"the native SDPA backend (the default) is already the best available on {caps.device}"
        if caps.device != "cuda" and backend not in _RUNS_ON_CPU:
            return f"backend {backend!r} needs CUDA (device: {caps.device}); use 'native' or '_native_math' there"
        package = _NEEDS_PACKAGE.get(backend)
        if package and not caps.package_usable(package):
            return f"backend {backend!r} needs {package}, which is not installed or not working here"
        return None

    def describe(self, config: Any, anatomy: Anatomy) -> str:
        measured = getattr(anatomy.denoiser, MEASURED_ATTRIBUTE, None)
        if config.backend == MEASURE:
            return measured or "attention dispatcher backend: the fastest one, timed on the device when applied"
        return f"attention dispatcher backend {config.backend!r}"

    def apply(self, pipe: Any, anatomy: Anatomy, caps: Capabilities, config: Any) -> Undo:
        from diffusers.models.attention_dispatch import _AttentionBackendRegistry

        denoiser = anatomy.denoiser
        backend, measured = config.backend, ""
        if backend == MEASURE:
            backend, measured = fastest(anatomy, caps)
        saved = save_processor_backends(denoiser)
        previous_global = _AttentionBackendRegistry._active_backend
        try:
            denoiser.set_attention_backend(backend)
            if measured:
                setattr(denoiser, MEASURED_ATTRIBUTE, measured)
        except Exception:
            restore_processor_backends(saved)
            raise
        finally:
            # set_attention_backend also switches diffusers' process-wide backend, which would change
            # every other pipeline of the process (an untouched Flux crashed after another one chose
            # _native_cudnn). The processors carry the choice themselves: the global goes back now.
            _AttentionBackendRegistry.set_active_backend(previous_global)

        def undo() -> None:
            denoiser.__dict__.pop(MEASURED_ATTRIBUTE, None)
            restore_processor_backends(saved)

        return undo


MEASURE = "measure"
MEASURED_ATTRIBUTE = "_sdopt_attention_measured"
_MASKLESS = ("sage",)  # besides the flash kernels: no attention mask
_ON_CUDA = ("native", "_native_cudnn", "_native_efficient", "_native_flash", "flash", "sage", "xformers")


def candidates(anatomy: Anatomy, caps: Capabilities) -> list[str]:
    """The backends worth timing here: those that run on the device with what is installed, flash kernels
    only for mask-free families in half precision."""
    if caps.device != "cuda":
        return sorted(_RUNS_ON_CPU)
    half = getattr(anatomy.denoiser, "dtype", None) in (torch.float16, torch.bfloat16)
    found = []
    for backend in _ON_CUDA:
        package = _NEEDS_PACKAGE.get(backend)
        if package and not caps.package_usable(package):
            continue
        if backend in _FLASH and not (half and anatomy.family in _MASK_FREE_FAMILIES):
            continue
        if backend in _MASKLESS and anatomy.family not in _MASK_FREE_FAMILIES:
            continue  # the probe passes no mask; these models' calls do, which such kernels refuse
        found.append(backend)
    return found


def fastest(anatomy: Anatomy, caps: Capabilities, repeats: int = 10) -> tuple[str, str]:
    """Time each candidate backend on the model's attention shape (its heads and head size; the tokens
    of its default image size, capped at 4096) and return the fastest that matches the native result,
    with what was measured. A backend that fails or disagrees is left out, with why."""
    from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn

    from sdopt.timing import device_clock

    query = _probe_tensor(anatomy)
    reference = dispatch_attention_fn(query, query, query, backend=AttentionBackendName("native"))
    clock = device_clock(caps.device)
    timings: dict[str, float] = {}
    refused: dict[str, str] = {}
    for backend in candidates(anatomy, caps):
        try:
            result = dispatch_attention_fn(query, query, query, backend=AttentionBackendName(backend))  # warm-up, check
            error = (result.float() - reference.float()).abs().max().item()
            if error > 0.05:
                refused[backend] = f"differs from native by {error:.3f}"
                continue
            started = clock()
            for _ in range(repeats):
                dispatch_attention_fn(query, query, query, backend=AttentionBackendName(backend))
            timings[backend] = (clock() - started) / repeats
        except Exception as failure:  # noqa: BLE001  # a backend that cannot run here is not a candidate
            refused[backend] = f"{type(failure).__name__}: {str(failure)[:80]}"
    best = min(timings, key=timings.__getitem__)
    shown = ", ".join(f"{name} {seconds * 1e3:.3f} ms" for name, seconds in sorted(timings.items(), key=lambda x: x[1]))
    left_out = "".join(f"; {name} left out ({why})" for name, why in refused.items())
    return best, f"attention dispatcher backend {best!r}, the fastest measured here ({shown}{left_out})"


def _probe_tensor(anatomy: Anatomy) -> torch.Tensor:
    """A (batch 2, tokens, heads, head size) tensor like the model's attention at its default size."""
    from sdopt.calls import default_height, latents_per_token, pixels_per_latent

    module = next(m for m in anatomy.denoiser.modules() if hasattr(m, "heads") and hasattr(m, "to_q"))
    heads = int(module.heads)
    head_dim = module.to_q.out_features // heads
    side = (default_height(anatomy) or 512) // (pixels_per_latent(anatomy) * latents_per_token(anatomy))
    tokens = min(max(side * side, 16), 4096)
    parameter = next(anatomy.denoiser.parameters())
    generator = torch.Generator("cpu").manual_seed(0)
    values = torch.randn(2, tokens, heads, head_dim, generator=generator)
    return values.to(device=parameter.device, dtype=parameter.dtype)
