"""sdopt's messages and progress bars, the way diffusers and transformers do theirs.

Messages go through the standard `logging` module under the ``sdopt`` logger (one child per
module: ``sdopt.api``, ``sdopt.tuning``...). By default warnings and errors reach stderr through
sdopt's own handler; ``SDOPT_VERBOSITY=info`` (or ``debug``, ``warning``, ``error``) sets the
starting level, and the helpers below change it at run time. ``enable_propagation()`` hands the
records to your own logging configuration instead.

Progress bars (``sdopt.tune``, ``sdopt.bench``, ``sdopt generate``) show only while both sdopt's
switch (`disable_progress_bar`) and diffusers' (``diffusers.utils.logging.disable_progress_bar``)
are on; a pipeline whose own bar was turned off with ``pipe.set_progress_bar_config(disable=True)``
gets none from sdopt either.

Examples:
    >>> import sdopt.logging
    >>> sdopt.logging.set_verbosity_info()
    >>> sdopt.logging.get_verbosity() == sdopt.logging.INFO
    True
    >>> sdopt.logging.set_verbosity_warning()
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

CRITICAL = logging.CRITICAL
ERROR = logging.ERROR
WARNING = logging.WARNING
INFO = logging.INFO
DEBUG = logging.DEBUG

_LEVELS = {"debug": DEBUG, "info": INFO, "warning": WARNING, "error": ERROR, "critical": CRITICAL}
_ROOT = "sdopt"
_lock = threading.Lock()
_handler: logging.Handler | None = None
_progress_bars = True


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (a test's capture, a redirect)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _root() -> logging.Logger:
    global _handler
    logger = logging.getLogger(_ROOT)
    with _lock:
        if _handler is None:
            _handler = _StderrHandler()
            _handler.setFormatter(logging.Formatter("sdopt: %(message)s"))
            logger.addHandler(_handler)
            logger.setLevel(_env_level())
            logger.propagate = False
    return logger


def _env_level() -> int:
    name = os.environ.get("SDOPT_VERBOSITY", "").strip().lower()
    if name and name not in _LEVELS:
        logging.getLogger(_ROOT).warning("SDOPT_VERBOSITY=%s is not a level; use one of %s", name, ", ".join(_LEVELS))
    return _LEVELS.get(name, WARNING)


def get_logger(name: str | None = None) -> logging.Logger:
    """The ``sdopt`` logger, or its child ``name`` (``sdopt.<name>`` unless it already starts so).

    Examples:
        >>> from sdopt.logging import get_logger
        >>> get_logger("tuning").name
        'sdopt.tuning'
    """
    root = _root()
    if not name or name == _ROOT:
        return root
    return logging.getLogger(name if name.startswith(_ROOT + ".") else f"{_ROOT}.{name}")


def get_verbosity() -> int:
    """The ``sdopt`` logger's level (``sdopt.logging.INFO``...)."""
    return _root().getEffectiveLevel()


def set_verbosity(level: int | str) -> None:
    """Set the ``sdopt`` logger's level: a ``logging`` level or its name (``"info"``).

    Examples:
        >>> import sdopt.logging
        >>> sdopt.logging.set_verbosity("error")
        >>> sdopt.logging.get_verbosity() == sdopt.logging.ERROR
        True
        >>> sdopt.logging.set_verbosity_warning()
    """
    if isinstance(level, str):
        if level.lower() not in _LEVELS:
            raise ValueError(f"unknown verbosity {level!r}; use one of {', '.join(_LEVELS)}")
        level = _LEVELS[level.lower()]
    _root().setLevel(level)


def set_verbosity_debug() -> None:
    """Everything, including each planning decision."""
    set_verbosity(DEBUG)


def set_verbosity_info() -> None:
    """What sdopt does as it does it (steps applied, measurements, builds)."""
    set_verbosity(INFO)


def set_verbosity_warning() -> None:
    """Warnings and errors only (the default)."""
    set_verbosity(WARNING)


def set_verbosity_error() -> None:
    """Errors only."""
    set_verbosity(ERROR)


def disable_default_handler() -> None:
    """Stop sdopt's own stderr handler (your handlers, with `enable_propagation`, take over)."""
    _root().removeHandler(_handler)  # type: ignore[arg-type]


def enable_default_handler() -> None:
    """Print sdopt's records to stderr again (the default)."""
    root = _root()
    if _handler not in root.handlers:
        root.addHandler(_handler)  # type: ignore[arg-type]


def quiet_third_party_imports() -> dict[str, list[str]]:
    """Import the optional third-party packages that print on import (torchao, bitsandbytes, the
    transformers image processors...) now, with their output kept off the terminal, as the ``sdopt``
    command does; returns what each printed. Call it first in a script.

    Examples:
        >>> import sdopt.logging
        >>> isinstance(sdopt.logging.quiet_third_party_imports(), dict)
        True
    """
    import os

    from sdopt._noise import quiet_imports

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # its image-processor notices, printed at load time
    return quiet_imports()


def enable_propagation() -> None:
    """Pass sdopt's records on to the root logger (your own logging configuration)."""
    _root().propagate = True


def disable_propagation() -> None:
    """Keep sdopt's records to its own handler (the default)."""
    _root().propagate = False


def enable_progress_bar() -> None:
    """Let sdopt show progress bars (the default; diffusers' own switch must be on too)."""
    global _progress_bars
    _progress_bars = True


def disable_progress_bar() -> None:
    """No progress bars from sdopt (``--quiet`` on the command line)."""
    global _progress_bars
    _progress_bars = False


def is_progress_bar_enabled(pipe: Any = None) -> bool:
    """Whether sdopt shows a progress bar now: its own switch, diffusers' switch and, given a
    pipeline, that pipeline's ``set_progress_bar_config(disable=...)``.

    Examples:
        >>> import sdopt.logging
        >>> from sdopt.testing import tiny_pipeline
        >>> sdopt.logging.is_progress_bar_enabled(tiny_pipeline("sd"))  # sdopt.testing turns bars off
        False
    """
    from diffusers.utils import logging as diffusers_logging

    if not (_progress_bars and diffusers_logging.is_progress_bar_enabled()):
        return False
    return not (pipe is not None and getattr(pipe, "_progress_bar_config", {}).get("disable"))


def progress_bar(*, total: int, desc: str, unit: str = "it", pipe: Any = None, enabled: bool = True) -> Any:
    """A tqdm bar that shows only where `is_progress_bar_enabled` (and ``enabled``) say so."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not (enabled and is_progress_bar_enabled(pipe)))
