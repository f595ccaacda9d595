"""Where undo's originals live, so that keeping them does not cost the memory a step saved.

A step that replaces weights (a cast to bfloat16, int8 or 4-bit layers, a swapped VAE, weights
stored in float8) hands the tensors it is about to replace to the store of the ``optimize`` call
in progress (`keep`, then `Kept.release` for layers taken out of the pipeline), which
keeps their data in the first place that does not sit in RAM or device memory:

1. **the checkpoint** the component was loaded from (``from_pretrained`` records the directory):
   a tensor whose values equal the one in a ``*.safetensors`` file there is re-read from it on
   undo. The file's size and modification time are recorded, and undo refuses if they changed.
2. **a spill file**: the data written once to safetensors files in a private temp dir
   (``sdopt-originals-*`` under ``TMPDIR``), removed on undo, when the report is garbage
   collected, or when the process that made it exits (not a forked worker). On a RAM-backed temp
   dir (tmpfs) that is memory after all: the store warns and counts it so.
3. **memory**, when the temp dir cannot be written (read-only, full), with a warning; and
   while ``optimize(..., undoable=False)`` runs (its rollback needs them), after which they are dropped.

Measured on this machine (2-core EPYC, SD1.5 UNet of 3.4 GB in float32, ``half_precision``):
see docs/memory.md for the figures behind the order above.

Examples:
    >>> import torch
    >>> from sdopt.originals import Originals
    >>> layer = torch.nn.Linear(4, 4)
    >>> weight = layer.weight.detach().clone()
    >>> store = Originals("spill")
    >>> kept = store.keep([layer.weight], owner=layer)
    >>> layer.weight.data = layer.weight.data.half()
    >>> store.describe().startswith("spilled to")
    True
    >>> kept.restore()
    >>> torch.equal(layer.weight, weight), store.describe()
    (True, 'none needed (no step replaced weights)')
    >>> store.close()
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
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
class _Block:
    """One piece of memory kept: a whole tensor storage, whose views are rebuilt on restore, or (in
    a checkpoint) one tensor that owns its storage."""

    dtype: torch.dtype
    device: torch.device
    numel: int
    place: str = "memory"  # "checkpoint", "spill" or "memory"
    data: torch.Tensor | None = None  # in memory: the storage as a flat tensor
    path: str | None = None
    key: str | None = None
    counted: bool = False  # whether it counts as kept (a reference to live pipeline memory does not)
    digest: str = ""  # in a checkpoint: the hash of the values read there, checked again before undo
    verified: bool = False  # checked in the undo under way: not read again
    whole: bool = False  # no plain storage (meta, tensor subclass): ``data`` is the tensor itself

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


@dataclass(eq=False)
class _Entry:
    tensor: torch.Tensor  # the object the data goes back into
    dtype: torch.dtype
    device: torch.device
    size: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int
    block: _Block


class Kept:
    """The originals of some tensors; `restore` puts them back (once; run again after an interrupt, it
    reads them again)."""

    def __init__(self, store: Originals, entries: list[_Entry], files: list[str], *, changed_only: bool) -> None:
        self._store = store  # keeps the spill dir alive as long as an undo may need it
        self._entries = entries
        self._files = files
        self._changed_only = changed_only

    def release(self) -> None:
        """Free the kept tensors' memory once they are out of use (a layer swapped out of the
        pipeline): each tensor's data becomes an empty tensor until `restore`."""
        for entry in self._entries:
            entry.tensor.data = torch.empty(0, dtype=entry.dtype, device=entry.device)

    def restore(self) -> None:
        """Put every kept tensor's data back, with its dtype, device, strides and sharing."""
        entries = [e for e in self._entries if not self._changed_only or _changed(e)]
        blocks = _blocks(entries)
        self._store.check_blocks(blocks)  # every file is checked before anything is put back
        rebuilt: dict[int, torch.Tensor] = {}
        with contextlib.ExitStack() as stack:
            opened: dict[str, Any] = {}
            for block in blocks:
                if block.place == "memory":
                    assert block.data is not None
                    on_device = block.data.device == block.device
                    rebuilt[id(block)] = block.data if on_device else _fresh(block.data, block)
                else:
                    path = block.path or ""
                    if path not in opened:
                        opened[path] = stack.enter_context(_open(path))
                    loaded = opened[path].get_tensor(block.key)
                    rebuilt[id(block)] = loaded if block.place == "checkpoint" else _fresh(loaded, block)
        for entry in entries:
            data, block = rebuilt[id(entry.block)], entry.block
            if block.place == "checkpoint":  # the tensor itself, in the file's layout
                layout = torch.empty_strided(entry.size, entry.stride, dtype=entry.dtype, device=entry.device)
                entry.tensor.data = layout.copy_(data)
            elif block.whole:  # no plain storage (meta, a tensor subclass): the data itself
                entry.tensor.data = data
            else:  # a view of the storage, at its offset, with its strides: sharing comes back too
                entry.tensor.data = data.as_strided(entry.size, entry.stride, entry.offset)
        for block in _blocks(self._entries):
            self._store.uncount(block)
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
        self._ram_backed = False
        self._counter = itertools.count()
        self._checkpoints: set[str] = set()
        self._bytes = {"checkpoint": 0, "spill": 0, "memory": 0}
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._kept: list[weakref.ref[Kept]] = []  # weakly: the undos hold them; undoable=False drops them

    # ---- keeping

    def keep(
        self, tensors: Sequence[torch.Tensor], *, owner: torch.nn.Module | None = None, in_case: bool = False
    ) -> Kept:
        """Keep the current data of ``tensors`` (parameters or buffers of the component ``owner``,
        which says where it was loaded from) so that the returned `Kept` can put it back.

        Tensors sharing memory (tied weights, the views ``fuse_qkv`` makes) are kept as the one
        storage they share, and come back sharing it.

        ``in_case``: the tensors stay as they are and are kept only in case something replaces them
        later (a pipeline that casts its VAE during a call): data in host memory is then kept by
        reference, which costs nothing while the pipeline holds it, and restore puts back only the
        tensors whose dtype, device or layout changed."""
        entries = _entries(tensors)
        free = ("meta", "cpu") if in_case else ("meta",)
        pending: list[_Block] = []
        for block in _blocks(entries):
            if block.device.type in free:  # a reference to memory the pipeline holds anyway
                block.data = _flat(_first_view(block, entries))
            else:
                pending.append(block)
        files: list[str] = []
        if self.mode == "spill":
            pending = self._from_checkpoint(pending, entries, owner)
            pending = self._spill(pending, entries, files)
        for block in pending:
            # Data on an accelerator is copied to host: a reference would keep it in device memory.
            flat = _flat(_first_view(block, entries))
            block.data = flat if flat.device.type == "cpu" else flat.to("cpu", copy=True)
            self._count(block, "memory")
        kept = Kept(self, entries, files, changed_only=in_case)
        self._kept.append(weakref.ref(kept))
        return kept

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
            dirs = ", ".join(sorted({os.path.dirname(path) for path in self._checkpoints}))
            places.append(f"re-read from the checkpoint on undo ({_megabytes(self._bytes['checkpoint'])} in {dirs})")
        if self._bytes["spill"]:
            ram = "; a RAM-backed file system: this is memory" if self._ram_backed else ""
            places.append(
                f"spilled to {self._dir} ({_megabytes(self._bytes['spill'])}, re-read on undo, removed with the "
                f"report{ram})"
            )
        if self._bytes["memory"]:
            why = f": {self.fallback}" if self.fallback else ""
            places.append(f"in memory ({_megabytes(self._bytes['memory'])}{why})")
        return "; ".join(places) or "none needed (no step replaced weights)"

    def resident_bytes(self) -> int:
        """Bytes of originals held in memory now (a RAM-backed spill dir included; nothing once a
        call with ``undoable=False`` has returned)."""
        if self.mode == "transient":
            return 0
        return self._bytes["memory"] + (self._bytes["spill"] if self._ram_backed else 0)

    def close(self) -> None:
        """Remove the spill files (after undo, or when the originals are no longer wanted)."""
        if self._finalizer is not None:
            self._finalizer()

    def check_all(self) -> None:
        """Raise `UndoError` if any file holding originals of this store is gone or changed: an undo checks
        before it touches anything, so it never stops halfway for a missing file."""
        kept = [reference() for reference in self._kept]
        blocks = [block for k in kept if k is not None for block in _blocks(k._entries)]
        for block in blocks:  # an undo retried after Ctrl-C checks the files again
            block.verified = False
        self.check_blocks(blocks)

    def check_blocks(self, blocks: Sequence[_Block]) -> None:
        """Raise `UndoError` if a file holding ``blocks`` is gone or, for a checkpoint, holds other values
        than optimize() read there (by content: a file rewritten with the same size and modification
        time, as ``cp -p``, ``rsync -t`` or a backup restore leave it, is still caught; a file only
        touched is fine). Each checkpoint is opened once; a block checked in this undo is not read again."""
        from sdopt.errors import UndoError

        unchecked: dict[str, list[_Block]] = {}
        for block in blocks:
            if block.place == "memory" or block.verified:
                continue
            path = block.path or ""
            if not os.path.exists(path):
                raise UndoError(f"the file {path} holding originals is gone; reload the pipeline")
            if block.place == "checkpoint":
                unchecked.setdefault(path, []).append(block)
        for path, group in unchecked.items():
            changed = _changed_keys(path, group)
            if changed:
                raise UndoError(
                    f"the checkpoint {path} changed since optimize() read the originals from it ({changed[0]} holds "
                    "other values); reload the pipeline"
                )
            for block in group:
                block.verified = True

    def uncount(self, block: _Block) -> None:
        if block.counted:
            self._bytes[block.place] -= block.nbytes
            block.counted = False

    def _count(self, block: _Block, place: str) -> None:
        block.place, block.counted = place, True
        self._bytes[place] += block.nbytes

    # ---- places

    def _from_checkpoint(
        self, blocks: list[_Block], entries: list[_Entry], owner: torch.nn.Module | None
    ) -> list[_Block]:
        """Point blocks at the checkpoint file holding equal values; return the others. Only a tensor
        that owns its whole storage alone qualifies (views must come back sharing their storage)."""
        files = _checkpoint_files(owner)
        if not blocks or not files or owner is None:
            return blocks
        names = _tensor_names(owner)
        sole = {id(e.block): e for e in entries if _owns_storage(e, entries)}
        wanted = [b for b in blocks if id(b) in sole and id(sole[id(b)].tensor) in names]
        left = [b for b in blocks if not any(b is w for w in wanted)]
        for path in files:
            if not wanted:
                break
            try:
                with _open(path) as handle:
                    keys = set(handle.keys())
                    unmatched = []
                    for block in wanted:
                        entry = sole[id(block)]
                        key = names[id(entry.tensor)]
                        stored = handle.get_tensor(key) if key in keys else None
                        if stored is not None and _equal(stored, entry.tensor):
                            block.path, block.key, block.digest = path, key, _digest(stored)
                            self._count(block, "checkpoint")
                        else:
                            unmatched.append(block)
            except (OSError, RuntimeError, ValueError):  # unreadable or not a safetensors file
                continue
            if len(unmatched) < len(wanted):
                self._checkpoints.add(path)
            wanted = unmatched
        return left + wanted

    def _spill(self, blocks: list[_Block], entries: list[_Entry], files: list[str]) -> list[_Block]:
        """Write blocks to spill files; return those that must stay in memory."""
        from safetensors.torch import save_file

        storable = [b for b in blocks if b.dtype in _SAFETENSORS_DTYPES and _is_plain(_first_view(b, entries))]
        left = [b for b in blocks if not any(b is s for s in storable)]
        for chunk in _chunks(storable):
            try:
                directory = self._ensure_dir()
                path = os.path.join(directory, f"{next(self._counter):05d}.safetensors")
                keys = {f"t{i}": block for i, block in enumerate(chunk)}
                save_file({key: _host_copy(_flat(_first_view(b, entries))) for key, b in keys.items()}, path)
            except OSError as error:
                self._fall_back(error)
                return left + [b for b in storable if b.place != "spill"]
            files.append(path)
            for key, block in keys.items():
                block.path, block.key = path, key
                self._count(block, "spill")
        return left

    def _ensure_dir(self) -> str:
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="sdopt-originals-")
            # Removed when the store is garbage collected (with the report) or when the process that made
            # it exits; a forked worker exiting leaves it to its parent.
            self._finalizer = weakref.finalize(self, _remove_if_owner, self._dir, os.getpid())
            self._ram_backed = _ram_backed(self._dir)
            if self._ram_backed:
                warnings.warn(
                    f"sdopt: the temp dir {self._dir} is on a RAM-backed file system (tmpfs): undo's originals "
                    "spilled there still take memory. Set TMPDIR to a disk, or optimize with undoable=False.",
                    stacklevel=5,
                )
        return self._dir

    def _fall_back(self, error: Exception) -> None:
        self.mode = "memory"
        where = self._dir or tempfile.gettempdir()
        self.fallback = f"the temp dir {where} could not be written ({type(error).__name__}: {error})"
        warnings.warn(
            f"sdopt: {self.fallback}; undo's originals are kept in memory instead, which costs the memory the "
            "optimizations save. Set TMPDIR to a writable disk, or optimize with undoable=False.",
            stacklevel=5,
        )


