"""What bench measures a call with: per-part timers, peak memory (host RSS sampled, CUDA max
allocated), the host bytes of a pipeline's tensors, and copies of a pipeline that share its weights."""

from __future__ import annotations

import copy
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch


def light_copy(pipe: Any) -> Any:
    """A deep copy of ``pipe`` whose tensors share the original's memory: new tensor objects, so
    optimizing the copy rebinds the copy's tensors only (sdopt's steps never write into a tensor's
    memory in place), and a tier costs only what it changes."""
    memo: dict[int, Any] = {}
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            for tensor in [*component.parameters(), *component.buffers()]:
                if isinstance(tensor, torch.nn.Parameter):
                    memo[id(tensor)] = torch.nn.Parameter(tensor.data, requires_grad=tensor.requires_grad)
                else:
                    memo[id(tensor)] = tensor.detach()
    return copy.deepcopy(pipe, memo)


@contextmanager
def timed_parts(pipe: Any, clock: Callable[[], float]) -> Iterator[tuple[list[float], list[float]]]:
    """Time each denoiser call (forward hooks) and each VAE decode (a temporary wrapper)."""
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    vae = getattr(pipe, "vae", None)
    denoiser_calls: list[float] = []
    decode_calls: list[float] = []
    started: list[float] = []
    handles = []
    if denoiser is not None:
        handles.append(denoiser.register_forward_pre_hook(lambda *args: started.append(clock())))
        handles.append(denoiser.register_forward_hook(lambda *args: denoiser_calls.append(clock() - started.pop())))
    previous = vae.__dict__.get("decode") if vae is not None else None
    if vae is not None:
        inner = vae.decode

        def timed_decode(*args: Any, **kwargs: Any) -> Any:
            begin = clock()
            try:
                return inner(*args, **kwargs)
            finally:
                decode_calls.append(clock() - begin)

        vae.decode = timed_decode
    try:
        yield denoiser_calls, decode_calls
    finally:
        for handle in handles:
            handle.remove()
        if vae is not None:
            if previous is None:
                del vae.decode
            else:
                vae.decode = previous


def rss_gb() -> float:
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
        import os

        return pages * os.sysconf("SC_PAGE_SIZE") / 1e9
    except (OSError, ValueError):  # not Linux: the high-water mark of the whole process
        import resource

        scale = 1e9 if sys.platform == "darwin" else 1e6
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


@contextmanager
def peak_memory(device: str) -> Iterator[Callable[[], tuple[float, float | None]]]:
    """Peak memory of the enclosed call: the host RSS increase sampled every 5 ms, and on CUDA the
    device's max allocated."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = rss_gb()
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.005):
            peak[0] = max(peak[0], rss_gb())

    def peaks() -> tuple[float, float | None]:
        on_device = torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None
        return max(0.0, peak[0] - before), on_device

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peaks
    finally:
        stop.set()
        sampler.join()
        peak[0] = max(peak[0], rss_gb())


def host_tensor_bytes(pipe: Any) -> int:
    """Bytes of the distinct host-memory storages of the pipeline's modules (shared ones once)."""
    storages: dict[int, int] = {}
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            for tensor in [*component.parameters(), *component.buffers()]:
                if tensor.device.type == "cpu" and type(tensor.data) is torch.Tensor:
                    storage = tensor.untyped_storage()
                    storages[storage.data_ptr()] = storage.nbytes()
            # PyTorch's dynamic int8 layers keep packed weights outside any parameter: count them from
            # the state dict, which unpacks them.
            for value in component.state_dict().values():
                for tensor in value if isinstance(value, tuple) else (value,):
                    if isinstance(tensor, torch.Tensor) and tensor.is_quantized and tensor.device.type == "cpu":
                        storages[id(tensor)] = tensor.numel() * tensor.element_size()
    return sum(storages.values())
