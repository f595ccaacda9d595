"""Loading replacement models (tiny VAEs, fixed VAEs) once per process, with honest failures."""

from __future__ import annotations

import contextlib
import contextvars
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sdopt.undo import Undo

# (class name, source) -> loaded model or the error it raised; a failed download is not retried
# on every plan of the same process. Stand-ins are kept under ("stand-in", class name, source).
_cache: dict[tuple[str, ...], Any] = {}
_downloads_allowed = contextvars.ContextVar("sdopt_downloads_allowed", default=True)
_stand_ins_allowed = contextvars.ContextVar("sdopt_stand_ins_allowed", default=False)


class NotDownloaded(OSError):
    """The model is not on disk, and this is a plan or a dry run, which never touch the network."""


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Within this context `load_pretrained` uses local files only and raises
    `NotDownloaded` for the rest (``plan()`` and dry runs are pure and offline)."""
    token = _downloads_allowed.set(False)
    try:
        yield
    finally:
        _downloads_allowed.reset(token)


@contextlib.contextmanager
def stand_ins() -> Iterator[None]:
    """Within this context a published replacement model that cannot be loaded (not cached, no
    network) is replaced by a random-weight model of its architecture
    (`sdopt.simulation.architectures.stand_in`): for timing ``--arch`` pipelines, whose own weights are
    random too. Outside it, nothing is ever made up."""
    token = _stand_ins_allowed.set(True)
    try:
        yield
    finally:
        _stand_ins_allowed.reset(token)


def stand_ins_allowed() -> bool:
    """Whether this code runs inside `stand_ins`."""
    return _stand_ins_allowed.get()


def is_stand_in(model: Any) -> bool:
    """Whether ``model`` is a random-weight stand-in (see `stand_ins`)."""
    return bool(getattr(model, "_sdopt_stand_in", False))


def load_pretrained(class_name: str, source: str) -> Any:
    """``diffusers.<class_name>.from_pretrained(source)``, cached; raises what loading raised (or,
    inside `stand_ins`, returns a random-weight stand-in of a published replacement)."""
    try:
        return _load_pretrained(class_name, source)
    except Exception:
        if not _stand_ins_allowed.get():
            raise
        from sdopt.simulation.architectures import stand_in

        key = ("stand-in", class_name, source)
        if key not in _cache:
            model = stand_in(class_name, source)
            if model is None:
                raise
            _cache[key] = model
        return _cache[key]


def _load_pretrained(class_name: str, source: str) -> Any:
    local = Path(source).exists()
    key = (class_name, str(Path(source).resolve()) if local else source)
    if key not in _cache:
        import diffusers

        from sdopt._noise import hub_deprecations_silenced

        cls = getattr(diffusers, class_name)
        try:
            with hub_deprecations_silenced():
                _cache[key] = (cls.from_pretrained(source) if local else _from_hub(cls, source)).eval()
        except NotDownloaded:
            raise  # not a failure to remember: optimize may download it
        except Exception as error:
            _cache[key] = _bare(error)
    cached = _cache[key]
    if isinstance(cached, Exception):
        raise copy.copy(cached)  # a copy: raising the cached one would tie this call's frames to it
    return cached


def _bare(error: Exception) -> Exception:
    """``error`` without its traceback and chained exceptions, to be kept for the process's life: their
    frames hold their callers' locals (measured: a failed TAESD download kept a whole pipeline, UNet and
    compiled OpenVINO model included, alive after the bench had dropped it, 7 GB per lane)."""
    error.__traceback__ = None
    error.__cause__ = error.__context__ = None
    error.__suppress_context__ = True
    return error


def _from_hub(cls: Any, repo_id: str) -> Any:
    # huggingface_hub retries an unreachable Hub five times with backoff (~25 s per process, seen
    # offline), so the local cache is tried first and the network only when the Hub answers at all.
    try:
        return cls.from_pretrained(repo_id, local_files_only=True)
    except Exception as not_cached:
        if not _downloads_allowed.get():
            from huggingface_hub import constants

            if constants.HF_HUB_OFFLINE:  # optimize could not download it either: a final answer
                raise OSError(f"{repo_id} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set") from None
            raise NotDownloaded(f"{repo_id} is not in the local Hugging Face cache") from not_cached
        unreachable = hub_unreachable()
        if unreachable:
            raise OSError(f"{repo_id} is not in the local Hugging Face cache and {unreachable}") from not_cached
    return cls.from_pretrained(repo_id)


def hub_unreachable(timeout_s: float = 3.0) -> str | None:
    """Why the Hub cannot be reached (offline mode, or no TCP connection), or None."""
    import os
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # behind a proxy a direct connection says nothing; let huggingface_hub try
    endpoint = urlparse(constants.ENDPOINT)
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as error:
        return f"{host} cannot be reached ({error})"
    return None


def fresh_copy(class_name: str, source: str, like: Any) -> Any:
    """A private copy of the cached model, on the device and in the dtype of the module ``like``."""
    model = copy.deepcopy(load_pretrained(class_name, source)).eval()
    reference = next(like.parameters(), None)
    if reference is not None:
        from sdopt._noise import diffusers_quiet

        # diffusers 0.42 warns about float32 modules to keep on every dtype cast, even with none to keep.
        with diffusers_quiet():
            model = model.to(device=reference.device, dtype=reference.dtype)
    return model


def swap_vae(pipe: Any, vae_name: str, class_name: str, source: str) -> Undo:
    """Replace the pipeline's VAE by a private copy of the cached model; the undo puts the original
    object back (DiffusionPipeline.__setattr__ keeps the pipeline's config entry in step both ways).

    The original's weights go where undo's originals are kept (`sdopt.originals`) and its
    memory is freed: a reference to the old VAE held elsewhere sees empty weights until undo."""
    from sdopt.originals import keep

    original = getattr(pipe, vae_name)
    replacement = fresh_copy(class_name, source, like=original)
    kept = keep(list({id(t): t for t in [*original.parameters(), *original.buffers()]}.values()), owner=original)
    setattr(pipe, vae_name, replacement)
    kept.release()

    def undo() -> None:
        kept.restore()
        setattr(pipe, vae_name, original)

    return undo


def load_failure(what: str, source: str, error: Exception) -> str:
    """A skip reason for weights that could not be loaded, with the way out."""
    first_line = (str(error).strip().splitlines() or [""])[0][:300]
    return (
        f"cannot load {what} {source!r} ({type(error).__name__}: {first_line}); download it once with "
        "network access, or pass a local directory as 'source'"
    )