# ---- the store of the optimize call in progress


@contextlib.contextmanager
def active(store: Originals) -> Iterator[Originals]:
    """Make ``store`` the one `keep` uses while the block runs."""
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
    """Keep the current data of ``tensors`` in the current store (see `Originals.keep`)."""
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
    """One entry per distinct tensor object, each pointing at the block of the storage it views."""
    entries: list[_Entry] = []
    blocks: dict[tuple[Any, ...], _Block] = {}
    seen: set[int] = set()
    for tensor in tensors:
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        data = tensor.data
        whole = data.device.type == "meta" or not _is_plain(data)
        if whole:  # nothing to share: a block of its own
            key: tuple[Any, ...] = ("whole", id(tensor))
            numel = data.numel()
        else:
            storage = data.untyped_storage()
            key = (storage.data_ptr(), data.dtype, data.device)
            numel = storage.nbytes() // data.dtype.itemsize
        block = blocks.setdefault(key, _Block(data.dtype, data.device, numel, whole=whole))
        offset = 0 if whole else int(data.storage_offset())
        entries.append(_Entry(tensor, data.dtype, data.device, tuple(data.shape), tuple(data.stride()), offset, block))
    return entries


def _blocks(entries: Sequence[_Entry]) -> list[_Block]:
    return list({id(entry.block): entry.block for entry in entries}.values())


