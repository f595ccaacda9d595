"""Where undo's originals live, so that keeping them does not cost the memory a step saved.

A step that replaces weights (a cast to bfloat16, int8 or 4-bit layers, a swapped VAE, weights
stored in float8) hands the tensors it is about to replace to the store of the ``optimize`` call
in progress (:func:`keep`, then :meth:`Kept.release` for layers taken out of the pipeline), which
keeps their data in the first place that does not sit in RAM or device memory:

1. **the checkpoint** the component was loaded from (``from_pretrained`` records the directory):
   a tensor whose values equal the one in a ``*.safetensors`` file there is re-read from it on
   undo. The file's size and modification time are recorded, and undo refuses if they changed.
2. **a spill file**: the data written once to safetensors files in a private temp dir
   (``sdopt-originals-*`` under ``TMPDIR``), removed on undo, when the report is garbage
   collected, or when the process exits.
3. **memory**, when the temp dir cannot be written (read-only, full), with a warning; and
   while ``optimize(..., undoable=False)`` runs (its rollback needs them), after which they are dropped.

Measured on this machine (2-core EPYC, SD1.5 UNet of 3.4 GB in float32, ``half_precision``):
see docs/memory.md for the figures behind the order above.

Example:
    >>> import torch
    >>> from sdopt.originals import Originals
    >>> layer = torch.nn.Linear(4, 4)
    >>> weight = layer.weight.detach().clone()
    >>> store = Originals("spill")
    >>> kept = store.keep([layer.weight], owner=layer)
    >>> layer.weight.data = layer.weight.data.half()
    >>> kept.restore()
    >>> torch.equal(layer.weight, weight), store.describe().startswith("spilled")
    (True, True)
    >>> store.close()
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import os
import shutil
import tempfile
import warnings
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

Mode = Literal["spill", "memory", "transient"]

_CHUNK_BYTES = 256 * 2**20  # one spill file per 256 MB: a device tensor is copied to host one chunk at a time
_SAFETENSORS_DTYPES = {
    torch.float64,
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
    *(getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, name)),
}

_active: contextvars.ContextVar[Originals | None] = contextvars.ContextVar("sdopt_originals", default=None)


@dataclass(eq=False)  # compared by identity (its fields hold tensors)
class _Entry:
    tensor: torch.Tensor  # the object the data goes back into
    dtype: torch.dtype
    device: torch.device
    size: tuple[int, ...]
    stride: tuple[int, ...]
    place: str  # "checkpoint", "spill", "memory"
    data: torch.Tensor | None = None
    path: str | None = None
    key: str | None = None
    same_as: int | None = None  # index of an earlier entry viewing the same memory


class Kept:
    """The originals of some tensors; :meth:`restore` puts them back (once)."""

    def __init__(self, store: Originals, entries: list[_Entry], files: list[str], *, changed_only: bool) -> None:
        self._store = store  # keeps the spill dir alive as long as an undo may need it
        self._entries = entries
        self._files = files
        self._changed_only = changed_only

    def release(self) -> None:
        """Free the kept tensors' memory once they are out of use (a layer swapped out of the
        pipeline): each tensor's data becomes an empty tensor until :meth:`restore`."""
        for entry in self._entries:
            entry.tensor.data = torch.empty(0, dtype=entry.dtype, device=entry.device)

    def restore(self) -> None:
        """Put every kept tensor's data back, with its dtype, device and strides."""
        wanted = [not self._changed_only or _changed(entry) for entry in self._entries]
        # Entries viewing the same memory share the first one's data (its source when it is not wanted).
        sources = [self._entries[e.same_as] if e.same_as is not None else e for e in self._entries]
        for path in {s.path for s, want in zip(sources, wanted, strict=True) if want and s.place == "checkpoint"}:
            self._store.check_unchanged(path or "")  # before anything is put back
        restored: dict[int, torch.Tensor] = {}
        with contextlib.ExitStack() as files:
            opened: dict[str, Any] = {}
            for entry, source, want in zip(self._entries, sources, wanted, strict=True):
                if not want:
                    continue
                if id(source) not in restored:
                    if source.place == "memory":
                        assert source.data is not None
                        data = source.data if source.data.device == source.device else _rebuild(source.data, source)
                    else:
                        path = source.path or ""
                        if path not in opened:
                            opened[path] = files.enter_context(_open(path))
                        data = _rebuild(opened[path].get_tensor(source.key), source)
                    restored[id(source)] = data
                if entry.tensor.data is not restored[id(source)]:
                    entry.tensor.data = restored[id(source)]
        for path in self._files:
            with contextlib.suppress(OSError):
                os.remove(path)
        self._entries = []


