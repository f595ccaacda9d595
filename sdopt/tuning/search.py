"""Greedy forward selection: each candidate of the quality tier is timed against the best configuration
so far and kept only when it is faster by more than the noise and faithful enough.

The pipeline changes only inside `_applied` (the engine applies the configuration as a preset,
strictly, and it is undone on the way out), so whatever happens during a measurement, an error or Ctrl-C, the pipeline
leaves each measurement exactly as it entered it.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sdopt import registry
from sdopt.calls import CallShape
from sdopt.capabilities import Capabilities
from sdopt.engine import apply_plan
from sdopt.fidelity import psnr
from sdopt.planning import Plan, Request, Step
from sdopt.presets import Entry, Preset
from sdopt.timed_calls import Comparison, Sample, compare, full_output, timed_call
from sdopt.tuning.record import NOT_MEASURED, Trial


@dataclass
class Settings:
    shape: CallShape
    caps: Capabilities
    memory_budget: float | str | None
    min_psnr_db: float | None
    budget_s: float | None
    clock: Callable[[], float]
    samples: int = 2
    rounds: int = 3
    real_calls: int = 3
    seed: int = 0
    started: float = field(default=0.0)

    def time_left(self) -> float:
        if self.budget_s is None:
            return math.inf
        return self.budget_s - (self.clock() - self.started)


class BudgetSpent(Exception):
    """The time budget ran out before a measurement could start."""


def groups(plan: Plan, order: Sequence[str]) -> tuple[list[Step], list[list[Step]]]:
    """The plan's steps split into those kept untimed (the memory budget's, memory-only steps) and the
    timed candidate groups, in the tier's order; a step and the companions it needs form one group."""
    fixed = [s for s in plan.steps if s.optimization.offload_regime is not None or s.optimization.effect == "memory"]
    timed = [s for s in plan.steps if s not in fixed]
    rank = {name: index for index, name in enumerate(order)}
    timed.sort(key=lambda step: rank.get(step.name, len(rank)))
    names = {step.name for step in timed}
    together: dict[str, set[str]] = {step.name: {step.name} for step in timed}
    for step in timed:
        for companion in step.optimization.companions(plan.anatomy, plan.caps, step.config):
            if companion in names:
                merged = together[step.name] | together[companion]
                for name in merged:
                    together[name] = merged
    result: list[list[Step]] = []
    seen: set[str] = set()
    for step in timed:
        if step.name in seen:
            continue
        members = together[step.name]
        seen |= members
        result.append([s for s in timed if s.name in members])
    return fixed, result


def entries(steps: Sequence[Step]) -> list[Entry]:
    return [Entry(step.name, step.optimization.config_to_dict(step.config)) for step in steps]


@contextlib.contextmanager
def _applied(pipe: Any, configuration: Sequence[Entry], settings: Settings) -> Iterator[None]:
    if not configuration:
        yield
        return
    trial = Preset("auto-trial", tuple(configuration))
    request = Request(preset=trial, caps=settings.caps, memory_budget=settings.memory_budget)
    report = apply_plan(pipe, request, strict=True)
    try:
        yield
    finally:
        _undo_fully(report)


def _undo_fully(report: Any) -> None:
    """``report.undo()``, carried on through a Ctrl-C that lands in it (its stack keeps what is left), so a
    measurement always leaves the pipeline as it found it; the first interrupt is already on its way up."""
    while True:
        try:
            report.undo()
            return
        except KeyboardInterrupt:
            continue


def _warm_up(
    pipe: Any, configuration: Sequence[Entry], kwargs: dict[str, Any], settings: Settings, *, short: bool
) -> None:
    """A whole first call where a step calibrates on it (static int8), else a short one if ``short``."""
    if any(registry.get(entry.name).calibrates_on_first_call for entry in configuration):
        full_output(pipe, kwargs, settings.clock)
    elif short:
        timed_call(pipe, kwargs, settings.clock, settings.real_calls)


def measure(pipe: Any, configuration: Sequence[Entry], settings: Settings, count: int) -> list[Sample]:
    """Apply ``configuration``, warm it up with one call, take ``count`` timed samples, undo."""
    if settings.time_left() <= 0:
        raise BudgetSpent
    kwargs = settings.shape.kwargs(pipe, settings.seed)
    with _applied(pipe, configuration, settings):
        _warm_up(pipe, configuration, kwargs, settings, short=True)
        return [timed_call(pipe, kwargs, settings.clock, settings.real_calls) for _ in range(count)]


