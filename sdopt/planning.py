"""From a tier or preset to an ordered list of steps. Pure: the pipeline is only read.

candidates (``extra`` first, then the preset's entries)
  -> the caller's exclusions, the entries' ``when`` conditions
  -> each optimization's ``requires`` and ``check``
  -> conflicts among the steps that are not budget-driven (the earlier candidate wins; the loser
     is skipped naming the winner)
  -> the memory footprint of those steps (weights in their planned dtypes + activations) decides
     the budget-driven steps (offloads), which then win conflicts against speed steps
  -> companions (a step that only pays together with another is dropped without it)
  -> order (kind order, refined by declared ``after``/``before``).
Every candidate ends as a step or a skipped decision with its reason.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sdopt import registry
from sdopt.anatomy import Anatomy, inspect_pipeline, unwrap
from sdopt.capabilities import Capabilities, detect, fact_differences
from sdopt.errors import MemoryBudgetError, PlanningError
from sdopt.footprint import GB, Footprint, component_bytes, covers, estimate, parse_memory
from sdopt.optimization import KINDS, Optimization
from sdopt.presets import Entry, Preset
from sdopt.report import Decision, format_table
from sdopt.tiers import LOW_MEMORY, resolve_tier

ExtraItem = str | Mapping[str, Any] | Entry | Any
"""An extra optimization: its name, ``{"name": ..., **options}``, an `Entry`, or a config instance."""


@dataclass(frozen=True)
class Step:
    """One optimization the plan will apply, with its fully resolved config."""

    optimization: Optimization
    config: Any
    source: str

    @property
    def name(self) -> str:
        return self.optimization.name

    def planned(self, anatomy: Anatomy) -> Decision:
        """The decision "planned", saying what the step will do to this pipeline."""
        return self.decision("planned", self.optimization.describe(self.config, anatomy))

    def decision(self, status: str, reason: str, seconds: float | None = None) -> Decision:
        opt = self.optimization
        return Decision(
            name=opt.name,
            status=status,
            reason=reason,
            config=opt.config_to_dict(self.config),
            kind=opt.kind,
            lossy=opt.lossy_with(self.config),
            source=self.source,
            seconds=seconds,
        )


@dataclass
class Plan:
    """What `sdopt.optimize` would do to a pipeline on a machine, decided without changing it.

    Examples:
        >>> from sdopt import plan
        >>> from sdopt.testing import tiny_pipeline, fake_capabilities
        >>> p = plan(tiny_pipeline("sd"), tier="balanced", caps=fake_capabilities("cpu-amx"))
        >>> [step.name for step in p.steps]
        ['half_precision', 'channels_last']
    """

    source: str | None
    anatomy: Anatomy
    caps: Capabilities
    steps: list[Step] = field(default_factory=list)
    skipped: list[Decision] = field(default_factory=list)
    requested: tuple[str, ...] = ()
    """Names the caller asked for explicitly (``extra`` or a preset), as opposed to a tier's choices."""
    preset_differences: tuple[str, ...] = ()
    """How this machine differs from the one a frozen preset was made on (empty when the same)."""
    footprint: Footprint | None = None
    """The planned memory footprint on the target device (see `sdopt.footprint`)."""
    notes: tuple[str, ...] = ()
    """What planning found the user must know (e.g. that the plan does not fit in memory)."""
    memory_budget_gb: float | None = None
    """The caller's memory budget (or the replayed preset's), if any."""

    @property
    def fits(self) -> bool:
        """Whether the planned peak fits the device: all resident, or with the offload its regime needs
        (a CPU cannot offload: with a budget, its peak must fit in it)."""
        if self.footprint is None or self.footprint.regime == "none":
            return True
        if self.device == "cpu":
            return self.memory_budget_gb is None
        if self.footprint.smallest_gb > self.footprint.available_gb:
            return False  # not even one layer at a time with the activations
        return any(covers(step.optimization.offload_regime, self.footprint.regime) for step in self.steps)

    @property
    def offloads(self) -> bool:
        """Whether the plan offloads (the offload places each component itself, so the pipeline is
        not moved to the device first: `sdopt.load`, ``sdopt generate``)."""
        return any(step.optimization.offload_regime is not None for step in self.steps)

    @property
    def device(self) -> str:
        """The device type this plan targets."""
        return self.caps.device

    @property
    def warnings(self) -> tuple[str, ...]:
        """Problems the user should know of: the machine's (e.g. a GPU this torch build cannot use),
        a frozen preset replayed on a machine with other capabilities, a plan that does not fit."""
        if not self.preset_differences:
            return (*self.caps.warnings, *self.notes)
        mismatch = (
            f"preset {self.source} was frozen on a machine with other capabilities "
            f"({'; '.join(self.preset_differences)}); steps that cannot apply here are skipped"
        )
        return (*self.caps.warnings, mismatch, *self.notes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "pipeline": self.anatomy.to_dict(),
            "device": self.device,
            "device_reason": self.caps.device_reason,
            "warnings": list(self.warnings),
            "fingerprint": self.caps.fingerprint,
            "preset_differences": list(self.preset_differences),
            "footprint": self.footprint.to_dict() if self.footprint is not None else None,
            "fits": self.fits,
            "steps": [step.planned(self.anatomy).to_dict() for step in self.steps],
            "skipped": [decision.to_dict() for decision in self.skipped],
        }

    def __str__(self) -> str:
        rows = [step.planned(self.anatomy) for step in self.steps]
        header = (
            f"sdopt plan: {self.source or 'no tier'} for {self.anatomy.pipeline_class} "
            f"(family {self.anatomy.family}) on {self.device}"
        )
        notes = "".join(f"\nwarning: {warning}" for warning in self.warnings)
        if self.footprint is not None:
            notes += f"\nmemory: {self.footprint.describe()} on {self.device}"
        return header + notes + "\n" + format_table(rows + self.skipped)


