"""Compile the denoiser with torch.compile (inductor), whole or block by block."""

from __future__ import annotations

import re
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sdopt.anatomy import Anatomy, is_compiled
from sdopt.cache_dir import cache_root, check_trusted
from sdopt.calls import CallLayer, wrap_call
from sdopt.capabilities import Capabilities
from sdopt.optimization import LOCAL_ONLY, Optimization, Undo, register
from sdopt.optimizations._attributes import remember_attributes
from sdopt.optimizations._inductor import inductor_cache_dir

CPU_FIRST_CALL_NOTE = (
    "SD1.5-size UNet on 2 cores: first call +40 s cold, +11 s with a warm cache; then ~1.35x per step "
    "in bf16 on AMX, ~1.0x in float32"
)


@dataclass(frozen=True)
class TorchCompileConfig:
    """``mode``: torch.compile mode; ``regional``: "auto" compiles the model's repeated blocks where it
    declares them (much shorter first call), "yes"/"no" force it; ``fullgraph``; ``accept_cpu_first_call``:
    on CPU, compile only when the caller accepts the long first call; ``cache_dir``: inductor's on-disk
    cache (default ``inductor/<torch build and device>`` under `sdopt.cache_dir.cache_root`:
    ``$SDOPT_CACHE_DIR`` or ``~/.cache/sdopt``; see `compile_cache_key`), so a second process starts fast."""

    mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    regional: Literal["auto", "yes", "no"] = "auto"
    fullgraph: bool = False
    accept_cpu_first_call: bool = False
    cache_dir: str = field(default="", metadata=LOCAL_ONLY)  # code only: presets cannot name where code loads from


