"""``tier="auto"``: measure the quality tier's steps on this pipeline and machine, keep only what helps.

The candidates are the steps the quality tier plans here (so every requirement, conflict and memory
rule still applies). In the tier's order, each is timed against the best configuration so far, at
the caller's call shape, in alternating blocks of short calls (`sdopt.timed_calls`), until
the difference is outside the measured noise; a faster one is kept if a whole image made with it
stays within the quality's fidelity floor (PSNR against the untouched pipeline's image, same seed).
Steps that only pay together (a declared companion) are timed together; steps the memory budget or
this machine's memory calls for are kept untimed. The result is a frozen preset plus a record of
every measurement, cached on disk (`sdopt.tuning.cache`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

from sdopt import registry
from sdopt._version import __version__
from sdopt.calls import CallShape
from sdopt.engine import apply_plan
from sdopt.logging import get_logger, progress_bar
from sdopt.planning import Request, as_tuple, make_plan
from sdopt.presets import Entry, Preset, frozen_entry
from sdopt.report import Decision, Report
from sdopt.tiers import resolve_tier
from sdopt.tuning import cache as stored_tunings
from sdopt.tuning.record import Trial, Tuning
from sdopt.weights import offline

_logger = get_logger(__name__)

__all__ = ["FIDELITY_FLOORS", "CallShape", "Trial", "Tuning", "clear_cache", "optimize_tuned", "tune", "with_tuning"]

FIDELITY_FLOORS: dict[str, float | None] = {
    "conservative": 45.0,
    "balanced": 35.0,
    "fast": 25.0,
    "ultra": None,  # distillation and lower internal resolution change the image by design
    "low-memory": 40.0,
}
"""PSNR (dB) a whole image must keep against the untouched pipeline's, per quality tier.

