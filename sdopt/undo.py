"""The way back: undo functions, a stack of them, and the ledger of which reports are live on a pipeline.

An optimization's ``apply`` returns an `Undo`; one made of several changes pushes each change's
undo on an `UndoStack` and returns the stack (it is itself an undo). The engine keeps one stack
per ``optimize`` call, named by step, and the report runs it. The ledger remembers, per pipeline,
which ``optimize`` calls are live, so an older report refuses to undo before a newer one.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sdopt.errors import RollbackError

Undo = Callable[[], None]
"""Restores exactly what one ``apply`` changed. Called once; if an interrupt (Ctrl-C) stops it midway it
is called again to finish, so an undo puts back what it saved rather than toggling state."""


class UndoStack:
    """Undo functions in the order their changes were made; calling the stack undoes them newest first.

    If some undos raise, the others still run (a partial undo is worse) and one
    `RollbackError` then names them all. Calling it empties the stack; an interrupt (Ctrl-C) leaves the
    undos not yet finished on it, the interrupted one included, so calling it again completes the job.

    Examples:
        >>> from sdopt.undo import UndoStack
        >>> done = []
        >>> stack = UndoStack()
        >>> stack.push(lambda: done.append("first"))
        >>> stack.push(lambda: done.append("second"))
        >>> stack()
        >>> done
        ['second', 'first']
    """

    def __init__(self) -> None:
        self._entries: list[tuple[str, Undo]] = []

    def push(self, undo: Undo, name: str = "") -> None:
        """Add the undo of a change just made (``name`` says whose, in errors)."""
        self._entries.append((name, undo))

    def names(self) -> list[str]:
        """The names given to `push`, oldest first."""
        return [name for name, _ in self._entries]

    def __len__(self) -> int:
        return len(self._entries)

    def __call__(self) -> None:
        self.unwind(len(self._entries))

    def unwind(self, count: int) -> None:
        """Undo only the ``count`` newest changes (newest first), as calling the stack undoes them all."""
        errors = []
        stop = len(self._entries) - count
        while len(self._entries) > stop:
            name, undo = self._entries[-1]
            try:
                undo()
            except RollbackError as error:  # a stack within this one: its failures, each named once
                errors += [f"{name}: {failure}" if name else failure for failure in error.failures]
            except Exception as error:  # keep undoing the rest: a partial undo is worse
                errors.append(f"{name or 'an undo'}: {type(error).__name__}: {error}")
            self._entries.pop()  # done (or failed for good); an interrupt above leaves it for the next call
        if errors:
            raise RollbackError(
                "undoing some optimizations raised, the pipeline may not be fully restored; reload it. "
                + "; ".join(errors),
                tuple(errors),
            )


# ---- the ledger of live optimize() calls per pipeline and per model


@dataclass(frozen=True)
class Gone:
    """A live optimize() whose report cannot undo: made with undoable=False, or dropped by the caller."""

    source: str | None
    why: str


# The optimize() calls whose changes are live on each pipeline and on each of its models, oldest
# first: undo must go newest first. Models count on their own because pipelines made with
# ``from_pipe`` share them: undoing one pipeline's report under another's later changes to the same
# UNet would leave that UNet neither optimized nor original. Reports are held weakly (a report the
# caller drops takes its originals, spill files included, with it) and leave a Gone marker behind,
# so an older report still refuses to undo.
_live: weakref.WeakKeyDictionary[Any, list[weakref.ref[Any] | Gone]] = weakref.WeakKeyDictionary()


def _ledgers(pipe: Any) -> list[Any]:
    """What a report on ``pipe`` is recorded under: the pipeline and each of its models."""
    components = getattr(pipe, "components", None)
    models = [c for c in components.values() if hasattr(c, "parameters")] if isinstance(components, dict) else []
    return [pipe, *models]


def track(pipe: Any, report: Any, source: str | None, *, keep: bool) -> None:
    """Record ``report`` as the newest live optimize() on ``pipe`` and on each of its models (a `Gone`
    marker without ``keep``)."""
    for owner in _ledgers(pipe):
        try:
            entries = _live.setdefault(owner, [])
        except TypeError:  # not weakly referenceable: nothing shares it
            continue
        if not keep:
            entries.append(Gone(source, "made with undoable=False"))
            continue

        def dropped(ref: weakref.ref[Any], entries: list[Any] = entries) -> None:  # the caller let it go
            entries[:] = [Gone(source, "its report was discarded") if e is ref else e for e in entries]

        entries.append(weakref.ref(report, dropped))


def blocking(report: Any) -> str:
    """Why ``report`` cannot be undone now (empty if it can): a later optimize() still live on its
    pipeline, or on a model its pipeline shares with another one."""
    for owner, entries in list(_live.items()):
        if not any(not isinstance(e, Gone) and e() is report for e in entries):
            continue
        last = entries[-1]
        later = last if isinstance(last, Gone) else last()
        if later is None or later is report:
            continue
        where = (
            "this pipeline"
            if owner is report._pipeline
            else f"its {type(owner).__name__}, shared with another pipeline"
        )
        if isinstance(later, Gone):
            return (
                f"a later optimize() on {where} ({later.source or 'explicit optimizations'}, {later.why}) is still "
                "applied and cannot be undone; reload the pipeline instead"
            )
        return (
            f"a later optimize() on {where} ({later.source or 'explicit optimizations'}) is still applied; "
            "undo its report first"
        )
    return ""


def forget(pipe: Any, report: Any) -> None:
    """``report`` is being undone: it is no longer live anywhere."""
    for entries in list(_live.values()):
        entries[:] = [e for e in entries if isinstance(e, Gone) or (e() is not None and e() is not report)]


# ---- one change at a time per pipeline

_busy: weakref.WeakKeyDictionary[Any, threading.RLock] = weakref.WeakKeyDictionary()
_busy_guard = threading.Lock()


@contextlib.contextmanager
def exclusive(pipe: Any) -> Iterator[None]:
    """Hold ``pipe`` and its models for one ``optimize`` or ``undo``: another thread trying the same on it,
    or on a pipeline sharing one of its models (``from_pipe``), gets a clear error instead of a rollback
    that silently reverts this one's step (the same thread may nest)."""
    locks = []
    with _busy_guard:
        for owner in _ledgers(pipe):
            try:
                locks.append(_busy.setdefault(owner, threading.RLock()))
            except TypeError:  # not a pipeline at all (None, a string): planning says so
                continue
    held = []
    try:
        for lock in locks:
            if not lock.acquire(blocking=False):
                raise RuntimeError(
                    "another thread is optimizing or undoing this pipeline (or one sharing its models) right "
                    "now; wait for it to finish, or give each thread a pipeline of its own"
                )
            held.append(lock)
        yield
    finally:
        for lock in reversed(held):
            lock.release()
