"""Third-party import noise, captured instead of printed.

Importing a diffusers pipeline imports peft, torchao and bitsandbytes where they are installed, and
those print on import: torchao's ``Failed to load ..._C_mxfp8...so`` (kernels built for GPUs this
machine lacks), torch's pytree ``register_constant`` deprecation warnings from torchao's enums,
bitsandbytes' ``kernels-community`` message, diffusers' ``Unable to import torchao Tensor objects``.
None of it is about the user's pipeline. The command line imports them here first, with the
process's stdout and stderr (file descriptors too: some of it is written by native code or by
handlers that hold the original stream), warnings and log records captured per package;
``sdopt doctor`` summarises what was heard in one line per package, and ``--verbose`` prints it.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence

# In dependency order, so each package's noise is heard while importing that package.
NOISY_IMPORTS: tuple[tuple[str, str], ...] = (
    ("bitsandbytes", "bitsandbytes"),
    ("torchao", "torchao"),
    ("peft", "peft"),
    ("diffusers", "diffusers.quantizers"),
    ("diffusers", "diffusers.pipelines"),
)

_heard: dict[str, list[str]] = {}


@contextlib.contextmanager
def captured() -> Iterator[list[str]]:
    """Everything written to stdout/stderr (by Python or native code) and every warning raised
    inside the block, as lines, instead of on the terminal."""
    lines: list[str] = []
    text = io.StringIO()
    real_stderr = sys.stderr
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with tempfile.TemporaryFile(mode="w+b") as spool:
        saved: list[tuple[int, int]] = []
        heard_warnings: list[warnings.WarningMessage] = []
        try:
            for fd in (1, 2):
                with contextlib.suppress(OSError):  # no such descriptor (embedded): Python-level capture only
                    saved.append((fd, os.dup(fd)))
                    os.dup2(spool.fileno(), fd)
            with (
                warnings.catch_warnings(record=True) as recorded,
                contextlib.redirect_stdout(text),
                contextlib.redirect_stderr(text),
            ):
                heard_warnings = recorded  # the filters stay: only what would have been shown is kept
                yield lines
        finally:
            for fd, copy in saved:
                with contextlib.suppress(OSError):
                    os.dup2(copy, fd)
                os.close(copy)
            _unbind(text, real_stderr)
            spool.seek(0)
            native = spool.read().decode(errors="replace")
            lines += [line for line in (native + text.getvalue()).splitlines() if line.strip()]
            lines += [f"{w.category.__name__}: {w.message}" for w in heard_warnings]


def _unbind(buffer: io.StringIO, stream: object) -> None:
    """Logging handlers made during the capture (diffusers' and transformers' default handlers are
    made on their first import) hold the capture's buffer: they get the real stream back, or their
    library's messages would be lost for the rest of the process."""
    import logging

    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):
            if isinstance(handler, logging.StreamHandler) and handler.stream is buffer:
                handler.setStream(stream)


def quiet_imports(imports: Sequence[tuple[str, str]] = NOISY_IMPORTS) -> dict[str, list[str]]:
    """Import each ``(package, module)`` not imported yet with its output captured; what each package
    printed is kept for `heard`. A module that fails to import is left for its real user."""
    for package, module in imports:
        if module in sys.modules or importlib.util.find_spec(package) is None:
            continue
        with captured() as lines, contextlib.suppress(Exception):
            importlib.import_module(module)
        if lines:
            _heard.setdefault(package, []).extend(lines)
    return heard()


def heard() -> dict[str, list[str]]:
    """What each package printed while `quiet_imports` imported it."""
    return {package: list(lines) for package, lines in _heard.items()}


def summary(lines: Sequence[str], width: int = 110) -> str:
    """One line for a package's messages: how many, and the first one shortened."""
    first = lines[0].strip()
    if len(first) > width:
        first = first[: width - 3] + "..."
    more = f" (+{len(lines) - 1} more)" if len(lines) > 1 else ""
    return f"{len(lines)} message(s) on import, hidden: {first}{more}"


@contextlib.contextmanager
def hub_deprecations_silenced() -> Iterator[None]:
    """diffusers 0.42's ``from_pretrained`` passes ``local_dir_use_symlinks``, which huggingface_hub
    >= 0.23 deprecates with a UserWarning on every load: not the caller's to fix."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks", category=UserWarning)
        yield


@contextlib.contextmanager
def diffusers_quiet() -> Iterator[None]:
    """diffusers' warnings off while sdopt does something deliberate that diffusers warns about."""
    from diffusers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)
