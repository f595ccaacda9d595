"""The speed guard: a speed step stays only if it makes the call faster, measured on this pipeline.

Rules about which step pays on which hardware have been wrong whenever nobody measured them there
(torchao int8 made SDXL 2.1x slower on an H200). Where measuring is cheap, on GPUs, one denoiser
call takes milliseconds, so ``optimize`` times the call before the speed steps and after each one
(or after each step with the companions it needs), and a step that does not make the call faster
beyond the noise is undone on the spot, its figure in the report. A timed call is a real call at the
app's shape in which only the first denoiser calls per input shape run (`sdopt.timed_calls`): a
few denoiser calls and one decode. The first call after a step (compilation, calibration) is a
warm-up, not held against the step; its cost is reported. On CPUs, where one call takes seconds,
the guard is opt-in (``guard=True``) and the report says it did not measure.

Examples:
    >>> from sdopt import optimize
    >>> from sdopt.testing import tiny_pipeline
    >>> pipe = tiny_pipeline("sd")
    >>> report = optimize(pipe, tier=None, extra=["fuse_qkv"], guard=True, call={"steps": 2})
    >>> report.guard.startswith("speed guard: untouched call")
    True
    >>> report.undo()
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sdopt.anatomy import Anatomy
from sdopt.calls import CallShape
from sdopt.optimization import Optimization
from sdopt.timed_calls import Comparison, Sample, compare, full_output, timed_call
from sdopt.timing import device_clock

ACCELERATORS = ("cuda", "mps", "xpu")


def guard_by_default(device: str, anatomy: Anatomy) -> str:
    """Why ``optimize`` does not guard by default here (empty when it does): it does on accelerators,
    where a call is cheap, when the denoiser is already there (timing it elsewhere would judge the
    steps on the wrong hardware)."""
    if device not in ACCELERATORS:
        return f"on a {device.upper()} one call takes seconds; optimize(..., guard=True) times each speed step"
    parameter = next(anatomy.denoiser.parameters(), None) if anatomy.denoiser is not None else None
    if parameter is None:
        return "the pipeline has no denoiser to time"
    if parameter.device.type != device:
        return f"the denoiser is on {parameter.device.type}, the plan targets {device}; move the pipeline first"
    return ""


def judged(optimization: Optimization) -> bool:
    """Whether the guard times ``optimization``: a speed step (not memory-only, not an offload) whose
    gain a call at a fixed shape can show (`Optimization.speed_judged`)."""
    return optimization.speed_judged and "speed" in optimization.effect and optimization.offload_regime is None


def units(steps: Sequence[Any], companions: Callable[[Any], Sequence[str]]) -> list[range]:
    """The plan's steps cut into the contiguous ranges the guard judges: a step with every companion it
    needs (and whatever the plan put between them), or a step on its own.

    Examples:
        >>> from sdopt.speed_guard import units
        >>> needs = {"int8": ["compile"]}
        >>> units(["fuse", "int8", "layout", "compile", "slicing"], lambda s: needs.get(s, []))
        [range(0, 1), range(1, 4), range(4, 5)]
    """
    index = {name: at for at, name in enumerate(_names(steps))}
    ends = [max([at, *(index[c] for c in companions(step) if c in index)]) for at, step in enumerate(steps)]
    result: list[range] = []
    start = 0
    while start < len(steps):
        end = ends[start]
        at = start
        while at <= end:  # a companion's own companions may reach further
            end = max(end, ends[at])
            at += 1
        result.append(range(start, end + 1))
        start = end + 1
    return result


def _names(steps: Sequence[Any]) -> list[str]:
    return [getattr(step, "name", step) for step in steps]


@dataclass(frozen=True)
class Verdict:
    """The guard's judgment of one unit: kept or not, the comparison, and its first call's seconds."""

    kept: bool
    comparison: Comparison
    first_call_s: float

    def describe(self) -> str:
        verdict = "kept" if self.kept else ("slower" if self.comparison.ratio < 1 else "not faster beyond the noise")
        return f"speed guard: {self.comparison.describe()}, {verdict}; first call {self.first_call_s:.2f} s"


@dataclass
class SpeedGuard:
    """Times the pipeline's call as the engine applies a plan; see the module docstring.

    ``call``: the app's call shape (`CallShape` fields); without a step count or guidance scale the
    pipeline's defaults are used, so steps that change those defaults show their effect.
    """

    device: str
    call: Mapping[str, Any] | None = None
    samples: int = 3
    rounds: int = 2
    real_calls: int = 2
    clock: Callable[[], float] | None = None
    untouched: list[Sample] = field(default_factory=list)
    reference: list[Sample] = field(default_factory=list)
    verdicts: list[tuple[tuple[str, ...], Verdict]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.clock is None:
            self.clock = device_clock(self.device)

    def kwargs(self, pipe: Any) -> dict[str, Any]:
        given = dict(self.call or {})
        kwargs = CallShape.of(pipe, given).kwargs(pipe)
        if "steps" not in given:
            kwargs.pop("num_inference_steps", None)
        if "guidance" not in given:
            kwargs.pop("guidance_scale", None)
        return kwargs

    def start(self, pipe: Any) -> None:
        """Time the pipeline as it is now (before any step): the first reference."""
        self._warm_up(pipe, calibrates=False)
        self.untouched = self._samples(pipe)
        self.reference = list(self.untouched)

    def retime(self, pipe: Any) -> None:
        """Time the pipeline as it is now as the new reference (steps the guard does not judge changed it)."""
        self._warm_up(pipe, calibrates=False)
        self.reference = self._samples(pipe)

    def restart(self) -> None:
        """Back to the untouched reference (the engine rolled everything back to re-plan)."""
        self.reference = list(self.untouched)
        self.verdicts = []

    def judge(self, pipe: Any, steps: Sequence[Any]) -> Verdict:
        """Time the pipeline with ``steps`` just applied against the reference; keep the new timings as
        the reference when they are faster beyond the noise."""
        calibrates = any(step.optimization.calibrates_on_first_call for step in steps)
        first = self._warm_up(pipe, calibrates=calibrates)
        samples: list[Sample] = []
        comparison = None
        for _ in range(self.rounds):
            samples += self._samples(pipe)
            comparison = compare(self.reference, samples)
            if comparison.decided:
                break
        assert comparison is not None
        verdict = Verdict(comparison.faster, comparison, first)
        if verdict.kept:
            self.reference = samples
        self.verdicts.append((tuple(step.name for step in steps), verdict))
        return verdict

    def summary(self) -> str:
        """One line for the report: the untouched call, the guarded one, and what was rolled back."""
        before = statistics.median(s.call_s for s in self.untouched)
        after = statistics.median(s.call_s for s in self.reference)
        rolled = [" + ".join(names) for names, verdict in self.verdicts if not verdict.kept]
        back = f"; rolled back: {', '.join(rolled)}" if rolled else ""
        return (
            f"speed guard: untouched call {before:.3f} s, optimized {after:.3f} s ({before / after:.2f}x), "
            f"{len(self.verdicts)} step group(s) timed{back}"
        )

    def _warm_up(self, pipe: Any, *, calibrates: bool) -> float:
        assert self.clock is not None
        started = self.clock()
        if calibrates:  # a whole first call: the step learns from it
            full_output(pipe, self.kwargs(pipe), self.clock)
        else:
            timed_call(pipe, self.kwargs(pipe), self.clock, self.real_calls)
        return self.clock() - started

    def _samples(self, pipe: Any) -> list[Sample]:
        assert self.clock is not None
        return [timed_call(pipe, self.kwargs(pipe), self.clock, self.real_calls) for _ in range(self.samples)]
