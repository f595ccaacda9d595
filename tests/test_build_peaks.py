"""The plan's footprint counts what steps hold while they build (a LoRA fused, an int8 program exported
and calibrated), and a plan short of RAM drops the costliest such step first, keeping those that fit."""

from __future__ import annotations

import pytest

from sdopt import plan
from sdopt.simulation.architectures import real_pipeline
from sdopt.testing import fake_capabilities, tiny_pipeline
from sdopt.weights import stand_ins

EPYC = fake_capabilities("cpu-epyc-bf16", packages={"openvino": True, "torchao": True})  # 24 GB of RAM
VNNI = fake_capabilities("cpu-vnni", packages={"torchao": True})


def test_the_footprint_includes_distill_loras_fusing_peak() -> None:
    pipe = tiny_pipeline("sd")
    bare = plan(pipe, tier=None, caps=EPYC).footprint
    with stand_ins():  # the published LoRA is not downloaded here: a random one of its layers
        fused = plan(pipe, tier=None, extra=["distill_lora"], caps=EPYC).footprint
    assert fused.build_gb == pytest.approx(1.25 * bare.components_gb["unet"])  # measured 1.21x on SD1.5
    assert fused.peak_gb == pytest.approx(fused.total_gb + max(fused.activations_gb, fused.build_gb))


def test_the_footprint_includes_the_int8_builds_peak() -> None:
    pipe = tiny_pipeline("sd")
    bare = plan(pipe, tier=None, caps=VNNI).footprint
    result = plan(pipe, tier=None, extra=["static_int8"], caps=VNNI)
    assert [step.name for step in result.steps] == ["static_int8"]
    assert result.footprint.build_gb == pytest.approx(2.0 * bare.components_gb["unet"])


def test_sdxl_ultra_on_24_gb_drops_the_lora_it_cannot_fuse_and_keeps_openvino() -> None:
    # Fusing into SDXL's float32 UNet (10.3 GB) beside the pipeline OOM-killed ultra on a 24 GB VM.
    sdxl = real_pipeline("sdxl", device="meta")
    with stand_ins():
        result = plan(sdxl, tier="ultra", caps=EPYC)
    names = [step.name for step in result.steps]
    assert "distill_lora" not in names and "openvino_runtime" in names and "half_precision" in names
    (dropped,) = [d for d in result.skipped if d.name == "distill_lora"]
    assert "GB to build" in dropped.reason and "memory budget cannot spare" in dropped.reason
    assert result.fits


def test_sdxl_balanced_on_24_gb_plans_openvino_over_half_precision() -> None:
    result = plan(real_pipeline("sdxl", device="meta"), tier="balanced", caps=EPYC)
    assert [step.name for step in result.steps] == ["half_precision", "channels_last", "openvino_runtime"]
    assert result.fits
