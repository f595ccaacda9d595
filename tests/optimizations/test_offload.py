"""Offloads: chosen by the memory budget, real hooks, exact removal."""

from __future__ import annotations

import pytest

from sdopt import optimize, plan, planning
from sdopt.footprint import Footprint
from sdopt.testing import fake_capabilities, tiny_pipeline
from tests.helpers import Snapshot

CUDA = fake_capabilities("t4-16gb")


@pytest.mark.parametrize(
    ("total", "largest", "available", "regime"),
    [(10, 6, 12, "none"), (10, 6, 8, "model"), (10, 6, 4, "group"), (10, 6, 1, "sequential")],
)
def test_budget_regimes(total, largest, available, regime) -> None:
    footprint = Footprint({"unet": largest, "rest": total - largest}, activations_gb=0.5, available_gb=available)
    assert footprint.regime == regime


def test_the_footprint_counts_weights_in_the_dtype_they_will_be_stored_in() -> None:
    fp32 = plan(tiny_pipeline("sdxl"), tier="balanced", caps=fake_capabilities("cpu-avx2")).footprint
    bf16 = plan(tiny_pipeline("sdxl"), tier="balanced", caps=fake_capabilities("cpu-amx")).footprint
    assert fp32 is not None and bf16 is not None
    assert fp32.total_gb == pytest.approx(2 * bf16.total_gb, rel=0.01)
    assert fp32.largest == "unet"
    # half_precision excluded: the weights stay float32 whatever the device could do (defect: counted 2 bytes).
    kept = plan(tiny_pipeline("sdxl"), tier="balanced", exclude=["half_precision"], caps=fake_capabilities("cpu-amx"))
    assert kept.footprint is not None and kept.footprint.total_gb == pytest.approx(fp32.total_gb)
    assert CUDA.gpu is not None
    free = 0.9 * 15.6
    assert bf16.available_gb != CUDA.gpu.total_memory_gb
    assert plan(tiny_pipeline("sd"), tier=None, caps=CUDA).footprint.available_gb == pytest.approx(free - 0.15 * free)


def test_a_speed_step_that_adds_weights_goes_when_memory_is_short(monkeypatch) -> None:
    from sdopt.optimization import Optimization
    from sdopt.registry import register, unregister

    class Lookup(Optimization):  # a plugin's step that keeps a second copy of the UNet's weights
        name = "lookup_tables"
        kind = "layout"

        def storage(self, anatomy, config, sizes):
            return {**sizes, "unet": 2 * sizes["unet"]}

        def apply(self, pipe, anatomy, caps, config):
            return lambda: None

    register(Lookup)
    try:
        _pretend(monkeypatch, total=10, largest=6, available=8)
        planned = plan(tiny_pipeline("sd"), tier="low-memory", extra=["lookup_tables"], caps=CUDA)
        assert "lookup_tables" not in [step.name for step in planned.steps]
        assert "cannot spare" in {d.name: d.reason for d in planned.skipped}["lookup_tables"]
    finally:
        unregister("lookup_tables")


def _pretend(monkeypatch, total: float, largest: float, available: float) -> None:
    fake = Footprint({"unet": largest, "rest": total - largest}, activations_gb=0.0, available_gb=available)
    monkeypatch.setattr(planning, "estimate", lambda anatomy, caps, steps=(), budget_gb=None: fake)


@pytest.mark.parametrize("regime", ["model", "group", "sequential"])
def test_low_memory_picks_exactly_the_offload_the_budget_calls_for(monkeypatch, regime) -> None:
    _pretend(monkeypatch, *{"model": (10, 6, 8), "group": (10, 6, 4), "sequential": (10, 6, 1)}[regime])
    result = plan(tiny_pipeline("sd"), tier="low-memory", caps=CUDA)
    offloads = [s.name for s in result.steps if s.name.endswith("_offload")]
    assert offloads == [f"{regime}_offload"]
    others = {d.name: d.reason for d in result.skipped if d.name.endswith("_offload")}
    assert all(f"calls for {regime} offload" in reason for reason in others.values())
    assert result.fits


def test_an_offload_the_budget_requires_wins_over_compile(monkeypatch) -> None:
    # balanced on an 8-16 GB GPU with a model that does not fit: compile used to win and the plan ran out of memory.
    _pretend(monkeypatch, 10, 6, 8)
    caps = fake_capabilities("t4-16gb", packages={"triton": True})
    result = plan(tiny_pipeline("sd"), tier="balanced", caps=caps)
    assert "model_offload" in [s.name for s in result.steps]
    skipped = {d.name: d.reason for d in result.skipped}
    assert "conflicts with model_offload is required by the memory budget" in skipped["torch_compile"]
    assert "conflicts with model_offload is required by the memory budget" in skipped["fuse_qkv"]
    assert result.fits


def test_a_plan_that_does_not_fit_says_so_and_names_the_tier_that_would(monkeypatch) -> None:
    _pretend(monkeypatch, 10, 6, 4)  # group offload needed; balanced has only model offload
    result = plan(tiny_pipeline("sd"), tier="balanced", caps=CUDA)
    assert not result.fits
    assert any("does not fit in memory" in w and "tier 'low-memory' would fit" in w for w in result.warnings)


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


def test_video_pipelines_get_an_activation_estimate() -> None:
    from sdopt.testing import zoo_pipeline

    footprint = plan(zoo_pipeline("WanPipeline"), tier=None, caps=CUDA).footprint
    assert footprint is not None and footprint.activations_gb > 0


def test_weights_already_on_the_device_count_as_available(monkeypatch) -> None:
    from sdopt import footprint as module

    assert module.usable_memory_gb(CUDA, resident_gb=2.0) > module.usable_memory_gb(CUDA)
    assert CUDA.gpu is not None
    assert module.usable_memory_gb(CUDA, resident_gb=100.0) <= CUDA.gpu.total_memory_gb


def test_a_memory_budget_the_caller_sets_drives_the_offload() -> None:
    # A service given a slice of a big GPU: the budget, not the free memory, decides.
    roomy = plan(tiny_pipeline("sd"), tier="low-memory", caps=CUDA)
    assert not [s.name for s in roomy.steps if s.name.endswith("_offload")]
    # The tiny pipeline needs ~0.25 MB of activations and 32 KB for its largest layer.
    tight = plan(tiny_pipeline("sd"), tier="low-memory", caps=CUDA, memory_budget="0.3MB")
    assert tight.footprint is not None and tight.footprint.available_gb == pytest.approx(0.3 / 1024)
    assert [s.name for s in tight.steps if s.name.endswith("_offload")] == ["sequential_offload"]
    assert tight.fits


@pytest.mark.parametrize("budget", ["six gigabytes", "6 parsecs", -1, "0GB", True])
def test_a_malformed_memory_budget_says_how_to_write_one(budget) -> None:
    with pytest.raises((ValueError, TypeError), match="memory_budget"):
        plan(tiny_pipeline("sd"), tier="low-memory", caps=CUDA, memory_budget=budget)


def test_the_cli_takes_a_memory_budget(capsys) -> None:
    import json

    from sdopt.cli import main

    assert main(["plan", "--arch", "tiny-sd", "--tier", "low-memory", "--memory-budget", "6GB", "--json"]) == 0
    footprint = json.loads(capsys.readouterr().out)["footprint"]
    assert footprint["available_gb"] <= 6.0