@dataclass(frozen=True)
class Request:
    """What a caller asks `sdopt.optimize` / `sdopt.plan` for, in one object.

    ``tier`` or ``preset`` (not both) gives the candidates; ``exclude`` names never to apply;
    ``extra`` more optimizations (they win conflicts); ``caps`` the machine (default: detected);
    ``memory_budget`` the most device memory the plan may use (GB or "6GB").

    Examples:
        >>> from sdopt.planning import Request, make_plan
        >>> from sdopt.testing import tiny_pipeline, fake_capabilities
        >>> request = Request(tier="balanced", caps=fake_capabilities("cpu-amx"))
        >>> [step.name for step in make_plan(tiny_pipeline("sd"), request).steps]
        ['half_precision', 'channels_last']
    """

    tier: str | None = None
    preset: Preset | None = None
    exclude: tuple[str, ...] = ()
    extra: tuple[ExtraItem, ...] = ()
    caps: Capabilities | None = None
    memory_budget: float | str | None = None


def as_tuple(items: Iterable[Any], argument: str) -> tuple[Any, ...]:
    """``items`` (a caller's ``exclude`` or ``extra``) as a tuple; a lone string is refused, not split."""
    if isinstance(items, str):
        raise TypeError(f"{argument} must be a list of optimization names, got the string {items!r}")
    return tuple(items)


