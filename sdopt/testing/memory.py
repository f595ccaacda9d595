"""Memory held by tensors, measured without RSS noise."""

from __future__ import annotations

import gc

import torch


def resident_tensor_bytes(device: str = "cpu") -> int:
    """Bytes of every distinct tensor storage alive in this process on ``device`` ("cpu", "cuda"...).

    Storages shared by several tensors (views, tied weights) count once. Memory torch keeps outside
    tensors (fbgemm's packed int8 weights, the allocator's cache) is not seen: compare two
    measurements of the same process, before and after a change.

    Examples:
        >>> import torch
        >>> from sdopt.testing import resident_tensor_bytes
        >>> before = resident_tensor_bytes()
        >>> block = torch.zeros(1024, 1024)
        >>> view = block[:10]
        >>> resident_tensor_bytes() - before
        4194304
    """
    gc.collect()
    storages: dict[int, int] = {}
    from torch._subclasses.fake_tensor import FakeTensor

    for obj in gc.get_objects():
        # FakeTensors (left by torch.compile's tracing) hold no memory.
        if not isinstance(obj, torch.Tensor) or isinstance(obj, FakeTensor) or obj.device.type != device:
            continue
        try:
            storage = obj.untyped_storage()
            pointer = storage.data_ptr()
        except (RuntimeError, NotImplementedError):  # wrapper subclasses (torchao) hold inner tensors, seen apart
            continue
        storages[pointer] = max(storages.get(pointer, 0), storage.nbytes())
    return sum(storages.values())
