"""Every tier on every pipeline of the zoo, on several machines: optimize never raises, the call after it
succeeds with the same output type and shape, and undo restores the pipeline bit-exactly.

Plans for GPU profiles are made and checked without running (no GPU here); the CPU profiles (this
machine and an AMX CPU, whose bf16 path runs here too, only slower) are applied and called for real.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
import torch

from sdopt import detect, optimize, plan
from sdopt.anatomy import inspect_pipeline
from sdopt.testing import (
    fake_capabilities,
    pipeline_state,
    run_zoo_pipeline,
    state_differences,
    zoo_entry,
    zoo_names,
    zoo_pipeline,
)
from sdopt.tiers import tier_names

pytestmark = pytest.mark.slow  # the whole file runs in CI and with -m slow, not in the quick default

# SDOPT_ZOO_PROFILES=all also runs the CPU without fast bf16 ("cpu": int8, a channels-last VAE,
# weight_storage) and the CUDA profile for real, on this machine's CPU (left out of CI for time).
RUN_PROFILES = ("here", "cpu-amx", *(("cpu", "t4-16gb") if os.environ.get("SDOPT_ZOO_PROFILES") == "all" else ()))
PLAN_PROFILES = ("t4-16gb", "rtx3060ti-8gb")
# torch.compile's first call takes 5-20 s per pipeline on this CPU: the tier sweep leaves it out and
# test_compile_on_every_kind_of_denoiser compiles one pipeline per denoiser class for real
# (SDOPT_ZOO_COMPILE=all compiles every pipeline of the zoo).
# OpenVINO's conversions (seconds to tens of seconds per model, per block and per shape, int8 built on top) are
# left out of the tier sweep likewise, and test_openvino_on_every_kind_of_unet converts one pipeline per UNet
# class for real, whole and block by block (the sweep with them took 25-30 s a UNet pipeline on an empty cache).
EXCLUDED: list[str] = ["torch_compile", "openvino_runtime"]
OPENVINO_KINDS = (
    "StableDiffusionControlNetPipeline",  # UNet2DConditionModel, ControlNet residuals added in the glue
    "StableDiffusionXLImg2ImgPipeline",  # UNet2DConditionModel with SDXL's added conditions
    "AnimateDiffPipeline",  # UNetMotionModel (motion modules call proj_in(input=...))
    "StableVideoDiffusionPipeline",  # UNetSpatioTemporalConditionModel
    # Kandinsky3UNet: OpenVINO 2026.4 crashes compiling it at f32 (planning skips it, test_openvino_blocks.py)
    "DDPMPipeline",  # UNet2DModel, unconditional
)
COMPILED = (
    "StableDiffusionImg2ImgPipeline",  # UNet2DConditionModel, regional (BasicTransformerBlock)
    "IFPipeline",  # a UNet without the blocks it declares: whole-model compile
    "FluxFillPipeline",  # a transformer with repeated blocks
    "WanPipeline",  # a video transformer
)
# Measured in a run with SDOPT_ZOO_COMPILE=all: also AnimateDiff (UNetMotionModel), Kandinsky 3,
# SVD, DDPM and Chroma compile and run; SD3's and PixArt's transformers (no repeated blocks, so
# whole-model compile) failed on CPU and are skipped there with that reason.


def _caps(profile: str) -> Any:
    return detect() if profile == "here" else fake_capabilities(profile)


def _shape(result: Any) -> Any:
    """Type and shape of a pipeline's result: arrays, tensors, lists of PIL images or of arrays."""
    if isinstance(result, (np.ndarray, torch.Tensor)):
        return type(result).__name__, tuple(result.shape), str(result.dtype)
    if isinstance(result, (list, tuple)):
        return type(result).__name__, len(result), [_shape(item) for item in result]
    size = getattr(result, "size", None)
    return type(result).__name__, size


def _as_array(result: Any) -> np.ndarray:
    if isinstance(result, torch.Tensor):
        return result.float().numpy()
    return np.asarray(result)


