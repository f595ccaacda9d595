"""Timing that can be trusted on a busy machine: calls interleaved after warm-ups, medians with the
spread the samples show, a verdict that calls a difference inside that spread what it is, and a
thread count chosen with the machine's load in view.

Used where sdopt prints a speed-up (``sdopt generate --compare``, ``sdopt bench``); ``tier="auto"`` shares
its noise measure (`relative_range`, `MIN_GAIN`) with a search heuristic of its own (`sdopt.tuning.search`).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

MIN_GAIN = 0.02
"""A difference under 2% is not called a speed-up (nor a slow-down), whatever the spread."""


def relative_range(values: Sequence[float]) -> float:
    """The range of ``values`` relative to their median: how far apart two samples of it can land."""
    middle = statistics.median(values)
    return (max(values) - min(values)) / middle if middle > 0 else 0.0


@dataclass(frozen=True)
class Speedup:
    """How much faster the candidate's calls are than the baseline's, and how sure that is.

    ``ratio`` is the baseline's median over the candidate's (above 1: the candidate is faster);
    ``spread`` the noise on that ratio: the two sides' relative ranges, added, and widened by
    (n+1)/(n-1) for n samples, since a few samples show less than the span of the noise (conservative on
    purpose: a half-range let a no-op pass as 1.4x faster in one of twenty simulated busy runs; this
    rule, in under 0.2% of 3000 at three samples each); ``samples`` the fewer samples of the two sides
    (a speed-up needs three each).

    Examples:
        >>> from sdopt.timing import speedup
        >>> print(speedup([2.0, 2.04, 1.98], [1.0, 1.02, 0.99]).describe())
        2.00x faster (+-0.24)
        >>> print(speedup([1.0, 1.3, 0.9], [1.1, 0.95, 1.2]).describe())
        no measurable difference (0.91x, +-1.14: within the noise)
    """

    ratio: float
    spread: float
    samples: int

    @property
    def measured(self) -> bool:
        """Whether each side has the three samples or more a verdict needs."""
        return self.samples >= 3

    @property
    def faster(self) -> bool:
        return self.measured and self.ratio - self.spread > 1 and self.ratio > 1 + MIN_GAIN

    @property
    def slower(self) -> bool:
        return self.measured and self.ratio + self.spread < 1 and self.ratio < 1 - MIN_GAIN

    def describe(self) -> str:
        if not self.measured:
            return (
                f"{self.ratio:.2f}x from {self.samples} timed call(s) each: too few to tell from the noise "
                "(--runs 3 or more)"
            )
        noise = f"+-{self.spread:.2f}"
        if self.faster:
            return f"{self.ratio:.2f}x faster ({noise})"
        if self.slower:
            return f"{self.ratio:.2f}x the speed: slower here ({noise})"
        return f"no measurable difference ({self.ratio:.2f}x, {noise}: within the noise)"


def speedup(baseline_s: Sequence[float], candidate_s: Sequence[float]) -> Speedup:
    """The `Speedup` of ``candidate_s`` over ``baseline_s`` (seconds of comparable calls)."""
    ratio = statistics.median(baseline_s) / statistics.median(candidate_s)
    samples = min(len(baseline_s), len(candidate_s))
    widen = (samples + 1) / (samples - 1) if samples > 1 else 1.0
    spread = ratio * widen * (relative_range(baseline_s) + relative_range(candidate_s))
    return Speedup(ratio, spread, samples)


def device_clock(device: str) -> Callable[[], float]:
    """A clock for timing work on ``device``: on an accelerator it waits for the queued kernels first, so
    a call is timed to its end, not to its last launch.

    Examples:
        >>> from sdopt.timing import device_clock
        >>> clock = device_clock("cpu")
        >>> clock() <= clock()
        True
    """
    import torch

    module = getattr(torch, device, None) if device in ("cuda", "mps", "xpu") else None
    synchronize = getattr(module, "synchronize", None)
    if synchronize is None or not module.is_available():  # type: ignore[union-attr]
        return time.perf_counter  # nothing queued anywhere (also: planned for a device this host lacks)

    def clock() -> float:
        synchronize()
        return time.perf_counter()

    return clock


def interleave(
    lanes: Sequence[Callable[[], Any]],
    *,
    warmup: int,
    runs: int,
    clock: Callable[[], float] = time.perf_counter,
    before_each: Callable[[int, int, bool], None] = lambda lane, index, warming: None,
) -> list[tuple[list[Any], list[float], list[float]]]:
    """Call every lane ``warmup`` times, then ``runs`` timed times, one round at a time and each round in
    the opposite order of the one before (A B, B A, A B...), so a machine getting busier or quieter
    hits every lane alike. Returns per lane: the outputs of the timed calls, their seconds, and the
    seconds of the warm-up calls (the first includes any compilation or cold start).
    ``before_each(lane, index, warming)`` runs before each call (progress).

    Examples:
        >>> from sdopt.timing import interleave
        >>> order = []
        >>> lanes = [lambda: order.append("a"), lambda: order.append("b")]
        >>> _ = interleave(lanes, warmup=1, runs=2)
        >>> "".join(order)
        'abbaab'
    """
    results: list[tuple[list[Any], list[float], list[float]]] = [([], [], []) for _ in lanes]
    for round_index in range(warmup + runs):
        warming = round_index < warmup
        order = range(len(lanes)) if round_index % 2 == 0 else reversed(range(len(lanes)))
        for lane in order:
            before_each(lane, round_index, warming)
            started = clock()
            output = lanes[lane]()
            elapsed = clock() - started
            outputs, seconds, warm_up = results[lane]
            if warming:
                warm_up.append(elapsed)
            else:
                outputs.append(output)
                seconds.append(elapsed)
    return results


@contextlib.contextmanager
def torch_threads(requested: int | None = None, *, cores: int | None = None) -> Iterator[str]:
    """torch's CPU thread count as `choose_threads` picks it, for the ``with`` block only (put back after,
    so a caller's own setting survives); yields the reason.

    Examples:
        >>> import torch
        >>> from sdopt.timing import torch_threads
        >>> before = torch.get_num_threads()
        >>> with torch_threads(1) as why:
        ...     torch.get_num_threads(), why
        (1, 'threads: 1 (as asked)')
        >>> torch.get_num_threads() == before
        True
    """
    import torch

    threads, why = choose_threads(requested, cores=cores)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield why
    finally:
        torch.set_num_threads(previous)


def choose_threads(
    requested: int | None = None, *, load: float | None = None, cores: int | None = None
) -> tuple[int, str]:
    """The torch thread count to time with, and why: the caller's, else every core on a quiet machine,
    else the cores the load leaves free (at least one), with a warning in the reason.

    On a busy machine torch's default (every core) makes each call wait for a core another process
    holds: a tiny call measured 24-40 s with two threads on a loaded 2-core VM instead of 0.7 s.

    Examples:
        >>> from sdopt.timing import choose_threads
        >>> choose_threads(load=0.2, cores=2)
        (2, 'threads: 2 (every core; load 0.2 on 2 cores)')
        >>> choose_threads(load=3.5, cores=2)[0]
        1
        >>> choose_threads(3, load=3.5, cores=2)
        (3, 'threads: 3 (as asked)')
    """
    if requested is not None:
        if requested < 1:
            raise ValueError(f"threads must be >= 1, got {requested}")
        return requested, f"threads: {requested} (as asked)"
    cores = cores or os.cpu_count() or 1
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (OSError, AttributeError):  # not available (Windows): assume a quiet machine
            load = 0.0
    busy = load - 0.5  # less this process's own share of the load average
    if busy <= 0.5:
        return cores, f"threads: {cores} (every core; load {load:.1f} on {cores} cores)"
    free = max(1, int(cores - busy))
    return free, (
        f"threads: {free} of {cores} (this machine is busy: load {load:.1f} on {cores} cores; timings are "
        "noisier than on a quiet machine, --threads N to choose)"
    )
