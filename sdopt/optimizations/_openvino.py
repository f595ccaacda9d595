"""One module method (the denoiser's ``forward``, the VAE's ``decode``) run by OpenVINO's CPU runtime.

`OpenVinoRunner` stands in for the method as an instance attribute. The first call at a new input
signature (shapes, dtypes, the other arguments' values) runs PyTorch, whose output is returned; on the
way, ``openvino.convert_model`` traces the method at that call's static shapes (or the converted model is
read from the on-disk cache), OpenVINO compiles it for the CPU, runs it on the same inputs and compares:
below ``min_snr_db`` that signature stays in PyTorch. Later calls at that signature run the compiled
model. Anything with gradients, sdopt's own verification calls and signatures beyond `MAX_PROGRAMS` run
PyTorch. Nothing here raises at call time: a failed conversion leaves that signature in PyTorch, with
the reason in `OpenVinoRunner.describe` and a warning.

diffusers has no OpenVINO path of its own (optimum-intel exports whole pipelines to its own classes);
this converts the pipeline's own modules in place, so everything else in the pipeline stays diffusers'.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils import _pytree

from sdopt.cache_dir import UntrustedCacheError, cache_root, check_trusted, sign, signed
from sdopt.footprint import GB
from sdopt.optimizations._program_keys import behaviour, identity, program_key, signature, weights_hash
from sdopt.verification import verifying

DEFAULT_CACHE_GB = 20.0
_DISK_RESERVE_GB = 4.0

MAX_PROGRAMS = 4
"""Compiled input signatures per method (a conversion takes ~40 s on SD1.5's UNet): beyond, PyTorch."""

_MODEL = "model.xml"
_WEIGHTS = "model.bin"
_META = "meta.json"
_MAC = "mac"


def default_root() -> Path:
    """``$SDOPT_CACHE_DIR/openvino``, else ``$XDG_CACHE_HOME/sdopt/openvino``, else ``~/.cache/sdopt/openvino``."""
    return cache_root("openvino")


class _Program:
    """A compiled OpenVINO model and how to feed it a call's arguments and shape its outputs like PyTorch's.

    Its inputs and outputs are float32 where the call's were bfloat16 or float16 (numpy has no bfloat16):
    they are widened on the way in and narrowed back to the dtypes PyTorch returned on the way out."""

    def __init__(
        self, compiled: Any, tensor_positions: list[int], output_spec: Any, output_dtypes: list[torch.dtype]
    ) -> None:
        self.compiled = compiled
        self.tensor_positions = tensor_positions
        self.output_spec = output_spec
        self.output_dtypes = output_dtypes

    def __call__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        leaves = _pytree.tree_leaves((args, kwargs))
        inputs = [_widened(leaves[position]).detach().cpu().contiguous().numpy() for position in self.tensor_positions]
        results = self.compiled(inputs)
        outputs = [torch.from_numpy(results[index]).to(dtype) for index, dtype in enumerate(self.output_dtypes)]
        return _pytree.tree_unflatten(outputs, self.output_spec)


class _Flat(torch.nn.Module):
    """``method`` as a function of the call's tensors only (what ``convert_model`` traces); the other
    arguments are the call's own, baked in (they are part of the signature). Reduced-precision inputs
    arrive in float32 and are narrowed to the call's dtypes inside the trace; floating outputs leave
    in float32 (see `_Program`)."""

    def __init__(self, module: torch.nn.Module, method: Callable[..., Any], leaves: list[Any], spec: Any) -> None:
        super().__init__()
        self.inner = module  # registered, so the trace sees its weights as the module's
        self.method = method
        self.leaves = leaves
        self.spec = spec
        self.positions = [index for index, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        leaves = list(self.leaves)
        for position, tensor in zip(self.positions, tensors, strict=True):
            leaves[position] = tensor.to(self.leaves[position].dtype)
        args, kwargs = _pytree.tree_unflatten(leaves, self.spec)
        return tuple(_widened(output) for output in _pytree.tree_leaves(self.method(*args, **kwargs)))


def _widened(tensor: torch.Tensor) -> torch.Tensor:
    """float32 for a bfloat16 or float16 tensor (what crosses into and out of OpenVINO), else itself."""
    return tensor.float() if tensor.dtype in (torch.bfloat16, torch.float16) else tensor


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
    ) -> None:
        self.module = module
        self.method = method
        self.original = original
        self.precision = precision
        self.min_snr_db = min_snr_db
        self.root = root
        self.label = label
        self.programs: dict[str, _Program] = {}
        self.refused: dict[str, str] = {}
        self.events: list[str] = []
        self.conversions = 0
        self.cache_hits = 0
        self.openvino_calls = 0
        self._identity: tuple[tuple[int, int], ...] = ()
        self._weights: str | None = None

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
        if len(self.programs) + len(self.refused) >= MAX_PROGRAMS:
            self._refuse(call_signature, f"more than {MAX_PROGRAMS} input signatures (shapes or argument values)")
            return self.original(*args, **kwargs)
        return self._prepare(call_signature, args, kwargs)

    def describe(self) -> str:
        if not self.events:
            return (
                f"{self.label}: waiting for its first call, which runs PyTorch while OpenVINO converts and compiles "
                "it (tens of seconds for a UNet; the on-disk cache spares a new process the conversion)"
            )
        return "; ".join(f"{self.label}: {event}" for event in self.events)

    def forget(self) -> None:
        """Drop every compiled model (their weights' memory with them)."""
        self.programs.clear()

    # ---- converting, loading and checking

    def _prepare(self, call_signature: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        reference = self.original(*args, **kwargs)  # this call's answer: PyTorch's, exactly
        started = time.perf_counter()
        try:
            program, how = self._program(call_signature, args, kwargs, reference)
            snr = snr_db(reference, program(args, kwargs))
        except Exception as error:  # never an error at call time: this signature stays in PyTorch
            self._refuse(call_signature, f"conversion failed ({type(error).__name__}: {_first_line(error)})")
            return reference
        shape = _shape_label(args)
        fidelity = f"{snr:.1f} dB SNR against PyTorch on this call (floor {self.min_snr_db:g} dB)"
        if not snr >= self.min_snr_db:  # NaN (a non-finite output) is refused too
            self._refuse(call_signature, f"refused for {shape}: {fidelity}")
            return reference
        self.programs[call_signature] = program
        self.events.append(
            f"OpenVINO {self.precision} for {shape}, {how}, ready in {time.perf_counter() - started:.1f} s; {fidelity}"
        )
        return reference

    def _program(
        self, call_signature: str, args: tuple[Any, ...], kwargs: dict[str, Any], reference: Any
    ) -> tuple[_Program, str]:
        import openvino as ov

        leaves, spec = _pytree.tree_flatten((args, kwargs))
        tensors = [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]
        output_leaves, output_spec = _pytree.tree_flatten(reference)
        if not output_leaves or not all(isinstance(leaf, torch.Tensor) for leaf in output_leaves):
            raise TypeError(f"{self.label} returns something other than tensors")
        entry = self._key(call_signature)
        started = time.perf_counter()
        model = _load(self.root, entry)
        if model is None:
            flat = _Flat(self.module, self.original, leaves, spec)
            modes = [(module, module.training) for module in self.module.modules()]
            try:
                with warnings.catch_warnings():
                    # Branches on values are baked in for this signature; its output is checked against PyTorch.
                    warnings.simplefilter("ignore", torch.jit.TracerWarning)
                    example = tuple(_widened(tensor) for tensor in tensors)
                    model = ov.convert_model(flat, example_input=example, share_weights=_shareable(self.module))
            finally:
                for module, training in modes:  # convert_model puts the traced module in eval mode
                    module.training = training
            self.conversions += 1
            converted = time.perf_counter() - started
            how = f"converted in {converted:.0f} s"
            size = sum(tensor.numel() * tensor.element_size() for tensor in self.module.parameters())
            try:
                refused = _store(self.root, entry, model, {"convert_s": round(converted, 1)}, size)
            except OSError as error:  # an unwritable cache costs the next process a conversion, no more
                refused = f"not kept on disk ({type(error).__name__}: {_first_line(error)})"
            how += f", {refused}" if refused else ""
        else:
            self.cache_hits += 1
            how = f"read from the on-disk cache in {time.perf_counter() - started:.1f} s"
        model.reshape({index: ov.PartialShape(list(tensor.shape)) for index, tensor in enumerate(tensors)})
        config = {"INFERENCE_PRECISION_HINT": self.precision, "INFERENCE_NUM_THREADS": torch.get_num_threads()}
        compiled = ov.Core().compile_model(model, "CPU", config)
        del model  # the compiled model holds its own copy of the weights
        positions = [index for index, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]
        return _Program(compiled, positions, output_spec, [leaf.dtype for leaf in output_leaves]), how

    def _refuse(self, call_signature: str, reason: str) -> None:
        self.refused[call_signature] = reason
        self.events.append(f"{reason}; that signature runs PyTorch")
        warnings.warn(f"sdopt openvino_runtime: {self.label}: {reason}; that signature runs PyTorch", stacklevel=4)

    def _key(self, call_signature: str) -> str:
        if self._weights is None:
            self._weights = weights_hash(self.module)
        return key(self._weights, call_signature, f"{type(self.module).__qualname__}.{self.method}")


def key(weights: str, call_signature: str, method: str) -> str:
    """The cache key of one converted model: the weights, the call (with the modules' `behaviour`), the
    method, and the versions of everything that shaped the trace."""
    import openvino

    facts = {"weights": weights, "signature": call_signature, "method": method, "openvino": openvino.__version__}
    return program_key(facts)


def _load(root: Path, entry: str) -> Any:
    """The converted model stored under ``entry``, or None (absent, unreadable or not signed by this user)."""
    import openvino as ov

    folder = root / entry
    files = (folder / _MODEL, folder / _WEIGHTS, folder / _META)
    if not all(path.is_file() for path in files):
        return None
    try:
        check_trusted(folder)
    except UntrustedCacheError as error:  # not ours to remove either
        warnings.warn(f"sdopt openvino_runtime: ignoring cache entry {folder} ({error})", stacklevel=5)
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


def _store(root: Path, entry: str, model: Any, meta: dict[str, Any], size: int) -> str:
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
    if free - size < _DISK_RESERVE_GB * GB:
        return f"not kept on disk: {free / GB:.1f} GB free there, and {_DISK_RESERVE_GB:g} GB stay free"
    staging = Path(tempfile.mkdtemp(prefix=f".{entry}-", dir=root))
    try:
        ov.save_model(model, str(staging / _MODEL), compress_to_fp16=False)
        (staging / _META).write_text(json.dumps(meta, sort_keys=True), encoding="utf-8")
        (staging / _MAC).write_text(sign(staging / _MODEL, staging / _WEIGHTS, staging / _META))
        with contextlib.suppress(OSError):  # another process stored the same entry first: theirs is as good
            staging.rename(root / entry)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _evict(root, cap, keep=entry)
    return ""


def _evict(root: Path, cap: float, keep: str) -> None:
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


def snr_db(reference: Any, output: Any) -> float:
    """Signal-to-noise ratio of ``output`` against ``reference`` over all their tensors, in dB."""
    signal = noise = 0.0
    for want, got in zip(_pytree.tree_leaves(reference), _pytree.tree_leaves(output), strict=True):
        signal += want.double().pow(2).sum().item()
        noise += (got.double() - want.double()).pow(2).sum().item()
    if not (math.isfinite(signal) and math.isfinite(noise)):
        return math.nan  # a non-finite output (or reference) is no measure of agreement
    if noise == 0.0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf


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


def _shareable(module: torch.nn.Module) -> bool:
    """Whether the converted model may share the module's weight memory. Not for reduced-precision weights
    stored non-contiguously (channels_last convolutions): OpenVINO 2026.4 crashed the process (SIGSEGV)
    saving such a model (measured: SD1.5's UNet in bfloat16 after channels_last); the
    converted model then copies them (contiguous), for the conversion's duration."""
    return all(
        tensor.is_contiguous() or tensor.dtype == torch.float32 for tensor in module.parameters() if tensor.dim() > 1
    )
