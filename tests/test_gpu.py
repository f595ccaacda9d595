"""On a real CUDA device (skipped without one; run on the lent H100/H200, see the closing notes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdopt import detect, optimize
from sdopt.bench import BASELINE, bench
from sdopt.testing import FAMILIES, pipeline_state, run_pipeline, state_differences, tiny_pipeline

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _on_cuda(family: str):
    pipe = tiny_pipeline(family).to("cuda")
    run_pipeline(pipe, family)  # lazily created state first
    return pipe


def test_the_detected_gpu_is_usable() -> None:
    caps = detect()
    assert caps.device == "cuda" and caps.gpu is not None and caps.gpu.usable


@pytest.mark.parametrize("tier", ["conservative", "balanced", "fast", "low-memory"])
@pytest.mark.parametrize("family", FAMILIES)
def test_every_tier_runs_on_cuda_and_undoes_exactly(family: str, tier: str) -> None:
    pipe = _on_cuda(family)
    before, output = pipeline_state(pipe), run_pipeline(pipe, family)
    report = optimize(pipe, tier=tier, exclude=["torch_compile"], verify=True)
    assert report.failed == [], report.failed
    optimized = run_pipeline(pipe, family)
    assert optimized.shape == output.shape and np.isfinite(optimized).all()
    report.undo()
    assert state_differences(before, pipeline_state(pipe)) == []
    assert np.array_equal(run_pipeline(pipe, family), output)


def test_default_optimize_does_not_raise_device_memory() -> None:
    pipe = _on_cuda("sdxl")
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    report = optimize(pipe, tier="balanced", exclude=["torch_compile"])
    assert "half_precision" in [d.name for d in report.applied]
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() < before
    report.undo()
    assert torch.cuda.memory_allocated() == before


def test_compiled_balanced_runs_and_undoes() -> None:
    pipe = _on_cuda("sd")
    output = run_pipeline(pipe, "sd")
    report = optimize(pipe, tier="balanced")
    assert "torch_compile" in [d.name for d in report.applied], report.skipped
    assert run_pipeline(pipe, "sd").shape == output.shape
    report.undo()
    assert np.array_equal(run_pipeline(pipe, "sd"), output)


def test_bench_on_cuda_measures_each_tier_alone_on_the_device() -> None:
    result = bench("tiny-sd", [BASELINE, "balanced", "low-memory"], steps=2, runs=1, warmup=1)
    assert all(t.device_peak_gb is not None and t.device_peak_gb > 0 for t in result.tiers)
    assert any("alone" in note for note in result.notes)


def test_the_speed_guard_times_the_steps_on_cuda_by_default() -> None:
    pipe = _on_cuda("sd")
    report = optimize(pipe, tier="balanced", exclude=["torch_compile"], call={"steps": 4})
    assert report.guard.startswith("speed guard: untouched call"), report.guard
    judged = [d for d in report.applied + report.skipped if "speed guard:" in d.reason]
    assert judged, report
    report.undo()