Measured on the trained tiny pipelines, whose images can be read (benchmarks/RESULTS.md, "Quality on
the trained tiny pipelines"): bfloat16 weights keep prompt accuracy at 47.9-48.4 dB (over
``conservative``'s 45; dynamic int8 and CPU compile score 66 and 95 dB); the solver swap, CFG
truncation and static int8 keep it at 33.9-38.1 dB. ``balanced`` was 40 dB (numerically faithful steps
only, as ``balanced@2`` decided) until ``balanced@5`` took int8 inside OpenVINO, judged on the trained
models: prompt accuracy and FID within the noise floor at 36.9 dB on trained-sd, so 35 dB keeps it there,
and where a user's pipeline measures it lower `tune` falls back to the step without int8
(`Optimization.gentler`). On trained-sd DeepCache and all of ``fast``
keep it at 26.6-29.3 dB while every step that lost it (fewer steps, a smaller internal resolution)
fell to 17.2-24.8 dB, so ``fast``'s 25 dB separates the two there; on trained-dit a smaller internal
resolution cost 0.042 of accuracy (within the gate's tolerance) at 21.9 dB, so there the floor is
the stricter judge. The same caption at another seed scores 18.9-23.2 dB."""


def tune(
    pipe: Any,
    quality: str | Preset = "balanced",
    *,
    call: Mapping[str, Any] | CallShape | None = None,
    budget_s: float | None = None,
    caps: Any = None,
    exclude: Iterable[str] = (),
    memory_budget: float | str | None = None,
    min_psnr_db: float | None = None,
    cache: bool = True,
    progress: bool = True,
    seed: int = 0,
    clock: Callable[[], float] | None = None,
) -> Tuning:
    """Measure which of the ``quality`` tier's steps make ``pipe`` faster here, and freeze them.

    The pipeline is left as it was (each configuration is applied for its measurement and undone;
    an error or Ctrl-C in the middle undoes it too). ``call`` is the app's call shape (``height``,
    ``width``, ``steps``, ``guidance``, ``batch``; missing ones are the pipeline's defaults);
    ``budget_s`` bounds the measuring time (candidates not reached are dropped, said so);
    ``min_psnr_db`` overrides the quality's fidelity floor (`FIDELITY_FLOORS`). With ``cache``
    a result measured before for the same machine, pipeline, call shape and quality is returned
    without measuring. Apply the result with ``optimize(pipe, preset=tuning.preset)``, or let
    ``optimize(pipe, tier="auto")`` do both.

    Examples:
        >>> from sdopt import tune
        >>> from sdopt.testing import tiny_pipeline, fake_capabilities
        >>> tuning = tune(tiny_pipeline("sd"), "balanced", call={"steps": 2}, caps=fake_capabilities("cpu"),
        ...               cache=False, progress=False)
        >>> tuning.preset.based_on
        'auto:balanced@...'
        >>> all(trial.reason.startswith(("kept", "dropped")) for trial in tuning.trials)
        True
    """
    from sdopt.capabilities import detect
    from sdopt.timed_calls import full_output
    from sdopt.tuning import search

    clock = clock or search.now
    started = clock()
    caps = caps if caps is not None else detect()
    base = quality if isinstance(quality, Preset) else resolve_tier(quality)
    if base.name == "auto":
        raise ValueError("quality must be a tier that lists steps (conservative, balanced, fast, ultra, low-memory)")
    floor = min_psnr_db if min_psnr_db is not None else FIDELITY_FLOORS.get(base.name, 40.0)
    shape = CallShape.of(pipe, call)
    request = Request(preset=base, exclude=as_tuple(exclude, "exclude"), caps=caps, memory_budget=memory_budget)
    with offline():  # pure and offline: replacement weights not on disk are planned, not downloaded
        candidates = make_plan(pipe, request)
    fixed, grouped = search.groups(candidates, base.names())
    facts = {
        "caps": caps.fingerprint,
        "pipeline": stored_tunings.pipeline_signature(pipe),
        "shape": shape.to_dict(),
        "quality": base.label,
        "candidates": [entry.to_dict() for entry in search.entries(candidates.steps)],
        "min_psnr_db": floor,
        "memory_budget": memory_budget,
        "sdopt": __version__,
    }
    key = stored_tunings.key(facts)
    root = stored_tunings.default_root()
    if cache:
        found = _stored(root, key)
        if found is not None and _only_candidates(found.preset, search.entries(candidates.steps)):
            return dataclasses.replace(found, from_cache=True, seconds=clock() - started)
        if found is not None:
            _logger.warning("the stored tuning %s names steps outside its candidates: ignored, measured again", key)

    settings = search.Settings(
        shape=shape,
        caps=caps,
        memory_budget=memory_budget,
        min_psnr_db=floor,
        budget_s=budget_s,
        clock=clock,
        seed=seed,
        started=started,
    )
    skipped = [decision.to_dict() for decision in candidates.skipped]
    record = Tuning(
        quality=base.label,
        shape=shape,
        preset=Preset("auto"),
        skipped=skipped,
        min_psnr_db=floor,
        budget_s=budget_s,
        key=key,
    )
    record.fixed = [
        Trial((step.name,), True, "not timed: a memory step this plan needs here (planned for the memory available)")
        for step in fixed
    ]
    best: list[Entry] = search.entries(fixed)
    bar = progress_bar(total=len(grouped), desc="sdopt tune", unit="candidate", pipe=pipe, enabled=progress)
    try:
        reference, record.baseline_s = full_output(pipe, shape.kwargs(pipe, seed), clock)
        for group in grouped:
            bar.set_postfix_str(f"{'+'.join(s.name for s in group)}{_left(settings)}")
            try:
                trials, measured = search.try_gently(pipe, best, group, settings, reference)
            except KeyboardInterrupt:
                raise
            except Exception as error:  # the configuration was undone on the way out; the others go on
                failed = f"failed while measured: {type(error).__name__}: {error}"
                trials, measured = [Trial(tuple(s.name for s in group), False, failed)], group
            for trial in trials:
                record.trials.append(trial)
                _logger.info("%s %s: %s", "kept" if trial.kept else "dropped", "+".join(trial.names), trial.why)
            if trials[-1].kept:
                best = [*best, *search.entries(measured)]
            bar.update(1)
    except KeyboardInterrupt:
        record.interrupted = True
    finally:
        bar.close()
    timed = [trial for trial in record.trials if trial.call_s is not None]
    if timed:  # estimates from the measurements themselves: no extra calls
        record.start_call_s = timed[0].best_s
        record.best_call_s = timed[-1].call_s if timed[-1].kept else timed[-1].best_s
    kept = {entry.name: entry.config for entry in best}  # a gentler config where that was what was kept
    # In plan order, recorded as Report.to_preset records its steps.
    frozen = tuple(frozen_entry(e.name, kept[e.name]) for e in search.entries(candidates.steps) if e.name in kept)
    record.preset = _frozen(frozen, base, caps, candidates.memory_budget_gb, __version__)
    record.seconds = clock() - started
    if cache and not record.interrupted and not record.unmeasured:
        stored_tunings.store(root, key, record.to_dict())
    return record


def optimize_tuned(
    pipe: Any,
    request: Request,
    quality: str,
    *,
    call: Mapping[str, Any] | None = None,
    budget_s: float | None = None,
    strict: bool = False,
    dry_run: bool = False,
    undoable: bool = True,
    verify: bool = False,
) -> Report:
    """``optimize(pipe, tier="auto")``: `tune` the ``quality`` tier (or read its cache), then apply
    the tuned preset with ``request``'s ``extra`` and ``exclude``; the report tells the tuning's decisions.

    Examples:
        >>> from sdopt.planning import Request
        >>> from sdopt.tuning import optimize_tuned
        >>> from sdopt.testing import tiny_pipeline, fake_capabilities
        >>> pipe = tiny_pipeline("sd")
        >>> request = Request(caps=fake_capabilities("cpu"))
        >>> report = optimize_tuned(pipe, request, "conservative", call={"steps": 2}, dry_run=True)
        >>> report.source
        'auto:conservative@2'
    """
    tuning = tune(
        pipe,
        quality,
        call=call,
        budget_s=budget_s,
        caps=request.caps,
        exclude=request.exclude,
        memory_budget=request.memory_budget,
    )
    tuned = replace(request, tier=None, preset=tuning.preset)
    report = apply_plan(pipe, tuned, strict=strict, dry_run=dry_run, undoable=undoable, verify=verify)
    return with_tuning(report, tuning)


def with_tuning(report: Report, tuning: Tuning) -> Report:
    """``report`` of applying ``tuning.preset``, told as the tuning's decisions: each applied step's
    reason starts with its measurement, dropped candidates are skipped with theirs, and candidates the
    quality tier could not use here keep the planner's reason."""
    report.source = f"auto:{tuning.quality}"
    report.tuning = tuning
    applied = []
    for decision in report.applied:
        trial = tuning.trial_for(decision.name)
        reason = f"{trial.reason}; {decision.reason}" if trial is not None else decision.reason
        applied.append(replace(decision, reason=reason, source=report.source))
    report.applied = applied
    decided = {d.name for d in (*report.applied, *report.failed, *report.skipped)}
    for trial in (*tuning.fixed, *tuning.trials):
        for name in trial.names:
            if name in decided:
                continue
            optimization = registry.get(name)
            config = optimization.config_to_dict(optimization.make_config({}))
            decisive = tuning.trial_for(name) or trial  # a gentler config's trial, where one followed
            report.skipped.append(
                Decision(name, "skipped", decisive.reason, config, optimization.kind, optimization.lossy, report.source)
            )
            decided.add(name)
    report.skipped += [Decision(**data) for data in tuning.skipped if data["name"] not in decided]
    if tuning.interrupted:
        report.warnings += ("auto: the tuning was interrupted; only the decisions made before it stopped apply",)
    if tuning.unmeasured:
        report.warnings += (
            f"auto: the time budget of {tuning.budget_s:g} s ran out before {', '.join(tuning.unmeasured)} could be "
            "measured (left out; not cached: a larger budget_s measures them)",
        )
    return report


def clear_cache() -> int:
    """Forget every stored tuning (``sdopt tune --clear-cache``); returns how many were removed.

    Examples:
        >>> import os, tempfile
        >>> from sdopt.tuning import clear_cache
        >>> os.environ["SDOPT_CACHE_DIR"] = tempfile.mkdtemp()
        >>> clear_cache()
        0
        >>> del os.environ["SDOPT_CACHE_DIR"]
    """
    return stored_tunings.clear()


def _only_candidates(preset: Preset, candidates: list[Entry]) -> bool:
    """Whether every step of a stored tuning is one of the candidates its key was made from, with the very
    same options or its gentler ones (`Optimization.gentler`, which `tune` may have kept): an entry planted
    or damaged on disk cannot add a step (resolution 0.25 under balanced)."""
    allowed = {entry.name: _options_tune_may_keep(entry) for entry in candidates}
    return all(entry.name in allowed and dict(entry.config) in allowed[entry.name] for entry in preset.entries)


def _options_tune_may_keep(candidate: Entry) -> list[dict[str, Any]]:
    optimization = registry.get(candidate.name)
    options = [optimization.portable(candidate.config)]
    gentler = optimization.gentler(optimization.make_config(candidate.config))
    if gentler is not None:  # tune tries one gentler config, no more
        options.append(optimization.portable(optimization.config_to_dict(gentler)))
    return options


def _stored(root: Any, key: str) -> Tuning | None:
    data = stored_tunings.load(root, key)
    if data is None:
        return None
    try:
        return Tuning.from_dict(data)
    except Exception:  # an entry from an older format or a damaged file: measured again
        return None


def _frozen(frozen: tuple[Entry, ...], base: Preset, caps: Any, budget_gb: float | None, version: str) -> Preset:
    """The kept steps (resolved configs, in plan order) as a preset in `Report.to_preset`'s format."""
    return Preset(
        "auto",
        frozen,
        description=f"measured by sdopt tune from {base.label} on {caps.device}",
        sdopt_version=version,
        based_on=f"auto:{base.label}",
        fingerprint=caps.fingerprint,
        made_on=caps.fingerprint_facts(),
        memory_budget_gb=budget_gb,
    )


def _left(settings: Any) -> str:
    left = settings.time_left()
    return "" if left == float("inf") else f" ({max(left, 0):.0f} s of budget left)"
