"""``sdopt.bench``: what each tier buys on this machine, measured side by side in one run.

Every tier gets its own fresh copy of the pipeline; runs are interleaved (baseline, tier A,
tier B, baseline, ...) so machine drift hits all tiers alike; every tier renders the same prompts
with the same seeds, so fidelity is measured against the baseline image by image.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from sdopt.architectures import REAL_ARCHES, TINY_ARCHES, load_pipeline
from sdopt.logging import progress_bar
from sdopt.optimizations._pretrained import stand_ins
from sdopt.tiers import AUTO, DEFAULT_TIER

BASELINE = "baseline"
DEFAULT_PROMPTS = (
    "a lighthouse on a cliff at dawn, oil painting",
    "a red fox in fresh snow, photograph",
    "an isometric city block at night, neon signs",
)
RANDOM_WEIGHTS_NOTE = (
    "random weights: images are noise, so fidelity measures numerical drift between tiers, not image quality"
)


@dataclass
class PeerImage:
    """What a :class:`Peer` returns per image: the uint8 HxWx3 image and what it could time itself."""

    image: np.ndarray
    denoiser_calls_s: list[float] = field(default_factory=list)
    decode_calls_s: list[float] = field(default_factory=list)
    peak_memory_gb: float = 0.0


class Peer(Protocol):
    """Another runtime timed in the same interleaved loop as the tiers (OpenVINO, say, which lives in
    its own environment; see ``benchmarks/openvino_peer.py``). It renders the same prompts with the
    same seeds; its result row is named ``name`` and its load time shows as the optimize time."""

    name: str

    def load(self) -> dict[str, Any]:
        """Get ready to render; return a description of what runs (shown as the row's report)."""
        ...

    def render(self, prompt: str, *, seed: int, steps: int, guidance: float, height: int, width: int) -> PeerImage:
        """Render one image."""
        ...

    def close(self) -> None:
        """Release what ``load`` took."""
        ...


@dataclass
class TierResult:
    """One tier's measurements. Times in seconds, memory in GB, fidelity vs the baseline's images."""

    tier: str
    optimize_s: float = 0.0
    first_call_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    median_s: float = 0.0
    min_s: float = 0.0
    max_s: float = 0.0
    denoiser_step_s: float | None = None
    decode_s: float | None = None
    host_peak_gb: float = 0.0
    """Host memory the tier holds at its peak: the RSS high-water during its calls less the RSS before,
    plus its host-resident weights and any originals kept in memory (as if it ran alone)."""
    device_peak_gb: float | None = None
    """CUDA max allocated during the tier's calls, the tier alone on the device (None off CUDA)."""
    speedup: float | None = None
    tuning_s: float | None = None
    """``auto`` tiers: the seconds spent measuring (only the cache lookup when it came from the cache), not in
    optimize_s."""
    psnr_db: float | None = None
    max_abs_diff: int | None = None
    applied: list[str] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchResult:
    """Every tier's :class:`TierResult` and the settings they were measured with."""

    source: str
    pipeline: str
    device: str
    settings: dict[str, Any]
    machine: dict[str, Any]
    tiers: list[TierResult]
    memory_kind: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save_json(self, path: str | Path) -> None:
        """Strict JSON: an infinite PSNR (identical images) is written as the string "inf"."""
        Path(path).write_text(json.dumps(_finite(self.to_dict()), indent=2, allow_nan=False) + "\n")

    def rows(self) -> list[tuple[str, ...]]:
        def seconds(value: float | None) -> str:
            return "-" if value is None else f"{value:.3f}"

        rows: list[tuple[str, ...]] = []
        batch = self.settings.get("batch", 1)
        for t in self.tiers:
            rows.append(
                (
                    t.tier,
                    f"{t.median_s:.3f} ({t.min_s:.3f}-{t.max_s:.3f})",
                    "-" if not t.median_s else f"{batch / t.median_s:.3g}",
                    "-" if t.speedup is None else f"{t.speedup:.2f}x",
                    seconds(t.first_call_s),
                    seconds(t.denoiser_step_s),
                    seconds(t.decode_s),
                    f"{t.host_peak_gb:.2f}",
                    "-" if t.device_peak_gb is None else f"{t.device_peak_gb:.2f}",
                    "-" if t.psnr_db is None else ("inf" if t.psnr_db == float("inf") else f"{t.psnr_db:.1f}"),
                    "-" if t.max_abs_diff is None else str(t.max_abs_diff),
                    seconds(t.optimize_s),
                    seconds(t.tuning_s),
                    ", ".join(t.applied) or "-",
                )
            )
        return rows

    HEADERS = (
        "tier",
        "s/call median (min-max)",
        "images/s",
        "speedup",
        "first call s",
        "denoiser s/step",
        "decode s",
        "host peak GB",
        "device peak GB",
        "PSNR dB",
        "max diff",
        "optimize s",
        "tune s",
        "applied",
    )

    def table(self) -> str:
        """A plain-text table for the terminal."""
        rows = [self.HEADERS, *self.rows()]
        widths = [max(len(row[i]) for row in rows) for i in range(len(self.HEADERS) - 1)]
        lines = [
            "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=False)) + "  " + row[-1] for row in rows
        ]
        lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 7)
        return "\n".join([self._title(), *lines, *(f"note: {note}" for note in self.notes)])

    def to_markdown(self) -> str:
        """The same table in Markdown, with the settings."""
        lines = [
            f"**{self._title()}**",
            "",
            "| " + " | ".join(self.HEADERS) + " |",
            "|" + "---|" * len(self.HEADERS),
        ]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows()]
        lines += ["", *(f"- {note}" for note in self.notes)]
        return "\n".join(lines) + "\n"

    def plot(self, path: str | Path) -> None:
        """A PNG bar chart of latency and peak memory per tier (needs ``pip install sdopt[bench]``)."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as error:
            raise ImportError("the plot needs matplotlib: pip install sdopt[bench]") from error
        names = [t.tier for t in self.tiers]
        figure, (latency, memory) = plt.subplots(1, 2, figsize=(10, 4))
        latency.bar(names, [t.median_s for t in self.tiers], color="tab:blue")
        latency.set_ylabel("seconds per image (median)")
        on_device = any(t.device_peak_gb is not None for t in self.tiers)
        peaks = [(t.device_peak_gb or 0.0) if on_device else t.host_peak_gb for t in self.tiers]
        memory.bar(names, peaks, color="tab:orange")
        memory.set_ylabel(f"peak memory, GB ({self.memory_kind})")
        figure.suptitle(self._title(), fontsize=9)
        figure.tight_layout()
        figure.savefig(path)
        plt.close(figure)

    def _title(self) -> str:
        s = self.settings
        return (
            f"sdopt bench: {self.source} ({self.pipeline}) on {self.device}, {s['height']}x{s['width']}, "
            f"{s['steps']} steps, guidance {s['guidance']}, {s['runs']} runs"
            + (f", batch {s['batch']} (images per call)" if s.get("batch", 1) > 1 else "")
        )


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def summarize(results: Sequence[TierResult]) -> None:
    """Fill median/min/max from the latencies, and speedup as the ratio of medians to the baseline's."""
    for result in results:
        if result.latencies_s:
            result.median_s = statistics.median(result.latencies_s)
            result.min_s = min(result.latencies_s)
            result.max_s = max(result.latencies_s)
    baseline = next((r for r in results if r.tier == BASELINE), None)
    for result in results:
        if baseline is not None and result.median_s > 0:
            result.speedup = baseline.median_s / result.median_s


