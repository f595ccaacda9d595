"""What the tiers plan on GPUs (simulated profiles): measured steps only, fusion before quantizers, and
``fast`` at least ``balanced``'s speed steps (issue 26). No GPU needed."""

from __future__ import annotations

import functools

import pytest

from sdopt import plan, registry
from sdopt.testing import FAMILIES, PROFILES, fake_capabilities, tiny_pipeline
from sdopt.tiers import list_tiers, resolve_tier

GPU_PROFILES = tuple(p for p in PROFILES if fake_capabilities(p).device == "cuda")
QUANTIZERS = ("quantize_int8", "quantize_4bit", "static_int8")
# Everything a GPU user may have installed: the plans must hold with all of it.
INSTALLED = {"torchao": True, "triton": True, "bitsandbytes": True, "flash_attn": True}


@functools.cache
def _pipe(family: str):
    return tiny_pipeline(family)


def _caps(profile: str):
    return fake_capabilities(profile, packages=INSTALLED)


@pytest.mark.parametrize("profile", GPU_PROFILES)
@pytest.mark.parametrize("tier", ["conservative", "balanced", "fast", "ultra", "low-memory", "balanced@2", "fast@3"])
def test_no_gpu_plan_quantizes_weights_before_fusing_them(profile: str, tier: str) -> None:
    for family in FAMILIES:
        steps = [step.name for step in plan(_pipe(family), tier=tier, caps=_caps(profile)).steps]
        if "fuse_qkv" in steps:
            fused_at = steps.index("fuse_qkv")
            early = [name for name in steps[:fused_at] if name in QUANTIZERS]
            assert not early, f"{tier} on {profile} ({family}) quantizes before fusing: {steps}"


@pytest.mark.parametrize("family", FAMILIES)
def test_balanced_plans_no_torchao_int8_on_gpus(family: str) -> None:
    # balanced@2's torchao int8 made SDXL 2.1x slower than untouched fp16 on an H200 (RESULTS.md).
    for profile in GPU_PROFILES:
        steps = {step.name for step in plan(_pipe(family), tier="balanced", caps=_caps(profile)).steps}
        assert "quantize_int8" not in steps, profile
    for version, wanted in (("balanced", False), ("balanced@2", True)):  # the pinned version is unchanged
        entries = resolve_tier(version).entries
        assert any(e.name == "quantize_int8" and e.when and "cuda" in e.when.devices for e in entries) is wanted


def _speed_steps(result) -> dict[str, object]:
    return {
        step.name: step.config
        for step in result.steps
        if "speed" in step.optimization.effect and step.optimization.offload_regime is None
    }


@pytest.mark.parametrize("profile", GPU_PROFILES)
@pytest.mark.parametrize("family", FAMILIES)
def test_fast_keeps_every_speed_step_of_balanced_or_says_why(profile: str, family: str) -> None:
    balanced = _speed_steps(plan(_pipe(family), tier="balanced", caps=_caps(profile)))
    fast_plan = plan(_pipe(family), tier="fast", caps=_caps(profile))
    fast = _speed_steps(fast_plan)
    reasons = {decision.name: decision.reason for decision in fast_plan.skipped}
    for name in balanced:
        assert name in fast or reasons.get(name), f"fast drops {name} on {profile} ({family}) without a reason"
    ultra = _speed_steps(plan(_pipe(family), tier="ultra", caps=_caps(profile)))
    assert set(fast) - {"guidance", "step_budget", "scheduler"} <= set(ultra) | {"feature_cache", "tiny_vae"}


def test_every_gpu_entry_of_the_latest_tiers_cites_a_gpu_measurement() -> None:
    """A CUDA entry (its condition names CUDA) of a speed claim cites a figure measured on a GPU; memory-only
    steps claim bytes, which the footprint computes, not speed."""
    for row in list_tiers():
        if not row["latest"]:
            continue
        for step in row["steps"]:
            devices = step.get("when", {}).get("devices", ())
            if "cuda" not in devices or registry.get(step["name"]).effect == "memory":
                continue
            why = step.get("why", "")
            assert "H200" in why and "RESULTS.md" in why, f"{row['label']}: {step['name']} cites no GPU figure: {why}"
