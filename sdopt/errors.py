"""Exceptions sdopt raises. Each carries the object at fault and says what to do next."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence


class SdoptError(Exception):
    """Base class of every error sdopt raises on purpose."""


class UnknownTierError(SdoptError, ValueError):
    """A tier name or version that does not exist."""

    def __init__(self, tier: str, message: str) -> None:
        super().__init__(message)
        self.tier = tier


class UnknownOptimizationError(SdoptError, ValueError):
    """An optimization name that is not registered."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        super().__init__(
            f"unknown optimization {name!r}: {hint}registered optimizations are: {', '.join(known)} "
            f"(see sdopt.list_optimizations())"
        )
        self.name = name
        self.suggestions = close


class ConfigError(SdoptError, ValueError):
    """A configuration value an optimization does not accept."""

    def __init__(self, optimization: str, message: str) -> None:
        super().__init__(f"{optimization}: {message}")
        self.optimization = optimization


class PlanningError(SdoptError, ValueError):
    """Metadata that cannot be planned, e.g. an ordering cycle between optimizations."""


class MemoryBudgetError(SdoptError, ValueError):
    """The caller's memory budget is below what any plan needs; names the smallest that would work."""

    def __init__(self, budget_gb: float, smallest_gb: float, detail: str) -> None:
        self.budget_gb = budget_gb
        self.smallest_gb = smallest_gb
        super().__init__(
            f"memory_budget {budget_gb:g} GB is below what any plan needs: {detail}. The smallest budget that "
            f"would work is about {smallest_gb:.1f}GB (memory_budget='{smallest_gb:.1f}GB'); or generate smaller "
            "images, or use a machine with more memory."
        )


class OptimizationFailed(SdoptError, RuntimeError):
    """An optimization raised while being applied; everything applied before it was rolled back."""

    def __init__(self, name: str, cause: BaseException) -> None:
        super().__init__(
            f"optimization {name!r} failed and the pipeline was rolled back to its original state: "
            f"{type(cause).__name__}: {cause}. Exclude it with optimize(..., exclude=[{name!r}]) "
            f"or pass strict=False to record the failure and apply the rest."
        )
        self.name = name
        self.cause = cause


class StrictModeError(SdoptError, RuntimeError):
    """``strict=True`` and a requested optimization could not be applied; nothing was changed."""

    def __init__(self, reasons: Mapping[str, str], message: str | None = None) -> None:
        lines = "\n".join(f"  - {name}: {reason}" for name, reason in reasons.items())
        super().__init__(
            message
            or f"strict=True and {len(reasons)} requested optimization(s) cannot be applied here; "
            f"nothing was changed:\n{lines}"
        )
        self.reasons = dict(reasons)


class RollbackError(SdoptError, RuntimeError):
    """Undoing an optimization raised; the pipeline may be left partly optimized. ``failures`` names each
    undo that raised, with its error."""

    def __init__(self, message: str, failures: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.failures = failures


class UndoError(SdoptError, RuntimeError):
    """``Report.undo()`` cannot run (already undone, not undoable, or out of order)."""


class PresetMismatchError(StrictModeError):
    """``strict=True`` replay of a frozen preset on a machine whose capabilities differ; nothing was changed."""

    def __init__(self, preset: str, differences: Sequence[str], refused: Mapping[str, str]) -> None:
        lines = "\n".join(f"  - {difference}" for difference in differences)
        steps = "".join(f"\n  - {name}: {reason}" for name, reason in refused.items())
        super().__init__(
            refused,
            f"preset {preset} was frozen on a machine with other capabilities; nothing was applied.\n"
            f"Differences (frozen -> here):\n{lines}"
            + (f"\nSteps that cannot apply here:{steps}" if steps else "")
            + "\nFreeze the preset again on this machine (sdopt freeze), or replay without strict=True "
            "to apply what still can.",
        )
        self.differences = list(differences)