def psnr(reference: np.ndarray, image: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 images, in dB (``inf`` when identical)."""
    error = np.mean((reference.astype(np.float64) - image.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(255.0**2 / error))


def max_abs_difference(reference: np.ndarray, image: np.ndarray) -> int:
    """The largest per-pixel difference of two uint8 images (0-255)."""
    return int(np.abs(reference.astype(int) - image.astype(int)).max())


def bench(
    source: str,
    tiers: Sequence[str] = (BASELINE, "balanced"),
    *,
    steps: int = 20,
    height: int | None = None,
    width: int | None = None,
    guidance: float = 7.5,
    runs: int = 3,
    warmup: int = 1,
    prompts: Sequence[str] = DEFAULT_PROMPTS,
    device: str | None = None,
    seed: int = 0,
    clock: Callable[[], float] = time.perf_counter,
    progress: Callable[[str], None] | None = None,
    peers: Sequence[Peer] = (),
    undoable: bool = True,
    memory_budget: float | str | None = None,
    batch: int = 1,
) -> BenchResult:
    """Measure ``tiers`` on the pipeline ``source``: a real-size architecture (``sd15``, ``sdxl``,
    ``sd3``, ``flux``, ``pixart``, random weights), a tiny test one (``tiny-sd``...), or a local
    path / hub id loaded with ``from_pretrained``. ``"baseline"`` is the pipeline as loaded.
    A tier may also be a preset file (``.toml``/``.json``, from ``sdopt freeze``), shown by its
    file name, or ``auto`` / ``auto:<quality>`` (tuned for this bench's call shape; the measuring
    time is its own column, apart from the optimize time). ``peers`` are other runtimes rendering
    the same prompts and seeds in the same interleaved loop.

    Tiers are optimized as a user's defaults would (``undoable=True``: originals spilled, see
    docs/memory.md; ``undoable=False`` for ``--no-undo``), under ``memory_budget`` if given. On CPU
    the tiers render interleaved, image by image, from copies that share the loaded pipeline's
    unchanged weights (one float32 copy in memory, whatever the number of tiers); when the weights
    the tiers change would not all fit in RAM beside it, they run one after another instead, each
    on a pipeline built for it once the baseline is done. On CUDA they run one after another,
    each alone on the device (the loaded pipeline waits on the host), so each tier's device peak
    is its own.

    Examples:
        >>> from sdopt.bench import bench
        >>> result = bench("tiny-sd", ["baseline", "balanced"], steps=2, runs=1, warmup=0)
        >>> [t.tier for t in result.tiers], result.tiers[0].speedup
        (['baseline', 'balanced'], 1.0)
    """
    # A random-weight architecture gets random-weight replacement models (TAESD...) when their real
    # weights are not cached, so fast and ultra are timed with the parts a user with a network gets.
    with stand_ins() if source in REAL_ARCHES or source in TINY_ARCHES else contextlib.nullcontext():
        return _bench(
            source,
            tiers,
            steps=steps,
            height=height,
            width=width,
            guidance=guidance,
            runs=runs,
            warmup=warmup,
            prompts=prompts,
            device=device,
            seed=seed,
            clock=clock,
            progress=progress,
            peers=peers,
            undoable=undoable,
            memory_budget=memory_budget,
            batch=batch,
        )


def _bench(
    source: str,
    tiers: Sequence[str],
    *,
    steps: int,
    height: int | None,
    width: int | None,
    guidance: float,
    runs: int,
    warmup: int,
    prompts: Sequence[str],
    device: str | None,
    seed: int,
    clock: Callable[[], float],
    progress: Callable[[str], None] | None,
    peers: Sequence[Peer],
    undoable: bool,
    memory_budget: float | str | None,
    batch: int = 1,
) -> BenchResult:
    from sdopt.api import optimize
    from sdopt.capabilities import detect
    from sdopt.tiers import resolve_tier

    # Bad tiers and presets fail here, before minutes of loading.
    how = {tier: _how_to_optimize(tier, resolve_tier) for tier in tiers if tier != BASELINE}
    if runs < 1 or warmup < 0 or batch < 1:
        raise ValueError(f"runs and batch must be >= 1, warmup >= 0 (got runs={runs}, batch={batch}, warmup={warmup})")
    if batch > 1 and peers:
        raise ValueError("peers render one image per call: benchmark --batch without them")
    if not prompts:
        raise ValueError("no prompts to render")
    caps = detect(device=device) if device else detect()
    target = caps.device
    names = [*map(_row_name, tiers), *(peer.name for peer in peers)]
    if len(set(names)) != len(names):
        raise ValueError(f"every tier and peer needs its own name (got {', '.join(names)})")
    bar = progress_bar(total=(warmup + runs) * len(names), desc="sdopt bench", unit="call")

    def say(message: str) -> None:
        bar.set_postfix_str(message)
        if progress is not None:
            progress(message)

    peer_results: list[TierResult] = []
    loaded: list[Peer] = []
    try:
        # Peers first: their set-up (an export, say) may need memory the tiers' copies would hold.
        for peer in peers:
            say(f"loading peer {peer.name}")
            result = TierResult(peer.name)
            started = clock()
            description = peer.load()
            loaded.append(peer)
            result.optimize_s = clock() - started
            result.report = {"peer": description}
            peer_results.append(result)

        say(f"building {source} on {target}")
        # On CUDA the loaded pipeline waits on the host: only the tier being measured is on the device.
        loaded_pipe: list[Any] = [load_pipeline(source, "cpu" if target == "cuda" else target)]
        base = loaded_pipe[0]
        height = height or _default_size(base)
        width = width or _default_size(base)
        images = _Images(prompts, steps, guidance, height, width, seed, batch)
        results = [TierResult(_row_name(tier)) for tier in tiers]
        pipeline_name = type(base).__name__
        options: dict[str, Any] = {"caps": caps, "undoable": undoable, "memory_budget": memory_budget, "verify": True}
        references: dict[int, np.ndarray] = {}
        serial_why = "" if target == "cuda" else _why_not_interleaved(base, tiers, how, caps, memory_budget)
        del base

        def lane(tier: str, result: TierResult) -> Callable[[int], _Rendered]:
            if loaded_pipe:
                shared = loaded_pipe[0]
                pipe = shared if tier == BASELINE and target != "cuda" else _light_copy(shared)
            else:  # the loaded pipeline is gone (CPU, one tier at a time): the tier builds its own
                say(f"building {source} for {tier}")
                pipe = load_pipeline(source, target)
            pipe.set_progress_bar_config(disable=True)  # sdopt's own bar over the images instead
            if target == "cuda" and not _plans_offload(pipe, how.get(tier), caps, memory_budget):
                pipe.to("cuda")
            if tier != BASELINE:
                started = clock()
                measured: dict[str, Any] = {"call": images.call_shape()} if how[tier]["tier"] == AUTO else {}
                report = optimize(pipe, **how[tier], **measured, **options)
                result.optimize_s = clock() - started
                if report.tuning is not None:  # measuring is reported apart from applying
                    result.tuning_s = report.tuning.seconds
                    result.optimize_s -= report.tuning.seconds
                result.applied = [d.name for d in report.applied]
                result.report = report.to_dict()
                return _pipeline_renderer(pipe, target, images, clock, report)
            return _pipeline_renderer(pipe, target, images, clock)

        if target == "cuda" or serial_why:
            # The baseline first (the others are compared with its images), then one tier at a time.
            for index in sorted(range(len(tiers)), key=lambda i: tiers[i] != BASELINE):
                render = lane(tiers[index], results[index])
                _run_interleaved([results[index]], [render], warmup, runs, say, references, bar.update)
                del render  # the tier's pipeline goes before the next one comes
                if serial_why and tiers[index] == BASELINE:
                    loaded_pipe.clear()  # on CPU each tier then builds its own: never two float32 copies
                gc.collect()
                if target == "cuda":
                    torch.cuda.empty_cache()
            for peer, result in zip(peers, peer_results, strict=True):
                render = _peer_renderer(peer, images, clock)
                _run_interleaved([result], [render], warmup, runs, say, references, bar.update)
        else:
            renderers = [lane(tier, result) for tier, result in zip(tiers, results, strict=True)]
            loaded_pipe.clear()  # the baseline lane holds it, if any
            renderers += [_peer_renderer(peer, images, clock) for peer in peers]
            _run_interleaved([*results, *peer_results], renderers, warmup, runs, say, references, bar.update)
        results += peer_results
    finally:
        bar.close()
        for peer in loaded:
            peer.close()
    summarize(results)

    notes = []
    if source in REAL_ARCHES or source in TINY_ARCHES:
        notes.append(RANDOM_WEIGHTS_NOTE)
    notes.append(
        "host peak: process RSS high-water during the tier's calls minus the RSS before them, plus the tier's "
        "host-resident weights and originals kept in memory (tiers share unchanged weights in this process; "
        "each row is what the tier would hold alone)"
    )
    if target == "cuda":
        notes.append("device peak: CUDA max allocated during the tier's calls; tiers ran one after another, alone")
    elif serial_why:
        notes.append(f"tiers ran one after another, not interleaved, each on a pipeline built for it: {serial_why}")
    notes.append(
        "optimized with undo's originals kept (the default: checkpoint or spill file, docs/memory.md)"
        if undoable
        else "optimized with --no-undo (nothing kept for undo)"
    )
    if memory_budget is not None:
        notes.append(f"memory budget: {memory_budget}")
    if any("random weights of its published architecture" in str(t.report) for t in results):
        notes.append("replacement models not cached here (TAESD, the fp16-fix VAE) ran with random weights")
    notes.append("fidelity: worst PSNR / largest max abs difference over the runs vs the baseline's image (uint8)")
    if peers:
        notes.append(
            f"peers ({', '.join(p.name for p in peers)}): 'optimize s' is their load time, peak memory and "
            "per-step/decode times are what they report of themselves"
        )
    return BenchResult(
        source=source,
        pipeline=pipeline_name,
        device=caps.device if target != "cuda" or not caps.cuda else f"cuda ({caps.cuda[0].name})",
        settings={
            "steps": steps,
            "height": height,
            "width": width,
            "guidance": guidance,
            "runs": runs,
            "warmup": warmup,
            "prompts": list(prompts),
            "seed": seed,
            "threads": torch.get_num_threads(),
            "undoable": undoable,
            "memory_budget": memory_budget,
            "batch": batch,
        },
        machine={"cpu": caps.cpu.model, "fingerprint": caps.fingerprint, **caps.versions},
        tiers=results,
        memory_kind="CUDA max allocated" if target == "cuda" else "RSS",
        notes=notes,
    )


def _is_preset_file(tier: str) -> bool:
    return Path(tier).suffix in (".toml", ".json")


def _how_to_optimize(tier: str, resolve_tier: Callable[[str], Any]) -> dict[str, Any]:
    name, _, quality = tier.partition(":")
    if name == AUTO:  # "auto" or "auto:fast": the quality tier's steps that measure faster here
        resolve_tier(quality or DEFAULT_TIER)
        return {"tier": AUTO, "quality": quality or DEFAULT_TIER}
    if _is_preset_file(tier):
        from sdopt.presets import Preset

        return {"tier": None, "preset": Preset.load(tier)}
    resolve_tier(tier)
    return {"tier": tier}


def _row_name(tier: str) -> str:
    return Path(tier).name if _is_preset_file(tier) else tier


@dataclass
class _Rendered:
    image: np.ndarray
    elapsed: float
    denoiser_calls: list[float]
    decode_calls: list[float]
    memory_gb: float
    device_memory_gb: float | None


@dataclass(frozen=True)
class _Images:
    """What every row renders: image ``index`` is the same prompt and seed on every row."""

    prompts: Sequence[str]
    steps: int
    guidance: float
    height: int
    width: int
    seed: int
    batch: int = 1

    def prompt(self, index: int) -> str:
        return self.prompts[index % len(self.prompts)]

    def call_shape(self) -> dict[str, Any]:
        """What ``tier="auto"`` tunes for: the calls this bench makes."""
        shape = {"height": self.height, "width": self.width, "steps": self.steps, "guidance": self.guidance}
        return {**shape, "batch": self.batch}


def _pipeline_renderer(
    pipe: Any, device: str, images: _Images, clock: Callable[[], float], report: Any = None
) -> Callable[[int], _Rendered]:
    # The RSS delta of a call misses what is resident before it: the weights on the host, and undo's
    # originals when they had to stay in memory.
    kept = report._originals.resident_bytes() if report is not None and report._originals is not None else 0
    host_gb = (_host_tensor_bytes(pipe) + kept) / 1e9

    def render(index: int) -> _Rendered:
        kwargs = {
            "prompt": images.prompt(index),
            "num_inference_steps": images.steps,
            "guidance_scale": images.guidance,
            "height": images.height,
            "width": images.width,
            "output_type": "np",
            "generator": torch.Generator("cpu").manual_seed(images.seed + index),
        }
        if images.batch > 1:
            kwargs["num_images_per_prompt"] = images.batch
        with _timed_parts(pipe, clock) as (denoiser_calls, decode_calls), _peak_memory(device) as peaks:
            started = clock()
            with torch.inference_mode():
                output = pipe(**kwargs).images
            elapsed = clock() - started
        host, on_device = peaks()
        return _Rendered(to_uint8(output[0]), elapsed, denoiser_calls, decode_calls, host + host_gb, on_device)

    return render


def _peer_renderer(peer: Peer, images: _Images, clock: Callable[[], float]) -> Callable[[int], _Rendered]:
    def render(index: int) -> _Rendered:
        started = clock()
        out = peer.render(
            images.prompt(index),
            seed=images.seed + index,
            steps=images.steps,
            guidance=images.guidance,
            height=images.height,
            width=images.width,
        )
        elapsed = clock() - started
        return _Rendered(out.image, elapsed, out.denoiser_calls_s, out.decode_calls_s, out.peak_memory_gb, None)

    return render


def to_uint8(image: Any) -> np.ndarray:
    """A float image in [0, 1] (``output_type="np"``) as uint8, as the fidelity columns compare them."""
    return (np.clip(np.asarray(image, dtype=np.float32), 0, 1) * 255).round().astype(np.uint8)


def _run_interleaved(
    results: Sequence[TierResult],
    renderers: Sequence[Callable[[int], _Rendered]],
    warmup: int,
    runs: int,
    say: Callable[[str], None],
    references: dict[int, np.ndarray],
    advance: Callable[[], Any] = lambda: None,
) -> None:
    """Warm-up rounds, then timed rounds, each round rendering image ``index`` on every lane in turn;
    the baseline's images go to ``references``, the others are compared with them."""
    total = (warmup + runs) * len(results)
    done = 0
    for round_index in range(warmup):
        for result, render in zip(results, renderers, strict=True):
            done += 1
            say(f"[{done}/{total}] warmup {round_index + 1}: {result.tier}")
            out = render(round_index)
            advance()
            if round_index == 0:
                result.first_call_s = out.elapsed
            _record_memory(result, out)
    steps_seen: dict[str, list[float]] = {r.tier: [] for r in results}
    decodes_seen: dict[str, list[float]] = {r.tier: [] for r in results}
    for run in range(runs):
        index = warmup + run
        for result, render in zip(results, renderers, strict=True):
            done += 1
            say(f"[{done}/{total}] run {run + 1}/{runs}: {result.tier}")
            out = render(index)
            advance()
            if warmup == 0 and run == 0:
                result.first_call_s = out.elapsed
            result.latencies_s.append(out.elapsed)
            _record_memory(result, out)
            steps_seen[result.tier] += out.denoiser_calls
            decodes_seen[result.tier] += out.decode_calls
            if result.tier == BASELINE:
                references[index] = out.image
            elif index in references:
                score = psnr(references[index], out.image)
                result.psnr_db = score if result.psnr_db is None else min(result.psnr_db, score)
                diff = max_abs_difference(references[index], out.image)
                result.max_abs_diff = diff if result.max_abs_diff is None else max(result.max_abs_diff, diff)
    for result in results:
        if steps_seen[result.tier]:
            result.denoiser_step_s = statistics.median(steps_seen[result.tier])
        if decodes_seen[result.tier]:
            result.decode_s = statistics.median(decodes_seen[result.tier])
        if result.tier == BASELINE:
            result.psnr_db, result.max_abs_diff = float("inf"), 0


