"""The facade: ``optimize`` and ``plan`` turn their arguments into one `Request`;
``tier="auto"`` goes to `sdopt.tuning`, everything else to `sdopt.planning` (pure) and
`sdopt.engine` (the transactional apply loop)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from os import PathLike
from typing import Any

from sdopt.capabilities import Capabilities
from sdopt.engine import apply_plan
from sdopt.errors import UnknownTierError
from sdopt.logging import get_logger
from sdopt.planning import ExtraItem, Plan, Request, as_tuple, make_plan
from sdopt.presets import Preset
from sdopt.report import Report
from sdopt.tiers import AUTO, DEFAULT_TIER, is_auto, resolve_tier
from sdopt.weights import offline

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
    """Decide what `optimize` would do, without changing ``pipe``.

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
    request = _request(quality if measured else tier, preset, exclude, extra, caps, memory_budget)
    with offline():  # pure and offline: replacement weights not on disk are planned, not downloaded
        result = make_plan(pipe, request)
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
    guard: bool | None = None,
) -> Report:
    """Optimize ``pipe`` in place for this machine and return what was done.

    Args:
        pipe: any diffusers ``DiffusionPipeline``.
        tier: "conservative", "balanced" (default), "fast", "ultra", "low-memory", optionally
            pinned ("balanced@1"); "auto" measures the ``quality`` tier's steps on this pipeline
            and keeps those that help (`sdopt.tune`; the result is cached on disk, so a later
            "auto" for the same machine, pipeline and call shape measures nothing); ``None``
            applies only ``extra``.
        preset: a `Preset` to replay instead of a tier.
        exclude: optimization names never to apply (they are reported as skipped).
        extra: more optimizations to apply: names, ``{"name": ..., **options}`` or config
            instances. They win conflicts against the tier's choices.
        caps: the machine's capabilities (default: `sdopt.detect`).
        strict: raise instead of recording failures, and raise (changing nothing) when an
            explicitly requested optimization (``extra`` or a preset's) cannot apply here, or
            when a frozen preset was made on a machine with other capabilities.
        dry_run: plan only; the report lists the steps as "planned".
        undoable: keep what `Report.undo` needs. With ``False`` the originals are still
            kept while ``optimize`` runs (so a failure rolls back), then released.
        memory_budget: the most device memory the plan may use (GB, or "6GB"/"512MB"), e.g. for a
            service given 6 GB of a 24 GB GPU; offloads, slicing and tiling follow from it.
        quality: with ``tier="auto"``: the tier whose steps are the candidates, and whose fidelity
            floor they must keep.
        call: the app's call shape (``height``, ``width``, ``steps``, ``guidance``, ``batch``),
            defaulting to the pipeline's own defaults: what ``tier="auto"`` and the speed guard time.
        budget_s: with ``tier="auto"``: the most seconds measuring may take. ``auto`` measures
            (or reads its cache) even with ``dry_run``: the pipeline is left as it was in between.
        guard: the speed guard (`sdopt.speed_guard`): time the call before the speed steps and after
            each, and roll back, with its figure in the report, any step (with the companions it needs)
            that does not make the call faster beyond the noise. ``None`` (default): on GPUs, where a
            call takes milliseconds; off on CPUs, where the report says it did not measure.
            ``tier="auto"`` measures anyway and ignores it.
        verify: run a minimal real call (2 steps, a quarter of the default size) before returning;
            if it fails, the step that breaks it is found, rolled back and reported failed with the
            error, and the others are kept (see `sdopt.verification`).

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
    request = _request(tier, preset, exclude, extra, caps, memory_budget)
    options: dict[str, Any] = {"strict": strict, "dry_run": dry_run, "undoable": undoable, "verify": verify}
    if isinstance(tier, str) and is_auto(tier):
        from sdopt.tuning import optimize_tuned

        if tier != AUTO:
            pinned = resolve_tier(DEFAULT_TIER).label
            raise UnknownTierError(
                tier, f"tier 'auto' has no versions ({tier!r}); pin what it measures instead: quality={pinned!r}"
            )
        if preset is not None:
            raise ValueError("pass either tier='auto' or preset=..., not both")
        report = optimize_tuned(pipe, request, quality, call=call, budget_s=budget_s, **options)
    else:
        if guard is not None and not isinstance(guard, bool):
            raise TypeError(f"guard must be True, False or None (on GPUs only), got {guard!r}")
        report = apply_plan(pipe, request, guard=guard, call=call, **options)
    if not dry_run:
        _log_decisions(report)
    return report


def _request(
    tier: str | None,
    preset: Preset | None,
    exclude: Iterable[str],
    extra: Iterable[ExtraItem],
    caps: Capabilities | None,
    memory_budget: float | str | None,
) -> Request:
    if caps is not None and not isinstance(caps, Capabilities):
        raise TypeError(
            f"caps must be an sdopt.Capabilities (sdopt.detect(), or sdopt.testing.fake_capabilities(...)), "
            f"got {type(caps).__name__}"
        )
    if isinstance(preset, (str, PathLike)):
        raise TypeError(
            f"preset must be an sdopt.Preset, got the path {str(preset)!r}: pass Preset.load({str(preset)!r})"
        )
    if preset is not None and tier == DEFAULT_TIER:
        tier = None  # a preset replaces the default tier
    return Request(tier, preset, as_tuple(exclude, "exclude"), as_tuple(extra, "extra"), caps, memory_budget)


def _log_decisions(report: Report) -> None:
    for decision in report.applied:
        _logger.info("applied %s in %.2f s: %s", decision.name, decision.seconds or 0.0, decision.reason)
    for decision in report.failed:
        _logger.warning("%s failed and was rolled back: %s", decision.name, decision.reason)
    for decision in report.skipped:
        _logger.debug("skipped %s: %s", decision.name, decision.reason)
