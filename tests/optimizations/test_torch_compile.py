"""torch_compile: gated on CPU, really compiled when asked (one real compile runs in CI), exact undo."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from sdopt import optimize, plan
from sdopt.testing import fake_capabilities, run_pipeline, tiny_pipeline, zoo_pipeline
from tests.helpers import Snapshot


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_cpu_needs_the_first_call_cost_accepted(sd_pipe) -> None:
    result = plan(sd_pipe, tier=None, extra=["torch_compile"], caps=fake_capabilities("cpu-amx"))
    assert "accept_cpu_first_call=True" in result.skipped[0].reason
    no_compiler = fake_capabilities("cpu-amx", cxx_compiler=None)
    forced = plan(
        sd_pipe, tier=None, extra=[{"name": "torch_compile", "accept_cpu_first_call": True}], caps=no_compiler
    )
    assert "needs a C++ compiler" in forced.skipped[0].reason


def test_cuda_needs_triton_and_regional_follows_the_model() -> None:
    without = plan(tiny_pipeline("flux"), tier=None, extra=["torch_compile"], caps=fake_capabilities("h100-80gb"))
    assert "needs triton" in without.skipped[0].reason
    caps = fake_capabilities("h100-80gb", packages={"triton": True})
    flux = plan(tiny_pipeline("flux"), tier=None, extra=["torch_compile"], caps=caps)
    assert flux.steps[0].config.regional == "yes"
    sd3 = plan(tiny_pipeline("sd3"), tier=None, extra=["torch_compile"], caps=caps)
    assert sd3.steps[0].config.regional == "no"
    forced = plan(tiny_pipeline("sd3"), tier=None, extra=[{"name": "torch_compile", "regional": "yes"}], caps=caps)
    assert "declares no repeated blocks" in forced.skipped[0].reason


def test_compile_conflicts_with_offload_and_caches(sd_pipe) -> None:
    caps = fake_capabilities("t4-16gb", packages={"triton": True})
    extra = ["feature_cache", "torch_compile"]
    result = plan(sd_pipe, tier=None, extra=extra, caps=caps)
    assert [s.name for s in result.steps] == ["feature_cache"]
    assert "conflicts with feature_cache" in result.skipped[0].reason


@pytest.mark.slow
def test_a_real_regional_compile_on_cpu(sd_pipe, tmp_path, fresh_dynamo) -> None:
    snapshot = Snapshot(sd_pipe, "sd")
    extra = [{"name": "torch_compile", "accept_cpu_first_call": True, "cache_dir": str(tmp_path)}]
    report = optimize(sd_pipe, tier=None, extra=extra, caps=fake_capabilities("cpu-amx"))
    assert [d.name for d in report.applied] == ["torch_compile"]
    compiled = [m for m in sd_pipe.unet.modules() if m._compiled_call_impl is not None]
    assert compiled and all(type(m).__name__ == "BasicTransformerBlock" for m in compiled)
    output = run_pipeline(sd_pipe, "sd")
    np.testing.assert_allclose(output, snapshot.output, atol=1e-3)
    assert any(tmp_path.iterdir())  # inductor wrote its cache where we pointed it
    assert os.environ.get("TORCHINDUCTOR_CACHE_DIR") != str(tmp_path)  # ...during the call only
    report.undo()
    assert all(m._compiled_call_impl is None for m in sd_pipe.unet.modules())
    snapshot.assert_identical()


@pytest.mark.parametrize("name", ["IFPipeline", "KandinskyV22Pipeline"])
def test_unets_without_their_declared_repeated_blocks_compile_whole(name) -> None:
    caps = fake_capabilities("t4-16gb", packages={"triton": True})
    pipe = zoo_pipeline(name)
    auto = plan(pipe, tier=None, extra=["torch_compile"], caps=caps)
    assert auto.steps[0].config.regional == "no"
    forced = plan(pipe, tier=None, extra=[{"name": "torch_compile", "regional": "yes"}], caps=caps)
    assert "has none of the repeated blocks it declares (BasicTransformerBlock)" in forced.skipped[0].reason


def test_the_inductor_cache_dir_is_not_left_in_the_environment(sd_pipe, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    extra = [{"name": "torch_compile", "accept_cpu_first_call": True, "cache_dir": str(tmp_path)}]
    report = optimize(sd_pipe, tier=None, extra=extra, caps=fake_capabilities("cpu-amx"), undoable=False)
    assert [d.name for d in report.applied] == ["torch_compile"]
    # Inductor may write its own default there when torch.compile is called; sdopt's choice is not left.
    assert os.environ.get("TORCHINDUCTOR_CACHE_DIR") != str(tmp_path)


def test_whole_transformer_compile_is_not_planned_on_cpu() -> None:
    # SD3's and PixArt's transformers declare no repeated blocks; compiled whole with frozen weights
    # on CPU they failed at the first call (tests/test_zoo.py with SDOPT_ZOO_COMPILE=all).
    extra = [{"name": "torch_compile", "accept_cpu_first_call": True}]
    result = plan(tiny_pipeline("sd3"), tier=None, extra=extra, caps=fake_capabilities("cpu-amx"))
    assert "whole-model compile of SD3Transformer2DModel on CPU" in result.skipped[0].reason
    on_gpu = plan(
        tiny_pipeline("sd3"),
        tier=None,
        extra=["torch_compile"],
        caps=fake_capabilities("t4-16gb", packages={"triton": True}),
    )
    assert on_gpu.steps[0].config.regional == "no"


def test_the_default_compile_cache_is_one_per_torch_build_and_device(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("SDOPT_CACHE_DIR", str(tmp_path))
    pipe = tiny_pipeline("sd")
    folders = {}
    for profile in ("h200-141gb", "h100-80gb", "rtx4090-24gb", "cpu-amx"):
        caps = fake_capabilities(profile, packages={"triton": True})
        extra = [{"name": "torch_compile", "accept_cpu_first_call": True}]
        (step,) = plan(pipe, tier=None, extra=extra, caps=caps).steps
        folders[profile] = step.config.cache_dir
    assert len(set(folders.values())) == 4  # an H100's autotuned kernels never reach an H200
    assert all(folder.startswith(str(tmp_path / "inductor")) for folder in folders.values())
    assert "sm_90" in folders["h200-141gb"] and "H200" in folders["h200-141gb"]
    assert f"torch-{torch.__version__}" in folders["cpu-amx"]