def _record_memory(result: TierResult, out: _Rendered) -> None:
    result.host_peak_gb = max(result.host_peak_gb, out.memory_gb)
    if out.device_memory_gb is not None:
        result.device_peak_gb = max(result.device_peak_gb or 0.0, out.device_memory_gb)


def _light_copy(pipe: Any) -> Any:
    """A deep copy of ``pipe`` whose tensors share the original's memory: new tensor objects, so
    optimizing the copy rebinds the copy's tensors only (sdopt's steps never write into a tensor's
    memory in place), and a tier costs only what it changes."""
    memo: dict[int, Any] = {}
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            for tensor in [*component.parameters(), *component.buffers()]:
                if isinstance(tensor, torch.nn.Parameter):
                    memo[id(tensor)] = torch.nn.Parameter(tensor.data, requires_grad=tensor.requires_grad)
                else:
                    memo[id(tensor)] = tensor.detach()
    return copy.deepcopy(pipe, memo)


def _why_not_interleaved(
    base: Any, tiers: Sequence[str], how: dict[str, dict[str, Any]], caps: Any, memory_budget: float | str | None
) -> str:
    """Why the tiers cannot all stay in host memory at once (empty when they can). Interleaved lanes
    share the loaded pipeline's unchanged weights, but each holds the weights its tier changed."""
    from sdopt.api import plan
    from sdopt.capabilities import _ram_gb

    before = plan(base, tier=None, caps=caps).footprint
    if before is None:
        return ""
    extra, activations = 0.0, before.activations_gb
    for tier in tiers:
        if tier == BASELINE:
            continue
        footprint = plan(base, **how[tier], caps=caps, memory_budget=memory_budget).footprint
        if footprint is not None:
            activations = max(activations, footprint.activations_gb)
            if abs(footprint.total_gb - before.total_gb) > 1e-6:  # its weights differ from the shared ones
                extra += footprint.total_gb
    available = _ram_gb()[1]
    needed = extra + activations + 1.0  # a GB of headroom for the process itself
    if needed <= available:
        return ""
    return (
        f"interleaving would hold ~{extra:.1f} GB of the tiers' own weights (+ ~{activations:.1f} GB of "
        f"activations) beside the loaded pipeline, with {available:.1f} GB of RAM available"
    )


