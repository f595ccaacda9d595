"""Loading: ``sdopt.load`` (load a pipeline with the options its plan implies, then optimize it), and
the two rules every command that loads a pipeline follows: built-in architectures get random-weight
stand-ins of replacement models (`stand_ins_for`), and a pipeline goes on the device unless its
plan offloads (`place`)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Literal, NamedTuple

from sdopt.api import optimize, plan
from sdopt.capabilities import Capabilities, detect
from sdopt.planning import ExtraItem
from sdopt.report import Report
from sdopt.simulation.architectures import REAL_ARCHES, TINY_ARCHES
from sdopt.tiers import DEFAULT_TIER, resolve_tier
from sdopt.weights import stand_ins


class Loaded(NamedTuple):
    """What `load` returns: the optimized pipeline and the report of what was done."""

    pipe: Any
    report: Report


def load(
    model: str | type,
    path: str | None = None,
    *,
    tier: str | None = DEFAULT_TIER,
    exclude: Iterable[str] = (),
    extra: Iterable[ExtraItem] = (),
    caps: Capabilities | None = None,
    quantize: Literal["4bit"] | None = None,
    verify: bool = True,
    memory_budget: float | str | None = None,
    **from_pretrained_kwargs: Any,
) -> Loaded:
    """Load a pipeline in the dtype the tier would give it, with low CPU memory use, then optimize.

    ``model`` is a hub id or local directory (loaded with ``DiffusionPipeline.from_pretrained``),
    or a pipeline class followed by ``path``. Load-time choices, each overridable through
    ``from_pretrained_kwargs``: ``torch_dtype`` = the device's half dtype when the tier uses
    ``half_precision`` (SDXL's VAE stays float32 under float16), ``variant="fp16"`` when a
    local directory has fp16 weight files, ``low_cpu_mem_usage=True``. Loading in the target
    dtype means the report cannot undo that cast (the float32 weights were never in memory).
    The dtype goes in as ``dtype`` (diffusers >= 0.42 deprecates ``torch_dtype``, which older ones need).

    Unless the plan offloads (the offload places each component itself), the pipeline is moved to
    the planned device before it is optimized. ``verify`` (default on) makes one minimal real call
    inside the transaction and rolls back the step that breaks it (see `sdopt.verification`).
    ``memory_budget`` ("6GB") caps the device memory the plan may use, as in `sdopt.optimize`.

    ``quantize="4bit"`` loads the denoiser's weights as bitsandbytes NF4: on CUDA straight from
    the files through diffusers' ``PipelineQuantizationConfig`` (the full-precision weights never
    reach the GPU; not undoable), elsewhere (diffusers' bitsandbytes loader needs a GPU) by the
    ``quantize_4bit`` step after loading. Needs ``pip install sdopt[bnb]``.

    Examples:
        >>> import tempfile
        >>> from sdopt import load
        >>> from sdopt.testing import tiny_pipeline, fake_capabilities
        >>> path = tempfile.mkdtemp()
        >>> tiny_pipeline("sd").save_pretrained(path)
        >>> pipe, report = load(path, tier="balanced", caps=fake_capabilities("cpu-amx"))
        >>> pipe.unet.dtype
        torch.bfloat16
    """
    import torch

    if isinstance(model, type):
        if path is None:
            raise TypeError(f"load({model.__name__}, path): a pipeline class needs the path or hub id to load")
        pipeline_cls: Any = model
        source = path
    else:
        from diffusers import DiffusionPipeline

        if path is not None:
            raise TypeError("pass either a hub id/path, or a pipeline class and a path")
        pipeline_cls, source = DiffusionPipeline, model
    caps = caps if caps is not None else detect()
    exclude = tuple(exclude)
    kwargs = dict(from_pretrained_kwargs)
    kwargs.setdefault("low_cpu_mem_usage", True)
    wants_half = tier is not None and "half_precision" in resolve_tier(tier).names() and "half_precision" not in exclude
    dtype_key = _dtype_keyword()
    if wants_half and caps.half_dtype != "float32" and not {"torch_dtype", "dtype"} & set(kwargs):
        dtype = getattr(torch, caps.half_dtype)
        if caps.half_dtype == "float16" and _pipeline_class_name(source).startswith("StableDiffusionXL"):
            kwargs[dtype_key] = {"default": dtype, "vae": torch.float32}
        else:
            kwargs[dtype_key] = dtype
        if caps.half_dtype == "float16" and "variant" not in kwargs and _has_fp16_variant(source):
            kwargs["variant"] = "fp16"
    extra = list(extra)
    if quantize is not None:
        if quantize != "4bit":
            raise ValueError(f"quantize must be '4bit' or None, got {quantize!r}")
        if not caps.package_usable("bitsandbytes"):
            raise ImportError("quantize='4bit' needs bitsandbytes: pip install sdopt[bnb]")
        if caps.device == "cuda" and "quantization_config" not in kwargs:
            kwargs["quantization_config"] = _four_bit_config(source, kwargs.get(dtype_key, kwargs.get("torch_dtype")))
        else:
            extra.append("quantize_4bit")
    pipe = pipeline_cls.from_pretrained(source, **kwargs)

    place(pipe, caps, tier=tier, exclude=exclude, extra=extra, memory_budget=memory_budget)
    report = optimize(
        pipe, tier=tier, exclude=exclude, extra=extra, caps=caps, verify=verify, memory_budget=memory_budget
    )
    return Loaded(pipe, report)


def place(pipe: Any, caps: Capabilities, **how: Any) -> bool:
    """Put ``pipe`` on ``caps.device`` unless optimizing it as ``how`` says (`sdopt.plan`'s keyword
    arguments: ``tier``, ``preset``, ``exclude``, ``extra``, ``memory_budget``, ``quality``) would
    offload: an offload places each component itself. Returns whether the pipeline is on the device.

    Examples:
        >>> from sdopt.loading import place
        >>> from sdopt.testing import tiny_pipeline, fake_capabilities
        >>> place(tiny_pipeline("sd"), fake_capabilities("cpu"), tier="balanced")
        True
    """
    if caps.device == "cpu":
        return True
    if plan(pipe, caps=caps, **how).offloads:
        return False
    pipe.to(caps.device)
    return True


def stand_ins_for(source: str) -> AbstractContextManager[Any]:
    """Inside it, a built-in architecture (``sd15``, ``tiny-sd``...: random weights) gets random-weight
    stand-ins of the published replacement models (TAESD, the fp16-fix VAE...) that are not cached, so
    fast and ultra are timed with the parts a user with a network gets; a user's model gets none."""
    return stand_ins() if source in REAL_ARCHES or source in TINY_ARCHES else contextlib.nullcontext()


def _dtype_keyword() -> str:
    """``dtype`` where diffusers takes it (0.42 deprecates ``torch_dtype``), else ``torch_dtype``."""
    import diffusers
    from packaging.version import Version

    return "dtype" if Version(diffusers.__version__.split("+")[0]) >= Version("0.42") else "torch_dtype"


def _four_bit_config(source: str, torch_dtype: Any) -> Any:
    """diffusers' load-time NF4 config for the pipeline's denoiser."""
    import torch
    from diffusers.quantizers import PipelineQuantizationConfig

    compute = torch_dtype.get("default") if isinstance(torch_dtype, dict) else torch_dtype
    components: list[str] = [name for name in ("unet", "transformer", "prior") if name in _model_index(source)]
    quant_kwargs: dict[str, Any] = {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_compute_dtype": compute or torch.bfloat16,
    }
    return PipelineQuantizationConfig(
        quant_backend="bitsandbytes_4bit",
        quant_kwargs=quant_kwargs,
        components_to_quantize=components,
    )


def _model_index(source: str) -> dict[str, Any]:
    index = Path(source) / "model_index.json"
    try:
        if index.exists():
            return dict(json.loads(index.read_text()))
        from diffusers import DiffusionPipeline

        return dict(DiffusionPipeline.load_config(source))
    except Exception:  # an unreadable index costs only load-time special cases; loading will say more
        return {}


def _pipeline_class_name(source: str) -> str:
    return str(_model_index(source).get("_class_name", ""))


def _has_fp16_variant(source: str) -> bool:
    root = Path(source)
    return root.is_dir() and any(".fp16." in file.name for file in root.rglob("*") if file.is_file())
