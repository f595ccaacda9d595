"""openvino_runtime with ``blocks``: a UNet converted block by block (its down, mid and up blocks), which
plans together with feature_cache (converted whole, the two conflict), runs each block in OpenVINO after its
first call within float32 rounding, lets feature caching skip the deep blocks' OpenVINO calls (counted),
calibrates and builds int8 per block at the end of the first pipeline call, and undoes exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sdopt import optimize, plan
from sdopt.calls import STAND_IN
from sdopt.optimizations._openvino import OpenVinoRunner
from sdopt.optimizations.openvino_runtime import unet_blocks
from sdopt.testing import fake_capabilities, tiny_pipeline
from tests.helpers import Snapshot

WITH_OPENVINO = fake_capabilities("cpu-avx2", packages={"openvino": True})
# One denoiser call per step (PNDM's first step calls it twice), so steps are easy to count.
STEPS = 6


def _euler(pipe: Any) -> Any:
    from diffusers import EulerDiscreteScheduler

    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    return pipe


def _image(pipe: Any) -> np.ndarray:
    call = {"prompt": "a photo", "num_inference_steps": STEPS, "output_type": "np"}
    return pipe(**call, generator=torch.Generator().manual_seed(0)).images


def _blocks(cache: Path, **options: Any) -> dict[str, Any]:
    return {"name": "openvino_runtime", "blocks": True, "vae": False, "cache_dir": str(cache), **options}


def _runners(pipe: Any) -> dict[str, OpenVinoRunner]:
    return {path: block.__dict__[STAND_IN] for path, block in unet_blocks(pipe.unet)}


# ---- planning (no openvino needed)


def test_converted_whole_it_conflicts_with_feature_cache_block_by_block_both_plan() -> None:
    pipe = tiny_pipeline("sd")
    whole = plan(pipe, tier=None, extra=["openvino_runtime", "feature_cache"], caps=WITH_OPENVINO)
    assert [step.name for step in whole.steps] == ["openvino_runtime"]
    (skipped,) = whole.skipped
    assert skipped.name == "feature_cache" and "conflicts with openvino_runtime" in skipped.reason
    # Listed the other way round, and block by block: both, OpenVINO first (the cache's hooks wrap its blocks).
    blocks = plan(
        pipe, tier=None, extra=["feature_cache", {"name": "openvino_runtime", "blocks": True}], caps=WITH_OPENVINO
    )
    assert [step.name for step in blocks.steps] == ["openvino_runtime", "feature_cache"]
    assert blocks.skipped == []
    assert "block by block" in blocks.steps[0].planned(blocks.anatomy).reason


def test_blocks_need_a_unet() -> None:
    result = plan(
        tiny_pipeline("flux"), tier=None, extra=[{"name": "openvino_runtime", "blocks": True}], caps=WITH_OPENVINO
    )
    (decision,) = result.skipped
    assert "has no UNet down, mid and up blocks" in decision.reason


def test_a_denoiser_openvino_crashes_on_is_skipped_with_the_reason() -> None:
    from sdopt.testing import zoo_pipeline

    pipe = zoo_pipeline("Kandinsky3Pipeline")  # its UNet killed the process in compile_model at f32
    (decision,) = plan(pipe, tier=None, extra=["openvino_runtime"], caps=WITH_OPENVINO).skipped
    assert "SIGSEGV" in decision.reason and "f32" in decision.reason


def test_the_blocks_of_a_unet_in_call_order() -> None:
    paths = [path for path, _ in unet_blocks(tiny_pipeline("sd").unet)]
    assert paths == ["down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1"]
    assert unet_blocks(tiny_pipeline("flux").transformer) == []


# ---- running (openvino installed)


def test_each_block_runs_openvino_within_float32_rounding_and_undo_is_exact(openvino: Any, tmp_path: Path) -> None:
    pipe = _euler(tiny_pipeline("sd"))
    reference = _image(pipe)
    snapshot = Snapshot(pipe, "sd")
    report = optimize(pipe, tier=None, extra=[_blocks(tmp_path)], caps=WITH_OPENVINO)
    assert "forward" not in pipe.unet.__dict__  # the UNet's own forward (the glue between blocks) stays PyTorch's
    runners = _runners(pipe)
    first = _image(pipe)
    assert all(runner.conversions == 1 and runner.openvino_calls == STEPS - 1 for runner in runners.values())
    second = _image(pipe)
    assert all(runner.openvino_calls == 2 * STEPS - 1 for runner in runners.values())
    assert np.abs(first - reference).max() < 1e-4 and np.abs(second - reference).max() < 1e-4
    assert "unet: 5 of 5 blocks run OpenVINO (5 models" in report.after_calls["openvino_runtime"]
    report.undo()
    assert all(
        "forward" not in block.__dict__ and STAND_IN not in block.__dict__ for _, block in unet_blocks(pipe.unet)
    )
    snapshot.assert_identical()


def test_feature_cache_skips_the_deep_blocks_openvino_calls(openvino: Any, tmp_path: Path) -> None:
    pipe = _euler(tiny_pipeline("sd"))
    cached_only = optimize(pipe, tier=None, extra=["feature_cache"], caps=WITH_OPENVINO)
    expected = _image(pipe)  # DeepCache in PyTorch
    cached_only.undo()
    snapshot = Snapshot(pipe, "sd")
    report = optimize(pipe, tier=None, extra=[_blocks(tmp_path), "feature_cache"], caps=WITH_OPENVINO)
    assert [step.name for step in report.applied] == ["openvino_runtime", "feature_cache"]
    runners = _runners(pipe)
    _image(pipe)
    got = _image(pipe)
    assert np.abs(got - expected).max() < 1e-4  # the same DeepCache, its blocks run by OpenVINO
    full_steps = len(range(0, STEPS, 3))  # the deep blocks run at steps 0 and 3 of each image
    for path, runner in runners.items():
        shallow = path in ("down_blocks.0", "up_blocks.1")
        per_image = STEPS if shallow else full_steps
        assert runner.openvino_calls == 2 * per_image - 1, path  # the first call at its shape: PyTorch's
    report.undo()
    snapshot.assert_identical()


def test_int8_calibrates_and_builds_per_block_at_the_end_of_the_first_call_under_feature_cache(
    openvino: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sdopt.optimizations import _openvino_int8

    # The tiny UNet's deep layers see fewer values per channel than int8's real-size threshold, and tiny random
    # weights in int8 sit under any real floor: what is tested here is where int8 is built, not its fidelity.
    monkeypatch.setattr(_openvino_int8, "MIN_ELEMENTS_PER_CHANNEL", 1)
    pipe = _euler(tiny_pipeline("sd"))
    untouched = _image(pipe)
    cached_only = optimize(pipe, tier=None, extra=["feature_cache"], caps=WITH_OPENVINO)
    expected = _image(pipe)
    cached_only.undo()
    steps = [_blocks(tmp_path, int8=True, min_snr_db=0.0), "feature_cache"]
    report = optimize(pipe, tier=None, extra=steps, caps=WITH_OPENVINO)
    runners = _runners(pipe)
    assert all(runner.int8_keep_float == () for runner in runners.values())
    # The deep blocks' forward is feature caching's hook now: the build at the end of the call still finds them.
    assert not isinstance(pipe.unet.mid_block.__dict__["forward"], OpenVinoRunner)
    first = _image(pipe)  # PyTorch throughout while each block calibrates; each converts at its end
    np.testing.assert_array_equal(first, expected)
    for path, runner in runners.items():
        assert runner.observer is None and runner.conversions == 1, path
        assert any("with int8 layers" in event for event in runner.events), (path, runner.events)
    second = _image(pipe)
    for path, runner in runners.items():
        shallow = path in ("down_blocks.0", "up_blocks.1")
        assert runner.openvino_calls == (STEPS if shallow else len(range(0, STEPS, 3))), path
    assert np.isfinite(second).all()
    assert "5 with int8 layers" in report.after_calls["openvino_runtime"]
    report.undo()
    np.testing.assert_array_equal(_image(pipe), untouched)