class Originals:
    """The store of one ``optimize`` call (see the module docstring).

    ``mode`` "spill" keeps originals in the checkpoint or spill files, falling back to memory;
    "memory" keeps them in memory; "transient" too, for a call that drops them when it returns
    (``undoable=False``).
    """

    def __init__(self, mode: Mode = "spill") -> None:
        self.mode: Mode = mode
        self.fallback: str | None = None
        self._dir: str | None = None
        self._counter = itertools.count()
        self._checkpoints: dict[str, tuple[int, int]] = {}
        self._bytes = {"checkpoint": 0, "spill": 0, "memory": 0}
        self._finalizer: weakref.finalize[Any, Any] | None = None

    # ---- keeping

    def keep(
        self, tensors: Sequence[torch.Tensor], *, owner: torch.nn.Module | None = None, in_case: bool = False
    ) -> Kept:
        """Keep the current data of ``tensors`` (parameters or buffers of the component ``owner``,
        which says where it was loaded from) so that the returned :class:`Kept` can put it back.

        ``in_case``: the tensors stay as they are and are kept only in case something replaces them
        later (a pipeline that casts its VAE during a call): data in host memory is then kept by
        reference, which costs nothing while the pipeline holds it, and restore puts back only the
        tensors whose dtype, device or layout changed."""
        entries = _entries(tensors)
        files: list[str] = []
        free = ("meta", "cpu") if in_case else ("meta",)
        pending = [entry for entry in entries if entry.same_as is None and entry.device.type not in free]
        for entry in entries:  # meta tensors hold no data: a reference costs nothing
            if entry.device.type in free and entry.same_as is None:
                entry.place, entry.data = "memory", entry.tensor.data
        if self.mode == "spill":
            pending = self._from_checkpoint(pending, owner)
            pending = self._spill(pending, files)
        for entry in pending:
            # Data on an accelerator is copied to host: a reference would keep it in device memory.
            data = entry.tensor.data
            entry.place, entry.data = "memory", data if data.device.type == "cpu" else data.to("cpu", copy=True)
            self._bytes["memory"] += _nbytes(entry)
        return Kept(self, entries, files, changed_only=in_case)

    # ---- where they are

    @property
    def directory(self) -> str | None:
        return self._dir

    def describe(self) -> str:
        """Where the originals are, for the report."""
        if self.mode == "transient":
            return "not kept (undoable=False): dropped when optimize returned"
        places = []
        if self._bytes["checkpoint"]:
            files = ", ".join(sorted({os.path.dirname(path) for path in self._checkpoints}))
            places.append(f"re-read from the checkpoint on undo ({_megabytes(self._bytes['checkpoint'])} in {files})")
        if self._bytes["spill"]:
            places.append(
                f"spilled to {self._dir} ({_megabytes(self._bytes['spill'])}, re-read on undo, removed with the report)"
            )
        if self._bytes["memory"]:
            why = f": {self.fallback}" if self.fallback else ""
            places.append(f"in memory ({_megabytes(self._bytes['memory'])}{why})")
        return "; ".join(places) or "none needed (no step replaced weights)"

    def resident_bytes(self) -> int:
        """Bytes of originals held in memory."""
        return self._bytes["memory"]

    def close(self) -> None:
        """Remove the spill files (after undo, or when the originals are no longer wanted)."""
        if self._finalizer is not None:
            self._finalizer()

    def check_unchanged(self, path: str) -> None:
        from sdopt.errors import UndoError

        try:
            stat = os.stat(path)
        except OSError as error:
            raise UndoError(
                f"the checkpoint {path} holding originals is gone ({error}); reload the pipeline"
            ) from error
        if (stat.st_size, stat.st_mtime_ns) != self._checkpoints[path]:
            raise UndoError(
                f"the checkpoint {path} changed since optimize() read the originals from it; reload the pipeline"
            )

    # ---- places

    def _from_checkpoint(self, entries: list[_Entry], owner: torch.nn.Module | None) -> list[_Entry]:
        """Point entries at the checkpoint file holding equal values; return the others."""
        files = _checkpoint_files(owner)
        if not entries or not files or owner is None:
            return entries
        names = _tensor_names(owner)
        left = [entry for entry in entries if id(entry.tensor) not in names]
        wanted = [entry for entry in entries if id(entry.tensor) in names]
        for path in files:
            if not wanted:
                break
            try:
                with _open(path) as handle:
                    keys = set(handle.keys())
                    unmatched = []
                    for entry in wanted:
                        key = names[id(entry.tensor)]
                        if key in keys and _equal(handle.get_tensor(key), entry.tensor):
                            entry.place, entry.path, entry.key = "checkpoint", path, key
                            self._bytes["checkpoint"] += _nbytes(entry)
                        else:
                            unmatched.append(entry)
                stat = os.stat(path)
            except (OSError, RuntimeError, ValueError):  # unreadable or not a safetensors file
                continue
            if len(unmatched) < len(wanted):
                self._checkpoints[path] = (stat.st_size, stat.st_mtime_ns)
            wanted = unmatched
        return left + wanted

    def _spill(self, entries: list[_Entry], files: list[str]) -> list[_Entry]:
        """Write entries to spill files; return those that must stay in memory."""
        from safetensors.torch import save_file

        storable = [e for e in entries if e.dtype in _SAFETENSORS_DTYPES and type(e.tensor.data) is torch.Tensor]
        left = [e for e in entries if not any(e is s for s in storable)]
        for chunk in _chunks(storable):
            try:
                directory = self._ensure_dir()
                path = os.path.join(directory, f"{next(self._counter):05d}.safetensors")
                keys = {f"t{i}": entry for i, entry in enumerate(chunk)}
                save_file({key: _host_copy(entry.tensor) for key, entry in keys.items()}, path)
            except (OSError, RuntimeError) as error:
                self._fall_back(error)
                return left + [e for e in storable if e.place != "spill"]
            files.append(path)
            for key, entry in keys.items():
                entry.place, entry.path, entry.key = "spill", path, key
                self._bytes["spill"] += _nbytes(entry)
        return left

    def _ensure_dir(self) -> str:
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="sdopt-originals-")
            # Removed when the store is garbage collected (with the report) or at exit, whichever comes first.
            self._finalizer = weakref.finalize(self, shutil.rmtree, self._dir, ignore_errors=True)
        return self._dir

    def _fall_back(self, error: Exception) -> None:
        self.mode = "memory"
        where = self._dir or tempfile.gettempdir()
        self.fallback = f"the temp dir {where} could not be written ({type(error).__name__}: {error})"
        warnings.warn(
            f"sdopt: {self.fallback}; undo's originals are kept in memory instead, which costs the memory the "
            "optimizations save. Set TMPDIR to a writable disk, or optimize with undoable=False.",
            stacklevel=4,
        )


