"""``optimize`` and ``plan``: resolve, check everything, then apply transactionally."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Mapping
from typing import Any

from sdopt.anatomy import inspect_pipeline
from sdopt.capabilities import Capabilities
from sdopt.errors import OptimizationFailed, PresetMismatchError, StrictModeError
from sdopt.logging import get_logger
from sdopt.optimizations._pretrained import offline
from sdopt.optimizations.base import Undo
from sdopt.originals import Originals, active
from sdopt.planning import ExtraItem, Plan, Step, make_plan
from sdopt.presets import Preset
from sdopt.report import Decision, Report, run_undo_stack, with_tuning
from sdopt.tiers import DEFAULT_TIER, is_auto
from sdopt.transaction import Restore, record
from sdopt.verification import run_verification

_logger = get_logger(__name__)


def plan(
    pipe: Any,
    tier: str | None = DEFAULT_TIER,
    *,
    preset: Preset | None = None,
    exclude: Iterable[str] = (),
    extra: Iterable[ExtraItem] = (),
    caps: Capabilities | None = None,
    memory_budget: float | str | None = None,
    quality: str = "balanced",
) -> Plan:
    """Decide what :func:`optimize` would do, without changing ``pipe``.

    ``memory_budget`` (GB, or "6GB"/"512MB") caps the device memory the plan may use, for a service
    that shares its GPU; without it the plan uses what the device has free. ``tier="auto"`` cannot
    be decided without measuring: its plan is the ``quality`` tier's, the candidates it would time.

    Examples:
        >>> from sdopt import plan
        >>> from sdopt.testing import tiny_pipeline, fake_capabilities
        >>> p = plan(tiny_pipeline("flux"), tier="low-memory", caps=fake_capabilities("cpu"))
        >>> {d.name: d.reason.split(" (")[0] for d in p.skipped}["attention_slicing"]
        'for unet denoisers only'
    """
    measured = is_auto(tier)
    with offline():  # pure and offline: replacement weights not on disk are planned, not downloaded
        exclude, extra = _as_tuple(exclude, "exclude"), _as_tuple(extra, "extra")
        result = _plan(pipe, quality if measured else tier, preset, exclude, extra, caps, {}, memory_budget)
    if measured:
        result.notes += (
            f"auto: these are {result.source}'s candidates; optimize(tier='auto') times each on this pipeline "
            "and keeps those that help (see sdopt.tune)",
        )
    return result


def optimize(
    pipe: Any,
    tier: str | None = DEFAULT_TIER,
    *,
    preset: Preset | None = None,
    exclude: Iterable[str] = (),
    extra: Iterable[ExtraItem] = (),
    caps: Capabilities | None = None,
    strict: bool = False,
    dry_run: bool = False,
    undoable: bool = True,
    verify: bool = False,
    memory_budget: float | str | None = None,
    quality: str = "balanced",
    call: Mapping[str, Any] | None = None,
    budget_s: float | None = None,
) -> Report:
    """Optimize ``pipe`` in place for this machine and return what was done.

    Args:
        pipe: any diffusers ``DiffusionPipeline``.
        tier: "conservative", "balanced" (default), "fast", "ultra", "low-memory", optionally
            pinned ("balanced@1"); "auto" measures the ``quality`` tier's steps on this pipeline
            and keeps those that help (:func:`sdopt.tune`; the result is cached on disk, so a later
            "auto" for the same machine, pipeline and call shape measures nothing); ``None``
            applies only ``extra``.
        preset: a :class:`Preset` to replay instead of a tier.
        exclude: optimization names never to apply (they are reported as skipped).
        extra: more optimizations to apply: names, ``{"name": ..., **options}`` or config
            instances. They win conflicts against the tier's choices.
        caps: the machine's capabilities (default: :func:`sdopt.detect`).
        strict: raise instead of recording failures, and raise (changing nothing) when an
            explicitly requested optimization (``extra`` or a preset's) cannot apply here, or
            when a frozen preset was made on a machine with other capabilities.
        dry_run: plan only; the report lists the steps as "planned".
        undoable: keep what :meth:`Report.undo` needs. With ``False`` the originals are still
            kept while ``optimize`` runs (so a failure rolls back), then released.
        memory_budget: the most device memory the plan may use (GB, or "6GB"/"512MB"), e.g. for a
            service given 6 GB of a 24 GB GPU; offloads, slicing and tiling follow from it.
        quality: with ``tier="auto"``: the tier whose steps are the candidates, and whose fidelity
            floor they must keep.
        call: with ``tier="auto"``: the app's call shape (``height``, ``width``, ``steps``,
            ``guidance``, ``batch``), defaulting to the pipeline's own defaults.
        budget_s: with ``tier="auto"``: the most seconds measuring may take. ``auto`` measures
            (or reads its cache) even with ``dry_run``: the pipeline is left as it was in between.
        verify: run a minimal real call (2 steps, a quarter of the default size) before returning;
            if it fails, the step that breaks it is found, rolled back and reported failed with the
            error, and the others are kept (see :mod:`sdopt.verification`).

    If a step raises, whatever it changed before raising is put back (the core records the
    pipeline's state by reference before each step), and every step applied before it is undone
    in reverse order, leaving the pipeline exactly as it was; with ``strict`` the error is raised,
    otherwise the failure is recorded and the plan is applied again without it.

    Examples:
        >>> from sdopt import optimize
        >>> from sdopt.testing import tiny_pipeline, fake_capabilities
        >>> pipe = tiny_pipeline("sd")
        >>> report = optimize(pipe, tier=None, extra=["fuse_qkv"], caps=fake_capabilities("cpu"))
        >>> [d.name for d in report.applied]
        ['fuse_qkv']
        >>> report.undo()
    """
    exclude, extra = _as_tuple(exclude, "exclude"), _as_tuple(extra, "extra")
    if is_auto(tier):
        from sdopt.tuning import tune

        if preset is not None:
            raise ValueError("pass either tier='auto' or preset=..., not both")
        tuning = tune(
            pipe, quality, call=call, budget_s=budget_s, caps=caps, exclude=exclude, memory_budget=memory_budget
        )
        report = optimize(
            pipe,
            tier=None,
            preset=tuning.preset,
            exclude=exclude,
            extra=extra,
            caps=caps,
            strict=strict,
            dry_run=dry_run,
            undoable=undoable,
            verify=verify,
            memory_budget=memory_budget,
        )
        return with_tuning(report, tuning)
    failed: dict[str, Decision] = {}
    with offline() if dry_run else contextlib.nullcontext():
        current = _plan(pipe, tier, preset, exclude, extra, caps, failed, memory_budget)
    if strict:
        refused = {d.name: d.reason for d in current.skipped if d.name in current.requested}
        if current.preset_differences:
            raise PresetMismatchError(current.source or "preset", current.preset_differences, refused)
        if refused:
            raise StrictModeError(refused)
    report = Report(
        source=current.source,
        pipeline_class=current.anatomy.pipeline_class,
        family=current.anatomy.family,
        device=current.device,
        fingerprint=current.caps.fingerprint,
        made_on=current.caps.fingerprint_facts(),
        dry_run=dry_run,
        warnings=current.warnings,
        memory_budget_gb=current.memory_budget_gb,
    )
    if dry_run:
        report.planned = [step.planned(current.anatomy) for step in current.steps]
        report.skipped = list(current.skipped)
        return report

    # Originals of replaced weights go to the checkpoint or a spill file, not memory (sdopt.originals);
    # without undo they are kept only while this call runs, for its rollback.
    store = Originals("spill" if undoable else "transient")
    # Each failure removes one step, so this ends after at most len(steps) + 1 attempts.
    while True:
        stack: list[tuple[str, Undo]] = []
        applied: list[Decision] = []
        # By reference, only while this attempt runs; tensors on an accelerator are left to the steps'
        # own undos (each step's apply is still recorded whole by _apply_step), so the originals
        # of a cast or offloaded pipeline do not stay in device memory during the attempt.
        before = record(pipe, accelerator_data=False)
        try:
            with active(store):
                for step in current.steps:
                    applied.append(_apply_step(pipe, step, current.caps, stack))
                if verify and current.steps:
                    applied = _verified(pipe, current, stack, before, applied, report)
            break
        except _StepFailed as failure:
            _roll_back(stack, before)
            if strict:
                raise OptimizationFailed(failure.step.name, failure.cause) from failure.cause
            when = "in the verification call after it was applied" if failure.verified else "while applied"
            cause = f"{type(failure.cause).__name__}: {failure.cause}"
            reason = f"{cause} ({when}; rolled back, the other steps were re-planned)"
            failed[failure.step.name] = failure.step.decision("failed", reason)
            current = _plan(pipe, tier, preset, exclude, extra, caps, failed, memory_budget)
        finally:
            del before  # the attempt's references to the originals go now, not when optimize returns

    verification_notes = tuple(w for w in report.warnings if w.startswith("verify:"))
    report.warnings = (*current.warnings, *verification_notes)  # the final plan's, after any re-plan
    report.applied = applied
    report.skipped = list(current.skipped)
    report.failed = list(failed.values())
    report._track(pipe, stack, keep=undoable, originals=store)
    _log_decisions(report)
    return report


def _log_decisions(report: Report) -> None:
    for decision in report.applied:
        _logger.info("applied %s in %.2f s: %s", decision.name, decision.seconds or 0.0, decision.reason)
    for decision in report.failed:
        _logger.warning("%s failed and was rolled back: %s", decision.name, decision.reason)
    for decision in report.skipped:
        _logger.debug("skipped %s: %s", decision.name, decision.reason)


class _StepFailed(Exception):
    def __init__(self, step: Step, cause: BaseException, *, verified: bool = False) -> None:
        super().__init__(step.name)
        self.step = step
        self.cause = cause
        self.verified = verified


def _verified(
    pipe: Any, current: Plan, stack: list[tuple[str, Undo]], before: Restore, applied: list[Decision], report: Report
) -> list[Decision]:
    """The decisions of the applied steps once the pipeline is known to run; raises ``_StepFailed``
    naming the first step after which the verification call fails."""
    try:
        run_verification(pipe)
        return applied
    except Exception:
        pass
    _roll_back(stack, before)
    try:
        run_verification(pipe)
    except Exception as error:  # the call itself cannot be made: nothing to blame on a step
        report.warnings += (
            f"verify: inconclusive, the untouched pipeline cannot make the verification call either "
            f"({type(error).__name__}: {error}); the steps were applied unverified",
        )
        return [_apply_step(pipe, step, current.caps, stack) for step in current.steps]
    applied = []
    for step in current.steps:
        applied.append(_apply_step(pipe, step, current.caps, stack))
        try:
            run_verification(pipe)
        except Exception as error:
            raise _StepFailed(step, error, verified=True) from error
    return applied


def _roll_back(stack: list[tuple[str, Undo]], before: Restore) -> None:
    """Undo the steps applied so far, newest first, then put back the recorded state: it also covers
    what an undo missed."""
    try:
        run_undo_stack(stack)
    finally:
        before()


def _apply_step(pipe: Any, step: Step, caps: Capabilities, stack: list[tuple[str, Undo]]) -> Decision:
    # Re-read the anatomy: an earlier step may have swapped a component.
    anatomy = inspect_pipeline(pipe)
    started = time.perf_counter()
    restore = record(pipe)
    try:
        undo = step.optimization.apply(pipe, anatomy, caps, step.config)
    except Exception as error:
        restore()  # whatever the apply touched before raising (the core guarantees it, not the apply)
        raise _StepFailed(step, error) from error
    if not callable(undo):
        restore()
        raise _StepFailed(step, TypeError(f"{step.name}.apply returned {undo!r} instead of an undo function"))
    stack.append((step.name, undo))
    seconds = time.perf_counter() - started
    return step.decision("applied", step.optimization.describe(step.config, inspect_pipeline(pipe)), seconds)


def _as_tuple(items: Iterable[Any], argument: str) -> tuple[Any, ...]:
    if isinstance(items, str):
        raise TypeError(f"{argument} must be a list of optimization names, got the string {items!r}")
    return tuple(items)


def _plan(
    pipe: Any,
    tier: str | None,
    preset: Preset | None,
    exclude: Iterable[str],
    extra: Iterable[ExtraItem],
    caps: Capabilities | None,
    failed: dict[str, Decision],
    memory_budget: float | str | None = None,
) -> Plan:
    if preset is not None and tier == DEFAULT_TIER:
        tier = None  # a preset replaces the default tier
    failures = {name: decision.reason for name, decision in failed.items()}
    return make_plan(
        pipe,
        tier=tier,
        preset=preset,
        exclude=exclude,
        extra=extra,
        caps=caps,
        failed=failures,
        memory_budget=memory_budget,
    )
