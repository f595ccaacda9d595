"""What a compiled program is specialised to, as strings to key caches on: the call's input signature,
the module's weights (hashed, and a cheap in-process identity), what decides its computation besides
them (`behaviour`) and the CPU. Shared by the int8 and OpenVINO runners: a changed fact is a new key, so a
stale program is never used.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import sys
import types
from pathlib import Path
from typing import Any

import torch
from torch.utils import _pytree


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


def program_key(facts: dict[str, Any]) -> str:
    """A cache key of ``facts`` (the weights' hash, the call's signature, the program's own options and the
    versions of the packages that build it) together with what every compiled program depends on: the
    versions of torch, diffusers, peft, sdopt and Python, and the CPU.

    Examples:
        >>> from sdopt.optimizations._program_keys import program_key
        >>> len(program_key({"weights": "abc"})), program_key({"weights": "abc"}) == program_key({"weights": "abd"})
        (24, False)
    """
    import diffusers

    from sdopt._version import __version__

    try:
        import peft

        peft_version = peft.__version__
    except ImportError:
        peft_version = None
    shared = {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "peft": peft_version,
        "sdopt": __version__,
        "python": sys.version.split()[0],
        "cpu": cpu_fingerprint(),
    }
    return hashlib.sha256(json.dumps({**facts, **shared}, sort_keys=True).encode()).hexdigest()[:24]


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
        >>> from sdopt.optimizations._program_keys import behaviour
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
