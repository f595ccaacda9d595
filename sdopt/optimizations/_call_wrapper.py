"""Changing what ``pipe(...)`` does, for call-time optimizations (step budget, guidance, resolution...).

``pipe(...)`` looks ``__call__`` up on the class, so an instance attribute would be ignored. The
pipeline instance gets a subclass of its own class (same ``__name__``, so diffusers saves it under
its own name) whose ``__call__`` runs the instance's :class:`CallLayer` objects around the original
call; the undo removes the layer, and the last one gives the instance its original class back.
Layers keep their settings and state in their own attributes (no closures), so ``copy.deepcopy``
of an optimized pipeline gets layers of its own, and ``pickle`` finds the subclass by name.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import re
import sys
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any

from sdopt.optimizations.base import Undo

_LAYERS = "_sdopt_call_layers"
_PREFIX = "Wrapped__"


class CallLayer:
    """One optimization's change to a call: ``adjust`` the keyword arguments on the way in, ``finish``
    the output on the way out, hold ``around`` context (settings that must hold during the call only).
    Subclasses keep what they need as attributes."""

    def __init__(self, name: str) -> None:
        self.name = name

    def adjust(self, pipe: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        return kwargs

    def finish(self, pipe: Any, output: Any, kwargs: dict[str, Any]) -> Any:
        """``kwargs`` are the arguments as they reached this layer, before its ``adjust``."""
        return output

    def around(self, pipe: Any) -> AbstractContextManager[Any]:
        return contextlib.nullcontext()


def wrap_call(pipe: Any, layer: CallLayer) -> Undo:
    """Run ``layer`` around every ``pipe(...)`` call (newest layer outermost); the undo removes it."""
    original_class = _original_class(type(pipe))
    layers: list[CallLayer] = pipe.__dict__.setdefault(_LAYERS, [])
    layers.append(layer)
    pipe.__class__ = _wrapper_class(original_class)

    def undo() -> None:
        current = pipe.__dict__.get(_LAYERS, [])
        if layer in current:
            current.remove(layer)
        if not current:
            pipe.__dict__.pop(_LAYERS, None)
            pipe.__class__ = original_class

    return undo


def call_layers(pipe: Any) -> list[str]:
    """The names of the optimizations wrapping ``pipe``'s call, oldest first."""
    return [layer.name for layer in pipe.__dict__.get(_LAYERS, ())]


def _original_class(cls: type) -> type:
    return cls.__dict__.get("_sdopt_original", cls)


@functools.cache
def _wrapper_class(original_class: type) -> type:
    @functools.wraps(original_class.__call__)  # the signature (and docs) stay the pipeline's
    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        outermost_first = list(reversed(self.__dict__.get(_LAYERS, ())))
        seen: list[dict[str, Any]] = []
        with contextlib.ExitStack() as stack:
            for layer in outermost_first:
                stack.enter_context(layer.around(self))
                seen.append(dict(kwargs))
                kwargs = layer.adjust(self, dict(kwargs))
            output = original_class.__call__(self, *args, **kwargs)
        for layer, arrived in zip(reversed(outermost_first), reversed(seen), strict=True):
            output = layer.finish(self, output, arrived)
        return output

    name = _PREFIX + _escape(original_class.__module__) + "_S" + _escape(original_class.__qualname__)
    wrapper = type(
        original_class.__name__,
        (original_class,),
        {"__call__": __call__, "__module__": __name__, "__qualname__": name, "_sdopt_original": original_class},
    )
    setattr(sys.modules[__name__], name, wrapper)  # where pickle looks for it
    return wrapper


def _escape(text: str) -> str:
    """An identifier for ``text``: "_" becomes "_u" and "." becomes "_d", so "_S" can separate parts."""
    return text.replace("_", "_u").replace(".", "_d")


def _unescape(text: str) -> str:
    return re.sub(r"_([ud])", lambda match: "_" if match.group(1) == "u" else ".", text)


def __getattr__(name: str) -> Any:
    """Rebuild a wrapper class by name, for ``pickle`` in a process that has not wrapped that class yet."""
    import importlib

    module, separator, qualname = name.removeprefix(_PREFIX).partition("_S")
    if not name.startswith(_PREFIX) or not separator:
        raise AttributeError(name)
    try:
        original: Any = importlib.import_module(_unescape(module))
        for part in _unescape(qualname).split("."):
            original = getattr(original, part)
    except (ImportError, AttributeError, TypeError, ValueError) as error:
        raise AttributeError(f"{name}: the pipeline class it wraps cannot be imported ({error})") from error
    return _wrapper_class(original)


def call_parameters(pipe: Any) -> Mapping[str, inspect.Parameter]:
    """The parameters of the pipeline's ``__call__``."""
    return inspect.signature(_original_class(type(pipe)).__call__).parameters


def call_default(pipe: Any, parameter: str) -> Any:
    """The default value of ``parameter`` in the pipeline's ``__call__`` (``None`` if absent)."""
    found = call_parameters(pipe).get(parameter)
    if found is None or found.default is inspect.Parameter.empty:
        return None
    return found.default