def _first_view(block: _Block, entries: Sequence[_Entry]) -> torch.Tensor:
    return next(entry.tensor.data for entry in entries if entry.block is block)


def _flat(view: torch.Tensor) -> torch.Tensor:
    """The whole storage ``view`` looks into, as a flat tensor of its dtype (the view itself for
    tensors with no plain storage: meta tensors, tensor subclasses)."""
    if view.device.type == "meta" or not _is_plain(view):
        return view
    storage = view.untyped_storage()
    flat = torch.empty(0, dtype=view.dtype, device=view.device)
    return flat.set_(storage, 0, (storage.nbytes() // view.dtype.itemsize,), (1,))


def _owns_storage(entry: _Entry, entries: Sequence[_Entry]) -> bool:
    """Whether ``entry`` is the only kept view of its storage and covers all of it."""
    alone = sum(e.block is entry.block for e in entries) == 1
    return alone and entry.offset == 0 and entry.tensor.data.numel() == entry.block.numel


def _is_plain(tensor: torch.Tensor) -> bool:
    return type(tensor) in (torch.Tensor, torch.nn.Parameter) and not tensor.is_quantized


def _changed(entry: _Entry) -> bool:
    data = entry.tensor.data
    return (data.dtype, data.device, tuple(data.shape), tuple(data.stride())) != (
        entry.dtype,
        entry.device,
        entry.size,
        entry.stride,
    )


def _chunks(blocks: list[_Block]) -> Iterator[list[_Block]]:
    chunk: list[_Block] = []
    size = 0
    for block in blocks:
        chunk.append(block)
        size += block.nbytes
        if size >= _CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _host_copy(tensor: torch.Tensor) -> torch.Tensor:
    """The data as a contiguous CPU tensor (the data itself when it already is one)."""
    return tensor.detach().to("cpu").contiguous()


def _fresh(loaded: torch.Tensor, block: _Block) -> torch.Tensor:
    """The loaded values in a fresh allocation of the block's dtype on its device. Always fresh:
    tensors read from a file may sit at an address aligned differently, and MKL's CPU kernels
    round differently by alignment (outputs off by ~1e-6 after undo, measured)."""
    fresh = torch.empty(loaded.shape, dtype=block.dtype, device=block.device)
    return fresh.copy_(loaded)


def _equal(stored: torch.Tensor, tensor: torch.Tensor) -> bool:
    data = tensor.data
    if not _is_plain(data) or tuple(stored.shape) != tuple(data.shape):
        return False
    # Loaded with torch_dtype=... from a file in another dtype: equal once cast the same way.
    return bool(torch.equal(stored.to(data.dtype), data.to("cpu")))


def _digest(tensor: torch.Tensor) -> str:
    """A hash of ``tensor``'s bytes (any dtype), read in place."""
    raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
    return hashlib.blake2b(raw.numpy().data, digest_size=16).hexdigest()


def _changed_keys(path: str, blocks: Sequence[_Block]) -> list[str]:
    """The keys of ``blocks`` whose values in the checkpoint at ``path`` differ from those read at optimize."""
    try:
        with _open(path) as handle:
            keys = set(handle.keys())
            return [
                str(block.key)
                for block in blocks
                if block.key not in keys or _digest(handle.get_tensor(block.key)) != block.digest
            ]
    except (OSError, RuntimeError, ValueError):
        return [str(block.key) for block in blocks]


def _open(path: str) -> Any:
    from safetensors import safe_open

    return safe_open(path, framework="pt", device="cpu")


def _remove_if_owner(directory: str, owner_pid: int) -> None:
    if os.getpid() == owner_pid:
        shutil.rmtree(directory, ignore_errors=True)


def _ram_backed(directory: str) -> bool:
    """Whether ``directory`` is on tmpfs/ramfs (Linux; elsewhere assumed a disk)."""
    try:
        with open("/proc/mounts") as mounts:
            rows = [line.split() for line in mounts]
    except OSError:
        return False
    real = os.path.realpath(directory)
    best, kind = "", ""
    for row in rows:
        if len(row) >= 3 and (real == row[1] or real.startswith(row[1].rstrip("/") + "/")) and len(row[1]) > len(best):
            best, kind = row[1], row[2]
    return kind in ("tmpfs", "ramfs")


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


def _megabytes(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MB"