def make_plan(pipe: Any, request: Request, *, failed: Mapping[str, str] | None = None) -> Plan:
    """The plan of ``request`` for ``pipe``. ``failed`` names optimizations that already failed on this
    pipeline (left out). Pure: the pipeline is only read."""
    tier, preset, exclude, extra, caps = request.tier, request.preset, request.exclude, request.extra, request.caps
    memory_budget = request.memory_budget
    if tier is not None and preset is not None:
        raise ValueError("pass either tier=... or preset=..., not both")
    if memory_budget is None and preset is not None:
        memory_budget = preset.memory_budget_gb  # a frozen preset replays under the budget it was made with
    budget_gb = parse_memory(memory_budget) if memory_budget is not None else None
    anatomy = inspect_pipeline(pipe)
    base = preset if preset is not None else (resolve_tier(tier) if tier is not None else None)
    if base is not None and not isinstance(base, Preset):
        raise TypeError(f"preset must be an sdopt.Preset (see Preset.load), got {type(base).__name__}")
    excluded = _validated_names(exclude)
    extras = [_entry_from_extra(item) for item in extra]
    caps = caps if caps is not None else detect()
    source = base.label if base is not None else None

    candidates: dict[str, list[tuple[Entry, str]]] = {}
    for entry in extras:
        candidates.setdefault(entry.name, []).append((entry, "extra"))
    if base is not None:
        for entry in base.entries:
            registry.get(entry.name)  # an unknown name in a preset is an error, not a skip
            if not any(src == "extra" for _, src in candidates.get(entry.name, [])):
                candidates.setdefault(entry.name, []).append((entry, base.label))

    result = Plan(source=source, anatomy=anatomy, caps=caps, memory_budget_gb=budget_gb)
    if anatomy.family == "other":
        denoiser = type(unwrap(anatomy.denoiser)).__name__ if anatomy.denoiser is not None else "none"
        result.notes += (
            f"family unknown: generic steps only ({anatomy.pipeline_class} with a {denoiser} denoiser is none of "
            "the families sdopt tells apart, so family-specific steps such as the solver swap are skipped)",
        )
    if preset is not None and preset.fingerprint and preset.fingerprint != caps.fingerprint:
        differences = fact_differences(preset.made_on or {}, caps.fingerprint_facts())
        result.preset_differences = tuple(differences) or (f"fingerprint {preset.fingerprint} -> {caps.fingerprint}",)
    result.requested = tuple(
        name for name, options in candidates.items() if preset is not None or options[0][1] == "extra"
    )
    eligible: list[Step] = []
    for name, options in candidates.items():
        optimization = registry.get(name)
        source_label = options[0][1]
        if failed and name in failed:
            continue  # reported as failed by the caller
        if name in excluded:
            result.skipped.append(_skip(optimization, source_label, "excluded by the caller"))
            continue
        wanted, source_label, unwanted_reason = _first_wanted(options, anatomy, caps)
        if wanted is None:
            result.skipped.append(_skip(optimization, source_label, f"not wanted here: {unwanted_reason}"))
            continue
        config = optimization.make_config(wanted.config)
        reason = optimization.requires.unmet(anatomy, caps) or optimization.check(anatomy, caps, config)
        if reason:
            result.skipped.append(_skip(optimization, source_label, reason, config))
            continue
        eligible.append(Step(optimization, optimization.resolve(anatomy, caps, config), source_label))

    winners = _without_conflicts(
        [step for step in eligible if step.optimization.offload_regime is None], result.skipped
    )
    budgeted = [step for step in eligible if step.optimization.offload_regime is not None]
    # Settling the budget can drop speed steps (conflicts, companions), which changes the footprint:
    # repeat until the speed steps the estimate assumed are the ones planned.
    carried: list[Decision] = []  # why speed steps dropped in an earlier round were dropped
    for _ in range(3):
        decided: list[Decision] = []
        footprint, steps = _settle_budget(anatomy, caps, winners, budgeted, decided, budget_gb)
        speed = [step for step in steps if step.optimization.offload_regime is None]
        dropped = {step.name for step in winners} - {step.name for step in speed}
        if not dropped:
            break
        carried += [decision for decision in decided if decision.name in dropped]
        winners = speed
    result.footprint, result.steps = footprint, steps
    result.skipped += carried + decided
    low_memory = tier is not None and tier.partition("@")[0] == LOW_MEMORY  # pinned or latest
    if not result.fits and budget_gb is not None and low_memory:
        raise _below_any_plan(result, budget_gb)
    if not low_memory and not result.fits:
        # With a caller's budget, this raises when even the low-memory tier cannot fit it.
        lowest = make_plan(pipe, Request(tier=LOW_MEMORY, exclude=exclude, caps=caps, memory_budget=memory_budget))
        instead = f"tier {LOW_MEMORY!r} would fit" if lowest.fits else f"not even tier {LOW_MEMORY!r} fits"
        result.notes += (f"this plan does not fit in memory: {result.footprint.describe()}; {instead}",)
    elif not result.fits:
        result.notes += (f"this plan does not fit in memory: {result.footprint.describe()}",)
    return result


