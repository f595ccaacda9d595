"""Tuning results kept between processes, keyed by everything a measurement depends on.

The key hashes: the machine's capabilities fingerprint, the pipeline (its class, each component's
class and configuration, the denoiser's weights), the call shape, the quality tier and its candidate
steps, the fidelity floor and the sdopt version. Entries are small JSON files under
``$SDOPT_CACHE_DIR/tune`` (default ``~/.cache/sdopt/tune``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sdopt.anatomy import inspect_pipeline, unwrap
from sdopt.cache_dir import cache_root
from sdopt.int8.cache import weights_hash


def default_root() -> Path:
    return cache_root("tune")


def pipeline_signature(pipe: Any) -> dict[str, Any]:
    """The pipeline's class, its components' classes and configurations, and the denoiser's weights hash."""
    components: dict[str, Any] = {}
    for name, component in sorted(getattr(pipe, "components", {}).items()):
        config = getattr(component, "config", None)
        components[name] = {
            "class": type(component).__name__,
            "config": dict(config) if isinstance(config, Mapping) else None,
        }
    denoiser = inspect_pipeline(pipe).denoiser
    return {
        "class": type(pipe).__name__,
        "components": components,
        "denoiser_weights": weights_hash(unwrap(denoiser)) if denoiser is not None else None,
    }


def key(facts: Mapping[str, Any]) -> str:
    text = json.dumps(facts, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def load(root: Path, entry: str) -> dict[str, Any] | None:
    """The stored tuning for ``entry``, or ``None`` (missing or unreadable: measured again)."""
    path = root / f"{entry}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def store(root: Path, entry: str, data: Mapping[str, Any]) -> None:
    """Write atomically, so a concurrent reader sees the old entry or the new one, never half of one."""
    root.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{entry}-", suffix=".json", dir=root)
    with os.fdopen(handle, "w", encoding="utf-8") as file:
        json.dump(data, file, indent=1, default=str)
    os.replace(staging, root / f"{entry}.json")


def clear(root: Path | None = None) -> int:
    """Remove every stored tuning; returns how many were removed.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from sdopt.tuning.cache import clear, store
        >>> root = Path(tempfile.mkdtemp())
        >>> store(root, "abc", {"quality": "balanced@2"})
        >>> clear(root)
        1
    """
    root = root or default_root()
    removed = 0
    for path in root.glob("*.json") if root.is_dir() else ():
        with contextlib.suppress(OSError):
            path.unlink()
            removed += 1
    return removed