# ---- the store of the optimize call in progress


@contextlib.contextmanager
def active(store: Originals) -> Iterator[Originals]:
    """Make ``store`` the one :func:`keep` uses while the block runs."""
    token = _active.set(store)
    try:
        yield store
    finally:
        _active.reset(token)


def current() -> Originals:
    """The store of the ``optimize`` call in progress; outside one (an ``apply`` called directly),
    a store that keeps originals in memory."""
    return _active.get() or Originals("memory")


def keep(tensors: Sequence[torch.Tensor], *, owner: torch.nn.Module | None = None, in_case: bool = False) -> Kept:
    """Keep the current data of ``tensors`` in the current store (see :meth:`Originals.keep`)."""
    return current().keep(tensors, owner=owner, in_case=in_case)


def own_tensors(modules: Sequence[torch.nn.Module], within: torch.nn.Module) -> list[torch.Tensor]:
    """The parameters and buffers of ``modules`` (layers about to leave the component ``within``)
    that no other module of ``within`` holds: tied weights stay in use and must not be released."""
    leaving = {id(module) for layer in modules for module in layer.modules()}
    used = {
        id(tensor)
        for module in within.modules()
        if id(module) not in leaving
        for tensor in [*module._parameters.values(), *module._buffers.values()]
        if tensor is not None
    }
    tensors = {id(t): t for layer in modules for t in [*layer.parameters(), *layer.buffers()] if id(t) not in used}
    return list(tensors.values())


