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
    """``backend``: "auto" (the fastest working one on the device) or a diffusers backend name."""

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
            return config
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
        return f"attention dispatcher backend {config.backend!r}"

    def apply(self, pipe: Any, anatomy: Anatomy, caps: Capabilities, config: Any) -> Undo:
        from diffusers.models.attention_dispatch import _AttentionBackendRegistry

        denoiser = anatomy.denoiser
        saved = save_processor_backends(denoiser)
        previous_global = _AttentionBackendRegistry._active_backend
        try:
            denoiser.set_attention_backend(config.backend)
        except Exception:
            restore_processor_backends(saved)
            raise
        finally:
            # set_attention_backend also switches diffusers' process-wide backend, which would change
            # every other pipeline of the process (an untouched Flux crashed after another one chose
            # _native_cudnn). The processors carry the choice themselves: the global goes back now.
            _AttentionBackendRegistry.set_active_backend(previous_global)
        return lambda: restore_processor_backends(saved)
