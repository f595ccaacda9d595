"""sdpa, attention_backend, xformers: one attention strategy per denoiser, each real or skipped."""

from __future__ import annotations

import numpy as np
import pytest

from sdopt import optimize, plan
from sdopt.testing import fake_capabilities, run_pipeline, tiny_pipeline, zoo_pipeline
from tests.helpers import Snapshot


def _processor_classes(model) -> set[str]:
    return {type(m.processor).__name__ for m in model.modules() if hasattr(m, "processor") and m.processor}


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_sdpa_replaces_classic_processors_and_restores_them(family: str, cpu_caps) -> None:
    from diffusers.models.attention_processor import AttnProcessor

    pipe = tiny_pipeline(family)
    pipe.unet.set_attn_processor(AttnProcessor())
    snapshot = Snapshot(pipe, family)
    report = optimize(pipe, tier=None, extra=["sdpa"], caps=cpu_caps)
    assert _processor_classes(pipe.unet) == {"AttnProcessor2_0"}
    np.testing.assert_allclose(run_pipeline(pipe, family), snapshot.output, atol=1e-4)
    report.undo()
    assert _processor_classes(pipe.unet) == {"AttnProcessor"}
    snapshot.assert_identical()


def test_sdpa_is_already_active_on_fresh_pipelines(family: str, cpu_caps) -> None:
    result = plan(tiny_pipeline(family), tier=None, extra=["sdpa"], caps=cpu_caps)
    assert result.steps == [] and result.skipped[0].reason == "already active"


def test_attention_backend_sets_processors_and_restores_the_process_wide_backend(cpu_caps) -> None:
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    pipe = tiny_pipeline("flux")
    snapshot = Snapshot(pipe, "flux")
    before = _AttentionBackendRegistry._active_backend
    report = optimize(pipe, tier=None, extra=[{"name": "attention_backend", "backend": "_native_math"}], caps=cpu_caps)
    backends = {str(m.processor._attention_backend) for m in pipe.transformer.modules() if hasattr(m, "processor")}
    assert backends == {"AttentionBackendName._NATIVE_MATH"}
    # The process-wide backend is not left changed while optimized (nor forever with undoable=False).
    assert _AttentionBackendRegistry._active_backend == before
    np.testing.assert_allclose(run_pipeline(pipe, "flux"), snapshot.output, atol=1e-4)
    report.undo()
    assert _AttentionBackendRegistry._active_backend == before
    snapshot.assert_identical()
    # A second, untouched Flux pipeline still runs afterwards (diffusers' reset alone breaks this).
    assert np.isfinite(run_pipeline(tiny_pipeline("flux"), "flux")).all()


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3", "pixart"])
def test_attention_backend_is_skipped_where_diffusers_would_ignore_it(family: str) -> None:
    result = plan(tiny_pipeline(family), tier=None, extra=["attention_backend"], caps=fake_capabilities("h100-80gb"))
    assert "dispatcher" in result.skipped[0].reason


def test_attention_backend_choice_follows_the_device() -> None:
    pipe = tiny_pipeline("flux")
    both = ["half_precision", "attention_backend"]
    on_h100 = plan(pipe, tier=None, extra=both, caps=fake_capabilities("h100-80gb"))
    assert on_h100.steps[1].config.backend == "_native_flash"
    with_fa = fake_capabilities("h100-80gb", packages={"flash_attn": True})
    assert plan(pipe, tier=None, extra=both, caps=with_fa).steps[1].config.backend == "flash"
    on_cpu = plan(pipe, tier=None, extra=["attention_backend"], caps=fake_capabilities("cpu-amx"))
    assert "already the best available on cpu" in on_cpu.skipped[0].reason
    cudnn_on_cpu = plan(pipe, tier=None, extra=[{"name": "attention_backend", "backend": "_native_cudnn"}])
    assert "needs CUDA" in cudnn_on_cpu.skipped[0].reason
    sage = plan(
        pipe, tier=None, extra=[{"name": "attention_backend", "backend": "sage"}], caps=fake_capabilities("h100-80gb")
    )
    assert "needs sageattention" in sage.skipped[0].reason


def test_flash_is_chosen_only_with_half_precision_and_for_mask_free_families() -> None:
    h100 = fake_capabilities("h100-80gb")
    # A float32 Flux (half_precision excluded): flash kernels would fail at the first call.
    # balanced@2 still plans the backend on CUDA (balanced@3 leaves it: nothing measured).
    float32 = plan(tiny_pipeline("flux"), tier="balanced@2", exclude=["half_precision"], caps=h100)
    skipped = {d.name: d.reason for d in float32.skipped}
    assert "needs half_precision in the same plan" in skipped["attention_backend"]
    assert "attention_backend" in {s.name for s in plan(tiny_pipeline("flux"), tier="balanced@2", caps=h100).steps}
    # Chroma passes an attention mask for its T5 padding: flash kernels take none.
    chroma = plan(zoo_pipeline("ChromaPipeline"), tier=None, extra=["attention_backend"], caps=h100)
    assert "take no attention mask" in chroma.skipped[0].reason


