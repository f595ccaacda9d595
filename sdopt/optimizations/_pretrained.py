"""Loading replacement models (tiny VAEs, fixed VAEs) once per process, with honest failures."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from sdopt.optimizations.base import Undo

# (class name, source) -> loaded model or the error it raised; a failed download is not retried
# on every plan of the same process.
_cache: dict[tuple[str, str], Any] = {}


def load_pretrained(class_name: str, source: str) -> Any:
    """``diffusers.<class_name>.from_pretrained(source)``, cached; raises what loading raised."""
    key = (class_name, str(Path(source).resolve()) if Path(source).exists() else source)
    if key not in _cache:
        import diffusers

        try:
            _cache[key] = getattr(diffusers, class_name).from_pretrained(source).eval()
        except Exception as error:
            _cache[key] = error
    cached = _cache[key]
    if isinstance(cached, Exception):
        raise cached
    return cached


def fresh_copy(class_name: str, source: str, like: Any) -> Any:
    """A private copy of the cached model, on the device and in the dtype of the module ``like``."""
    model = copy.deepcopy(load_pretrained(class_name, source)).eval()
    reference = next(like.parameters(), None)
    if reference is not None:
        model = model.to(device=reference.device, dtype=reference.dtype)
    return model


def swap_vae(pipe: Any, vae_name: str, class_name: str, source: str) -> Undo:
    """Replace the pipeline's VAE by a private copy of the cached model; the undo puts the original
    object back (DiffusionPipeline.__setattr__ keeps the pipeline's config entry in step both ways)."""
    original = getattr(pipe, vae_name)
    setattr(pipe, vae_name, fresh_copy(class_name, source, like=original))
    return lambda: setattr(pipe, vae_name, original)


def load_failure(what: str, source: str, error: Exception) -> str:
    """A skip reason for weights that could not be loaded, with the way out."""
    first_line = (str(error).strip().splitlines() or [""])[0][:300]
    return (
        f"cannot load {what} {source!r} ({type(error).__name__}: {first_line}); download it once with "
        "network access, or pass a local directory as 'source'"
    )
