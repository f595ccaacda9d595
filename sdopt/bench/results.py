"""What a bench run found: a row per tier or peer, and the run as a table, markdown, JSON or a plot."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from sdopt.timing import speedup

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
    """What a `Peer` returns per image: the uint8 HxWx3 image and what it could time itself."""

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
    speedup_spread: float | None = None
    """The noise on `speedup` (see `sdopt.timing.Speedup`); with ``verdict``, whether the
    speed-up is more than that noise: "faster", "slower", "no measurable difference" or "too few runs"."""
    verdict: str | None = None
    tuning_s: float | None = None
    """``auto`` tiers: the seconds spent measuring (only the cache lookup when it came from the cache), not in
    optimize_s."""
    psnr_db: float | None = None
    max_abs_diff: int | None = None
    prompt_accuracy: float | None = None
    """Trained pipelines only (`sdopt.bench.quality`): the share of the quality prompts' images whose
    shape, colour and position the classifier reads as asked."""
    domain_fid: float | None = None
    """Trained pipelines only: the Fréchet distance of the images' classifier features to fresh renders."""
    quality_psnr_db: float | None = None
    """Trained pipelines only: mean pairwise PSNR of the quality images against the baseline's."""
    quality_ssim: float | None = None
    applied: list[str] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchResult:
    """Every tier's `TierResult` and the settings they were measured with."""

    source: str
    pipeline: str
    device: str
    settings: dict[str, Any]
    machine: dict[str, Any]
    tiers: list[TierResult]
    memory_kind: str
    notes: list[str] = field(default_factory=list)
    speedup_reference: str = BASELINE
    """The row the speedups are ratios to: the untouched pipeline as loaded, or on GPUs the untouched
    pipeline in half precision (``untouched-half``), what a GPU user runs."""
    quality: dict[str, Any] | None = None
    """Trained pipelines only: the quality prompts and the baseline's noise floor (`sdopt.bench.quality`)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save_json(self, path: str | Path) -> None:
        """Strict JSON: an infinite PSNR (identical images) is written as the string "inf"."""
        Path(path).write_text(json.dumps(json_safe(self.to_dict()), indent=2, allow_nan=False) + "\n")

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
                    _speedup_cell(t),
                    seconds(t.first_call_s),
                    seconds(t.denoiser_step_s),
                    seconds(t.decode_s),
                    f"{t.host_peak_gb:.2f}",
                    "-" if t.device_peak_gb is None else f"{t.device_peak_gb:.2f}",
                    "-" if t.psnr_db is None else ("inf" if t.psnr_db == float("inf") else f"{t.psnr_db:.1f}"),
                    "-" if t.max_abs_diff is None else str(t.max_abs_diff),
                    *(_quality_cells(t) if self.quality is not None else ()),
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

    QUALITY_HEADERS = ("accuracy", "domain FID", "quality PSNR dB", "quality SSIM")
    """Columns added on trained pipelines (before "optimize s")."""

    def headers(self) -> tuple[str, ...]:
        """The columns of `rows`: `HEADERS`, with `QUALITY_HEADERS` when quality was measured."""
        if self.quality is None:
            return self.HEADERS
        at = self.HEADERS.index("optimize s")
        return (*self.HEADERS[:at], *self.QUALITY_HEADERS, *self.HEADERS[at:])

    def table(self) -> str:
        """A plain-text table for the terminal."""
        headers = self.headers()
        rows = [headers, *self.rows()]
        widths = [max(len(row[i]) for row in rows) for i in range(len(headers) - 1)]
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
            "| " + " | ".join(self.headers()) + " |",
            "|" + "---|" * len(self.headers()),
        ]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows()]
        lines += ["", *(f"- {note}" for note in self.notes)]
        return "\n".join(lines) + "\n"

    def plot(self, path: str | Path) -> None:
        """A PNG bar chart of latency and peak memory per tier, and prompt accuracy where quality was
        measured (needs ``pip install sdopt[bench]``)."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as error:
            raise ImportError("the plot needs matplotlib: pip install sdopt[bench]") from error
        names = [t.tier for t in self.tiers]
        judged = self.quality is not None
        figure, panels = plt.subplots(1, 3 if judged else 2, figsize=(15 if judged else 10, 4))
        latency, memory = panels[0], panels[1]
        medians = [t.median_s for t in self.tiers]
        spread = [[t.median_s - t.min_s for t in self.tiers], [t.max_s - t.median_s for t in self.tiers]]
        latency.bar(names, medians, yerr=spread, capsize=4, color="tab:blue")
        latency.set_ylabel("seconds per call (median; bars: min-max)")
        on_device = any(t.device_peak_gb is not None for t in self.tiers)
        peaks = [(t.device_peak_gb or 0.0) if on_device else t.host_peak_gb for t in self.tiers]
        unit, scale = ("GB", 1.0) if max(peaks, default=0.0) >= 1.0 else ("MB", 1024.0)
        memory.bar(names, [peak * scale for peak in peaks], color="tab:orange")
        memory.set_ylabel(f"peak memory, {unit} ({self.memory_kind})")
        if judged:
            accuracy = panels[2]
            judged_rows = [t for t in self.tiers if t.prompt_accuracy is not None]  # peers are not judged
            accuracy.bar([t.tier for t in judged_rows], [t.prompt_accuracy for t in judged_rows], color="tab:green")
            floor = ((self.quality or {}).get("noise_floor") or {}).get("accuracy_spread")
            accuracy.set_ylim(0, 1.05)
            moves = f" (seed alone moves it {floor:.3f})" if floor is not None else ""
            accuracy.set_ylabel(f"prompt accuracy{moves}")
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


def json_safe(value: Any) -> Any:
    """``value`` for strict JSON: infinite and NaN floats (identical images' PSNR) as strings."""
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_safe(item) for item in value]
    return value


def summarize(results: Sequence[TierResult], reference: str = BASELINE) -> None:
    """Fill median/min/max from the latencies, and speedup as the ratio of medians to the
    ``reference`` row's (the baseline unless told otherwise)."""
    for result in results:
        if result.latencies_s:
            result.median_s = statistics.median(result.latencies_s)
            result.min_s = min(result.latencies_s)
            result.max_s = max(result.latencies_s)
    baseline = next((r for r in results if r.tier == reference), None)
    for result in results:
        if baseline is not None and result.median_s > 0:
            result.speedup = baseline.median_s / result.median_s
            if result is not baseline:
                measured = speedup(baseline.latencies_s, result.latencies_s)
                result.speedup_spread = measured.spread
                result.verdict = (
                    "faster"
                    if measured.faster
                    else "slower"
                    if measured.slower
                    else ("no measurable difference" if measured.measured else "too few runs")
                )


def _quality_cells(result: TierResult) -> tuple[str, str, str, str]:
    def cell(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    return (
        cell(result.prompt_accuracy, 3),
        cell(result.domain_fid, 2),
        cell(result.quality_psnr_db, 1),
        cell(result.quality_ssim, 3),
    )


def _speedup_cell(result: TierResult) -> str:
    """The speedup as the table shows it: with its noise, and never as a gain when it is inside it."""
    if result.speedup is None:
        return "-"
    if result.verdict is None:  # the baseline itself
        return f"{result.speedup:.2f}x"
    noise = f"{result.speedup:.2f}x +-{result.speedup_spread or 0:.2f}"
    if result.verdict in ("faster", "slower"):
        return noise
    if result.verdict == "too few runs":
        return f"{result.speedup:.2f}x (too few runs to tell)"
    return f"no difference ({noise})"
