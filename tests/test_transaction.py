"""A fault at any point of any apply leaves the pipeline exactly as it was.

Faults are injected with a trace function: the apply of one optimization is run once to count the
lines it executes (in sdopt, diffusers and accelerate code), then again and again with an exception
raised at one of those lines, from the first to the last. Whatever the apply had done by then,
``optimize`` must report the step failed and leave every module, tensor, processor, hook and
attribute as it was (``state_differences``), and the pipeline must still produce its image.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from safetensors.torch import save_file

from sdopt import detect, optimize, registry
from sdopt.optimizations.distill_lora import random_lora
from sdopt.testing import (
    fake_capabilities,
    pipeline_state,
    run_pipeline,
    state_differences,
    tiny_autoencoder_tiny,
    tiny_pipeline,
)

_TRACED = ("/sdopt/", "/diffusers/", "/accelerate/")
_POINTS = 16  # faults per optimization, spread over its executed lines


class InjectedFault(Exception):
    pass


def _traced_apply(
    apply: Callable[..., Any], fault_at: int | None, counter: list[int], fault: type[BaseException] = InjectedFault
) -> Callable[..., Any]:
    def local(frame: Any, event: str, arg: Any) -> Any:
        if event == "line":
            counter[0] += 1
            if fault_at is not None and counter[0] == fault_at:
                raise fault(f"fault at line event {fault_at}")
        return local

    def global_(frame: Any, event: str, arg: Any) -> Any:
        return local if any(part in frame.f_code.co_filename for part in _TRACED) else None

    def run(*args: Any, **kwargs: Any) -> Any:
        sys.settrace(global_)
        try:
            return apply(*args, **kwargs)
        finally:
            sys.settrace(None)

    return run


_OFFLOAD = {"device": "cpu", "only_if_needed": False}
# (optimization, tiny family, capabilities profile ("here": this machine; "+name": with package name),
# options); "<taesd>", "<fp16-fix>" and "<lora>" stand for local models saved by the fixture below.
CASES = [
    ("half_precision", "sd", "cpu-amx", {}),
    ("half_precision", "sdxl", "cpu-amx", {"dtype": "float16"}),
    ("channels_last", "sd", "cpu", {}),
    ("weight_storage", "sd", "cpu", {}),
    ("attention_slicing", "sd", "cpu", {}),
    ("attention_backend", "flux", "cpu", {"backend": "_native_math"}),
    ("fuse_qkv", "flux", "cpu", {}),
    ("fuse_qkv", "sd", "cpu", {}),
    ("tiny_vae", "sd", "cpu", {"source": "<taesd>"}),
    ("vae_fp16_fix", "sdxl", "t4-16gb", {"source": "<fp16-fix>"}),
    ("vae_slicing", "sd", "cpu", {}),
    ("vae_tiling", "sd", "cpu", {"tile_size": 32}),
    ("model_offload", "sd", "t4-16gb", _OFFLOAD),
    ("group_offload", "sd", "t4-16gb", {**_OFFLOAD, "use_stream": False}),
    ("torch_compile", "sd", "cpu-amx", {"accept_cpu_first_call": True}),
    ("quantize_int8", "sd", "cpu", {"min_features": 0}),
    ("distill_lora", "sd", "cpu", {"source": "<lora>"}),
    ("static_int8", "sd", "cpu-amx+torchao", {}),
    ("openvino_runtime", "sd", "cpu-avx2+openvino", {}),
    ("quantize_4bit", "sd", "here", {}),
    ("scheduler", "sd", "cpu", {}),
    ("step_budget", "sd", "cpu", {"steps": 4}),
    ("guidance", "sd", "cpu", {}),
    ("resolution", "sd", "cpu", {}),
    ("feature_cache", "sd", "cpu", {}),
    ("feature_cache", "flux", "cpu", {}),
]


@pytest.fixture(scope="module")
def local_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    taesd = tmp_path_factory.mktemp("taesd")
    tiny_autoencoder_tiny(latent_channels=4).save_pretrained(taesd)
    fp16_fix = tmp_path_factory.mktemp("vae-fp16-fix")
    tiny_pipeline("sdxl").vae.save_pretrained(fp16_fix)
    lora = tmp_path_factory.mktemp("lora")
    save_file(random_lora(tiny_pipeline("sd").unet, rank=4, scale=0.05), str(lora / "pytorch_lora_weights.safetensors"))
    return {"<taesd>": str(taesd), "<fp16-fix>": str(fp16_fix), "<lora>": str(lora)}


def test_every_optimization_has_a_fault_injection_case() -> None:
    # quantize_fp8 needs float8 tensor cores (sm_89+) to apply: its torchao path (shared with quantize_int8's
    # torchao backend) is checked with a quantizer that raises half-way in tests/optimizations/test_quantize_fp8.py.
    without_cpu_apply = {"sequential_offload", "sdpa", "xformers", "quantize_fp8"}
    assert {name for name, *_ in CASES} >= set(registry.names()) - without_cpu_apply


def _apply_of(optimization: Any) -> Callable[..., Any]:
    return type(optimization).apply.__get__(optimization)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "family", "profile", "options"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_a_fault_anywhere_in_an_apply_changes_nothing(name, family, profile, options, local_models, monkeypatch):
    profile, _, package = profile.partition("+")  # "profile+package": a fake machine with that package usable
    caps = detect() if profile == "here" else fake_capabilities(profile, packages={package: True} if package else None)
    options = {
        key: local_models.get(value, value) if isinstance(value, str) else value for key, value in options.items()
    }
    optimization = registry.get(name)
    pipe = tiny_pipeline(family)
    expected = run_pipeline(pipe, family)
    before = pipeline_state(pipe)
    extra = [{"name": name, **options}]

    optimize(pipe, tier=None, extra=extra, caps=caps).undo()  # lazy imports and set-up happen once, untraced
    counter = [0]
    monkeypatch.setattr(optimization, "apply", _traced_apply(_apply_of(optimization), None, counter))
    report = optimize(pipe, tier=None, extra=extra, caps=caps)
    assert [d.name for d in report.applied] == [name], report
    report.undo()
    lines = counter[0]
    assert lines > 0

    points = sorted({1, lines, *np.linspace(1, lines, _POINTS).round().astype(int).tolist()})
    faults = 0
    for point in points:
        counter[0] = 0
        monkeypatch.setattr(optimization, "apply", _traced_apply(_apply_of(optimization), point, counter))
        report = optimize(pipe, tier=None, extra=extra, caps=caps)
        if report.failed:  # a later run may execute fewer lines (lazy set-up done): then it applies
            assert [d.name for d in report.failed] == [name] and "InjectedFault" in report.failed[0].reason
            faults += 1
        else:
            report.undo()
        differences = state_differences(before, pipeline_state(pipe))
        assert differences == [], f"{name}: fault at line {point} of {lines} left {differences[:5]}"
    assert faults >= len(points) - 2
    assert np.array_equal(run_pipeline(pipe, family), expected)


_QUICK_CTRL_C = ("half_precision", "fuse_qkv", "quantize_int8", "step_budget")
# Every case; those outside the quick four run with the slow tests (CI runs them all).
_CTRL_C_CASES = [
    pytest.param(*case, id=f"{case[0]}-{case[1]}", marks=() if case[0] in _QUICK_CTRL_C else pytest.mark.slow)
    for case in CASES
]


def _case(profile: str, options: dict[str, Any], local_models: dict[str, str]) -> tuple[Any, dict[str, Any]]:
    profile, _, package = profile.partition("+")  # "profile+package": a fake machine with that package usable
    caps = detect() if profile == "here" else fake_capabilities(profile, packages={package: True} if package else None)
    options = {
        key: local_models.get(value, value) if isinstance(value, str) else value for key, value in options.items()
    }
    return caps, options


@pytest.mark.parametrize(("name", "family", "profile", "options"), _CTRL_C_CASES)
def test_ctrl_c_anywhere_in_an_apply_leaves_the_pipeline_as_it_was_and_propagates(
    name, family, profile, options, local_models, monkeypatch
):
    # A step applied before the interrupted one (channels_last) is rolled back too, and nothing is reported:
    # the interrupt reaches the caller, with the pipeline exactly as it was.
    caps, options = _case(profile, options, local_models)
    optimization = registry.get(name)
    pipe = tiny_pipeline(family)
    before = pipeline_state(pipe)
    extra = [{"name": name, **options}, "channels_last"] if name != "channels_last" else [{"name": name, **options}]
    optimize(pipe, tier=None, extra=extra, caps=caps).undo()  # lazy set-up once, untraced
    counter = [0]
    monkeypatch.setattr(optimization, "apply", _traced_apply(_apply_of(optimization), None, counter))
    optimize(pipe, tier=None, extra=extra, caps=caps).undo()
    lines = counter[0]
    for point in sorted({1, lines, *np.linspace(1, lines, 6).round().astype(int).tolist()}):
        counter[0] = 0
        traced = _traced_apply(_apply_of(optimization), point, counter, KeyboardInterrupt)
        monkeypatch.setattr(optimization, "apply", traced)
        with pytest.raises(KeyboardInterrupt):
            optimize(pipe, tier=None, extra=extra, caps=caps)
        assert state_differences(before, pipeline_state(pipe)) == [], f"{name}: Ctrl-C at line {point} of {lines}"


@pytest.mark.parametrize(("name", "family", "profile", "options"), _CTRL_C_CASES)
def test_ctrl_c_anywhere_in_an_undo_leaves_the_report_live_and_a_retry_restores_exactly(
    name, family, profile, options, local_models
):
    caps, options = _case(profile, options, local_models)
    pipe = tiny_pipeline(family)
    run_pipeline(pipe, family)  # lazily created state first
    before = pipeline_state(pipe)
    extra = [{"name": name, **options}]
    report = optimize(pipe, tier=None, extra=extra, caps=caps)
    assert [d.name for d in report.applied] == [name], report
    stack = report._undo_stack
    counter = [0]
    ((label, undo),) = stack._entries
    stack._entries[0] = (label, _traced_apply(undo, None, counter))
    report.undo()
    lines = counter[0]
    assert state_differences(before, pipeline_state(pipe)) == []
    for point in sorted({1, lines, *np.linspace(1, lines, 6).round().astype(int).tolist()}):
        report = optimize(pipe, tier=None, extra=extra, caps=caps)
        stack = report._undo_stack
        ((label, undo),) = stack._entries
        counter[0] = 0
        stack._entries[0] = (label, _traced_apply(undo, point, counter, KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            report.undo()
        assert report.undoable, f"{name}: Ctrl-C at line {point} of {lines} of its undo"
        report.undo()  # the retry finishes the job
        differences = state_differences(before, pipeline_state(pipe))
        assert differences == [], f"{name}: Ctrl-C at line {point} of {lines} of its undo left {differences[:5]}"


def test_ctrl_c_inside_undo_leaves_the_report_live_and_a_retry_restores_exactly(monkeypatch) -> None:
    pipe = tiny_pipeline("sd")
    before = pipeline_state(pipe)
    report = optimize(pipe, tier=None, extra=["fuse_qkv", "channels_last"], caps=fake_capabilities("cpu"))
    stack = report._undo_stack
    assert stack is not None and stack.names() == ["channels_last", "fuse_qkv"]
    name, oldest_undo = stack._entries[0]  # the step applied first: its undo runs last
    calls = [0]

    def interrupted_once() -> None:
        calls[0] += 1
        if calls[0] == 1:
            raise KeyboardInterrupt
        oldest_undo()

    stack._entries[0] = (name, interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        report.undo()  # fuse_qkv was undone, channels_last's undo was interrupted
    assert report.undoable and stack.names() == ["channels_last"]
    report.undo()
    assert not report.undoable and state_differences(before, pipeline_state(pipe)) == []


def test_a_replaced_tensor_in_an_unchanged_sized_dict_is_put_back() -> None:
    # Casting a buffer replaces the tensor object under the same name; comparing the dicts with ==
    # would compare tensors element-wise and raise instead of restoring.
    import torch

    from sdopt.transaction import record

    pipe = tiny_pipeline("sd")
    before = pipeline_state(pipe)
    restore = record(pipe)
    with_buffers = next(m for m in pipe.text_encoder.modules() if m._buffers)
    for name, buffer in list(with_buffers._buffers.items()):
        with_buffers._buffers[name] = buffer.clone()
    pipe.unet.conv_in.weight = torch.nn.Parameter(pipe.unet.conv_in.weight.detach().half())
    restore()
    assert state_differences(before, pipeline_state(pipe)) == []
