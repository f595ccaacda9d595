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
import functools
import hashlib
import json
import platform
import shutil
import sys
import tempfile
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils import _pytree

from sdopt.cache_dir import UntrustedCacheError, cache_root, check_trusted, sign, signed

_PROGRAM = "program.pt2"
_META = "meta.json"
_MAC = "mac"


def default_root() -> Path:
    """``$SDOPT_CACHE_DIR/int8``, else ``$XDG_CACHE_HOME/sdopt/int8``, else ``~/.cache/sdopt/int8``."""
    return cache_root("int8")


def signature(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The input signature a compiled program is specialised to: the structure of the arguments,
    each tensor's shape, dtype and device, and every other value as is (a different value is a
    different program, as torch.export bakes it in)."""
    leaves, spec = _pytree.tree_flatten((args, kwargs))
    parts = [
        f"tensor{tuple(leaf.shape)}:{leaf.dtype}:{leaf.device}" if isinstance(leaf, torch.Tensor) else repr(leaf)
        for leaf in leaves
    ]
    return f"{spec}|{';'.join(parts)}"


def weights_hash(module: torch.nn.Module) -> str:
    """A hash of every parameter and buffer (names, dtypes, shapes and bytes); shared storage hashed once."""
    digest = hashlib.blake2b(digest_size=16)
    seen: set[tuple[int, Any]] = set()
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        identity = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if identity in seen:
            continue
        seen.add(identity)
        data = tensor.detach().contiguous().cpu()
        digest.update(data.reshape(-1).view(torch.uint8).numpy().data if data.numel() else b"")
    return digest.hexdigest()


def identity(module: torch.nn.Module) -> tuple[tuple[int, int], ...]:
    """Which tensors ``module`` holds and how often each was changed in place (torch's version counter):
    cheap enough for every call, and different whenever `weights_hash` could be (in this process)."""
    return tuple((id(tensor), tensor._version) for tensor in [*module.parameters(), *module.buffers()])


def cpu_fingerprint() -> str:
    """The CPU model and its instruction-set flags (what inductor's generated kernels depend on)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    fields = {
        name.strip(): value.strip()
        for name, value in (line.split(":", 1) for line in text.splitlines()[:40] if ":" in line)
    }
    model = fields.get("model name", "")
    flags = " ".join(sorted(fields.get("flags", "").split()))
    return f"{platform.machine()} {model} {hashlib.sha256(flags.encode()).hexdigest()[:16]}"


def behaviour(module: torch.nn.Module) -> str:
    """A hash of what decides ``module``'s computation besides its weights: the code of every module
    class's ``forward`` (diffusers' code is what torch.export traces), LoRA scales and adapter switches
    (peft keeps them as plain attributes: a scale of 0.0 and 1.0 had the same weights and one key),
    and each attention module's processor and its dispatcher backend. Cheap enough for every call.

    Examples:
        >>> from sdopt.optimizations._int8.cache import behaviour
        >>> from sdopt.testing import tiny_pipeline
        >>> unet = tiny_pipeline("sd").unet
        >>> before = behaviour(unet)
        >>> unet.conv_in.scaling = {"default": 0.5}  # as a LoRA layer holds its scale
        >>> behaviour(unet) == before
        False
    """
    digest = hashlib.blake2b(digest_size=8)
    classes: dict[type, None] = {}
    for child in module.modules():
        classes[type(child)] = None
        scaling = getattr(child, "scaling", None)
        if isinstance(scaling, dict):
            digest.update(f"scaling={sorted(scaling.items())!r};".encode())
        for name in ("active_adapters", "merged_adapters", "disable_adapters"):
            value = _attribute(child, name)
            if value is not None:
                digest.update(f"{name}={value!r};".encode())
        processor = child.__dict__.get("processor")
        if processor is not None:
            backend = getattr(processor, "_attention_backend", None)
            digest.update(f"{type(processor).__qualname__}:{backend!r};".encode())
    for cls in classes:
        digest.update(_forward_code(cls).encode())
    return digest.hexdigest()


def _attribute(module: torch.nn.Module, name: str) -> Any:
    """``module.name`` for peft's adapter properties (absent elsewhere); None when it has none."""
    if not hasattr(type(module), name):
        return None
    try:
        value = getattr(module, name)
    except Exception:  # noqa: BLE001  # a property that cannot answer says nothing to key on
        return None
    return value if isinstance(value, (list, tuple, bool, str)) else None


@functools.cache
def _forward_code(cls: type) -> str:
    code = getattr(getattr(cls, "forward", None), "__code__", None)
    body = _code_bytes(code) if code is not None else b""
    return f"{cls.__module__}.{cls.__qualname__}:{hashlib.blake2b(body, digest_size=8).hexdigest()}"


def _code_bytes(code: types.CodeType) -> bytes:
    """A code object's instructions, names and constants, nested functions included, without anything
    that differs between processes (a nested code object's repr carries its address)."""
    parts = [code.co_code, repr(code.co_names).encode()]
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            parts.append(_code_bytes(constant))
        elif isinstance(constant, frozenset):  # its repr's order follows the process's hash seed
            parts.append(repr(sorted(map(repr, constant))).encode())
        else:
            parts.append(repr(constant).encode())
    return b"|".join(parts)


def key(weights: str, call_signature: str, exclude: Sequence[str], calibration_calls: int = 0) -> str:
    """The cache key of one converted program (``call_signature`` carries `behaviour` at the call)."""
    import diffusers
    import torchao

    from sdopt._version import __version__

    try:
        import peft

        peft_version = peft.__version__
    except ImportError:
        peft_version = None
    facts = {
        "weights": weights,
        "signature": call_signature,
        "exclude": sorted(exclude),
        "calibration_calls": calibration_calls,
        "torch": torch.__version__,
        "torchao": torchao.__version__,
        "diffusers": diffusers.__version__,
        "peft": peft_version,
        "sdopt": __version__,
        "python": sys.version.split()[0],
        "cpu": cpu_fingerprint(),
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:24]


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
