"""The denoiser and the VAE decoder run by OpenVINO's CPU runtime (converted in place at each call's shape)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sdopt.anatomy import Anatomy, is_compiled
from sdopt.cache_dir import check_trusted
from sdopt.calls import note_after_calls
from sdopt.capabilities import Capabilities
from sdopt.footprint import GB, component_bytes
from sdopt.optimization import LOCAL_ONLY, Optimization, Undo, register, within
from sdopt.optimizations._attributes import remember_attributes
from sdopt.optimizations._openvino import OpenVinoRunner, default_root
from sdopt.requirements import Requirements
from sdopt.undo import UndoStack

PRECISIONS = ("f32", "bf16")
# Converting holds a traced copy of the module beside the compiled one and the PyTorch weights.
_CONVERSION_FACTOR = 2.0


@dataclass(frozen=True)
class OpenVinoRuntimeConfig:
    """``precision``: OpenVINO's inference precision (``f32``: PyTorch's float32 results up to rounding;
    ``bf16``: on CPUs with bf16 instructions, lossy). ``vae``: the VAE's decode runs OpenVINO too.
    ``min_snr_db``: each converted model's output, compared with PyTorch's on its first call, must keep
    this signal-to-noise ratio, else that input signature stays in PyTorch (25 dB: the floor at which
    the trained tiny pipelines kept their prompt accuracy, as for `static_int8`). ``cache_dir``: where
    converted models are kept between processes (default ``~/.cache/sdopt/openvino``)."""

    precision: str = "f32"
    vae: bool = True
    min_snr_db: float = field(default=25.0, metadata=within(0))
    cache_dir: str = field(default="", metadata=LOCAL_ONLY)  # code only: presets cannot name where code loads from


@register
class OpenVinoRuntime(Optimization):
    """The denoiser's forward (and the VAE's decode) run by OpenVINO's CPU runtime: at the first call
    at each input shape, PyTorch answers while ``openvino.convert_model`` traces the module at that
    static shape (or reads it from the on-disk cache), OpenVINO compiles it and checks it against
    PyTorch's output on that call; later calls at that shape run OpenVINO. The rest of the pipeline
    (scheduler, text encoder, call-level steps) stays diffusers'. Undo removes the stand-in; the
    PyTorch weights were never touched. Needs ``pip install "sdopt[openvino]"``.

    Measured (benchmarks/RESULTS.md, "OpenVINO's runtime on CPUs"): SD1.5's UNet at 512x512, batch 2,
    2 threads on an AMD EPYC with AVX512-BF16 (no AMX): PyTorch float32 6.49 s, OpenVINO f32 3.95 s
    (1.64x, 2.5e-6 relative error), OpenVINO bf16 2.19 s (2.97x, 2.3% relative error on random
    weights); whole pipelines on an AVX2-only EPYC: OpenVINO f32 1.38x PyTorch float32.

    Examples:
        >>> from sdopt import plan
        >>> from sdopt.testing import tiny_pipeline, fake_capabilities
        >>> caps = fake_capabilities("cpu-avx2", packages={"openvino": True})
        >>> result = plan(tiny_pipeline("sd"), tier=None, extra=["openvino_runtime"], caps=caps)
        >>> [step.name for step in result.steps], result.steps[0].config.precision
        (['openvino_runtime'], 'f32')
    """

    name = "openvino_runtime"
    kind = "compile"
    summary = "the denoiser and VAE decoder run by OpenVINO's CPU runtime, converted at each call's shape"
    Config = OpenVinoRuntimeConfig
    requires = Requirements(devices=("cpu",), packages=("openvino",))
    conflicts = (
        "torch_compile",
        "static_int8",
        "quantize_int8",
        "quantize_4bit",
        "quantize_fp8",
        "weight_storage",
        "half_precision",
        "feature_cache",
        "model_offload",
        "group_offload",
        "sequential_offload",
        "vae_tiling",
        "vae_slicing",
    )
    after = ("distill_lora", "tiny_vae", "channels_last", "fuse_qkv", "sdpa", "attention_backend", "vae_fp16_fix")
    calibrates_on_first_call = True  # its first call at a shape runs PyTorch while the model converts
    effect = "speed"

    lossy = False  # f32, the default, is PyTorch's float32 up to rounding (2.5e-6 relative error on SD1.5's UNet)

    def lossy_with(self, config: Any) -> bool:
        return bool(config.precision != "f32")

    def resolve(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> Any:
        return OpenVinoRuntimeConfig(
            config.precision, config.vae, config.min_snr_db, config.cache_dir or str(default_root())
        )

    def check(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> str | None:
        denoiser = anatomy.denoiser
        if denoiser is None:
            return "the pipeline has no denoiser"
        if config.precision not in PRECISIONS:
            return f"precision must be one of {', '.join(PRECISIONS)}, not {config.precision!r}"
        if config.precision == "bf16" and "avx512_bf16" not in caps.cpu.flags and "amx_bf16" not in caps.cpu.flags:
            return "precision bf16 needs a CPU with bf16 instructions (AVX512-BF16 or AMX)"
        dtypes = {parameter.dtype for parameter in denoiser.parameters()}
        if dtypes != {torch.float32}:
            found = ", ".join(sorted(map(str, dtypes)))
            return f"the denoiser's weights are {found}; OpenVINO is given float32 modules"
        if is_compiled(denoiser):
            return "the denoiser is already compiled"
        if isinstance(denoiser.__dict__.get("forward"), OpenVinoRunner):
            return "the denoiser already runs OpenVINO"
        stored = component_bytes(anatomy)
        assert anatomy.denoiser_name is not None  # a denoiser was found above
        pipeline_gb = sum(stored.values()) / GB
        converted_gb = (stored[anatomy.denoiser_name] + stored.get("vae", 0) * config.vae) / GB
        needed = pipeline_gb + _CONVERSION_FACTOR * converted_gb
        if caps.ram_total_gb and needed > caps.ram_total_gb:
            return (
                f"OpenVINO needs about {needed:.1f} GB of RAM (the pipeline's {pipeline_gb:.1f} GB, its compiled "
                f"copy of {converted_gb:.1f} GB and a traced one while converting); this machine has "
                f"{caps.ram_total_gb:.1f} GB"
            )
        return None

    def storage(self, anatomy: Anatomy, config: Any, sizes: dict[str, float]) -> dict[str, float]:
        names = [anatomy.denoiser_name, *(["vae"] if config.vae else [])]
        for name in names:
            if name in sizes:
                sizes[name] *= 2  # the compiled model's float32 weights beside PyTorch's
        return sizes

    def describe(self, config: Any, anatomy: Anatomy) -> str:
        parts = "the denoiser" + (" and the VAE decoder" if config.vae and _decoder(anatomy) else "")
        return (
            f"{parts} run by OpenVINO ({config.precision}), converted at each call's shape; the first call at a new "
            "shape runs PyTorch while it converts (tens of seconds), or reads the converted model from the disk cache"
        )

    def apply(self, pipe: Any, anatomy: Anatomy, caps: Capabilities, config: Any) -> Undo:
        root = Path(config.cache_dir)
        check_trusted(root)  # converted models are loaded from there: only this user's
        targets = [(anatomy.denoiser, "forward", str(anatomy.denoiser_name))]
        if config.vae and _decoder(anatomy):
            targets.append((anatomy.vae, "decode", "vae decode"))
        undo = UndoStack()
        runners: list[OpenVinoRunner] = []
        try:
            for module, method, label in targets:
                runner = OpenVinoRunner(
                    module,
                    method,
                    getattr(module, method),
                    precision=config.precision,
                    min_snr_db=config.min_snr_db,
                    root=root,
                    label=label,
                )
                undo.push(runner.forget)  # last: the compiled models go with it
                undo.push(remember_attributes(module, (method,)))
                module.__dict__[method] = runner
                runners.append(runner)
            undo.push(note_after_calls(pipe, self.name, lambda: "; ".join(r.describe() for r in runners)))
        except Exception:
            undo()
            raise
        return undo


def _decoder(anatomy: Anatomy) -> bool:
    return anatomy.vae is not None and callable(getattr(anatomy.vae, "decode", None))