def _below_any_plan(lowest: Plan, budget_gb: float) -> MemoryBudgetError:
    """The error for a budget even the low-memory plan ``lowest`` cannot fit, naming the smallest that would."""
    footprint = lowest.footprint
    assert footprint is not None
    if lowest.device == "cpu":  # nothing to offload to: everything stays resident
        smallest = footprint.peak_gb
        detail = f"on CPU the low-memory plan keeps everything resident ({footprint.describe()})"
    else:
        smallest = footprint.smallest_gb
        detail = (
            f"even with sequential offload (one layer on {lowest.device} at a time) the low-memory plan needs "
            f"~{footprint.activations_gb:.2f} GB of activations + {footprint.largest_layer_gb:.2f} GB for the "
            "largest layer"
        )
    return MemoryBudgetError(budget_gb, math.ceil(max(smallest, 0.1) * 10) / 10, detail)


def _settle_budget(
    anatomy: Anatomy,
    caps: Capabilities,
    winners: list[Step],
    budgeted: list[Step],
    skipped: list[Decision],
    budget_gb: float | None,
) -> tuple[Footprint, list[Step]]:
    """The footprint of ``winners`` and the final ordered steps once the memory budget has spoken:
    speed steps that add weights go when memory is short, the budget-driven steps it calls for win
    conflicts against speed steps, and companions are settled."""
    winners = list(winners)
    footprint = estimate(anatomy, caps, _ordered(winners), budget_gb)
    if footprint.regime != "none":
        # Short of memory: speed steps that add weights (fuse_qkv keeps q/k/v twice, a compiled copy) or hold
        # copies while they build go, the costliest first, until the rest fits (or none is left to drop).
        stored = component_bytes(anatomy)
        droppable: list[tuple[float, str, Step]] = []
        for step in winners:
            after = step.optimization.storage(anatomy, step.config, dict(stored))
            grown = sum(after.values()) - sum(stored.values())
            built = step.optimization.build_bytes(anatomy, step.config, dict(stored))
            if grown >= built and grown > 0:
                droppable.append((grown, f"adds {grown / GB:.2f} GB of weights", step))
            elif built > 0:
                droppable.append((built, f"holds {built / GB:.2f} GB to build", step))
        for _, what, step in sorted(droppable, key=lambda item: item[0], reverse=True):
            if footprint.regime == "none":
                break
            winners.remove(step)
            reason = f"{what}, which the memory budget cannot spare: {footprint.describe()}"
            skipped.append(_skip(step.optimization, step.source, reason, step.config))
            footprint = estimate(anatomy, caps, _ordered(winners), budget_gb)
    needed = []
    for step in budgeted:
        unneeded = step.optimization.check_budget(anatomy, caps, step.config, footprint)
        if unneeded:
            skipped.append(_skip(step.optimization, step.source, unneeded, step.config))
        else:
            needed.append(step)
    # What the memory budget requires wins over what only buys speed (a plan must not run out of memory).
    needed = _without_conflicts(needed, skipped)
    kept = list(needed)
    for step in winners:
        rival = next((n for n in needed if _conflict(step, n)), None)
        if rival is None:
            kept.append(step)
        else:
            why = f"{rival.name} is required by the memory budget: {footprint.describe()}"
            skipped.append(_skip(step.optimization, step.source, f"conflicts with {why}", step.config))
    return footprint, _ordered(_with_companions(kept, anatomy, caps, skipped))


