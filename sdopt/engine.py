"""The apply loop: a plan's steps applied to a pipeline, each in a transaction, verified on request.

``apply_plan(pipe, request)`` plans (pure), applies each step inside a record of the pipeline's state
(`sdopt.transaction`), pushes each step's undo on one `UndoStack`, and returns
the `Report`. A step that raises is rolled back with every step before it, is
recorded as failed, and the request is planned again without it (at most one attempt per step). The
public entry is `sdopt.optimize`; tuning uses this module directly for its trials.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import torch

from sdopt import speed_guard
from sdopt import undo as ledger
from sdopt.anatomy import inspect_pipeline
from sdopt.calls import CallShape
from sdopt.capabilities import Capabilities
from sdopt.errors import OptimizationFailed, PlanningError, PresetMismatchError, RollbackError, StrictModeError
from sdopt.originals import Originals, active
from sdopt.planning import Plan, Request, Step, make_plan
from sdopt.report import Decision, Report
from sdopt.speed_guard import SpeedGuard, judged, units
from sdopt.transaction import Restore, record
from sdopt.undo import UndoStack
from sdopt.verification import run_verification
from sdopt.weights import offline


def _check_strict(current: Plan) -> None:
    """Raise, changing nothing, when a strict request cannot be applied as asked: a frozen preset made
    on other capabilities, or an explicitly requested step this plan skips."""
    refused = {d.name: d.reason for d in current.skipped if d.name in current.requested}
    if current.preset_differences:
        raise PresetMismatchError(current.source or "preset", current.preset_differences, refused)
    if refused:
        raise StrictModeError(refused)


def _empty_report(current: Plan, *, dry_run: bool) -> Report:
    """The report of ``current`` before anything is applied."""
    return Report(
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


def apply_plan(
    pipe: Any,
    request: Request,
    *,
    strict: bool = False,
    dry_run: bool = False,
    undoable: bool = True,
    verify: bool = False,
    guard: bool | None = False,
    call: Mapping[str, Any] | None = None,
) -> Report:
    """Plan ``request`` for ``pipe`` and apply it (with ``dry_run``, only plan it, offline, and report
    the steps as "planned"); see `sdopt.optimize` for the arguments (``guard=None``: on accelerators only;
    ``call``: the call shape the speed guard times).

    Examples:
        >>> from sdopt.engine import apply_plan
        >>> from sdopt.planning import Request
        >>> from sdopt.testing import tiny_pipeline, fake_capabilities
        >>> pipe = tiny_pipeline("sd")
        >>> report = apply_plan(pipe, Request(tier=None, extra=("fuse_qkv",), caps=fake_capabilities("cpu")))
        >>> [d.name for d in report.applied]
        ['fuse_qkv']
        >>> report.undo()
    """
    with contextlib.nullcontext() if dry_run else ledger.exclusive(pipe):  # a dry run changes nothing
        return _apply(
            pipe, request, strict=strict, dry_run=dry_run, undoable=undoable, verify=verify, guard=guard, call=call
        )


def _apply(
    pipe: Any,
    request: Request,
    *,
    strict: bool,
    dry_run: bool,
    undoable: bool,
    verify: bool,
    guard: bool | None,
    call: Mapping[str, Any] | None,
) -> Report:
    failed: dict[str, Decision] = {}
    with offline() if dry_run else contextlib.nullcontext():
        current = make_plan(pipe, request)
    if strict:
        _check_strict(current)
    report = _empty_report(current, dry_run=dry_run)
    if dry_run:
        report.planned = [step.planned(current.anatomy) for step in current.steps]
        report.skipped = list(current.skipped)
        return report
    _refuse_unloaded_weights(current)
    timer = _start_guard(pipe, current, report, guard, call, pinned=strict or request.preset is not None)
    # Originals of replaced weights go to the checkpoint or a spill file, not memory (sdopt.originals);
    # without undo they are kept only while this call runs, for its rollback.
    store = Originals("spill" if undoable else "transient")
    # Each failure removes one step, so this ends after at most len(steps) + 1 attempts.
    while True:
        stack = UndoStack()
        applied: list[Decision] = []
        rolled_back: list[Decision] = []
        # By reference, only while this attempt runs; tensors on an accelerator are left to the steps'
        # own undos (each step's apply is still recorded whole by _apply_step), so the originals
        # of a cast or offloaded pipeline do not stay in device memory during the attempt.
        before = record(pipe, accelerator_data=False)
        try:
            with active(store):
                if timer is None:
                    kept = list(current.steps)
                    applied = [_apply_step(pipe, step, current.caps, stack) for step in kept]
                else:
                    kept, applied, rolled_back = _apply_guarded(pipe, current, stack, timer)
                if verify and kept:
                    applied = _verified(pipe, kept, current.caps, stack, before, applied, report)
            break
        except _StepFailed as failure:
            _roll_back(stack, before)
            if strict:
                store.close()
                raise OptimizationFailed(failure.step.name, failure.cause) from failure.cause
            when = f"in the {failure.verified} call after it was applied" if failure.verified else "while applied"
            cause = f"{type(failure.cause).__name__}: {failure.cause}"
            reason = f"{cause} ({when}; rolled back, the other steps were re-planned)"
            failed[failure.step.name] = failure.step.decision("failed", reason)
            current = make_plan(pipe, request, failed=_reasons(failed))
            if timer is not None:
                timer.restart()
        except BaseException:  # Ctrl-C, SystemExit: the pipeline goes back exactly as it was, then it propagates
            _roll_back_fully(stack, before)
            store.close()
            raise
        finally:
            del before  # the attempt's references to the originals go now, not when optimize returns

    verification_notes = tuple(w for w in report.warnings if w.startswith("verify:"))
    report.warnings = (*current.warnings, *verification_notes)  # the final plan's, after any re-plan
    report.applied = applied
    report.skipped = [*rolled_back, *current.skipped]
    if timer is not None:
        report.guard = timer.summary()
    report.failed = list(failed.values())
    report.track_undo(pipe, stack, keep=undoable, originals=store)
    return report


def _reasons(failed: Mapping[str, Decision]) -> dict[str, str]:
    return {name: decision.reason for name, decision in failed.items()}


class _StepFailed(Exception):
    def __init__(self, step: Step, cause: BaseException, *, verified: str = "") -> None:
        super().__init__(step.name)
        self.step = step
        self.cause = cause
        self.verified = verified


def _refuse_unloaded_weights(current: Plan) -> None:
    """Weights on the meta device were never loaded (``init_empty_weights``, a failed load): optimizing
    them would "succeed" on a pipeline that cannot run. Planning them stays possible (a dry run)."""
    for name, component in current.anatomy.pipeline.components.items():
        if not isinstance(component, torch.nn.Module) or _offloaded(component):
            continue  # an offload keeps weights on meta between calls and loads them itself
        if any(parameter.is_meta for parameter in component.parameters()):
            raise PlanningError(
                f"the pipeline's {name} has weights on the meta device (never loaded): load them first "
                "(from_pretrained, or load_state_dict(..., assign=True)); a dry run can still plan it"
            )


def _offloaded(model: torch.nn.Module) -> bool:
    """Whether accelerate's or diffusers' offload hooks manage ``model``'s weights."""
    return any(hasattr(module, "_hf_hook") or hasattr(module, "_diffusers_hook") for module in model.modules())