def _plans_offload(pipe: Any, how: dict[str, Any] | None, caps: Any, memory_budget: float | str | None) -> bool:
    """Whether optimizing ``pipe`` as ``how`` says places components itself (an offload), as
    :func:`sdopt.load` decides whether to move the pipeline to the device first."""
    if how is None:
        return False
    from sdopt.api import plan

    return plan(pipe, **how, caps=caps, memory_budget=memory_budget).offloads


def _default_size(pipe: Any) -> int:
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    sample = getattr(getattr(denoiser, "config", None), "sample_size", None) or 64
    scale = getattr(pipe, "vae_scale_factor", 8)
    if type(pipe).__name__.startswith("Flux") and sample == 1:
        return 1024
    return int(sample * scale) if isinstance(sample, int) else 512


@contextmanager
def _timed_parts(pipe: Any, clock: Callable[[], float]) -> Iterator[tuple[list[float], list[float]]]:
    """Time each denoiser call (forward hooks) and each VAE decode (a temporary wrapper)."""
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    vae = getattr(pipe, "vae", None)
    denoiser_calls: list[float] = []
    decode_calls: list[float] = []
    started: list[float] = []
    handles = []
    if denoiser is not None:
        handles.append(denoiser.register_forward_pre_hook(lambda *args: started.append(clock())))
        handles.append(denoiser.register_forward_hook(lambda *args: denoiser_calls.append(clock() - started.pop())))
    previous = vae.__dict__.get("decode") if vae is not None else None
    if vae is not None:
        inner = vae.decode

        def timed_decode(*args: Any, **kwargs: Any) -> Any:
            begin = clock()
            try:
                return inner(*args, **kwargs)
            finally:
                decode_calls.append(clock() - begin)

        vae.decode = timed_decode
    try:
        yield denoiser_calls, decode_calls
    finally:
        for handle in handles:
            handle.remove()
        if vae is not None:
            if previous is None:
                del vae.decode
            else:
                vae.decode = previous


