"""Changing what ``pipe(...)`` does, for call-time optimizations (step budget, guidance, resolution).

``pipe(...)`` looks ``__call__`` up on the class, so an instance attribute would be ignored. The
pipeline instance gets a subclass of its own class (same name and module, so diffusers' saving
and sdopt's family detection see no difference) whose ``__call__`` adjusts the arguments; the
undo gives the instance its original class back. Layers stack, and undo runs newest first.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any

from sdopt.optimizations.base import Undo

Adjust = Callable[[dict[str, Any]], dict[str, Any]]
Finish = Callable[[Any, dict[str, Any]], Any]


def wrap_call(
    pipe: Any,
    adjust: Adjust,
    finish: Finish | None = None,
    around: Callable[[], AbstractContextManager[Any]] | None = None,
    *,
    layer: str,
) -> Undo:
    """Make ``pipe(**kwargs)`` call the original with ``adjust(kwargs)``, then pass its output
    through ``finish(output, original_kwargs)`` if given; positional args pass through. With
    ``around``, each call runs inside the context it returns (process-wide settings that must hold
    during the call only). ``layer`` names the optimization, so a second ``optimize`` can tell the
    layer is there (:func:`call_layers`) instead of wrapping the call twice."""
    original_class = type(pipe)

    @functools.wraps(original_class.__call__)  # the signature (and docs) stay the pipeline's
    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        with around() if around is not None else contextlib.nullcontext():
            output = original_class.__call__(self, *args, **adjust(dict(kwargs)))
        return finish(output, kwargs) if finish is not None else output

    wrapped_class = type(
        original_class.__name__,
        (original_class,),
        {
            "__call__": __call__,
            "__module__": original_class.__module__,
            "__qualname__": original_class.__qualname__,
            _LAYER: layer,
        },
    )
    pipe.__class__ = wrapped_class

    def undo() -> None:
        pipe.__class__ = original_class

    return undo


_LAYER = "_sdopt_call_layer"


def call_layers(pipe: Any) -> list[str]:
    """The optimizations wrapping ``pipe``'s call, outermost first."""
    return [cls.__dict__[_LAYER] for cls in type(pipe).__mro__ if _LAYER in cls.__dict__]


def call_parameters(pipe: Any) -> Mapping[str, inspect.Parameter]:
    """The parameters of the pipeline's ``__call__``."""
    return inspect.signature(type(pipe).__call__).parameters


def call_default(pipe: Any, parameter: str) -> Any:
    """The default value of ``parameter`` in the pipeline's ``__call__`` (``None`` if absent)."""
    found = call_parameters(pipe).get(parameter)
    if found is None or found.default is inspect.Parameter.empty:
        return None
    return found.default
