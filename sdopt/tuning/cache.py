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

import torch

from sdopt.anatomy import inspect_pipeline, unwrap
from sdopt.cache_dir import cache_root


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
        "denoiser_weights": sampled_weights_hash(unwrap(denoiser)) if denoiser is not None else None,
    }


def sampled_weights_hash(module: torch.nn.Module, span: int = 256) -> str:
    """A hash of every parameter's and buffer's name, dtype and shape, and of ``span`` elements at the
    start, middle and end of each: a fine-tune or a fused LoRA changes them, and an SD1.5 UNet hashes
    in milliseconds rather than the seconds all 3.4 GB take (a cache hit must cost what a plain tier does).

    Examples:
        >>> import torch
        >>> from sdopt.tuning.cache import sampled_weights_hash
        >>> layer = torch.nn.Linear(4, 4)
        >>> before = sampled_weights_hash(layer)
        >>> with torch.no_grad():
        ...     layer.weight[2, 2] += 1
        >>> sampled_weights_hash(layer) != before
        True
    """
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        flat = tensor.detach().reshape(-1)
        if flat.numel() == 0 or flat.device.type == "meta":
            continue
        middle = max(0, flat.numel() // 2 - span // 2)
        for part in (flat[:span], flat[middle : middle + span], flat[-span:]):
            digest.update(part.cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


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

    Examples:
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
