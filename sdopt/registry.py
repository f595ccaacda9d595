"""The registry of optimizations, keyed by name: queries, and loading the built-ins and plugins.

Built-in optimizations are the modules of ``sdopt.optimizations`` (every module there is
imported; an import error is raised, never swallowed); third-party packages add theirs
through the ``sdopt.optimizations`` entry-point group or by calling `sdopt.optimization.register`
(also importable from here). The store itself sits low, in `sdopt.optimization`, so an
optimization registers without importing this module.
Relations are stated once, on one side: ``conflicts`` and ``before``/``after`` are read in
both directions here.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import pkgutil
import threading
from typing import Any

from sdopt.errors import UnknownOptimizationError
from sdopt.optimization import STORE as _registry
from sdopt.optimization import Optimization, register

__all__ = [
    "by_config_type",
    "conflicts_between",
    "get",
    "list_optimizations",
    "must_precede",
    "names",
    "register",
    "unregister",
]

_loaded = False
_loading = False
_load_lock = threading.RLock()


def unregister(name: str) -> None:
    """Remove an optimization from the registry (mostly for tests)."""
    _ensure_loaded()
    if name not in _registry:
        raise UnknownOptimizationError(name, _registry)
    del _registry[name]


def get(name: str) -> Optimization:
    """The registered optimization called ``name``; the error suggests the closest names."""
    _ensure_loaded()
    try:
        return _registry[name]
    except KeyError:
        raise UnknownOptimizationError(name, _registry) from None


def names() -> list[str]:
    """Names of all registered optimizations, sorted."""
    _ensure_loaded()
    return sorted(_registry)


def by_config_type(config: Any) -> Optimization | None:
    """The optimization whose ``Config`` class ``config`` is an instance of."""
    _ensure_loaded()
    return next((opt for opt in _registry.values() if type(config) is opt.Config), None)


def conflicts_between(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` declare a conflict, in either direction."""
    first, second = get(a), get(b)
    return b in first.conflicts or a in second.conflicts


def must_precede(a: str, b: str) -> bool:
    """Whether ``a`` must be applied before ``b`` when both are planned (either side may say so)."""
    first, second = get(a), get(b)
    return b in first.before or a in second.after


def list_optimizations() -> list[dict[str, Any]]:
    """A row per registered optimization: name, kind, summary, lossy, effect, requirements, options.

    Examples:
        >>> from sdopt import list_optimizations
        >>> "channels_last" in [row["name"] for row in list_optimizations()]
        True
    """
    rows = []
    for name in names():
        opt = _registry[name]
        rows.append(
            {
                "name": name,
                "kind": opt.kind,
                "summary": opt.summary,
                "lossy": opt.lossy,
                "effect": opt.effect,
                "requires": opt.requires.to_dict(),
                "conflicts": sorted(other for other in _registry if other != name and conflicts_between(name, other)),
                "group": opt.group,
                "options": {item.name: _default_of(item) for item in dataclasses.fields(opt.Config)},
            }
        )
    return rows


def _default_of(item: dataclasses.Field[Any]) -> Any:
    if item.default is not dataclasses.MISSING:
        value = item.default
    elif item.default_factory is not dataclasses.MISSING:
        value = item.default_factory()
    else:
        return None
    return list(value) if isinstance(value, tuple) else value


def _ensure_loaded() -> None:
    global _loaded, _loading
    if _loaded:
        return
    # Another thread's first use waits for the load instead of seeing a half-filled registry; the loading
    # thread itself (an optimization module asking while it is imported) gets through (a re-entrant lock).
    with _load_lock:
        if _loaded or _loading:
            return
        _loading = True
        try:
            _load_builtins_and_plugins()
            _loaded = True
        finally:
            _loading = False


def _load_builtins_and_plugins() -> None:
    import sdopt.optimizations as package

    for module in pkgutil.iter_modules(package.__path__):
        if not module.name.startswith("_"):  # _name: shared helpers
            importlib.import_module(f"{package.__name__}.{module.name}")
    for entry_point in importlib.metadata.entry_points(group="sdopt.optimizations"):
        try:
            loaded = entry_point.load()
        except Exception as error:
            raise ImportError(
                f"the sdopt plugin {entry_point.name!r} ({entry_point.value}) failed to import: {error}"
            ) from error
        if isinstance(loaded, type) and issubclass(loaded, Optimization) and loaded.name not in _registry:
            register(loaded)
