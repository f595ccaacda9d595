"""optimize(..., verify=True): a step that breaks the call is found, rolled back and reported."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from sdopt import optimize, registry
from sdopt.optimization import Optimization
from sdopt.testing import (
    fake_capabilities,
    pipeline_state,
    run_pipeline,
    run_zoo_pipeline,
    state_differences,
    tiny_pipeline,
    zoo_pipeline,
)


class BreaksTheCall(Optimization):
    """Applies cleanly, then makes every denoiser call fail (as a missing kernel would)."""

    name = "breaks_the_call"
    kind = "layout"

    def apply(self, pipe: Any, anatomy: Any, caps: Any, config: Any) -> Any:
        denoiser = anatomy.denoiser

        def forward(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("no kernel image is available for execution on the device")

        denoiser.forward = forward
        return lambda: denoiser.__dict__.pop("forward")


@pytest.fixture
def breaking_step():
    registry.register(BreaksTheCall)
    yield BreaksTheCall.name
    registry.unregister(BreaksTheCall.name)


def test_the_step_that_breaks_the_call_is_found_rolled_back_and_reported(sd_pipe, breaking_step) -> None:
    expected = run_pipeline(sd_pipe, "sd")
    before = pipeline_state(sd_pipe)
    extra = ["vae_slicing", breaking_step, "fuse_qkv"]
    report = optimize(sd_pipe, tier=None, extra=extra, caps=fake_capabilities("cpu"), verify=True)
    assert [d.name for d in report.failed] == [breaking_step]
    assert "no kernel image" in report.failed[0].reason and "verification call" in report.failed[0].reason
    assert sorted(d.name for d in report.applied) == ["fuse_qkv", "vae_slicing"]
    assert sd_pipe.vae.use_slicing and "forward" not in sd_pipe.unet.__dict__
    np.testing.assert_allclose(run_pipeline(sd_pipe, "sd"), expected, atol=1e-5)  # fused QKV: float rounding
    report.undo()
    assert state_differences(before, pipeline_state(sd_pipe)) == []


def test_without_verify_the_broken_step_stays_applied(sd_pipe, breaking_step) -> None:
    report = optimize(sd_pipe, tier=None, extra=[breaking_step], caps=fake_capabilities("cpu"))
    assert [d.name for d in report.applied] == [breaking_step]
    with pytest.raises(RuntimeError, match="no kernel image"):
        run_pipeline(sd_pipe, "sd")
    report.undo()


def test_a_call_the_verification_cannot_make_is_reported_inconclusive() -> None:
    # Kandinsky 2.2's decoder needs image embeddings from its prior: nothing to make them up from.
    pipe = zoo_pipeline("KandinskyV22Pipeline")
    report = optimize(pipe, tier=None, extra=["channels_last"], caps=fake_capabilities("cpu"), verify=True)
    assert [d.name for d in report.applied] == ["channels_last"]
    assert any(warning.startswith("verify: inconclusive") for warning in report.warnings)
    report.undo()


@pytest.mark.parametrize(
    "name", ["StableDiffusionImg2ImgPipeline", "StableDiffusionControlNetPipeline", "FluxFillPipeline", "WanPipeline"]
)
def test_verification_makes_up_the_inputs_of_variants(name) -> None:
    pipe = zoo_pipeline(name)
    expected = run_zoo_pipeline(pipe, name)
    report = optimize(pipe, tier="fast", caps=fake_capabilities("cpu-amx"), verify=True)
    assert report.failed == [] and not any("inconclusive" in w for w in report.warnings), report
    report.undo()
    assert np.array_equal(run_zoo_pipeline(pipe, name), expected)


def test_load_verifies(tmp_path) -> None:
    import sdopt

    tiny_pipeline("sd").save_pretrained(tmp_path)
    pipe, report = sdopt.load(str(tmp_path), tier="balanced", caps=fake_capabilities("cpu"))
    assert report.failed == [] and not any("inconclusive" in w for w in report.warnings)
