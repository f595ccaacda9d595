"""Recording instance attributes and restoring exactly what was there (value, or absence)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sdopt.optimization import Undo

_ABSENT = object()

# Instance attributes diffusers' HookRegistry and accelerate's hooks leave behind after their
# removal (an instance-level `forward`, an empty registry, accelerate's bookkeeping).
HOOK_ATTRIBUTES = ("forward", "_diffusers_hook", "_hf_hook", "_old_forward")


def remember_attributes(obj: Any, names: Iterable[str]) -> Undo:
    """Record ``names`` on ``obj`` now; the returned undo puts them back (or deletes them if absent)."""
    saved = {name: obj.__dict__.get(name, _ABSENT) for name in names}

    def undo() -> None:
        for name, value in saved.items():
            if value is _ABSENT:
                obj.__dict__.pop(name, None)
            else:
                obj.__dict__[name] = value

    return undo
