"""The denoiser's forward under static int8: int8 for the input signatures built, float32 otherwise.

The first call at a new signature (latent size, batch, dtypes) runs in float32 and records the
denoiser's inputs and outputs; when the pipeline call ends, those inputs calibrate a PT2E int8
program, inductor compiles it, and its output is checked against the recorded float32 outputs.
Later calls at that signature run the compiled int8 program. A program already in the on-disk
cache is loaded at the first denoiser call instead, so that call already runs int8.
Nothing here raises at call time: a build that fails or misses the fidelity floor leaves that
signature in float32, with the reason in `Int8Runner.describe` and a warning.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils import _pytree

from sdopt.footprint import module_bytes
from sdopt.optimizations._int8 import cache
from sdopt.optimizations._int8.quantizer import (
    Sample,
    compile_frozen,
    compiling,
    int8_lowerings,
    quantize,
    quantized_node_count,
)
from sdopt.optimizations._snr import snr_db
from sdopt.verification import verifying

_MAX_RECORDED = 64
_CHECKED = 3
# More distinct input signatures in one pipeline call than this: the denoiser's inputs change shape
# or baked-in values at every step (a Python-number timestep), and int8 programs would never be reused.
_MAX_SIGNATURES_PER_CALL = 3
# Free RAM a build needs, in multiples of the denoiser's bytes: export, calibration and inductor's
# freezing hold transient copies. An estimate (no measured peak yet): a bench building SD1.5's
# program beside three other pipelines and an OpenVINO worker was OOM-killed on a 24 GB VM.
BUILD_MEMORY_FACTOR = 2.0


class Int8Runner:
    """Stands in for ``module.forward`` (an instance attribute; undo removes it)."""

    def __init__(
        self,
        module: torch.nn.Module,
        forward: Callable[..., Any],
        *,
        keep_float: Sequence[str],
        min_snr_db: float,
        calibration_calls: int,
        root: Path,
    ) -> None:
        self.module = module
        self.forward = forward
        self.keep_float = tuple(keep_float)
        self.min_snr_db = min_snr_db
        self.calibration_calls = calibration_calls
        self.root = root
        self.compiled: dict[str, Callable[..., Any]] = {}
        self.refused: dict[str, str] = {}
        self.recording: dict[str, list[tuple[Sample, Any]]] = {}
        self.events: list[str] = []
        self.builds = 0
        self.cache_hits = 0
        self.int8_calls = 0
        self._weights: str | None = None
        self._identity: tuple[tuple[int, int], ...] = ()
        self.disabled = ""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled() or self.disabled or verifying():  # inference at the caller's shapes only
            return self.forward(*args, **kwargs)
        # The program fits these weights, inputs and computation: weights replaced or changed in place
        # (another LoRA under the same name), a LoRA scale or a processor changed since it was built make
        # another program (built or loaded anew), never the stale one.
        identity = cache.identity(self.module)
        if identity != self._identity:
            self._identity, self._weights = identity, None
            self.compiled.clear()
            self.refused.clear()
        call_signature = f"{cache.behaviour(self.module)}|{cache.signature(args, kwargs)}"
        program = self.compiled.get(call_signature)
        if program is not None:
            self.int8_calls += 1
            return program(*args, **kwargs)
        if call_signature not in self.refused and call_signature not in self.recording:
            loaded = self._from_cache(call_signature, (args, kwargs))
            if loaded is not None:
                self.int8_calls += 1
                return loaded  # the output of the compiling call
            if call_signature not in self.refused:
                self.recording[call_signature] = []
        output = self.forward(*args, **kwargs)
        samples = self.recording.get(call_signature)
        if samples is not None and len(samples) < _MAX_RECORDED:
            samples.append(((_detached(args), _detached(kwargs)), _detached(output)))
        return output

    def build_pending(self) -> None:
        """Build int8 for every signature recorded since the last build (at the end of a pipeline call)."""
        if len(self.recording) > _MAX_SIGNATURES_PER_CALL:
            count = len(self.recording)
            self.recording.clear()
            self.disabled = (
                f"the denoiser's inputs took {count} different shapes or constant values in one call "
                "(e.g. a Python-number timestep); int8 programs are built for fixed inputs, so it runs float32"
            )
            self.events.append(self.disabled)
            warnings.warn(f"sdopt static_int8: {self.disabled}", stacklevel=3)
            return
        for call_signature in list(self.recording):
            samples = self.recording.pop(call_signature)
            if not samples:
                continue
            try:
                with torch.no_grad():  # inference graphs only: inductor freezes weights only without autograd
                    self._build(call_signature, samples)
            except Exception as error:  # never an error at call time: this signature stays float32
                self._refuse(call_signature, f"int8 build failed ({type(error).__name__}: {_first_line(error)})")

    def describe(self) -> str:
        if not self.events:
            return (
                "waiting for the first call: it runs float32, records the denoiser's inputs and then builds int8 "
                "(minutes; the on-disk cache spares a new process the export, calibration and C++ compiles)"
            )
        return "; ".join(self.events)

    # ---- building and loading

    def _build(self, call_signature: str, samples: list[tuple[Sample, Any]]) -> None:
        from sdopt.probes.cpu import ram_gb as _ram_gb

        needed = BUILD_MEMORY_FACTOR * module_bytes(self.module) / 2**30
        available = _ram_gb()[1]
        if available and available < needed:
            self._refuse(
                call_signature,
                f"not enough free memory to build int8 (about {needed:.1f} GB needed, {available:.1f} GB free)",
            )
            return
        started = time.perf_counter()
        calibration = [sample for sample, _ in _spread(samples, self.calibration_calls)]
        with self._plain_forward():
            program = quantize(self.module, calibration, self.keep_float)
        self.builds += 1
        quantized = time.perf_counter()
        compiled, first_output = self._compile(program, calibration[0])
        compiled_at = time.perf_counter()
        checked = _spread(samples, _CHECKED)
        outputs = [
            first_output if sample is calibration[0] else compiled(*sample[0], **sample[1]) for sample, _ in checked
        ]
        snr = snr_db([reference for _, reference in checked], outputs)
        meta = {
            "snr_db": snr,
            "quantized_layers": quantized_node_count(program),
            "calibration_calls": len(calibration),
            "build_s": round(quantized - started, 1),
            "compile_s": round(compiled_at - quantized, 1),
        }
        with contextlib.suppress(OSError):  # an unwritable cache costs the next process a rebuild, nothing more
            cache.store(self.root, self._key(call_signature), program, meta)
        label = _label(samples[0][0])
        cost = (
            f"built cold in {compiled_at - started:.0f} s (export + calibration on {len(calibration)} calls + "
            f"convert {meta['build_s']:.0f} s, compile {meta['compile_s']:.0f} s)"
        )
        self._accept_or_refuse(call_signature, compiled, meta, f"{label}: {cost}")

    def _from_cache(self, call_signature: str, sample: Sample) -> Any:
        """The output of ``sample`` computed by the cached program, now compiled, or None without one."""
        entry = self._key(call_signature)
        started = time.perf_counter()
        try:
            found = cache.load(self.root, entry)
        except Exception as error:  # a corrupt or foreign entry: rebuild from this call
            warnings.warn(f"sdopt static_int8: ignoring an unreadable cache entry ({error})", stacklevel=3)
            return None
        if found is None:
            return None
        program, meta = found
        loaded = time.perf_counter()
        try:
            with torch.no_grad():
                compiled, output = self._compile(program, sample)
        except Exception as error:  # never an error at call time: this signature stays float32
            self._refuse(
                call_signature, f"the cached int8 program failed ({type(error).__name__}: {_first_line(error)})"
            )
            return None
        # The stored fidelity is signed, but measured elsewhere: it is measured again here, once, on this call.
        with torch.no_grad():
            reference = self.forward(*sample[0], **sample[1])
        meta = {**meta, "snr_db": snr_db([reference], [output])}
        self.cache_hits += 1
        done = time.perf_counter()
        cold = meta.get("build_s", 0) + meta.get("compile_s", 0)
        cost = (
            f"from the on-disk cache in {done - started:.0f} s (load {loaded - started:.0f} s, compile "
            f"{done - loaded:.0f} s; built cold in {cold:.0f} s; fidelity measured again on this call)"
        )
        self._accept_or_refuse(call_signature, compiled, meta, f"{_label(sample)}: {cost}")
        return output if call_signature in self.compiled else None

    def _compile(self, program: Any, sample: Sample) -> tuple[Callable[..., Any], Any]:
        compiled = compile_frozen(program)
        before = _inductor_counts()
        with compiling(cache.inductor_dir(self.root)):
            output = compiled(*sample[0], **sample[1])
        lowered, graph_cache_hits = (now - then for now, then in zip(_inductor_counts(), before, strict=True))
        if lowered == 0 and graph_cache_hits == 0:
            # The int8 fusions did not fire: int8 would run as dequantize + float32, slower than float32.
            raise RuntimeError("inductor lowered no int8 convolution or linear to oneDNN's int8 kernels")
        return compiled, output

    def _accept_or_refuse(
        self, call_signature: str, compiled: Callable[..., Any], meta: dict[str, Any], what: str
    ) -> None:
        snr = float(meta["snr_db"])
        fidelity = (
            f"denoiser output {snr:.1f} dB SNR against float32 on the calibration call (floor {self.min_snr_db:g} dB)"
        )
        if not snr >= self.min_snr_db:  # NaN (a non-finite output) is refused too
            self._refuse(call_signature, f"int8 refused for {what}: {fidelity}")
            return
        self.compiled[call_signature] = compiled
        self.events.append(f"int8 ({meta['quantized_layers']} layers) for {what}; {fidelity}")

    def _refuse(self, call_signature: str, reason: str) -> None:
        self.refused[call_signature] = reason
        self.events.append(f"{reason}; that shape runs float32")
        warnings.warn(f"sdopt static_int8: {reason}; that shape runs float32", stacklevel=3)

    def _key(self, call_signature: str) -> str:
        if self._weights is None:
            self._weights = cache.weights_hash(self.module)
        return cache.key(self._weights, call_signature, self.keep_float, self.calibration_calls)

    @contextlib.contextmanager
    def _plain_forward(self) -> Iterator[None]:
        # torch.export traces module.forward: this runner must not be in the way while it does.
        self.module.__dict__["forward"] = self.forward
        try:
            yield
        finally:
            self.module.__dict__["forward"] = self


def _inductor_counts() -> tuple[int, int]:
    from torch._dynamo.utils import counters

    return int8_lowerings(), counters["inductor"]["fxgraph_cache_hit"]


def _detached(tree: Any) -> Any:
    return _pytree.tree_map(lambda leaf: leaf.detach().clone() if isinstance(leaf, torch.Tensor) else leaf, tree)


def _spread(items: list[Any], count: int) -> list[Any]:
    """Up to ``count`` items evenly spread over ``items``, the first and last included."""
    if len(items) <= count:
        return list(items)
    if count <= 1:
        return items[:1]
    step = (len(items) - 1) / (count - 1)
    return [items[round(index * step)] for index in range(count)]


def _label(sample: Sample) -> str:
    shapes = [tuple(leaf.shape) for leaf in sample[0] if isinstance(leaf, torch.Tensor) and leaf.dim() > 0]
    return "input " + (" x ".join(str(list(shape)) for shape in shapes[:1]) or "of scalars")


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else ""