# ---- helpers


def _entries(tensors: Sequence[torch.Tensor]) -> list[_Entry]:
    entries: list[_Entry] = []
    views: dict[tuple[Any, ...], int] = {}
    seen: set[int] = set()
    for tensor in tensors:
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        data = tensor.data
        entry = _Entry(tensor, data.dtype, data.device, tuple(data.shape), tuple(data.stride()), "memory")
        if data.device.type != "meta" and type(data) is torch.Tensor:
            view = (data.untyped_storage().data_ptr(), data.storage_offset(), entry.size, entry.stride, data.dtype)
            if view in views:
                entry.same_as = views[view]
            else:
                views[view] = len(entries)
        entries.append(entry)
    return entries


def _changed(entry: _Entry) -> bool:
    data = entry.tensor.data
    return (data.dtype, data.device, tuple(data.shape), tuple(data.stride())) != (
        entry.dtype,
        entry.device,
        entry.size,
        entry.stride,
    )


def _chunks(entries: list[_Entry]) -> Iterator[list[_Entry]]:
    chunk: list[_Entry] = []
    size = 0
    for entry in entries:
        chunk.append(entry)
        size += _nbytes(entry)
        if size >= _CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _host_copy(tensor: torch.Tensor) -> torch.Tensor:
    """The data as a contiguous CPU tensor (the data itself when it already is one)."""
    return tensor.data.detach().to("cpu").contiguous()


def _rebuild(loaded: torch.Tensor, entry: _Entry) -> torch.Tensor:
    """The loaded values in a fresh tensor of the original dtype, device and strides. Always a fresh
    allocation: tensors read from a file may sit at an address aligned differently, and MKL's CPU
    kernels round differently by alignment (outputs off by ~1e-6 after undo, measured)."""
    fresh = torch.empty_strided(entry.size, entry.stride, dtype=entry.dtype, device=entry.device)
    return fresh.copy_(loaded)


def _equal(stored: torch.Tensor, tensor: torch.Tensor) -> bool:
    data = tensor.data
    if type(data) is not torch.Tensor or tuple(stored.shape) != tuple(data.shape):
        return False
    # Loaded with torch_dtype=... from a file in another dtype: equal once cast the same way.
    return bool(torch.equal(stored.to(data.dtype), data.to("cpu")))


def _open(path: str) -> Any:
    from safetensors import safe_open

    return safe_open(path, framework="pt", device="cpu")


def _checkpoint_files(owner: torch.nn.Module | None) -> list[str]:
    """The safetensors files in the directory ``owner`` was loaded from (diffusers records it in
    ``config._name_or_path``, transformers in ``name_or_path``)."""
    if owner is None:
        return []
    config = getattr(owner, "config", None)
    source = getattr(config, "_name_or_path", None) or getattr(owner, "name_or_path", None)
    if not isinstance(source, str) or not source or not os.path.isdir(source):
        return []
    return sorted(os.path.join(source, name) for name in os.listdir(source) if name.endswith(".safetensors"))


def _tensor_names(owner: torch.nn.Module) -> dict[int, str]:
    names: dict[int, str] = {}
    for name, tensor in [
        *owner.named_parameters(remove_duplicate=False),
        *owner.named_buffers(remove_duplicate=False),
    ]:
        names.setdefault(id(tensor), name)
    return names


def _nbytes(entry: _Entry) -> int:
    count = 1
    for dim in entry.size:
        count *= dim
    return count * entry.dtype.itemsize


def _megabytes(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MB"
