"""Offloads: chosen by the memory budget, real hooks, exact removal."""

from __future__ import annotations

import pytest

from sdopt import optimize, plan
from sdopt.optimizations import _offload
from sdopt.optimizations._offload import Budget
from sdopt.testing import fake_capabilities, tiny_pipeline
from tests.helpers import Snapshot

CUDA = fake_capabilities("t4-16gb")


@pytest.mark.parametrize(
    ("total", "largest", "available", "regime"),
    [(10, 6, 12, "none"), (10, 6, 8, "model"), (10, 6, 4, "group"), (10, 6, 1, "sequential")],
)
def test_budget_regimes(total, largest, available, regime) -> None:
    assert Budget(total, largest, "unet", available).regime == regime


def test_the_budget_counts_weights_in_the_dtype_they_will_run_in() -> None:
    from sdopt.anatomy import inspect_pipeline

    anatomy = inspect_pipeline(tiny_pipeline("sdxl"))
    fp32 = _offload.budget(anatomy, fake_capabilities("cpu-avx2"))
    bf16 = _offload.budget(anatomy, fake_capabilities("cpu-amx"))
    assert fp32.total_gb == pytest.approx(2 * bf16.total_gb)
    assert fp32.largest == "unet"
    assert CUDA.gpu is not None
    assert _offload.budget(anatomy, CUDA).available_gb == pytest.approx(0.9 * 15.6 - 0.15 * 0.9 * 15.6)


@pytest.mark.parametrize("regime", ["model", "group", "sequential"])
def test_low_memory_picks_exactly_the_offload_the_budget_calls_for(monkeypatch, regime) -> None:
    sizes = {"model": (10, 6, 8), "group": (10, 6, 4), "sequential": (10, 6, 1)}[regime]
    monkeypatch.setattr(_offload, "budget", lambda anatomy, caps: Budget(sizes[0], sizes[1], "unet", sizes[2]))
    result = plan(tiny_pipeline("sd"), tier="low-memory", caps=CUDA)
    offloads = [s.name for s in result.steps if s.name.endswith("_offload")]
    assert offloads == [f"{regime}_offload"]
    others = {d.name: d.reason for d in result.skipped if d.name.endswith("_offload")}
    assert all(f"calls for {regime} offload" in reason for reason in others.values())


def test_no_offload_when_everything_fits_and_none_on_cpu() -> None:
    result = plan(tiny_pipeline("sd"), tier="low-memory", caps=CUDA)
    reasons = {d.name: d.reason for d in result.skipped}
    assert "calls for no offload" in reasons["model_offload"]
    on_cpu = plan(tiny_pipeline("sd"), tier="low-memory", caps=fake_capabilities("cpu"))
    assert {d.reason for d in on_cpu.skipped if d.name.endswith("_offload")} == {
        "needs device cuda or xpu or mps (this machine: cpu)"
    }


@pytest.mark.parametrize("name", ["model_offload", "group_offload"])
def test_offload_hooks_are_installed_and_removed_exactly(pipe, family, name) -> None:
    snapshot = Snapshot(pipe, family)
    # The onload device is the CPU here, which runs diffusers' real hook plumbing without a GPU.
    report = optimize(pipe, tier=None, extra=[{"name": name, "device": "cpu", "only_if_needed": False}], caps=CUDA)
    assert [d.name for d in report.applied] == [name]
    denoiser = pipe.unet if family in ("sd", "sdxl") else pipe.transformer
    if name == "model_offload":
        assert hasattr(denoiser, "_hf_hook") and pipe._all_hooks
    else:
        assert denoiser._diffusers_hook.get_hook("group_offloading") is not None
    snapshot.assert_state_changed()
    report.undo()
    snapshot.assert_identical()


def test_offloads_exclude_each_other(sd_pipe) -> None:
    extra = [{"name": n, "only_if_needed": False} for n in ("group_offload", "model_offload", "sequential_offload")]
    result = plan(sd_pipe, tier=None, extra=extra, caps=CUDA)
    assert [s.name for s in result.steps] == ["group_offload"]
    assert all("same group 'offload'" in d.reason for d in result.skipped)
