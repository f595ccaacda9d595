"""Where converted int8 programs are kept between processes, and the key that says one still fits.

A key covers everything the converted program depends on: the denoiser's weights (hashed), what
decides its computation besides them (`behaviour`: the code of its modules' forwards, adapter scales
and switches, attention processors), the call's input signature, the layers left in float, the
calibration calls, and the versions of torch, torchao, diffusers, peft and sdopt, the Python version
and the CPU (model and instruction-set flags). A changed fact is a new key, so
a stale program is never loaded; old entries are left for ``clear`` or the user to remove.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from sdopt.cache_dir import UntrustedCacheError, cache_root, check_trusted, sign, signed
from sdopt.optimizations._program_keys import (  # noqa: F401  # re-exported: the runner and tests key on them here
    behaviour,
    cpu_fingerprint,
    identity,
    program_key,
    signature,
    weights_hash,
)

_PROGRAM = "program.pt2"
_META = "meta.json"
_MAC = "mac"


def default_root() -> Path:
    """``$SDOPT_CACHE_DIR/int8``, else ``$XDG_CACHE_HOME/sdopt/int8``, else ``~/.cache/sdopt/int8``."""
    return cache_root("int8")


def key(weights: str, call_signature: str, exclude: Sequence[str], calibration_calls: int = 0) -> str:
    """The cache key of one converted program (``call_signature`` carries `behaviour` at the call)."""
    import torchao

    facts = {
        "weights": weights,
        "signature": call_signature,
        "exclude": sorted(exclude),
        "calibration_calls": calibration_calls,
        "torchao": torchao.__version__,
    }
    return program_key(facts)


def load(root: Path, entry: str) -> tuple[Any, dict[str, Any]] | None:
    """The converted program stored under ``entry`` and what was measured when it was made, or None.

    Loading a program unpickles it, so it is loaded only from a folder only this user can write
    (`check_trusted` raises otherwise) and only when its MAC proves this user's sdopt wrote it unchanged;
    an entry without one (planted, or from another user or machine) raises, to be rebuilt."""
    folder = root / entry
    if not (folder / _PROGRAM).is_file() or not (folder / _META).is_file():
        return None
    check_trusted(folder)
    files = (folder / _PROGRAM, folder / _META)
    mac = (folder / _MAC).read_text().strip() if (folder / _MAC).is_file() else ""
    if not signed(mac, *files):
        raise UntrustedCacheError(f"{folder} is not signed by this user's sdopt: not loaded (rebuilt instead)")
    meta = json.loads((folder / _META).read_text(encoding="utf-8"))
    from sdopt.optimizations._int8.quantizer import register_int8_fusions

    register_int8_fusions()  # the program's quantize/dequantize ops must be registered to deserialize it
    return torch.export.load(str(folder / _PROGRAM)), meta


def store(root: Path, entry: str, program: Any, meta: dict[str, Any]) -> None:
    """Keep ``program`` under ``entry``, signed (see `load`); written to a temp folder and renamed, so readers
    never see half an entry."""
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    check_trusted(root)
    staging = Path(tempfile.mkdtemp(prefix=f".{entry}-", dir=root))
    try:
        torch.export.save(program, str(staging / _PROGRAM))
        (staging / _META).write_text(json.dumps(meta, indent=1, sort_keys=True), encoding="utf-8")
        (staging / _MAC).write_text(sign(staging / _PROGRAM, staging / _META))
        with contextlib.suppress(OSError):  # another process stored the same entry first: theirs is as good
            staging.rename(root / entry)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def inductor_dir(root: Path) -> str:
    """Inductor's own on-disk caches (generated kernels compiled to shared objects), shared by all entries."""
    return str(root / "inductor")


def clear(root: Path | None = None) -> int:
    """Remove every stored program and inductor cache under ``root``; returns the bytes freed."""
    root = root or default_root()
    if not root.exists():
        return 0
    freed = sum(path.stat().st_size for path in root.rglob("*") if path.is_file())
    shutil.rmtree(root)
    return freed