@register
class TorchCompile(Optimization):
    """``torch.compile`` on the denoiser. On CPU inductor runs with weight freezing: on the SD1.5
    UNet in bf16 on an AMX host 1.63 s/step vs 2.2 s eager (1.35x) after a ~91 s first call; in
    float32 on a 2-core CPU without AMX no gain per step, first call +40 s cold / +11 s with a warm
    cache (benchmarks/RESULTS.md). So on CPU it is gated behind ``accept_cpu_first_call``.
    Regional compilation (diffusers' ``compile_repeated_blocks``) where the model declares repeated
    blocks. The report states the first-call cost. Undo restores the eager module (the compiled callables are dropped).

    Examples:
        >>> from sdopt import plan
        >>> from sdopt.testing import tiny_pipeline, fake_capabilities
        >>> result = plan(tiny_pipeline("sd"), tier=None, extra=["torch_compile"], caps=fake_capabilities("cpu-amx"))
        >>> result.skipped[0].reason.startswith("on CPU torch.compile pays only")
        True
    """

    name = "torch_compile"
    kind = "compile"
    summary = "torch.compile (inductor) on the denoiser; long first call"
    Config = TorchCompileConfig
    after = ("half_precision", "channels_last", "fuse_qkv", "quantize_int8", "quantize_fp8")

    def resolve(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> Any:
        regional = config.regional
        if regional == "auto":
            regional = "yes" if _repeated_blocks(anatomy.denoiser) else "no"
        cache_dir = config.cache_dir or str(cache_root("inductor") / compile_cache_key(caps))
        return TorchCompileConfig(config.mode, regional, config.fullgraph, config.accept_cpu_first_call, cache_dir)

    def check(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> str | None:
        denoiser = anatomy.denoiser
        if denoiser is None:
            return "the pipeline has no denoiser"
        if caps.device == "cpu":
            if not config.accept_cpu_first_call:
                return (
                    f"on CPU torch.compile pays only in long-running processes ({CPU_FIRST_CALL_NOTE}); "
                    "pass accept_cpu_first_call=True to compile anyway"
                )
            if caps.cxx_compiler is None:
                return "inductor on CPU needs a C++ compiler (g++ or clang++), none found"
        elif caps.device == "cuda" and not caps.package_usable("triton"):
            return "inductor on CUDA needs triton, which is not installed or not working here"
        whole = config.regional == "no" or (config.regional == "auto" and not _repeated_blocks(denoiser))
        if caps.device == "cpu" and whole and anatomy.denoiser_kind == "transformer":
            # Seen in the zoo (torch 2.13): SD3's and PixArt's transformers, compiled whole with weight
            # freezing in bfloat16, fail at the first call on a dtype assertion in dynamo.
            return (
                f"whole-model compile of {type(denoiser).__name__} on CPU failed at the first call in tests "
                "(dynamo dtype assertion with frozen weights); on CPU transformers compile by repeated blocks only"
            )
        if config.regional == "yes" and not _repeated_blocks(denoiser):
            declared = getattr(denoiser, "_repeated_blocks", None)
            if (
                declared
            ):  # e.g. UNet2DConditionModel declares BasicTransformerBlock; IF's and Kandinsky's UNets have none
                return f"{type(denoiser).__name__} has none of the repeated blocks it declares ({', '.join(declared)})"
            return f"{type(denoiser).__name__} declares no repeated blocks for regional compilation"
        if is_compiled(denoiser):
            return "already compiled"
        return None

    def describe(self, config: Any, anatomy: Anatomy) -> str:
        how = "repeated blocks" if config.regional == "yes" else "whole denoiser"
        return f"torch.compile ({how}, mode {config.mode}); the first call compiles (CPU: {CPU_FIRST_CALL_NOTE})"

    def apply(self, pipe: Any, anatomy: Anatomy, caps: Capabilities, config: Any) -> Undo:
        check_trusted(Path(config.cache_dir))  # inductor loads compiled kernels from there: only this user's
        denoiser = anatomy.denoiser
        restore = [remember_attributes(m, ("_compiled_call_impl",)) for m in denoiser.modules()]
        options: dict[str, Any] = {"mode": config.mode, "fullgraph": config.fullgraph}
        if caps.device == "cpu":
            # Weight freezing folds the (inference-only) weights into the graph: the 1.35x on CPU.
            # mode and options are exclusive in torch.compile, so the mode goes in as its default.
            options = {"fullgraph": config.fullgraph, "options": {"freezing": True}}
        try:
            if config.regional == "yes":
                denoiser.compile_repeated_blocks(**options)
            else:
                denoiser.compile(**options)
            # Inductor compiles at the first call, reading its cache dir then: the variable is set for
            # the duration of each pipeline call only, never left in the process's environment.
            unwrap = wrap_call(pipe, _InductorCacheDir(self.name, config.cache_dir))
        except Exception:
            for put_back in restore:
                put_back()
            raise

        def undo() -> None:
            unwrap()
            for put_back in restore:
                put_back()

        return undo


def compile_cache_key(caps: Capabilities) -> str:
    """The folder of inductor's cache for this machine: one per torch build (its CUDA runtime included)
    and device model, so a second process on the same machine finds its kernels (first call in
    seconds) and a cache shared across machines (a network home, one image on several GPUs) never
    hands one GPU's autotuned kernels to another. The driver is left out: the generated kernels
    depend on the compiler triton ships, not on it.

    Examples:
        >>> from sdopt.optimizations.torch_compile import compile_cache_key
        >>> from sdopt.testing import fake_capabilities
        >>> compile_cache_key(fake_capabilities("h200-141gb")).endswith("-cuda-sm_90-NVIDIA-H200")
        True
    """
    parts = [f"torch-{caps.versions.get('torch', 'unknown')}", caps.device]
    if caps.device == "cuda" and caps.cuda:
        parts += [caps.cuda[0].arch, caps.cuda[0].name]
    elif caps.device == "cpu":
        parts.append(caps.cpu.model)
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", "-".join(parts)).strip("-")[:150]


def _repeated_blocks(denoiser: Any) -> list[str]:
    """The repeated block classes the model declares and really contains."""
    declared = set(getattr(denoiser, "_repeated_blocks", None) or ())
    present = {type(module).__name__ for module in denoiser.modules()} if declared else set()
    return sorted(declared & present)


class _InductorCacheDir(CallLayer):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path

    def around(self, pipe: Any) -> AbstractContextManager[Any]:
        return inductor_cache_dir(self.path)
