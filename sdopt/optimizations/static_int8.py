"""Static int8 convolutions and linears in the denoiser on x86 CPUs with VNNI (PT2E + inductor)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sdopt.anatomy import Anatomy, is_compiled
from sdopt.cache_dir import check_trusted
from sdopt.calls import STAND_IN, BuildAfterCall, note_after_calls, wrap_call
from sdopt.capabilities import Capabilities
from sdopt.footprint import GB, component_bytes
from sdopt.optimization import LOCAL_ONLY, Optimization, Undo, register, within
from sdopt.optimizations._attributes import remember_attributes
from sdopt.optimizations._int8 import cache
from sdopt.optimizations._int8.runner import BUILD_MEMORY_FACTOR, Int8Runner
from sdopt.optimizations._sensitive import kept_float
from sdopt.requirements import Requirements
from sdopt.undo import UndoStack

_X86_INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@dataclass(frozen=True)
class StaticInt8Config:
    """``min_snr_db``: the int8 denoiser's output, compared with float32 on the calibration call's own
    inputs, must keep at least this signal-to-noise ratio, else that shape stays float32 (refused,
    with the figure). 25 dB: the least denoiser SNR at which both trained tiny pipelines kept their
    prompt accuracy within 0.05 and their domain FID within half (at 20 dB trained-sd lost 0.062 of
    its accuracy and doubled its FID; trained-dit's int8 program measured 35.2 dB, trained-sd's 23.7 dB
    on one first call (refused; under the old 20 dB floor it cost 0.042 accuracy) and 39.7 on another;
    benchmarks/RESULTS.md, "Quality on the trained tiny pipelines"). ``keep_float``: top-level
    submodules of the denoiser left in floating point (``"auto"``: those of `SENSITIVE` it has);
    ``calibration_calls``: denoiser calls of the first pipeline call that calibrate activation
    ranges, spread over its steps; ``cache_dir``:
    where converted programs and inductor's kernels are kept (default ``~/.cache/sdopt/int8``,
    or ``$SDOPT_CACHE_DIR/int8``)."""

    min_snr_db: float = field(default=25.0, metadata=within(0))
    keep_float: tuple[str, ...] = ("auto",)
    calibration_calls: int = field(default=8, metadata=within(1))
    cache_dir: str = field(default="", metadata=LOCAL_ONLY)  # code only: presets cannot name where code loads from


@register
class StaticInt8(Optimization):
    """The denoiser's convolutions and linears run oneDNN int8 kernels (VNNI) with static activation
    scales: PyTorch 2 export quantization with torchao's ``X86InductorQuantizer``, compiled by
    inductor with frozen weights. The first pipeline call at a new shape runs float32 while it records
    the denoiser's inputs; they calibrate the int8 program, which is then compiled, checked against
    the recorded float32 outputs (refused below ``min_snr_db``) and stored on disk, keyed by the
    weights' hash, the input signature and the torch/torchao/sdopt versions and CPU; a new process
    loads it at its first call. Later calls at that shape run int8; other shapes and anything with
    gradients run float32. `Report.after_calls` says what happened (cold and warm first-call
    costs, the fidelity measured). Undo removes the int8 program; the float weights were never
    touched.

    Examples:
        >>> from sdopt import plan
        >>> from sdopt.testing import tiny_pipeline, fake_capabilities
        >>> vnni = fake_capabilities("cpu-amx", packages={"torchao": True})
        >>> result = plan(tiny_pipeline("sd"), tier=None, extra=["static_int8"], caps=vnni)
        >>> [step.name for step in result.steps], result.steps[0].config.keep_float
        (['static_int8'], ('conv_in', 'conv_out', 'time_embedding'))
    """

    name = "static_int8"
    kind = "quantization"
    summary = "static int8 convolutions and linears in the denoiser (PT2E, oneDNN/VNNI), compiled and cached"
    Config = StaticInt8Config
    requires = Requirements(devices=("cpu",), packages=("torchao",))
    conflicts = (
        "quantize_int8",
        "quantize_4bit",
        "torch_compile",
        "weight_storage",
        "half_precision",
        "feature_cache",
        "model_offload",
        "group_offload",
        "sequential_offload",
    )
    after = ("channels_last", "fuse_qkv", "sdpa", "attention_backend")
    calibrates_on_first_call = True  # its first whole call, in float32, calibrates the int8 program
    lossy = True  # 36.9 dB after 4 steps on SD1.5 (benchmarks/RESULTS.md): more than numerical drift
    effect = "speed"

    def resolve(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> Any:
        keep_float = kept_float(anatomy.denoiser, config.keep_float)
        root = config.cache_dir or str(cache.default_root())
        return StaticInt8Config(config.min_snr_db, keep_float, config.calibration_calls, root)

    def check(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> str | None:
        denoiser = anatomy.denoiser
        if denoiser is None:
            return "the pipeline has no denoiser"
        if not any(flag in caps.cpu.flags for flag in _X86_INT8_FLAGS):
            return (
                "this CPU has no x86 int8 dot-product instructions (AVX512-VNNI, AVX-VNNI or AMX): "
                "int8 would not be faster"
            )
        if caps.cxx_compiler is None:
            return "inductor needs a C++ compiler (g++ or clang++) to build the int8 kernels, none found"
        dtypes = {parameter.dtype for parameter in denoiser.parameters()}
        if dtypes != {torch.float32}:
            found = ", ".join(sorted(map(str, dtypes)))
            return f"the denoiser's weights are {found}; static int8 is calibrated from float32"
        if is_compiled(denoiser):
            return "the denoiser is already compiled"
        if isinstance(denoiser.__dict__.get("forward"), Int8Runner):
            return "the denoiser already runs static int8"
        if config.calibration_calls < 1:
            return "calibration_calls must be at least 1"
        # The build holds transient copies beside the whole pipeline; where that cannot fit, the first
        # call would refuse it and the denoiser would stay float32, slower than what half precision
        # gives (measured: SDXL at 1024 on a 24 GB VM), so the planner leaves the place to it.
        stored = component_bytes(anatomy)
        assert anatomy.denoiser_name is not None  # a denoiser was found above
        pipeline_gb = sum(stored.values()) / GB
        denoiser_gb = stored[anatomy.denoiser_name] / GB
        needed = pipeline_gb + BUILD_MEMORY_FACTOR * denoiser_gb
        if caps.ram_total_gb and needed > caps.ram_total_gb:
            return (
                f"building the int8 program needs about {needed:.1f} GB of RAM (the pipeline's {pipeline_gb:.1f} GB "
                f"plus ~{BUILD_MEMORY_FACTOR:g}x the denoiser's {denoiser_gb:.1f} GB for export and calibration); "
                f"this machine has {caps.ram_total_gb:.1f} GB"
            )
        return None

    def storage(self, anatomy: Anatomy, config: Any, sizes: dict[str, float]) -> dict[str, float]:
        name = anatomy.denoiser_name
        if name in sizes:
            sizes[name] *= 1.25  # the int8 program's weights beside the float32 ones (a quarter of their bytes)
        return sizes

    def build_bytes(self, anatomy: Anatomy, config: Any, sizes: dict[str, float]) -> float:
        # Export, calibration and freezing hold copies of the float32 denoiser while the program builds.
        name = anatomy.denoiser_name
        return sizes.get(name, 0.0) * BUILD_MEMORY_FACTOR if name is not None else 0.0

    def describe(self, config: Any, anatomy: Anatomy) -> str:
        kept = ", ".join(config.keep_float) or "nothing"
        return (
            f"static int8 (PT2E, x86 oneDNN) for the denoiser, calibrated on its first call at each shape "
            f"({kept} left in float); the first call at a new shape runs float32 and then builds for minutes, "
            "or loads the build from the on-disk cache"
        )

    def apply(self, pipe: Any, anatomy: Anatomy, caps: Capabilities, config: Any) -> Undo:
        check_trusted(Path(config.cache_dir))  # programs and kernels are loaded from there: only this user's
        denoiser = anatomy.denoiser
        restore = remember_attributes(denoiser, ("forward", STAND_IN))
        runner = Int8Runner(
            denoiser,
            denoiser.forward,
            keep_float=config.keep_float,
            min_snr_db=config.min_snr_db,
            calibration_calls=config.calibration_calls,
            root=Path(config.cache_dir),
        )
        denoiser.__dict__["forward"] = denoiser.__dict__[STAND_IN] = runner
        undo = UndoStack()
        undo.push(runner.compiled.clear)  # last: the int8 programs go with it
        undo.push(restore)
        try:
            undo.push(wrap_call(pipe, BuildAfterCall(self.name, str(anatomy.denoiser_name))))
            undo.push(note_after_calls(pipe, self.name, runner.describe))
        except Exception:
            undo()
            raise
        return undo