@pytest.mark.parametrize("name", zoo_names())
def test_every_tier_runs_keeps_output_shape_and_undoes_exactly(name: str) -> None:
    pipe = zoo_pipeline(name)
    expected = run_zoo_pipeline(pipe, name)
    state = pipeline_state(pipe)
    problems: list[str] = []
    for profile in RUN_PROFILES:
        caps = _caps(profile)
        for tier in tier_names():
            where = f"{tier} on {profile}"
            report = optimize(pipe, tier=tier, caps=caps, exclude=EXCLUDED)
            try:
                result = run_zoo_pipeline(pipe, name)
                if _shape(result) != _shape(expected):
                    problems.append(f"{where}: output {_shape(result)} instead of {_shape(expected)}")
            except Exception as error:
                applied = ", ".join(d.name for d in report.applied)
                problems.append(f"{where}: the call after optimize raised {type(error).__name__}: {error} ({applied})")
            report.undo()
            differences = state_differences(state, pipeline_state(pipe))
            if differences:
                problems.append(f"{where}: undo left {differences[:3]}")
                pipe = zoo_pipeline(name)  # go on from a clean copy
                state = pipeline_state(pipe)
    after = run_zoo_pipeline(pipe, name)
    if not np.array_equal(_as_array(after), _as_array(expected)):
        problems.append("the output after all the undos differs from the original's")
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("name", zoo_names())
def test_gpu_plans_are_made_without_raising(name: str) -> None:
    pipe = zoo_pipeline(name)
    for profile in PLAN_PROFILES:
        for tier in tier_names():
            result = plan(pipe, tier=tier, caps=fake_capabilities(profile))
            assert {step.name for step in result.steps}.isdisjoint({d.name for d in result.skipped})


@pytest.mark.parametrize("name", zoo_names())
def test_family_is_recognised_from_components(name: str) -> None:
    assert inspect_pipeline(zoo_pipeline(name)).family == zoo_entry(name).family


@pytest.mark.parametrize("name", [name for name in zoo_names() if zoo_entry(name).family == "other"])
def test_unknown_families_are_told_generic_steps_only(name: str) -> None:
    report = optimize(zoo_pipeline(name), tier="fast", caps=fake_capabilities("cpu"), dry_run=True)
    assert any(warning.startswith("family unknown: generic steps only") for warning in report.warnings)
    assert "scheduler" in {d.name for d in report.skipped}


@pytest.mark.parametrize("name", zoo_names() if os.environ.get("SDOPT_ZOO_COMPILE") == "all" else COMPILED)
def test_compile_on_every_kind_of_denoiser(name: str) -> None:
    pipe = zoo_pipeline(name)
    expected = run_zoo_pipeline(pipe, name)
    state = pipeline_state(pipe)
    compile_ = {"name": "torch_compile", "accept_cpu_first_call": True}
    torch._dynamo.reset()
    try:
        report = optimize(pipe, tier="ultra", extra=[compile_], caps=fake_capabilities("cpu-amx"))
        skipped = {d.name: d.reason for d in report.skipped}
        if "whole-model compile" in skipped.get("torch_compile", ""):
            assert inspect_pipeline(pipe).denoiser_kind == "transformer"
        else:
            assert "torch_compile" in [d.name for d in report.applied], report
        assert _shape(run_zoo_pipeline(pipe, name)) == _shape(expected)
        report.undo()
    finally:
        torch._dynamo.reset()
    assert state_differences(state, pipeline_state(pipe)) == []
    assert np.array_equal(_as_array(run_zoo_pipeline(pipe, name)), _as_array(expected))


@pytest.mark.parametrize("name", OPENVINO_KINDS)
def test_openvino_on_every_kind_of_unet(name: str) -> None:
    """openvino_runtime for real, whole and block by block with int8 under the feature cache: the call keeps
    its output's shape (twice: converting, then running OpenVINO) and undo restores the pipeline exactly."""
    pytest.importorskip("openvino")
    pipe = zoo_pipeline(name)
    expected = run_zoo_pipeline(pipe, name)
    state = pipeline_state(pipe)
    caps = fake_capabilities("cpu-avx2", packages={"openvino": True})
    variants = (
        [{"name": "openvino_runtime"}],
        [{"name": "openvino_runtime", "blocks": True, "int8": True}, "feature_cache"],
    )
    for extra in variants:
        report = optimize(pipe, tier=None, extra=extra, caps=caps)
        assert "openvino_runtime" in [d.name for d in report.applied], report
        for _ in range(2):
            assert _shape(run_zoo_pipeline(pipe, name)) == _shape(expected)
        report.undo()
        assert state_differences(state, pipeline_state(pipe)) == [], extra
    assert np.array_equal(_as_array(run_zoo_pipeline(pipe, name)), _as_array(expected))
