"""OpenVINO's converted models on disk: keyed, signed, capped in size, least recently used out first.

A converted UNet is 1.7-3.4 GB; a conversion takes tens of seconds. Entries live under
`default_root`, one folder per `key`, written aside and renamed, signed with this user's key
(`sdopt.cache_dir`), and read back only if the signature holds. An entry this machine checked against
PyTorch and accepted carries a small signed note of it (`remember_acceptance`), which lets a new process
answer its first call with the model instead of with PyTorch. Such an entry also keeps the model as
OpenVINO compiled it for this CPU (`store_compiled`), so that a new process imports it (under a second for
a UNet block) instead of compiling it again (seconds each; 35 s for the 19 models of a UNet converted
block by block).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from sdopt.cache_dir import (
    UntrustedCacheError,
    cache_root,
    check_trusted,
    sign,
    sign_data,
    sign_text,
    signed,
    signed_data,
    signed_text,
)
from sdopt.footprint import GB
from sdopt.optimizations._program_keys import cpu_fingerprint, program_key

DEFAULT_CACHE_GB = 20.0
DISK_RESERVE_GB = 4.0

_MODEL = "model.xml"
_WEIGHTS = "model.bin"
_META = "meta.json"
_MAC = "mac"
_REFUSED = ".refused.json"
_ACCEPTED = "accepted.json"
_COMPILED = "compiled-"


def default_root() -> Path:
    """``$SDOPT_CACHE_DIR/openvino``, else ``$XDG_CACHE_HOME/sdopt/openvino``, else ``~/.cache/sdopt/openvino``."""
    return cache_root("openvino")


def key(weights: str, call_signature: str, method: str) -> str:
    """The cache key of one converted model: the weights, the call (with the modules' `behaviour`), the
    method, and the versions of everything that shaped the trace."""
    import openvino

    facts = {"weights": weights, "signature": call_signature, "method": method, "openvino": openvino.__version__}
    return program_key(facts)


def load(root: Path, entry: str) -> Any:
    """The converted model stored under ``entry``, or None (absent, unreadable or not signed by this user)."""
    import openvino as ov

    folder = root / entry
    files = (folder / _MODEL, folder / _WEIGHTS, folder / _META)
    if not all(path.is_file() for path in files):
        return None
    if not _writable_only_by_us(folder, f"cache entry {folder}"):
        return None
    try:
        mac = (folder / _MAC).read_text().strip() if (folder / _MAC).is_file() else ""
        if not signed(mac, *files):
            raise UntrustedCacheError(f"{folder} is not signed by this user's sdopt")
        model = ov.Core().read_model(str(folder / _MODEL))
        with contextlib.suppress(OSError):  # recently used: the last to be evicted
            os.utime(folder)
        return model
    except Exception as error:  # a planted or damaged entry in our own folder: removed, converted again
        warnings.warn(f"sdopt openvino_runtime: ignoring cache entry {folder} ({error}); removed", stacklevel=5)
        shutil.rmtree(folder, ignore_errors=True)
        return None


def cache_cap_bytes() -> float:
    """The most the converted models on disk may take together: ``$SDOPT_OPENVINO_CACHE_GB`` GB (default
    20: a handful of SD1.5 shapes, 3.4 GB each from float32 weights); beyond, the least recently used go."""
    value = os.environ.get("SDOPT_OPENVINO_CACHE_GB", "")
    try:
        return float(value) * GB if value else DEFAULT_CACHE_GB * GB
    except ValueError:
        raise ValueError(f"SDOPT_OPENVINO_CACHE_GB must be a number of GB, not {value!r}") from None


def store(root: Path, entry: str, model: Any, meta: dict[str, Any], size: int) -> str:
    """Keep ``model`` (about ``size`` bytes) under ``entry``, weights as converted, signed; written aside and
    renamed; then the least recently used entries go until the cache is within `cache_cap_bytes`. Returns
    why it was not kept ("" when it was): it would not fit under the cap, or would leave the disk nearly full
    (other programs', and sdopt's own spill files, need it more than a conversion saved for later)."""
    import openvino as ov

    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    check_trusted(root)
    cap = cache_cap_bytes()
    if size > cap:
        return f"not kept on disk: {size / GB:.1f} GB, over the cache cap of {cap / GB:g} GB (SDOPT_OPENVINO_CACHE_GB)"
    free = shutil.disk_usage(root).free
    if free - size < DISK_RESERVE_GB * GB:
        return f"not kept on disk: {free / GB:.1f} GB free there, and {DISK_RESERVE_GB:g} GB stay free"
    staging = Path(tempfile.mkdtemp(prefix=f".{entry}-", dir=root))
    try:
        ov.save_model(model, str(staging / _MODEL), compress_to_fp16=False)
        (staging / _META).write_text(json.dumps(meta, sort_keys=True), encoding="utf-8")
        (staging / _MAC).write_text(sign(staging / _MODEL, staging / _WEIGHTS, staging / _META))
        with contextlib.suppress(OSError):  # another process stored the same entry first: theirs is as good
            staging.rename(root / entry)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    evict(root, cap, keep=entry)
    return ""


def evict(root: Path, cap: float, keep: str) -> None:
    """Remove the least recently used entries (by the time they were stored or last read) until the cache
    takes at most ``cap`` bytes; ``keep`` stays."""
    entries = []
    for folder in root.iterdir():
        if folder.is_dir() and not folder.name.startswith("."):  # staging folders are another process's
            size = sum(path.stat().st_size for path in folder.iterdir() if path.is_file())
            entries.append((folder.stat().st_mtime, size, folder))
    total = sum(size for _, size, _ in entries)
    for _, size, folder in sorted(entries, key=lambda item: item[0]):
        if total <= cap:
            break
        if folder.name != keep:
            shutil.rmtree(folder, ignore_errors=True)
            total -= size


def remember_refusal(root: Path, entry: str, snr_db: float) -> None:
    """Note on disk that the model of ``entry`` (an int8 one) measured ``snr_db`` and was refused, so that a
    new process does not calibrate and convert again (minutes) to refuse it again. A few bytes, unsigned: a
    planted note can only make int8 be skipped where ``snr_db`` is below the floor asked for."""
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    check_trusted(root)
    (root / f"{entry}{_REFUSED}").write_text(json.dumps({"snr_db": round(snr_db, 2)}), encoding="utf-8")


def refused_snr_db(root: Path, entry: str) -> float | None:
    """The SNR that `remember_refusal` noted for ``entry``, or None (never refused, or unreadable)."""
    try:
        return float(json.loads((root / f"{entry}{_REFUSED}").read_text(encoding="utf-8"))["snr_db"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remember_acceptance(root: Path, entry: str, tag: str, snr_db: float, outputs: dict[str, Any]) -> None:
    """Note in ``entry`` that its model, compiled as ``tag`` says (the inference precision and the CPU class),
    kept ``snr_db`` against PyTorch, and how its outputs are shaped (``outputs``: what the caller needs to
    answer a call without PyTorch's output at hand). Bound to the entry's own signature (a replaced model
    voids it) and signed; a few hundred bytes, written aside and renamed."""
    folder = root / entry
    entry_mac = (folder / _MAC).read_text().strip()
    checks = dict(_accepted_checks(folder, entry_mac))
    checks[tag] = {"snr_db": round(snr_db, 2), "outputs": outputs}
    body = json.dumps({"entry": entry_mac, "checks": checks}, sort_keys=True)
    staging = folder / f".{_ACCEPTED}.{os.getpid()}"
    staging.write_text(json.dumps({"body": body, "mac": sign_text(body)}), encoding="utf-8")
    staging.replace(folder / _ACCEPTED)


def accepted(root: Path, entry: str, tag: str) -> tuple[float, dict[str, Any]] | None:
    """The SNR and output layout `remember_acceptance` noted for ``entry`` compiled as ``tag``, or None
    (never accepted so, or the note is unsigned, damaged or from a model since replaced). The note is bound to
    the entry's signature, not to its files: a new process may trust it (and `load_compiled`'s blob, bound
    the same way) without reading the converted model."""
    folder = root / entry
    try:
        entry_mac = (folder / _MAC).read_text().strip()
        check = _accepted_checks(folder, entry_mac).get(tag)
        return (float(check["snr_db"]), dict(check["outputs"])) if check else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _accepted_checks(folder: Path, entry_mac: str) -> dict[str, Any]:
    try:
        note = json.loads((folder / _ACCEPTED).read_text(encoding="utf-8"))
        body = str(note["body"])
        if not signed_text(str(note["mac"]), body):
            return {}
        content = json.loads(body)
        return dict(content["checks"]) if content["entry"] == entry_mac else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def compiled_name(setting: str) -> str:
    """The file stem a compiled model of an entry is kept under: one per compile ``setting`` (precision, CPU
    class, threads) and CPU (`cpu_fingerprint`: model and instruction-set flags). A compiled blob is
    OpenVINO's CPU plugin output for one CPU, not portable; OpenVINO's own ``CACHE_DIR`` is not used because
    it keys blobs by a hash of the ``ov.Model`` object, which differs between the model just converted and the
    same model read back from disk (measured, OpenVINO 2026.4), so the process that converts could never leave
    a blob that the next process finds."""
    import hashlib

    return _COMPILED + hashlib.sha256(f"{setting}|{cpu_fingerprint()}".encode()).hexdigest()[:16]


def store_compiled(root: Path, entry: str, setting: str, blob: memoryview) -> None:
    """Keep ``blob`` (``CompiledModel.export_model()``) in ``entry``'s folder for ``setting``, signed and bound
    to the entry's own signature (a replaced model voids it). Nothing is written where the entry itself was
    not kept; the blob counts towards the cache's cap like the entry's other files."""
    folder = root / entry
    if not (folder / _MAC).is_file():
        return
    check_trusted(folder)
    name = compiled_name(setting)
    if shutil.disk_usage(folder).free - blob.nbytes < DISK_RESERVE_GB * GB:
        return
    mac = sign_data((_MAC, (folder / _MAC).read_bytes()), (f"{name}.blob", blob))
    staging, staging_mac = folder / f".{name}.{os.getpid()}", folder / f".{name}.mac.{os.getpid()}"
    try:
        staging.write_bytes(blob)
        staging_mac.write_text(mac)
        staging.replace(folder / f"{name}.blob")
        staging_mac.replace(folder / f"{name}.mac")
    finally:
        for path in (staging, staging_mac):
            with contextlib.suppress(OSError):
                path.unlink()
    evict(root, cache_cap_bytes(), keep=entry)


def load_compiled(root: Path, entry: str, setting: str) -> Any:
    """The blob `store_compiled` kept in ``entry`` for ``setting`` on this CPU, mapped from its file (a
    copy-on-write ``numpy.memmap``; its signature is checked on the mapped bytes, so what was checked is what
    OpenVINO reads), or None: absent, or not signed by this user for this entry as it is now (a damaged or
    planted blob is left for `store_compiled` to replace; removing it here could remove another process's
    blob written between its two files). Mapped rather than read: OpenVINO imports from the mapping and
    keeps using it, so the blob's bytes are never copied into the process (SDXL's UNet: 5.1 GB)."""
    import numpy as np

    folder = root / entry
    name = compiled_name(setting)
    blob, mac = folder / f"{name}.blob", folder / f"{name}.mac"
    if not (blob.is_file() and mac.is_file() and (folder / _MAC).is_file()):
        return None
    if not _writable_only_by_us(folder, f"compiled model {blob}"):
        return None
    try:
        mapped = np.memmap(blob, dtype=np.uint8, mode="c")
        good = signed_data(mac.read_text().strip(), (_MAC, (folder / _MAC).read_bytes()), (blob.name, mapped.data))
    except (OSError, ValueError):  # unreadable or empty
        return None
    if not good:  # damaged, planted, or caught between another process's two writes: compiled again here
        warnings.warn(
            f"sdopt openvino_runtime: ignoring compiled model {blob} (not signed by this user's sdopt for this "
            "entry); it is replaced once the model is compiled again",
            stacklevel=5,
        )
        return None
    with contextlib.suppress(OSError):  # recently used: the last to be evicted
        os.utime(folder)
    return mapped


def _writable_only_by_us(folder: Path, what: str) -> bool:
    """Whether ``folder`` passes `check_trusted`; if not, a warning that ``what`` is ignored (and left: a folder
    others can write to is not ours to clean either)."""
    try:
        check_trusted(folder)
    except UntrustedCacheError as error:
        warnings.warn(f"sdopt openvino_runtime: ignoring {what} ({error})", stacklevel=6)
        return False
    return True