def test_xformers_only_where_installed_and_working_on_cuda(sd_pipe) -> None:
    missing = plan(sd_pipe, tier=None, extra=["xformers"], caps=fake_capabilities("t4-16gb"))
    assert missing.skipped[0].reason == "needs xformers (not installed); pip install sdopt[xformers]"
    on_cpu = plan(sd_pipe, tier=None, extra=["xformers"], caps=fake_capabilities("cpu", packages={"xformers": True}))
    assert on_cpu.skipped[0].reason.startswith("needs device cuda")
    broken = plan(
        sd_pipe, tier=None, extra=["xformers"], caps=fake_capabilities("t4-16gb", packages={"xformers": False})
    )
    assert "installed but not usable here" in broken.skipped[0].reason
    working = plan(
        sd_pipe, tier=None, extra=["xformers"], caps=fake_capabilities("t4-16gb", packages={"xformers": True})
    )
    assert [s.name for s in working.steps] == ["xformers"]


def test_xformers_apply_and_undo_through_diffusers(sd_pipe, monkeypatch) -> None:
    from diffusers.models.attention_processor import XFormersAttnProcessor

    snapshot = Snapshot(sd_pipe, "sd")
    calls = []

    def enable(self, attention_op=None):  # stands in for the CUDA-only kernels
        calls.append(self)
        self.set_attn_processor(XFormersAttnProcessor())

    from diffusers import ModelMixin

    monkeypatch.setattr(ModelMixin, "enable_xformers_memory_efficient_attention", enable)
    caps = fake_capabilities("t4-16gb", packages={"xformers": True})
    report = optimize(sd_pipe, tier=None, extra=["xformers"], caps=caps)
    assert calls == [sd_pipe.vae, sd_pipe.unet]  # every model with attention, as the pipeline-level method
    assert _processor_classes(sd_pipe.unet) == {"XFormersAttnProcessor"}
    report.undo()
    monkeypatch.undo()
    snapshot.assert_identical()


def test_one_attention_strategy_per_plan(sd_pipe) -> None:
    caps = fake_capabilities("t4-16gb", packages={"xformers": True})
    result = plan(sd_pipe, tier=None, extra=["attention_slicing", "xformers"], caps=caps)
    assert [s.name for s in result.steps] == ["attention_slicing"]
    assert "conflicts with attention_slicing" in result.skipped[0].reason


def test_sdpa_and_slicing_reach_the_vae_and_controlnet_too(cpu_caps) -> None:
    from diffusers.models.attention_processor import AttnProcessor

    from sdopt.optimizations._attention import attention_modules

    pipe = zoo_pipeline("StableDiffusionControlNetPipeline")
    for model in (pipe.unet, pipe.controlnet, pipe.vae):
        model.set_attn_processor(AttnProcessor())
    report = optimize(pipe, tier=None, extra=["sdpa"], caps=cpu_caps)
    for model in (pipe.unet, pipe.controlnet, pipe.vae):
        assert {type(m.processor).__name__ for m in attention_modules(model)} == {"AttnProcessor2_0"}
    report.undo()
    assert {type(m.processor).__name__ for m in attention_modules(pipe.vae)} == {"AttnProcessor"}
    sliced = optimize(pipe, tier=None, extra=["attention_slicing"], caps=cpu_caps)
    for model in (pipe.unet, pipe.controlnet):
        assert {type(m.processor).__name__ for m in attention_modules(model)} == {"SlicedAttnProcessor"}
    sliced.undo()


def test_measure_picks_the_fastest_backend_that_agrees_and_says_what_it_timed(monkeypatch) -> None:
    import diffusers.models.attention_dispatch as dispatch

    from sdopt import optimize

    now = [0.0]
    real = dispatch.dispatch_attention_fn
    cost = {"native": 2.0, "_native_math": 1.0}  # made-up costs: the math kernel is "faster" here

    def timed(*args, backend=None, **kwargs):
        now[0] += cost[backend.value]
        return real(*args, backend=backend, **kwargs)

    monkeypatch.setattr(dispatch, "dispatch_attention_fn", timed)
    monkeypatch.setattr("sdopt.timing.device_clock", lambda device: lambda: now[0])
    pipe = tiny_pipeline("flux")
    processors = {name: p._attention_backend for name, p in pipe.transformer.attn_processors.items()}
    report = optimize(pipe, tier=None, extra=[{"name": "attention_backend", "backend": "measure"}])
    reason = report.applied[0].reason
    assert reason.startswith("attention dispatcher backend '_native_math', the fastest measured here")
    assert "_native_math 1000.000 ms, native 2000.000 ms" in reason
    assert {p._attention_backend.value for p in pipe.transformer.attn_processors.values()} == {"_native_math"}
    report.undo()
    assert {name: p._attention_backend for name, p in pipe.transformer.attn_processors.items()} == processors
    assert not hasattr(pipe.transformer, "_sdopt_attention_measured")


def test_measure_leaves_out_a_backend_that_fails_or_disagrees(monkeypatch) -> None:
    import diffusers.models.attention_dispatch as dispatch

    from sdopt.optimizations.attention_backend import fastest
    from sdopt.testing import fake_capabilities

    real = dispatch.dispatch_attention_fn

    def broken_math(*args, backend=None, **kwargs):
        if backend.value == "_native_math":
            raise RuntimeError("no kernel image for this device")
        return real(*args, backend=backend, **kwargs)

    monkeypatch.setattr(dispatch, "dispatch_attention_fn", broken_math)
    pipe = tiny_pipeline("flux")
    from sdopt.anatomy import inspect_pipeline

    best, text = fastest(inspect_pipeline(pipe), fake_capabilities("cpu"))
    assert best == "native"
    assert "_native_math left out (RuntimeError: no kernel image for this device)" in text
