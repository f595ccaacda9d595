"""The denoiser and the VAE decoder run by OpenVINO's CPU runtime (converted in place at each call's shape)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from sdopt.anatomy import Anatomy, is_compiled
from sdopt.cache_dir import check_trusted
from sdopt.calls import STAND_IN, BuildAfterCall, note_after_calls, wrap_call
from sdopt.capabilities import Capabilities
from sdopt.optimization import LOCAL_ONLY, Optimization, Undo, register, within
from sdopt.optimizations._attributes import remember_attributes
from sdopt.optimizations._openvino import OpenVinoRunner
from sdopt.optimizations._openvino_cache import default_root
from sdopt.optimizations._openvino_int8 import weight_bits
from sdopt.optimizations._sensitive import kept_float
from sdopt.optimizations._vae_guard import GuardedDecode
from sdopt.requirements import Requirements
from sdopt.undo import UndoStack

PRECISIONS = ("f32", "bf16")
# What converting and compiling add to the process, per converted weight: measured on SD1.5's UNet at
# bf16 precision (2 threads, AVX512-BF16 EPYC): +3.0 GB from bfloat16 weights, +3.85 GB from bfloat16
# channels_last weights (copied, see `_openvino_program.shareable`), +4.1 GB from float32 weights, for 0.86 G
# weights; the process's peak was its final size each time (the conversion's copies are gone by then).
_BYTES_PER_CONVERTED_WEIGHT = 4.8
# Denoisers OpenVINO crashes on (no exception to catch: the process dies), by class and precision.
_CRASHES = {
    ("Kandinsky3UNet", "f32"): "OpenVINO 2026.4's compile_model killed the process (SIGSEGV) compiling it at f32, "
    "whole or block by block, in sdopt's pipeline zoo (bf16 compiled and ran)",
}
_INT8_TRACE_BYTES_PER_WEIGHT = 4.0


@dataclass(frozen=True)
class OpenVinoRuntimeConfig:
    """``precision``: OpenVINO's inference precision (``f32``: PyTorch's float32 results up to rounding;
    ``bf16``: on CPUs with bf16 instructions, lossy). ``vae``: the VAE's decode runs OpenVINO too.
    ``min_snr_db``: each converted model's output, compared with PyTorch's on its first call, must keep
    this signal-to-noise ratio, else that input signature stays in PyTorch (25 dB: the floor at which
    the trained tiny pipelines kept their prompt accuracy, as for `static_int8`). ``cache_dir``: where
    converted models are kept between processes (default ``~/.cache/sdopt/openvino``).

    ``int8``: the denoiser's convolutions and linear layers compute in int8 (static: activations u8 per
    tensor over the ranges observed during the first pipeline call, weights i8 per output channel), the rest
    at ``precision``; its first pipeline call runs PyTorch while it calibrates, and converts at its end; the
    int8 model must keep ``min_snr_db`` on three of those calls, else the plain conversion is used.
    ``keep_float``: top-level children of the denoiser left out of int8 (``"auto"``: the embeddings and the
    first and last convolutions, as for `static_int8`).

    ``blocks``: a UNet is converted block by block (each down block, the mid block and each up block its own
    model; the embeddings, the first and last convolutions and the glue between blocks stay PyTorch's), so
    that `feature_cache` can skip the deep blocks between steps: with ``blocks`` the two plan together."""

    precision: str = "f32"
    vae: bool = True
    min_snr_db: float = field(default=25.0, metadata=within(0))
    int8: bool = False
    keep_float: tuple[str, ...] = ("auto",)
    cache_dir: str = field(default="", metadata=LOCAL_ONLY)  # code only: presets cannot name where code loads from
    blocks: bool = False


@register
class OpenVinoRuntime(Optimization):
    """The denoiser's forward (and the VAE's decode) run by OpenVINO's CPU runtime: at the first call
    at each input shape, PyTorch answers while ``openvino.convert_model`` traces the module at that
    static shape (or reads it from the on-disk cache), OpenVINO compiles it and checks it against
    PyTorch's output on that call; later calls at that shape run OpenVINO. The rest of the pipeline
    (scheduler, text encoder, call-level steps) stays diffusers'. Undo removes the stand-in; the
    PyTorch weights were never touched. Needs ``pip install "sdopt[openvino]"``.

    Planned after ``half_precision`` rather than instead of it: a bfloat16 denoiser is converted as such
    (at ``precision="bf16"``), so the process takes less RAM (SD1.5: a 6.4 GB peak against 10.5 GB), and a shape
    OpenVINO refuses or fails on runs PyTorch's bfloat16, never float32. The VAE's stand-in goes under
    half precision's guard, which still decodes a NaN or black image again in float32 with PyTorch.
    Whether RAM holds the compiled copy and the conversion is the plan's footprint's to say.

    With ``int8=True`` the denoiser's convolutions and linears compute in int8 (see
    `OpenVinoRuntimeConfig`): SD1.5's UNet call took 1.61 s against 2.20 s in bf16 (batch 2, 64x64, 2
    threads, AVX512-BF16 EPYC); on trained-sd, prompt accuracy and FID stayed within the seed noise floor.
    The first pipeline call runs PyTorch while it calibrates, the int8 model is converted at its end and
    checked on three of its calls: below ``min_snr_db`` it is tried once more with the 5% most sensitive
    layers left at ``precision``, and then the plain conversion is used (the refusal is remembered on disk,
    so a new process does not calibrate again for the same weights and shape). On CPUs without VNNI or
    AMX the weights take 7 bits, where oneDNN's 16-bit pair sums would saturate with 8.

    With ``blocks=True`` a UNet is converted block by block, so `feature_cache` (DeepCache) can skip the deep
    blocks' models on its cached steps: SD1.5's UNet averaged ~1.47x the whole-UNet model over three steps
    that way, a full call ~6% slower (RESULTS.md, "OpenVINO block by block under feature caching").

    Measured (benchmarks/RESULTS.md, "OpenVINO's runtime inside the pipeline"): SD1.5's UNet at 512x512, batch 2,
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
        "feature_cache",
        "model_offload",
        "group_offload",
        "sequential_offload",
        "vae_tiling",
        "vae_slicing",
    )
    after = (
        "distill_lora",
        "half_precision",
        "tiny_vae",
        "channels_last",
        "fuse_qkv",
        "sdpa",
        "attention_backend",
        "vae_fp16_fix",
    )
    calibrates_on_first_call = True  # its first call at a shape runs PyTorch while the model converts
    effect = "speed"

    # 2: planned after half precision instead of displacing it (a bfloat16 denoiser is converted as such, and
    # what OpenVINO refuses runs PyTorch's bfloat16, not float32).
    version = 2
    lossy = False  # f32, the default, is PyTorch's float32 up to rounding (2.5e-6 relative error on SD1.5's UNet)

    def lossy_with(self, config: Any) -> bool:
        return bool(config.precision != "f32" or config.int8)

    def gentler(self, config: Any) -> Any | None:
        # int8 is the lossier half of the step: without it the denoiser still runs OpenVINO at `precision`.
        return replace(config, int8=False) if config.int8 else None

    def composes_with(self, config: Any, other: str) -> bool:
        # Converted whole, the UNet's forward is one OpenVINO model: feature caching's hooks on its deep blocks
        # would never run (and would be traced into it). Block by block, they wrap the blocks' stand-ins.
        return bool(config.blocks) and other == "feature_cache"

    def resolve(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> Any:
        root = config.cache_dir or str(default_root())
        return replace(config, keep_float=kept_float(anatomy.denoiser, config.keep_float), cache_dir=root)

    def check(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> str | None:
        denoiser = anatomy.denoiser
        if denoiser is None:
            return "the pipeline has no denoiser"
        if config.precision not in PRECISIONS:
            return f"precision must be one of {', '.join(PRECISIONS)}, not {config.precision!r}"
        if config.precision == "bf16" and "avx512_bf16" not in caps.cpu.flags and "amx_bf16" not in caps.cpu.flags:
            return "precision bf16 needs a CPU with bf16 instructions (AVX512-BF16 or AMX)"
        dtypes = {parameter.dtype for parameter in denoiser.parameters()}
        if len(dtypes) != 1 or not dtypes <= {torch.float32, torch.bfloat16}:
            found = ", ".join(sorted(map(str, dtypes)))
            return f"the denoiser's weights are {found}; OpenVINO is given float32 or bfloat16 modules"
        if dtypes == {torch.bfloat16} and config.precision != "bf16":
            return (
                "the denoiser's weights are bfloat16: OpenVINO f32 would compute float32 from rounded weights, "
                "slower than precision 'bf16' and no more exact"
            )
        if config.int8:
            children = dict(denoiser.named_children())
            unknown = [name for name in config.keep_float if name not in children and name != "auto"]
            if unknown:
                return (
                    f"keep_float names {', '.join(map(repr, unknown))}, not top-level children of the denoiser "
                    f"(it has: {', '.join(children)})"
                )
        crash = _CRASHES.get((type(denoiser).__name__, config.precision))
        if crash:
            return crash
        if config.blocks and not unet_blocks(denoiser):
            return f"blocks: {type(denoiser).__name__} has no UNet down, mid and up blocks to convert one by one"
        if is_compiled(denoiser):
            return "the denoiser is already compiled"
        if any(isinstance(module.__dict__.get(STAND_IN), OpenVinoRunner) for module in denoiser.modules()):
            return "the denoiser already runs OpenVINO"
        return None  # whether RAM holds the compiled copy is the footprint's to say (`storage`)

    def storage(self, anatomy: Anatomy, config: Any, sizes: dict[str, float]) -> dict[str, float]:
        # The compiled model keeps weights of its own beside PyTorch's.
        for name, elements in _converted_elements(anatomy, config).items():
            if name in sizes:
                sizes[name] += elements * _BYTES_PER_CONVERTED_WEIGHT
        return sizes

    def build_bytes(self, anatomy: Anatomy, config: Any, sizes: dict[str, float]) -> float:
        # int8 traces each quantized layer's weights as float32 (FakeQuantize takes float32): fast@6's host peak
        # on SD1.5 was 2.0-3.0 GB above fast@5's (two int8 builds, 0.86 G weights; RESULTS.md).
        if not config.int8 or anatomy.denoiser is None:
            return 0.0
        return _elements(anatomy.denoiser) * _INT8_TRACE_BYTES_PER_WEIGHT

    def describe(self, config: Any, anatomy: Anatomy) -> str:
        parts = ("the denoiser, block by block," if config.blocks else "the denoiser") + (
            " and the VAE decoder" if config.vae and _decoder(anatomy) else ""
        )
        if config.int8:
            kept = f", {', '.join(config.keep_float)} kept {config.precision}" if config.keep_float else ""
            return (
                f"{parts} run by OpenVINO ({config.precision}; the denoiser's convolutions and linears in int8"
                f"{kept}), converted at each call's shape; the first pipeline call runs PyTorch while it "
                "calibrates int8 and converts at its end (a minute or more), or reads the model from the disk cache"
            )
        return (
            f"{parts} run by OpenVINO ({config.precision}), converted at each call's shape; the first call at a new "
            "shape runs PyTorch while it converts (tens of seconds), or reads the converted model from the disk cache"
        )

    def apply(self, pipe: Any, anatomy: Anatomy, caps: Capabilities, config: Any) -> Undo:
        root = Path(config.cache_dir)
        check_trusted(root)  # converted models are loaded from there: only this user's
        denoiser, name = anatomy.denoiser, str(anatomy.denoiser_name)
        # (module whose weights are converted, object the stand-in is set on, attribute, label, int8's keep_float)
        targets: list[tuple[torch.nn.Module, Any, str, str, tuple[str, ...] | None]]
        if config.blocks:
            # Each block's own int8 layers: a block whose top-level child is kept float stays float.
            targets = [
                (block, block, "forward", f"{name}.{path}", None if path.split(".")[0] in config.keep_float else ())
                for path, block in unet_blocks(denoiser)
            ]
        else:
            targets = [(denoiser, denoiser, "forward", name, config.keep_float)]
        if config.vae and _decoder(anatomy):
            guard = anatomy.vae.__dict__.get("decode")
            if isinstance(guard, GuardedDecode):
                # Under half precision's guard, so it still decodes a NaN or black image again in float32.
                targets.append((anatomy.vae, guard, "original", "vae decode", None))
            else:
                targets.append((anatomy.vae, anatomy.vae, "decode", "vae decode", None))
        undo = UndoStack()
        runners: list[OpenVinoRunner] = []
        try:
            for module, host, attribute, label, keep_float in targets:
                runner = OpenVinoRunner(
                    module,
                    attribute,
                    getattr(host, attribute),
                    precision=config.precision,
                    min_snr_db=config.min_snr_db,
                    root=root,
                    label=label,
                    int8_keep_float=keep_float if config.int8 else None,
                    int8_weight_bits=weight_bits(caps.cpu.int8_accelerated),
                    machine=caps.cpu.cpu_class,
                )
                undo.push(runner.forget)  # last: the compiled models go with it
                undo.push(remember_attributes(host, (attribute, STAND_IN)))
                host.__dict__[attribute] = host.__dict__[STAND_IN] = runner
                runners.append(runner)
            if config.int8:
                undo.push(wrap_call(pipe, BuildAfterCall(self.name, name)))
            undo.push(note_after_calls(pipe, self.name, lambda: _described(runners, config.blocks)))
        except Exception:
            undo()
            raise
        return undo


def unet_blocks(denoiser: Any) -> list[tuple[str, torch.nn.Module]]:
    """A UNet's down blocks, mid block and up blocks with their paths (``down_blocks.0``...), or ``[]``."""
    down, mid, up = (getattr(denoiser, part, None) for part in ("down_blocks", "mid_block", "up_blocks"))
    if not isinstance(down, torch.nn.ModuleList) or not isinstance(up, torch.nn.ModuleList) or not down or not up:
        return []
    middle = [("mid_block", mid)] if isinstance(mid, torch.nn.Module) else []
    if any(isinstance(block, (torch.nn.ModuleList, torch.nn.ModuleDict)) for block in [*down, *up]):
        return []  # blocks that are lists of layers (Stable Cascade's): the model never calls their forward
    return [
        *((f"down_blocks.{i}", block) for i, block in enumerate(down)),
        *middle,
        *((f"up_blocks.{i}", block) for i, block in enumerate(up)),
    ]


def _described(runners: list[OpenVinoRunner], blocks: bool) -> str:
    """What the runners did, for the report; block runners summed up in one line, with each block that runs
    PyTorch named with its reason, and what int8 did per block."""
    if not blocks:
        return "; ".join(runner.describe() for runner in runners)
    block_runners = [runner for runner in runners if runner.method == "forward"]
    others = [runner.describe() for runner in runners if runner.method != "forward"]
    label = block_runners[0].label.split(".")[0]
    events = [(runner.label, event) for runner in block_runners for event in runner.events]
    if not events:
        head = (
            f"{label}: {len(block_runners)} blocks waiting for their first call, which runs PyTorch while "
            "OpenVINO converts each (or reads it from the on-disk cache)"
        )
    else:
        models = sum(len(runner.programs) for runner in block_runners)
        int8 = sum("with int8 layers" in event for _, event in events)
        trusted = sum(runner.trusted for runner in block_runners)
        head = (
            f"{label}: {sum(1 for runner in block_runners if runner.programs)} of {len(block_runners)} blocks run "
            f"OpenVINO ({models} models{f', {int8} with int8 layers' if int8 else ''}, "
            f"{sum(runner.openvino_calls for runner in block_runners)} calls"
            f"{f', {trusted} first calls answered by cache entries this machine accepted' if trusted else ''})"
        )
    notes = [f"{runner.label}: {reason}" for runner in block_runners for reason in runner.refused.values()]
    notes += [f"{where}: {event}" for where, event in events if event.startswith("int8")]
    return "; ".join([head, *notes, *others])


def _converted_elements(anatomy: Anatomy, config: Any) -> dict[str, int]:
    """Weights OpenVINO compiles, in elements, by component: the denoiser's, and the VAE decoder's."""
    converted = {}
    if anatomy.denoiser is not None and anatomy.denoiser_name is not None:
        converted[anatomy.denoiser_name] = _elements(anatomy.denoiser)
    if config.vae and _decoder(anatomy):
        vae = anatomy.vae
        parts = [getattr(vae, name, None) for name in ("decoder", "post_quant_conv")]
        modules = [part for part in parts if isinstance(part, torch.nn.Module)] or [vae]
        converted["vae"] = sum(_elements(module) for module in modules)
    return converted


def _elements(module: torch.nn.Module) -> int:
    return sum(tensor.numel() for tensor in [*module.parameters(), *module.buffers()] if tensor.is_floating_point())


def _decoder(anatomy: Anatomy) -> bool:
    return anatomy.vae is not None and callable(getattr(anatomy.vae, "decode", None))
