"""Decisions and the report of one ``optimize`` call, with its way back (`sdopt.undo`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from sdopt import undo as ledger
from sdopt.calls import after_calls
from sdopt.errors import UndoError
from sdopt.undo import UndoStack

if TYPE_CHECKING:
    from sdopt.originals import Originals
    from sdopt.presets import Preset
    from sdopt.tuning import Tuning

STATUSES = ("applied", "skipped", "failed", "planned")


@dataclass(frozen=True)
class Decision:
    """What happened to one candidate optimization, and why.

    ``status`` is "applied", "skipped", "failed" or (in a dry run) "planned"; ``reason`` says
    why it was skipped, what went wrong, or what the applied change does; ``config`` holds the
    fully resolved options; ``source`` is where the candidate came from ("balanced@1", "extra").
    """

    name: str
    status: str
    reason: str
    config: dict[str, Any]
    kind: str
    lossy: bool
    source: str
    seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def format_table(decisions: Sequence[Decision]) -> str:
    """A plain-text table of decisions, one row each."""
    headers = ("status", "optimization", "kind", "lossy", "from", "reason / effect")
    rows = [(d.status, d.name, d.kind, "yes" if d.lossy else "no", d.source, d.reason) for d in decisions]
    if not rows:
        return "  (no candidate optimizations)"
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers) - 1)]
    lines = []
    for row in [headers, *rows]:
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths, strict=False)] + [str(row[-1])]
        lines.append("  " + "  ".join(cells))
    lines.insert(1, "  " + "  ".join("-" * width for width in widths) + "  " + "-" * 16)
    return "\n".join(lines)


@dataclass
class Report:
    """The outcome of `sdopt.optimize`: every decision, and the way back.

    Examples:
        >>> from sdopt import optimize
        >>> from sdopt.testing import tiny_pipeline, fake_capabilities
        >>> pipe = tiny_pipeline("sd")
        >>> report = optimize(pipe, tier="balanced", caps=fake_capabilities("cpu-amx"))
        >>> [d.name for d in report.applied]
        ['half_precision', 'channels_last']
        >>> report.undo()
    """

    source: str | None
    pipeline_class: str
    family: str
    device: str
    fingerprint: str
    applied: list[Decision] = field(default_factory=list)
    skipped: list[Decision] = field(default_factory=list)
    failed: list[Decision] = field(default_factory=list)
    planned: list[Decision] = field(default_factory=list)
    dry_run: bool = False
    warnings: tuple[str, ...] = ()
    made_on: dict[str, Any] = field(default_factory=dict)
    """The capabilities facts the decisions were made with (see `to_preset`)."""
    memory_budget_gb: float | None = None
    """The memory budget the plan was made under (recorded by `to_preset`)."""
    tuning: Tuning | None = None
    """With ``tier="auto"``: what was measured and decided (`sdopt.tuning.Tuning`)."""
    guard: str = ""
    """What the speed guard measured (`sdopt.speed_guard`), or that it did not measure."""
    _undo_stack: UndoStack | None = field(default=None, repr=False)
    _pipeline: Any = field(default=None, repr=False)
    _undone: bool = field(default=False, repr=False)
    _originals: Originals | None = field(default=None, repr=False)
    _broken: str = field(default="", repr=False)

    @property
    def decisions(self) -> list[Decision]:
        return [*self.applied, *self.planned, *self.failed, *self.skipped]

    @property
    def undoable(self) -> bool:
        """Whether `undo` can restore the pipeline now."""
        return self._undo_stack is not None and not self._undone

    @property
    def originals(self) -> str:
        """Where what `undo` puts back is kept: the checkpoint files, a spill file in a temp dir
        (removed with this report), memory, or nothing (``undoable=False``). See docs/memory.md."""
        if self._originals is None or self._undone:
            return "none kept"
        return self._originals.describe()

    @property
    def originals_in_memory_bytes(self) -> int:
        """Bytes of `originals` held in memory now (what a benchmark adds to a tier's host peak)."""
        return self._originals.resident_bytes() if self._originals is not None else 0

    def undo(self) -> None:
        """Restore the pipeline exactly as it was before ``optimize``.

        Raises `UndoError` if the report was made with ``undoable=False``,
        is already undone, or a later ``optimize`` on the same pipeline is still live (undo
        that one first).
        """
        if self.dry_run or not self.applied:
            self._undone = True
            return
        if self._broken:
            raise UndoError(f"an earlier undo of this report failed ({self._broken}); reload the pipeline")
        if self._undone:
            raise UndoError("this report was already undone")
        if self._undo_stack is None:
            raise UndoError(
                "this report was made with optimize(..., undoable=False), which keeps no originals; "
                "reload the pipeline instead, or optimize with undoable=True (the default) to be able to undo"
            )
        why_not = ledger.blocking(self)
        if why_not:
            raise UndoError(why_not)
        with ledger.exclusive(self._pipeline):
            self._run_undo()

    def _run_undo(self) -> None:
        assert self._undo_stack is not None
        if self._originals is not None:
            self._originals.check_all()  # a spill file or checkpoint gone: refused before anything is undone
        try:
            self._undo_stack()
        except Exception as error:  # every undo ran; some raised: the pipeline may not be fully restored
            self._finish_undo()
            self._broken = f"{type(error).__name__}: {error}"
            raise
        # An interrupt (Ctrl-C) propagates with the report still live and the rest of its undos kept:
        # undo() again finishes the job.
        self._finish_undo()
        if self._originals is not None:
            self._originals.close()

    def _finish_undo(self) -> None:
        self._undo_stack = None
        ledger.forget(self._pipeline, self)
        self._undone = True

    def track_undo(self, pipe: Any, stack: UndoStack, *, keep: bool, originals: Originals | None = None) -> None:
        """For the engine: attach the undo stack of the steps applied to ``pipe`` (dropped without
        ``keep``) and record this report as the newest live one on ``pipe``."""
        self._pipeline = pipe
        self._undo_stack = stack if keep else None
        self._originals = originals
        if len(stack):
            ledger.track(pipe, self, self.source, keep=keep)

    def to_preset(self, name: str, *, version: int = 1, description: str = "") -> Preset:
        """Freeze exactly what was applied (or planned, in a dry run) into a preset to pin.

        Configs are the fully resolved ones (``dtype = "bfloat16"``, not "auto"); the preset
        records the sdopt version, the tier it came from and the machine's fingerprint, so a
        replay on another machine says what differs.

        Examples:
            >>> from sdopt import optimize
            >>> from sdopt.testing import tiny_pipeline, fake_capabilities
            >>> report = optimize(tiny_pipeline("sd"), tier="balanced", caps=fake_capabilities("cpu-amx"))
            >>> preset = report.to_preset("my-app")
            >>> preset.entries[0].name, preset.entries[0].config["dtype"], preset.based_on
            ('half_precision', 'bfloat16', 'balanced@...')
        """
        from sdopt._version import __version__
        from sdopt.presets import Preset, frozen_entry

        decisions = self.planned if self.dry_run else self.applied
        return Preset(
            name,
            tuple(frozen_entry(d.name, d.config) for d in decisions),
            version=version,
            description=description or f"frozen from {self.source or 'explicit optimizations'} on {self.device}",
            sdopt_version=__version__,
            based_on=self.source,
            fingerprint=self.fingerprint,
            made_on=dict(self.made_on),
            memory_budget_gb=self.memory_budget_gb,
        )

    @property
    def after_calls(self) -> dict[str, str]:
        """What this report's call-time optimizations have done during the calls made so far, by name
        (e.g. static int8: the shapes built, cold or from the cache, and the fidelity measured)."""
        if self._pipeline is None or self._undone or self.dry_run:
            return {}
        notes = after_calls(self._pipeline)
        return {decision.name: notes[decision.name]() for decision in self.applied if decision.name in notes}

    def to_dict(self) -> dict[str, Any]:
        """Everything in the report, JSON-safe."""
        return {
            "source": self.source,
            "pipeline": self.pipeline_class,
            "family": self.family,
            "device": self.device,
            "fingerprint": self.fingerprint,
            "made_on": dict(self.made_on),
            "memory_budget_gb": self.memory_budget_gb,
            "dry_run": self.dry_run,
            "undoable": self.undoable,
            "originals": self.originals,
            "after_calls": self.after_calls,
            "tuning": self.tuning.to_dict() if self.tuning is not None else None,
            "guard": self.guard,
            "warnings": list(self.warnings),
            "applied": [d.to_dict() for d in self.applied],
            "planned": [d.to_dict() for d in self.planned],
            "skipped": [d.to_dict() for d in self.skipped],
            "failed": [d.to_dict() for d in self.failed],
        }

    def __str__(self) -> str:
        what = "dry run of" if self.dry_run else "optimized"
        header = (
            f"sdopt {what} {self.pipeline_class} (family {self.family}) on {self.device} with "
            f"{self.source or 'no tier'}: {len(self.applied)} applied, {len(self.skipped)} skipped, "
            f"{len(self.failed)} failed"
        )
        notes = "".join(f"\nwarning: {warning}" for warning in self.warnings)
        if self.applied and not self.dry_run:
            notes += f"\noriginals: {self.originals}"
        notes += "".join(f"\nafter calls, {name}: {text}" for name, text in self.after_calls.items())
        if self.guard:
            notes += f"\n{self.guard}"
        if self.tuning is not None:
            how = "from the tuning cache" if self.tuning.from_cache else f"measured in {self.tuning.seconds:.1f} s"
            notes += f"\ntuned: {self.tuning.quality} at {self.tuning.shape}, {how}"
        return header + notes + "\n" + format_table(self.decisions)
