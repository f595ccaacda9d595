"""feature_cache skips real work: deep-block computations are counted."""

from __future__ import annotations

import numpy as np
import pytest

from sdopt import optimize, plan
from sdopt.testing import run_pipeline, tiny_pipeline
from tests.helpers import Snapshot


def _count(module) -> list[int]:
    calls: list[int] = []
    module.register_forward_pre_hook(lambda *args: calls.append(1))
    return calls


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_deep_cache_skips_two_thirds_of_the_deep_unet_work(family, cpu_caps) -> None:
    pipe = tiny_pipeline(family)
    deep = _count(pipe.unet.mid_block.resnets[0])  # inside a cached block: counts real computations
    shallow = _count(pipe.unet.conv_in)
    snapshot = Snapshot(pipe, family)
    deep.clear(), shallow.clear()
    baseline = run_pipeline(pipe, family, num_inference_steps=10)
    full = len(deep)
    deep.clear(), shallow.clear()
    report = optimize(pipe, tier=None, extra=["feature_cache"], caps=cpu_caps)
    image = run_pipeline(pipe, family, num_inference_steps=10)
    assert len(shallow) == full  # the shallow blocks still run every step
    assert len(deep) == len(range(0, full, 3)) <= full * 2 / 3  # steps 0, 3, 6, 9 only: >= 1/3 skipped
    assert np.isfinite(image).all() and np.abs(image - baseline).mean() < 0.1
    deep.clear()
    run_pipeline(pipe, family, num_inference_steps=10)  # a new image starts with a full step again
    assert len(deep) == len(range(0, full, 3))
    report.undo()
    snapshot.assert_identical()


def test_first_block_cache_on_flux_skips_the_remaining_blocks(cpu_caps) -> None:
    pipe = tiny_pipeline("flux")
    inner = _count(pipe.transformer.single_transformer_blocks[0].proj_mlp)
    snapshot = Snapshot(pipe, "flux")
    inner.clear()
    run_pipeline(pipe, "flux", num_inference_steps=10)
    full = len(inner)
    inner.clear()
    report = optimize(pipe, tier=None, extra=[{"name": "feature_cache", "threshold": 0.5}], caps=cpu_caps)
    assert np.isfinite(run_pipeline(pipe, "flux", num_inference_steps=10)).all()
    assert len(inner) <= full * 2 / 3
    report.undo()
    snapshot.assert_identical()


@pytest.mark.parametrize("family", ["sd3", "pixart"])
def test_transformers_without_caches_are_skipped(family, cpu_caps) -> None:
    result = plan(tiny_pipeline(family), tier=None, extra=["feature_cache"], caps=cpu_caps)
    assert "neither UNet blocks to cache nor diffusers' enable_cache" in result.skipped[0].reason


def test_already_active_and_bad_options(sd_pipe, cpu_caps) -> None:
    report = optimize(sd_pipe, tier=None, extra=["feature_cache"], caps=cpu_caps)
    assert plan(sd_pipe, tier=None, extra=["feature_cache"], caps=cpu_caps).skipped[0].reason == "already active"
    report.undo()
    bad = plan(sd_pipe, tier=None, extra=[{"name": "feature_cache", "interval": 1}], caps=cpu_caps)
    assert "interval must be >= 2" in bad.skipped[0].reason
