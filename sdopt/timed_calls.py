"""Short timed calls, full-image outputs and the comparison of two sets of timings (the tuning and the
speed guard measure with them).

A timed call is a real pipeline call at the caller's shape in which only the first few denoiser
calls per input signature run; the later ones return the output of the last real call with that
signature. Everything else runs as in a real call (the call-time steps, the scheduler, the decode),
so the estimate of a whole call is: its wall time, minus the real denoiser calls, plus the number
of denoiser calls times their mean duration. That is a few denoiser calls and one decode per
sample, not a whole image.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sdopt.anatomy import inspect_pipeline
from sdopt.timing import MIN_GAIN, relative_range


@dataclass(frozen=True)
class Sample:
    """One timed call: the estimated seconds of the whole call and of one denoiser call."""

    call_s: float
    denoiser_s: float
    denoiser_calls: int


class _ShortCircuit:
    """Stands in for the denoiser during a timed call: runs ``real`` calls per input signature,
    then repeats the last output of that signature. Attribute access goes to the denoiser."""

    def __init__(self, module: Any, clock: Callable[[], float], real: int) -> None:
        self.__dict__.update(_module=module, _clock=clock, _real=real, _outputs={}, _durations={}, _counts={})

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_module"], name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        key = _signature(args, kwargs)
        self._counts[key] = self._counts.get(key, 0) + 1
        durations = self._durations.setdefault(key, [])
        if len(durations) >= self._real and key in self._outputs:
            return self._outputs[key]
        started = self._clock()
        output = self._module(*args, **kwargs)
        durations.append(self._clock() - started)
        self._outputs[key] = output
        return output

    def estimate(self, wall_s: float) -> Sample:
        real = sum(sum(durations) for durations in self._durations.values())
        full = sum(self._counts[key] * statistics.fmean(d) for key, d in self._durations.items() if d)
        calls = sum(self._counts.values())
        per_call = full / calls if calls else 0.0
        return Sample(call_s=wall_s - real + full, denoiser_s=per_call, denoiser_calls=calls)


def _signature(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    def shape(value: Any) -> Any:
        return tuple(value.shape) if isinstance(value, torch.Tensor) else None

    return (tuple(shape(a) for a in args), tuple(sorted((k, shape(v)) for k, v in kwargs.items())))


def timed_call(pipe: Any, kwargs: dict[str, Any], clock: Callable[[], float], real: int = 3) -> Sample:
    """Make one short-circuited call of ``pipe`` and estimate what the whole call takes."""
    anatomy = inspect_pipeline(pipe)
    name = anatomy.denoiser_name
    if name is None:  # nothing to short-circuit: the whole call is the sample
        started = clock()
        _call(pipe, kwargs)
        return Sample(call_s=clock() - started, denoiser_s=0.0, denoiser_calls=0)
    module = pipe.__dict__[name]
    proxy = _ShortCircuit(module, clock, real)
    # Set on the instance without DiffusionPipeline.__setattr__, which would rewrite the pipeline's
    # config for the stand-in: the pipeline is put back exactly afterwards.
    object.__setattr__(pipe, name, proxy)
    try:
        started = clock()
        _call(pipe, kwargs)
        wall = clock() - started
    finally:
        object.__setattr__(pipe, name, module)
    return proxy.estimate(wall)


def full_output(pipe: Any, kwargs: dict[str, Any], clock: Callable[[], float]) -> tuple[np.ndarray, float]:
    """A real whole call: its first output as uint8 (for PSNR against another configuration) and its seconds."""
    started = clock()
    output = _call(pipe, kwargs)
    return as_uint8(output), clock() - started


def as_uint8(output: Any) -> np.ndarray:
    """The first field of a pipeline output (images, frames, ...) as a uint8 array of values in [0, 255]."""
    first = output[0] if not isinstance(output, (np.ndarray, torch.Tensor)) else output
    return (np.clip(_as_array(first), 0.0, 1.0) * 255).round().astype(np.uint8)


def _as_array(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().float().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value.astype(np.float32)
    if isinstance(value, (list, tuple)):
        return np.stack([_as_array(item) for item in value])
    return np.asarray(value, dtype=np.float32) / 255.0  # a PIL image


def _call(pipe: Any, kwargs: dict[str, Any]) -> Any:
    with _quiet_progress(pipe), torch.inference_mode():
        return pipe(**kwargs)


@contextlib.contextmanager
def _quiet_progress(pipe: Any) -> Iterator[None]:
    """diffusers' per-call progress bars off during sdopt's own calls (one bar for the tuning instead)."""
    had = "_progress_bar_config" in pipe.__dict__
    previous = dict(pipe.__dict__.get("_progress_bar_config", {}))
    pipe._progress_bar_config = {**previous, "disable": True}
    try:
        yield
    finally:
        if had:
            pipe._progress_bar_config = previous
        else:
            del pipe._progress_bar_config


@dataclass(frozen=True)
class Comparison:
    ratio: float
    spread: float
    denoiser_ratio: float | None
    samples: int
    decided: bool
    call_s: float
    best_s: float

    @property
    def faster(self) -> bool:
        return self.ratio - self.spread > 1 and self.ratio > 1 + MIN_GAIN

    def describe(self) -> str:
        text = f"call {self.ratio:.2f}x (+-{self.spread:.2f})"
        if self.denoiser_ratio is not None:
            text += f", denoiser call {self.denoiser_ratio:.2f}x"
        return text


def compare(best: list[Sample], candidate: list[Sample]) -> Comparison:
    best_s = statistics.median(s.call_s for s in best)
    call_s = statistics.median(s.call_s for s in candidate)
    ratio = best_s / call_s
    # Half the ranges: a search heuristic (a kept step is also checked for fidelity), not a printed claim.
    spread = ratio * (relative_range([s.call_s for s in best]) + relative_range([s.call_s for s in candidate])) / 2
    calls_b = [s.denoiser_s for s in best if s.denoiser_s > 0]
    calls_c = [s.denoiser_s for s in candidate if s.denoiser_s > 0]
    denoiser = statistics.median(calls_b) / statistics.median(calls_c) if calls_b and calls_c else None
    enough = min(len(best), len(candidate)) >= 2
    decided = enough and (abs(ratio - 1) > spread or (spread < MIN_GAIN and abs(ratio - 1) < MIN_GAIN))
    return Comparison(ratio, spread, denoiser, len(candidate), decided, call_s, best_s)
