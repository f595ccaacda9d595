"""feature_cache skips real work: deep-block computations are counted."""

from __future__ import annotations

import numpy as np
import pytest

from sdopt import optimize, plan
from sdopt.errors import ConfigError
from sdopt.testing import run_pipeline, tiny_pipeline, zoo_pipeline
from tests.helpers import Snapshot


def _count(module) -> list[int]:
    calls: list[int] = []
    module.register_forward_pre_hook(lambda *args: calls.append(1))
    return calls


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_deep_cache_skips_two_thirds_of_the_deep_unet_work(family, cpu_caps) -> None:
    from diffusers import EulerDiscreteScheduler

    pipe = tiny_pipeline(family)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)  # one UNet call per step
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


def test_deep_cache_counts_steps_by_timestep_and_keeps_one_cache_per_call_of_a_step(cpu_caps) -> None:
    # PNDM calls the UNet twice at one timestep (its PLMS warm-up): the second call is not handed
    # the first one's features, it is computed (or replayed from its own position on later steps).
    pipe = tiny_pipeline("sd")
    pipe.scheduler.set_timesteps(10)
    timesteps = pipe.scheduler.timesteps.tolist()
    assert len(timesteps) == 11 and len(set(timesteps)) == 10
    deep = _count(pipe.unet.mid_block.resnets[0])
    report = optimize(pipe, tier=None, extra=["feature_cache"], caps=cpu_caps)
    run_pipeline(pipe, "sd", num_inference_steps=10)
    report.undo()
    steps_in_full = len(range(0, 10, 3))  # steps 0, 3, 6, 9
    assert len(deep) == steps_in_full + 1  # + the repeated timestep's own first call (step 1)


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


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("FluxImg2ImgPipeline", "does not open the transformer's cache_context"),
        ("FluxControlNetPipeline", "does not open the transformer's cache_context"),
        ("LattePipeline", "does not open the transformer's cache_context"),
        ("CogVideoXPipeline", "1 transformer block(s): nothing to skip"),
    ],
)
def test_first_block_cache_is_skipped_where_diffusers_cannot_run_it(name, reason, cpu_caps) -> None:
    result = plan(zoo_pipeline(name), tier=None, extra=["feature_cache"], caps=cpu_caps)
    assert reason in result.skipped[0].reason


def test_blocks_unknown_to_diffusers_registry_are_skipped(cpu_caps) -> None:
    pipe = zoo_pipeline("WanPipeline")
    extra = type(pipe.transformer.blocks[0])  # a subclass diffusers' block registry has never seen
    pipe.transformer.blocks[0].__class__ = type("CustomBlock", (extra,), {})
    pipe.transformer.blocks.append(pipe.transformer.blocks[0])
    result = plan(pipe, tier=None, extra=["feature_cache"], caps=cpu_caps)
    assert "does not know CustomBlock" in result.skipped[0].reason


def test_a_compiled_denoiser_is_left_alone(sd_pipe, cpu_caps) -> None:
    sd_pipe.unet.compile()  # the user's in-place compile: hooks would force a recompile
    result = plan(sd_pipe, tier=None, extra=["feature_cache"], caps=cpu_caps)
    assert "the denoiser is compiled" in result.skipped[0].reason


def test_already_active_and_bad_options(sd_pipe, cpu_caps) -> None:
    report = optimize(sd_pipe, tier=None, extra=["feature_cache"], caps=cpu_caps)
    assert plan(sd_pipe, tier=None, extra=["feature_cache"], caps=cpu_caps).skipped[0].reason == "already active"
    report.undo()
    with pytest.raises(ConfigError, match="interval=1 is out of range; allowed: >= 2"):
        plan(sd_pipe, tier=None, extra=[{"name": "feature_cache", "interval": 1}], caps=cpu_caps)