def _start_guard(
    pipe: Any, current: Plan, report: Report, guard: bool | None, call: Mapping[str, Any] | None, pinned: bool
) -> SpeedGuard | None:
    """The speed guard for this request, its untouched reference timed (`sdopt.speed_guard`); ``None``
    when it is off, when nothing planned is a speed step it judges, or when the untouched pipeline
    cannot make the timed call (the report says which)."""
    if guard is False or not any(judged(step.optimization) for step in current.steps):
        return None
    if guard is None:
        why_not = speed_guard.guard_by_default(current.caps.device, current.anatomy)
        if not why_not and pinned:
            why_not = "a preset or strict=True asks for exactly its steps; guard=True times them anyway"
        if not why_not and (current.memory_budget_gb is not None or current.offloads):
            why_not = "the plan is made to fit a memory budget; rolling a step back could break that fit"
        if why_not:
            report.guard = f"speed guard: not measured ({why_not})"
            return None
    CallShape.of(pipe, call)  # a bad call shape is the caller's error, raised as such
    timer = SpeedGuard(current.caps.device, call)
    try:
        timer.start(pipe)
    except Exception as error:
        report.guard = (
            f"speed guard: not measured, the untouched pipeline cannot make the timed call "
            f"({type(error).__name__}: {error})"
        )
        return None
    return timer