def _rss_gb() -> float:
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
        import os

        return pages * os.sysconf("SC_PAGE_SIZE") / 1e9
    except (OSError, ValueError):  # not Linux: the high-water mark of the whole process
        import resource

        scale = 1e9 if sys.platform == "darwin" else 1e6
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


@contextmanager
def _peak_memory(device: str) -> Iterator[Callable[[], tuple[float, float | None]]]:
    """Peak memory of the enclosed call: the host RSS increase sampled every 5 ms, and on CUDA the
    device's max allocated."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = _rss_gb()
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.005):
            peak[0] = max(peak[0], _rss_gb())

    def peaks() -> tuple[float, float | None]:
        on_device = torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None
        return max(0.0, peak[0] - before), on_device

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peaks
    finally:
        stop.set()
        sampler.join()
        peak[0] = max(peak[0], _rss_gb())


def _host_tensor_bytes(pipe: Any) -> int:
    """Bytes of the distinct host-memory storages of the pipeline's modules (shared ones once)."""
    storages: dict[int, int] = {}
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            for tensor in [*component.parameters(), *component.buffers()]:
                if tensor.device.type == "cpu" and type(tensor.data) is torch.Tensor:
                    storage = tensor.untyped_storage()
                    storages[storage.data_ptr()] = storage.nbytes()
            # PyTorch's dynamic int8 layers keep packed weights outside any parameter: count them from
            # the state dict, which unpacks them.
            for value in component.state_dict().values():
                for tensor in value if isinstance(value, tuple) else (value,):
                    if isinstance(tensor, torch.Tensor) and tensor.is_quantized and tensor.device.type == "cpu":
                        storages[id(tensor)] = tensor.numel() * tensor.element_size()
    return sum(storages.values())
