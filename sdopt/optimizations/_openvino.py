"""One module method (the denoiser's ``forward``, the VAE's ``decode``) run by OpenVINO's CPU runtime.

`OpenVinoRunner` stands in for the method as an instance attribute. The first call at a new input
signature (shapes, dtypes, the other arguments' values) runs PyTorch, whose output is returned; on the
way, ``openvino.convert_model`` traces the method at that call's static shapes (or the converted model is
read from the on-disk cache), OpenVINO compiles it for the CPU, runs it on the same inputs and compares:
below ``min_snr_db`` that signature stays in PyTorch. Later calls at that signature run the compiled
model. A model read from the disk cache that this machine already checked and accepted at this precision
(`remember_acceptance`) answers its first call itself, with no PyTorch call, unless its output is not
finite. Anything with gradients, sdopt's own verification calls and signatures beyond `MAX_PROGRAMS` run
PyTorch. Nothing here raises at call time: a failed conversion leaves that signature in PyTorch, with
the reason in `OpenVinoRunner.describe` and a warning.

With int8 (the denoiser only), a new signature first looks for its int8 model on disk; without one, the
calls of the first pipeline call run PyTorch while `RangeObserver` records each layer's input range, and
`OpenVinoRunner.build_pending` (run at the end of the pipeline call) converts with `fake_quantized`
layers, checks the int8 model on three of the recorded calls and keeps it, or converts without int8.

diffusers has no OpenVINO path of its own (optimum-intel exports whole pipelines to its own classes);
this converts the pipeline's own modules in place, so everything else in the pipeline stays diffusers'.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils import _pytree

from sdopt.footprint import GB, module_bytes
from sdopt.optimizations._openvino_cache import (
    accepted,
    key,
    load,
    load_compiled,
    refused_snr_db,
    remember_acceptance,
    remember_refusal,
    store,
    store_compiled,
)
from sdopt.optimizations._openvino_int8 import (
    MIN_ELEMENTS_PER_CHANNEL,
    CalibrationCalls,
    RangeObserver,
    fake_quantized,
    layer_snr_db,
)
from sdopt.optimizations._openvino_program import (
    Program,
    compile_program,
    compiled_blob,
    convert,
    detached,
    import_program,
    layout_from_record,
    layout_record,
    output_layout,
)
from sdopt.optimizations._program_keys import behaviour, identity, signature, weights_hash
from sdopt.optimizations._snr import snr_db
from sdopt.probes.cpu import ram_gb
from sdopt.verification import verifying

MAX_PROGRAMS = 4
"""Compiled input signatures per method (a conversion takes ~40 s on SD1.5's UNet): beyond, PyTorch."""
COMPILED_HEADROOM_GB = 2.0
"""A compiled model is kept on disk only while RAM holds its export (about its weights' size) and this much."""
KEEP_FLOAT_SHARE = 0.05
"""int8 below the floor is tried once more with this share of its layers (the most sensitive) left float."""
_Sample = tuple[tuple[Any, ...], dict[str, Any], Any]  # a call's arguments and PyTorch's answer


class OpenVinoRunner:
    """Stands in for ``getattr(module, method)`` (an instance attribute; undo removes it)."""

    def __init__(
        self,
        module: torch.nn.Module,
        method: str,
        original: Callable[..., Any],
        *,
        precision: str,
        min_snr_db: float,
        root: Path,
        label: str,
        int8_keep_float: tuple[str, ...] | None = None,
        int8_weight_bits: int = 8,
        machine: str = "",
    ) -> None:
        self.module = module
        self.method = method
        self.original = original
        self.precision = precision
        self.min_snr_db = min_snr_db
        self.root = root
        self.label = label
        self.programs: dict[str, Program] = {}
        self.refused: dict[str, str] = {}
        self.events: list[str] = []
        self.conversions = 0
        self.cache_hits = 0
        self.openvino_calls = 0
        self.trusted = 0  # first calls answered by a cached model this machine had accepted, without PyTorch
        # What an acceptance noted on disk holds for: the compiled precision on this CPU class ("" trusts none).
        self.trust_tag = f"{precision} on {machine}" if machine else ""
        self._identity: tuple[tuple[int, int], ...] = ()
        self._weights: str | None = None
        # int8 (None: off): the top-level children left float; the observer and the calls it calibrates on.
        self.int8_keep_float = int8_keep_float
        self.int8_weight_bits = int8_weight_bits
        self.observer: RangeObserver | None = None
        self.calibrating: dict[str, CalibrationCalls] = {}
        self.int8_tried: set[str] = set()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled() or verifying():
            return self.original(*args, **kwargs)
        # A compiled model holds a copy of the weights it was converted from: weights replaced or changed
        # in place (a LoRA fused, another adapter) or a changed processor or scale make it stale.
        current = identity(self.module)
        if current != self._identity:
            self._identity, self._weights = current, None
            self.programs.clear()
            self.refused.clear()
            self._stop_calibrating()
            self.int8_tried.clear()
        call_signature = (
            f"{behaviour(self.module)}|{_switches(self.module)}|{signature(*_without_generators(args, kwargs))}"
        )
        program = self.programs.get(call_signature)
        if program is not None:
            try:
                output = program(args, kwargs)
            except Exception as error:  # never an error at call time: this signature goes back to PyTorch
                del self.programs[call_signature]
                self._refuse(call_signature, f"OpenVINO failed ({type(error).__name__}: {_first_line(error)})")
                return self.original(*args, **kwargs)
            self.openvino_calls += 1
            return output
        if call_signature in self.refused:
            return self.original(*args, **kwargs)
        if call_signature in self.calibrating:
            return self._calibrate(call_signature, args, kwargs)
        if len(self.programs) + len(self.refused) >= MAX_PROGRAMS:
            self._refuse(call_signature, f"more than {MAX_PROGRAMS} input signatures (shapes or argument values)")
            return self.original(*args, **kwargs)
        if self.int8_keep_float is not None and call_signature not in self.int8_tried:
            self.int8_tried.add(call_signature)
            return self._int8_from_cache_or_calibrate(call_signature, args, kwargs)
        return self._prepare(call_signature, args, kwargs)

    def build_pending(self) -> None:
        """Convert int8 for every signature calibrated since the last build (at the end of a pipeline call,
        so that the ranges span all its steps): checked against PyTorch on up to three of the recorded calls
        (first, middle, last); below ``min_snr_db`` that signature gets the plain conversion instead."""
        if self.observer is None:
            return
        ranges = dict(self.observer.ranges)
        pending = dict(self.calibrating)
        self._stop_calibrating()
        for call_signature, samples in pending.items():
            if not samples.count:
                continue
            args, kwargs, reference = samples.checked()[0]
            try:
                with torch.no_grad():
                    accepted = self._int8_build(call_signature, samples, ranges)
            except Exception as error:  # never an error at call time: this signature gets the plain conversion
                self.events.append(f"int8 conversion failed ({type(error).__name__}: {_first_line(error)})")
                accepted = False
            if not accepted:
                with torch.no_grad():
                    self._prepare(call_signature, args, kwargs, reference)

    def describe(self) -> str:
        if self.int8_keep_float is not None and not self.events:
            return (
                f"{self.label}: waiting for its first pipeline call, which runs PyTorch while it calibrates int8 "
                "and converts at its end (a minute or more for a UNet; the on-disk cache spares a new process both)"
            )
        if not self.events:
            return (
                f"{self.label}: waiting for its first call, which runs PyTorch while OpenVINO converts and compiles "
                "it (tens of seconds for a UNet; the on-disk cache spares a new process the conversion)"
            )
        return "; ".join(f"{self.label}: {event}" for event in self.events)

    def forget(self) -> None:
        """Drop every compiled model (their weights' memory with them) and stop calibrating."""
        self.programs.clear()
        self._stop_calibrating()

    # ---- int8: calibrating, converting, loading

    def _int8_from_cache_or_calibrate(self, call_signature: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        entry = self._key(self._int8_signature(call_signature))
        refused = refused_snr_db(self.root, entry)
        if refused is not None and refused < self.min_snr_db:
            self.events.append(
                f"int8 skipped for {_shape_label(args)}: refused at {refused:.1f} dB in an earlier process "
                f"(floor {self.min_snr_db:g} dB)"
            )
            return self._prepare(call_signature, args, kwargs)
        answer, model = self._from_disk(call_signature, entry, args, kwargs, int8=True)
        if answer is not None:
            return answer
        if model is None:
            self.calibrating[call_signature] = CalibrationCalls()
            return self._calibrate(call_signature, args, kwargs)
        reference = self.original(*args, **kwargs)
        started = time.perf_counter()
        try:
            program = self._compile(model, args, kwargs, reference)
            snr = snr_db(reference, program(args, kwargs))
        except Exception as error:  # this signature gets the plain conversion
            self.events.append(f"cached int8 model failed ({type(error).__name__}: {_first_line(error)})")
            return self._prepare(call_signature, args, kwargs, reference)
        how = f"int8 read from the on-disk cache, ready in {time.perf_counter() - started:.1f} s"
        if not self._accept(call_signature, program, args, how, snr, int8=True):
            return self._prepare(call_signature, args, kwargs, reference)
        self._remember_acceptance(entry, snr, program)
        return reference

    def _calibrate(self, call_signature: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """PyTorch's answer, with the layers' input ranges observed and the call kept to check int8 against."""
        if self.observer is None:
            self.observer = RangeObserver(self.module, self.int8_keep_float or ())
        output = self.original(*args, **kwargs)
        self.calibrating[call_signature].add((detached(args), detached(kwargs), detached(output)))
        return output

    def _int8_build(
        self, call_signature: str, samples: CalibrationCalls, ranges: dict[str, tuple[float, float]]
    ) -> bool:
        if not ranges:
            self.events.append("int8: no convolution or linear layer large enough to quantize")
            return False
        started = time.perf_counter()
        checked: list[_Sample] = samples.checked()
        model, program, snr = self._int8_model(checked, ranges)
        layers = len(ranges)
        if not snr >= self.min_snr_db:
            # One more try with the layers that suffer most from int8 left at `precision`, chosen by each
            # layer's own output SNR on the middle checked call (a PyTorch call with hooks, no conversion).
            middle_args, middle_kwargs, _ = checked[len(checked) // 2]
            own = layer_snr_db(
                self.module, lambda: self.original(*middle_args, **middle_kwargs), ranges, self.int8_weight_bits
            )
            worst = sorted(own, key=own.__getitem__)[: max(1, round(KEEP_FLOAT_SHARE * len(ranges)))]
            self.events.append(
                f"int8 in all {layers} layers: {snr:.1f} dB SNR against PyTorch over {len(checked)} calls; "
                f"the {len(worst)} layers with the lowest own SNR ({own[worst[0]]:.1f}-{own[worst[-1]]:.1f} dB) "
                f"stay {self.precision}"
            )
            ranges = {name: span for name, span in ranges.items() if name not in worst}
            del model, program
            model, program, snr = self._int8_model(checked, ranges)
        ready = time.perf_counter() - started
        how = f"int8 in {len(ranges)} of {layers} layers (ranges from {samples.count} calls), ready in {ready:.0f} s"
        args = checked[0][0]
        if not self._accept(call_signature, program, args, how, snr, int8=True, calls=len(checked)):
            with contextlib.suppress(OSError):  # unwritable: the next process measures it again, no worse
                remember_refusal(self.root, self._key(self._int8_signature(call_signature)), snr)
            return False
        size = module_bytes(self.module)
        meta = {"snr_db": round(snr, 1), "int8_layers": len(ranges), "build_s": round(ready, 1)}
        entry = self._key(self._int8_signature(call_signature))
        try:
            refused = store(self.root, entry, model, meta, size)
        except Exception as error:  # an unwritable cache costs the next process a calibration, no more
            refused = f"not kept on disk ({type(error).__name__}: {_first_line(error)})"
        if refused:
            self.events.append(f"int8 model {refused}")
        else:
            self._remember_acceptance(entry, snr, program)
        return True

    def _int8_model(self, checked: list[_Sample], ranges: dict[str, tuple[float, float]]) -> tuple[Any, Program, float]:
        """The module converted with ``ranges``' layers in int8, compiled, and its SNR against PyTorch pooled
        over the ``checked`` calls. Not stored: only an accepted model goes to disk."""
        args, kwargs, reference = checked[0]
        with fake_quantized(self.module, ranges, self.int8_weight_bits):
            model = self._trace(args, kwargs)
        program = self._compile(model, args, kwargs, reference)
        wanted = [want for _, _, want in checked]
        return model, program, snr_db(wanted, [program(got_args, got_kwargs) for got_args, got_kwargs, _ in checked])

    def _int8_signature(self, call_signature: str) -> str:
        kept = ",".join(self.int8_keep_float or ())
        bits = "" if self.int8_weight_bits == 8 else f" weight_bits={self.int8_weight_bits}"  # 8: keys as before
        return f"{call_signature}|int8 keep_float={kept} min_elements={MIN_ELEMENTS_PER_CHANNEL}{bits}"

    def _stop_calibrating(self) -> None:
        if self.observer is not None:
            self.observer.close()
            self.observer = None
        self.calibrating.clear()

    # ---- converting, loading and checking

    def _prepare(
        self, call_signature: str, args: tuple[Any, ...], kwargs: dict[str, Any], reference: Any = None
    ) -> Any:
        loaded = None
        if reference is None and self.trust_tag:
            answer, loaded = self._from_disk(call_signature, self._key(call_signature), args, kwargs)
            if answer is not None:
                return answer
        if reference is None:
            reference = self.original(*args, **kwargs)  # this call's answer: PyTorch's, exactly
        started = time.perf_counter()
        try:
            model, how = self._converted(call_signature, args, kwargs, loaded)
            del loaded
            program = self._compile(model, args, kwargs, reference)
            del model  # the compiled model holds its own copy of the weights
            snr = snr_db(reference, program(args, kwargs))
        except Exception as error:  # never an error at call time: this signature stays in PyTorch
            self._refuse(call_signature, f"conversion failed ({type(error).__name__}: {_first_line(error)})")
            return reference
        how = f"{how}, ready in {time.perf_counter() - started:.1f} s"
        if self._accept(call_signature, program, args, how, snr):
            self._remember_acceptance(self._key(call_signature), snr, program)
        return reference

    def _from_disk(
        self, call_signature: str, entry: str, args: tuple[Any, ...], kwargs: dict[str, Any], *, int8: bool = False
    ) -> tuple[Any, Any]:
        """What the on-disk cache holds for ``entry``, for this call: ``(answer, None)`` where `_trusted`
        answers it, else ``(None, model)`` with the converted model read from disk (None: none is kept)."""
        started = time.perf_counter()
        note = accepted(self.root, entry, self.trust_tag) if self.trust_tag else None
        if note is not None and not note[0] >= self.min_snr_db:
            note = None
        blob = load_compiled(self.root, entry, self._compiled_setting()) if note is not None else None
        model = load(self.root, entry) if blob is None else None
        if blob is None and model is None:
            return None, None
        self.cache_hits += 1
        if note is not None:
            answer = self._trusted(
                call_signature, entry, note, blob if blob is not None else model, args, kwargs, started, int8=int8
            )
            if answer is not None:
                return answer, None
            if model is None:  # the compiled model failed: the converted one is checked against PyTorch
                model = load(self.root, entry)
        return None, model

    def _trusted(
        self,
        call_signature: str,
        entry: str,
        note: tuple[float, dict[str, Any]],
        source: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        started: float,
        *,
        int8: bool = False,
    ) -> Any:
        """This call's answer with no PyTorch call from ``source`` (the compiled model's blob, mapped, or the
        converted model, compiled now and then kept compiled), where ``note`` says this machine checked it
        against PyTorch and accepted it at this precision before, at or above today's floor; None on a
        failure or a non-finite output, and the caller checks it against PyTorch as usual. What it trusts:
        the same weights, call, method and OpenVINO version (the entry's key), compiled at the same precision
        on the same CPU class (the note's tag), computes what it computed when it was checked."""
        snr, outputs = note
        imported = isinstance(source, np.ndarray)
        try:
            spec, dtypes = layout_from_record(outputs)
            if imported:
                program = import_program(source, args, kwargs, self.precision, spec, dtypes)
            else:
                program = compile_program(source, args, kwargs, self.precision, spec, dtypes)
            answer = program(args, kwargs)
        except Exception as error:  # checked against PyTorch instead, as without the note
            self.events.append(f"cached model not trusted ({type(error).__name__}: {_first_line(error)})")
            return None
        if not all(torch.isfinite(leaf).all() for leaf in _pytree.tree_leaves(answer)):
            self.events.append(f"cached model not trusted for {_shape_label(args)}: a non-finite output")
            return None
        if not imported:
            self._keep_compiled(entry, program)
        self.programs[call_signature] = program
        self.openvino_calls += 1
        self.trusted += 1
        kind = f"{self.precision} with int8 layers" if int8 else self.precision
        what = "compiled model read" if imported else "read"
        self.events.append(
            f"OpenVINO {kind} for {_shape_label(args)}, {'int8 ' if int8 else ''}{what} from the on-disk cache, "
            f"ready in {time.perf_counter() - started:.1f} s; answered its first call without PyTorch: it kept "
            f"{snr:.1f} dB SNR against PyTorch when this machine checked it (floor {self.min_snr_db:g} dB)"
        )
        return answer

    def _keep_compiled(self, entry: str, program: Program) -> None:
        """Keep ``program`` as compiled in its cache entry (if the entry was kept), for `_trusted` in a new
        process: importing it takes under a second where compiling takes seconds. Skipped where RAM would not
        hold its export beside everything else (it is about as large as the weights)."""
        if ram_gb()[1] * GB < module_bytes(self.module) + COMPILED_HEADROOM_GB * GB:
            return
        with contextlib.suppress(OSError):  # not kept: the next process compiles, no worse than before
            store_compiled(self.root, entry, self._compiled_setting(), compiled_blob(program))

    def _compiled_setting(self) -> str:
        """What a compiled model depends on besides the entry and the CPU: precision, CPU class, threads."""
        return f"{self.trust_tag} threads={torch.get_num_threads()}"

    def _remember_acceptance(self, entry: str, snr: float, program: Program) -> None:
        """Note on the cache entry (if it was kept) that it passed here, for `_trusted` in a new process."""
        if not self.trust_tag:
            return
        outputs = layout_record(program)
        if outputs is None:  # an output type pytree cannot name: new processes check it against PyTorch
            return
        try:
            remember_acceptance(self.root, entry, self.trust_tag, snr, outputs)
        except OSError:  # not kept on disk, or unwritable: checked again next time, no worse
            return
        self._keep_compiled(entry, program)

    def _accept(
        self,
        call_signature: str,
        program: Program,
        args: tuple[Any, ...],
        how: str,
        snr: float,
        *,
        int8: bool = False,
        calls: int = 1,
    ) -> bool:
        """Keep ``program`` for the signature if it kept ``min_snr_db``; say what happened either way. A
        refused int8 program leaves the signature free for the plain conversion."""
        shape = _shape_label(args)
        on = "this call" if calls == 1 else f"{calls} of its calls, pooled"
        fidelity = f"{snr:.1f} dB SNR against PyTorch on {on} (floor {self.min_snr_db:g} dB)"
        if not snr >= self.min_snr_db:  # NaN (a non-finite output) is refused too
            if int8:
                self.events.append(f"int8 refused for {shape}: {fidelity}; converting without int8")
            else:
                self._refuse(call_signature, f"refused for {shape}: {fidelity}")
            return False
        self.programs[call_signature] = program
        kind = f"{self.precision} with int8 layers" if int8 else self.precision
        self.events.append(f"OpenVINO {kind} for {shape}, {how}; {fidelity}")
        return True

    def _converted(
        self, entry_signature: str, args: tuple[Any, ...], kwargs: dict[str, Any], loaded: Any = None
    ) -> tuple[Any, str]:
        """The converted model of this call's signature: ``loaded`` (already read from the on-disk cache and
        counted), else from the on-disk cache, else traced now (and stored)."""
        if loaded is not None:
            return loaded, "read from the on-disk cache"
        entry = self._key(entry_signature)
        started = time.perf_counter()
        model = load(self.root, entry)
        if model is not None:
            self.cache_hits += 1
            return model, f"read from the on-disk cache in {time.perf_counter() - started:.1f} s"
        model = self._trace(args, kwargs)
        converted = time.perf_counter() - started
        how = f"converted in {converted:.0f} s"
        size = module_bytes(self.module)
        try:
            refused = store(self.root, entry, model, {"convert_s": round(converted, 1)}, size)
        except OSError as error:  # an unwritable cache costs the next process a conversion, no more
            refused = f"not kept on disk ({type(error).__name__}: {_first_line(error)})"
        return model, how + (f", {refused}" if refused else "")

    def _trace(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """`convert` of the method at this call's static shapes (counted in `conversions`)."""
        model = convert(self.module, self.original, args, kwargs)
        self.conversions += 1
        return model

    def _compile(self, model: Any, args: tuple[Any, ...], kwargs: dict[str, Any], reference: Any) -> Program:
        """``model`` compiled for the CPU at this call's shapes, fed and shaped like the PyTorch method."""
        spec, dtypes = output_layout(reference, self.label)
        return compile_program(model, args, kwargs, self.precision, spec, dtypes)

    def _refuse(self, call_signature: str, reason: str) -> None:
        self.refused[call_signature] = reason
        self.events.append(f"{reason}; that signature runs PyTorch")
        warnings.warn(f"sdopt openvino_runtime: {self.label}: {reason}; that signature runs PyTorch", stacklevel=4)

    def _key(self, call_signature: str) -> str:
        if self._weights is None:
            self._weights = weights_hash(self.module)
        return key(self._weights, call_signature, f"{type(self.module).__qualname__}.{self.method}")


def _switches(module: torch.nn.Module) -> str:
    """The module's own ``use_*`` switches (the VAE's tiling, slicing, framewise decoding): each changes
    what its ``decode`` computes, and ``vae.enable_tiling()`` after conversion must not reuse the program."""
    return ",".join(f"{name}={value}" for name, value in sorted(vars(module).items()) if name.startswith("use_"))


def _without_generators(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The call with each random generator as a placeholder: a new generator object is not a new program (the
    VAE's decode takes one and draws nothing; a method that draws from it fails its first call's SNR check)."""
    return _pytree.tree_map(lambda leaf: "<generator>" if isinstance(leaf, torch.Generator) else leaf, (args, kwargs))


def _shape_label(args: tuple[Any, ...]) -> str:
    first = next((arg for arg in args if isinstance(arg, torch.Tensor)), None)
    return f"input {list(first.shape)}" if first is not None else "its inputs"


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else ""
