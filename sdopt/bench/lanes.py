"""The bench's lanes: what every row renders (`Images`), a renderer per pipeline or peer, and the
interleaved loop that times them image by image, the baseline's images the reference of the others."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sdopt.bench.instruments import host_tensor_bytes, peak_memory, timed_parts
from sdopt.bench.results import BASELINE, Peer, TierResult
from sdopt.calls import needed_kwargs
from sdopt.fidelity import max_abs_difference, psnr, to_uint8


@dataclass
class Rendered:
    """One call's image and what was measured of it."""

    image: np.ndarray
    elapsed: float
    denoiser_calls: list[float]
    decode_calls: list[float]
    memory_gb: float
    device_memory_gb: float | None


@dataclass(frozen=True)
class Images:
    """What every row renders: image ``index`` is the same prompt and seed on every row."""

    prompts: Sequence[str]
    steps: int
    guidance: float
    height: int
    width: int
    seed: int
    batch: int = 1
    extra: dict[str, Any] = field(default_factory=dict)
    """Call settings the pipeline needs besides these (a trained pipeline's, `sdopt.simulation.trained`)."""

    def prompt(self, index: int) -> str:
        return self.prompts[index % len(self.prompts)]

    def call_shape(self) -> dict[str, Any]:
        """What ``tier="auto"`` tunes for: the calls this bench makes."""
        shape = {"height": self.height, "width": self.width, "steps": self.steps, "guidance": self.guidance}
        return {**shape, "batch": self.batch}


def pipeline_renderer(
    pipe: Any, device: str, images: Images, clock: Callable[[], float], report: Any = None
) -> Callable[[int], Rendered]:
    # The RSS delta of a call misses what is resident before it: the weights on the host, and undo's
    # originals when they had to stay in memory.
    kept = report.originals_in_memory_bytes if report is not None else 0
    host_gb = (host_tensor_bytes(pipe) + kept) / 1e9
    needed = needed_kwargs(pipe)

    def render(index: int) -> Rendered:
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
        kwargs.update(needed)
        kwargs.update(images.extra)
        with timed_parts(pipe, clock) as (denoiser_calls, decode_calls), peak_memory(device) as peaks:
            started = clock()
            with torch.inference_mode():
                output = pipe(**kwargs).images
            elapsed = clock() - started
        host, on_device = peaks()
        return Rendered(to_uint8(output[0]), elapsed, denoiser_calls, decode_calls, host + host_gb, on_device)

    return render


def peer_renderer(peer: Peer, images: Images, clock: Callable[[], float]) -> Callable[[int], Rendered]:
    def render(index: int) -> Rendered:
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
        return Rendered(out.image, elapsed, out.denoiser_calls_s, out.decode_calls_s, out.peak_memory_gb, None)

    return render


def run_interleaved(
    results: Sequence[TierResult],
    renderers: Sequence[Callable[[int], Rendered]],
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


def _record_memory(result: TierResult, out: Rendered) -> None:
    result.host_peak_gb = max(result.host_peak_gb, out.memory_gb)
    if out.device_memory_gb is not None:
        result.device_peak_gb = max(result.device_peak_gb or 0.0, out.device_memory_gb)