def _apply_guarded(
    pipe: Any, current: Plan, stack: UndoStack, timer: SpeedGuard
) -> tuple[list[Step], list[Decision], list[Decision]]:
    """Apply the plan unit by unit (a step with the companions it needs), timing each unit with a speed
    step against the call just before it; a unit that does not make the call faster is undone at once
    (steps the plan put inside it that are not part of its group are applied again), and steps that
    needed a step rolled back are not applied. Returns the steps kept, their decisions, and the
    decisions of the steps rolled back or left out."""
    kept: list[Step] = []
    applied: list[Decision] = []
    left_out: list[Decision] = []
    gone: set[str] = set()
    stale = False  # an untimed step changed the pipeline since the reference was timed

    def companions(step: Step) -> list[str]:
        return list(step.optimization.companions(current.anatomy, current.caps, step.config))

    for unit in units(current.steps, companions):
        members = []
        for step in (current.steps[at] for at in unit):
            lost = [name for name in companions(step) if name in gone]
            if lost:
                reason = f"not applied: it pays only with {lost[0]}, which the speed guard rolled back"
                left_out.append(step.decision("skipped", reason))
            else:
                members.append(step)
        timed = any(judged(step.optimization) for step in members)
        if timed and stale:
            timer.retime(pipe)  # judge the unit against the pipeline as it is now
            stale = False
        decisions = [_apply_step(pipe, step, current.caps, stack) for step in members]
        if not timed:
            kept += members
            applied += decisions
            stale = stale or bool(members)
            continue
        try:
            verdict = timer.judge(pipe, members)
        except Exception as error:  # the timed call fails: blame the unit's last step, like verification
            raise _StepFailed(members[-1], error, verified="speed guard's timed") from error
        if verdict.kept:
            kept += members
            applied += [dataclasses.replace(d, reason=f"{d.reason}; {verdict.describe()}") for d in decisions]
            continue
        group = _group(members, companions)
        try:
            stack.unwind(len(members))
        except RollbackError as error:
            raise _StepFailed(members[-1], error) from error
        together = f" (with {', '.join(s.name for s in group)})" if len(group) > 1 else ""
        left_out += [step.decision("skipped", f"rolled back{together}: {verdict.describe()}") for step in group]
        gone |= {step.name for step in group}
        others = [step for step in members if step not in group]  # e.g. a memory step between int8 and compile
        kept += others
        applied += [_apply_step(pipe, step, current.caps, stack) for step in others]
        stale = bool(others)
    return kept, applied, left_out


def _group(members: list[Step], companions: Any) -> list[Step]:
    """The judged steps of a unit and the companions they need (what a rollback takes back)."""
    names = {step.name for step in members if judged(step.optimization)}
    names |= {name for step in members if step.name in names for name in companions(step)}
    names |= {step.name for step in members if set(companions(step)) & names}
    return [step for step in members if step.name in names]


def _verified(
    pipe: Any,
    steps: list[Step],
    caps: Capabilities,
    stack: UndoStack,
    before: Restore,
    applied: list[Decision],
    report: Report,
) -> list[Decision]:
    """The decisions of the applied steps once the pipeline is known to run; raises ``_StepFailed``
    naming the first step after which the verification call fails."""
    try:
        run_verification(pipe)
        return applied
    except Exception:
        pass
    _roll_back(stack, before)
    reasons = {decision.name: decision.reason for decision in applied}  # the speed guard's figures stay

    def again(step: Step) -> Decision:
        decision = _apply_step(pipe, step, caps, stack)
        return dataclasses.replace(decision, reason=reasons.get(step.name, decision.reason))

    try:
        run_verification(pipe)
    except Exception as error:  # the call itself cannot be made: nothing to blame on a step
        report.warnings += (
            f"verify: inconclusive, the untouched pipeline cannot make the verification call either "
            f"({type(error).__name__}: {error}); the steps were applied unverified",
        )
        return [again(step) for step in steps]
    applied = []
    for step in steps:
        applied.append(again(step))
        try:
            run_verification(pipe)
        except Exception as error:
            raise _StepFailed(step, error, verified="verification") from error
    return applied


def _roll_back(stack: UndoStack, before: Restore) -> None:
    """Undo the steps applied so far, newest first, then put back the recorded state: it also covers
    what an undo missed."""
    try:
        stack()
    finally:
        before()


def _roll_back_fully(stack: UndoStack, before: Restore) -> None:
    """:func:`_roll_back` that a second Ctrl-C cannot leave half done: interrupted, it carries on (the undo
    stack keeps what it has not finished), and the first interrupt propagates afterwards."""
    while True:
        try:
            _roll_back(stack, before)
            return
        except KeyboardInterrupt:
            continue


def _apply_step(pipe: Any, step: Step, caps: Capabilities, stack: UndoStack) -> Decision:
    # Re-read the anatomy: an earlier step may have swapped a component.
    anatomy = inspect_pipeline(pipe)
    started = time.perf_counter()
    restore = record(pipe)
    try:
        undo = step.optimization.apply(pipe, anatomy, caps, step.config)
    except BaseException as error:
        restore()  # whatever the apply touched before raising (the core guarantees it, not the apply)
        if not isinstance(error, Exception):
            raise  # Ctrl-C: the caller rolls back the steps before this one
        raise _StepFailed(step, error) from error
    if not callable(undo):
        restore()
        raise _StepFailed(step, TypeError(f"{step.name}.apply returned {undo!r} instead of an undo function"))
    stack.push(undo, step.name)
    seconds = time.perf_counter() - started
    return step.decision("applied", step.optimization.describe(step.config, inspect_pipeline(pipe)), seconds)