def fidelity(pipe: Any, configuration: Sequence[Entry], settings: Settings) -> Any:
    """The uint8 output of one whole call with ``configuration`` applied (after a warm-up call when
    a step calibrates on its first call)."""
    with _applied(pipe, configuration, settings):
        _warm_up(pipe, configuration, settings.shape.kwargs(pipe, settings.seed), settings, short=False)
        image, _ = full_output(pipe, settings.shape.kwargs(pipe, settings.seed), settings.clock)  # fresh generator
    return image


def try_group(
    pipe: Any,
    best: list[Entry],
    group: list[Step],
    settings: Settings,
    reference: Any,
) -> Trial:
    """Time ``best + group`` against ``best`` in alternating blocks until the difference is outside the
    noise (or the rounds or the budget run out), then check the fidelity of a faster one."""
    names = tuple(step.name for step in group)
    candidate = [*best, *entries(group)]
    best_samples: list[Sample] = []
    samples: list[Sample] = []
    comparison: Comparison | None = None
    try:
        for _ in range(settings.rounds):
            best_samples += measure(pipe, best, settings, settings.samples)
            samples += measure(pipe, candidate, settings, settings.samples)
            comparison = compare(best_samples, samples)
            if comparison.decided:
                break
    except BudgetSpent:
        if comparison is None:
            return Trial(names, False, f"{NOT_MEASURED}: the time budget of {settings.budget_s:g} s was spent")
    assert comparison is not None
    if not comparison.faster:
        verdict = "slower here" if comparison.ratio < 1 else "not faster beyond the noise"
        return _trial(names, False, f"{comparison.describe()}, {verdict}", comparison)
    if settings.min_psnr_db is None:
        return _trial(names, True, f"{comparison.describe()}; no fidelity floor for this quality", comparison)
    value = psnr(reference, fidelity(pipe, candidate, settings))
    shown = "identical" if value == math.inf else f"{value:.1f} dB"
    if value < settings.min_psnr_db:
        floor = f"under the floor of {settings.min_psnr_db:g} dB"
        return _trial(
            names, False, f"{comparison.describe()} but {shown} vs the untouched pipeline, {floor}", comparison, value
        )
    return _trial(names, True, f"{comparison.describe()}, {shown} vs the untouched pipeline", comparison, value)


def try_gently(
    pipe: Any,
    best: list[Entry],
    group: list[Step],
    settings: Settings,
    reference: Any,
) -> tuple[list[Trial], list[Step]]:
    """`try_group`, then, where ``group`` was faster but fell under the fidelity floor and its one step
    has a `gentler <sdopt.optimization.Optimization.gentler>` config, the same with that config: the
    trials made, and the group the last of them measured (the one to keep if it was kept)."""
    trial = try_group(pipe, best, group, settings, reference)
    milder = _gentler(group) if _under_floor(trial, settings) else None
    if milder is None:
        return [trial], group
    changed = _changed_options(group[0], milder[0])
    second = try_group(pipe, best, milder, settings, reference)
    return [trial, replace(second, why=f"with {changed}: {second.why}")], milder


def _under_floor(trial: Trial, settings: Settings) -> bool:
    floor = settings.min_psnr_db
    return not trial.kept and floor is not None and trial.psnr_db is not None and trial.psnr_db < floor


def _gentler(group: list[Step]) -> list[Step] | None:
    if len(group) != 1:  # companions are timed together: no one step's gentler config stands for them
        return None
    (step,) = group
    config = step.optimization.gentler(step.config)
    return None if config is None else [replace(step, config=config)]


def _changed_options(before: Step, after: Step) -> str:
    old = before.optimization.config_to_dict(before.config)
    new = after.optimization.config_to_dict(after.config)
    return ", ".join(f"{key}={value}" for key, value in new.items() if old.get(key) != value)


def _trial(names: tuple[str, ...], kept: bool, why: str, comparison: Comparison, psnr_db: float | None = None) -> Trial:
    return Trial(
        names,
        kept,
        why,
        ratio=comparison.ratio,
        spread=comparison.spread,
        denoiser_ratio=comparison.denoiser_ratio,
        psnr_db=psnr_db,
        samples=comparison.samples,
        call_s=comparison.call_s,
        best_s=comparison.best_s,
    )


def now() -> float:
    return time.perf_counter()