def _without_conflicts(steps: list[Step], skipped: list[Decision]) -> list[Step]:
    """The steps that do not conflict with an earlier one; the others are skipped naming the winner."""
    winners: list[Step] = []
    for step in steps:
        rival = next((w for w in winners if _conflict(step, w)), None)
        if rival is None:
            winners.append(step)
            continue
        why = f"same group {rival.optimization.group!r}" if step.optimization.group else "declared conflict"
        skipped.append(
            _skip(
                step.optimization,
                step.source,
                f"conflicts with {rival.name} ({why}; {rival.name} chosen first)",
                step.config,
            )
        )
    return winners


def _with_companions(steps: list[Step], anatomy: Anatomy, caps: Capabilities, skipped: list[Decision]) -> list[Step]:
    """Drop steps whose required companions are not planned, until none is left wanting."""
    while True:
        names = {step.name for step in steps}
        for step in steps:
            missing = {
                name: why
                for name, why in step.optimization.companions(anatomy, caps, step.config).items()
                if name not in names
            }
            if missing:
                needs = "; ".join(f"{name} is not planned ({why})" for name, why in missing.items())
                skipped.append(step.decision("skipped", f"needs {', '.join(missing)} in the same plan: {needs}"))
                steps = [other for other in steps if other is not step]
                break
        else:
            return steps


def _validated_names(names: Iterable[str]) -> set[str]:
    result = set()
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"exclude must list optimization names (strings), got {name!r}")
        registry.get(name)  # raises with the closest names
        result.add(name)
    return result


def _entry_from_extra(item: ExtraItem) -> Entry:
    if isinstance(item, Entry):
        registry.get(item.name)
        return item
    if isinstance(item, str):
        registry.get(item)
        return Entry(item)
    if isinstance(item, Mapping):
        if not isinstance(item.get("name"), str):
            raise ValueError(f"an extra optimization given as a mapping needs a 'name' key: {dict(item)!r}")
        options = {k: v for k, v in item.items() if k != "name"}
        registry.get(item["name"]).make_config(options)
        return Entry(item["name"], options)
    optimization = registry.by_config_type(item)
    if optimization is None:
        raise TypeError(
            f"extra items must be optimization names, {{'name': ..., **options}} mappings, Entry objects "
            f"or optimization Config instances; got {type(item).__name__}"
        )
    return Entry(optimization.name, optimization.config_to_dict(item))


def _first_wanted(
    options: list[tuple[Entry, str]], anatomy: Anatomy, caps: Capabilities
) -> tuple[Entry | None, str, str]:
    reasons = []
    for entry, source in options:
        reason = entry.when.unmet(anatomy, caps)
        if reason is None:
            return entry, source, ""
        reasons.append(reason)
    return None, options[0][1], "; ".join(dict.fromkeys(reasons))


def _skip(optimization: Optimization, source: str, reason: str, config: Any = None) -> Decision:
    config = config if config is not None else optimization.make_config({})  # every option has a default
    return Step(optimization, config, source).decision("skipped", reason)


def _conflict(a: Step, b: Step) -> bool:
    first, second = a.optimization, b.optimization
    if first.group is not None and first.group == second.group:
        return True
    if not registry.conflicts_between(first.name, second.name):
        return False
    return not (first.composes_with(a.config, second.name) or second.composes_with(b.config, first.name))


def _ordered(steps: list[Step]) -> list[Step]:
    """Kind order first, then a stable topological sort on the declared before/after relations."""
    pending = sorted(steps, key=lambda step: KINDS.index(step.optimization.kind))
    ordered: list[Step] = []
    while pending:
        for index, step in enumerate(pending):
            blocked = any(registry.must_precede(other.name, step.name) for other in pending if other is not step)
            if not blocked:
                ordered.append(pending.pop(index))
                break
        else:
            cycle = ", ".join(step.name for step in pending)
            raise PlanningError(f"the declared before/after relations between {cycle} form a cycle")
    return ordered
