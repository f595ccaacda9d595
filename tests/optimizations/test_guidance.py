from __future__ import annotations

import numpy as np
import pytest

from sdopt import optimize, plan
from sdopt.testing import run_pipeline, tiny_pipeline
from tests.helpers import Snapshot


def _unet_batches(pipe, family, **overrides) -> list[int]:
    batches: list[int] = []
    hook = pipe.unet.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    image = run_pipeline(pipe, family, **overrides)
    hook.remove()
    assert np.isfinite(image).all()
    return batches


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_guidance_stops_halfway_and_the_denoiser_runs_single_batches(family, cpu_caps) -> None:
    from diffusers import DPMSolverMultistepScheduler

    pipe = tiny_pipeline(family)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    snapshot = Snapshot(pipe, family)
    assert _unet_batches(pipe, family, num_inference_steps=4) == [2, 2, 2, 2]
    report = optimize(pipe, tier=None, extra=["guidance"], caps=cpu_caps)
    assert _unet_batches(pipe, family, num_inference_steps=4) == [2, 2, 1, 1]
    assert _unet_batches(pipe, family, num_inference_steps=4, guidance_scale=1.0) == [1, 1, 1, 1]
    report.undo()
    snapshot.assert_identical()


def test_the_callers_callback_still_runs(sd_pipe, cpu_caps) -> None:
    seen = []

    def callback(pipe, step, timestep, tensors):
        seen.append((step, tensors["prompt_embeds"].shape[0]))
        return tensors

    report = optimize(sd_pipe, tier=None, extra=[{"name": "guidance", "stop_at": 0.5}], caps=cpu_caps)
    run_pipeline(
        sd_pipe,
        "sd",
        num_inference_steps=4,
        callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"],
    )
    assert [step for step, _ in seen] == list(range(len(seen))) and len(seen) >= 4  # PNDM adds a warm-up step
    assert seen[0][1] == 2 and seen[-1][1] == 1
    report.undo()


@pytest.mark.parametrize("family", ["sd3", "flux", "pixart"])
def test_unverified_pipelines_are_skipped(family, cpu_caps) -> None:
    result = plan(tiny_pipeline(family), tier=None, extra=["guidance"], caps=cpu_caps)
    assert "verified for" in result.skipped[0].reason


def test_a_bad_fraction_is_refused_naming_the_range(sd_pipe, cpu_caps) -> None:
    from sdopt.errors import ConfigError

    with pytest.raises(ConfigError, match=r"stop_at=1.5 is out of range; allowed: > 0 and < 1"):
        plan(sd_pipe, tier=None, extra=[{"name": "guidance", "stop_at": 1.5}], caps=cpu_caps)


def _as_turbo(pipe):
    pipe.register_to_config(_name_or_path="stabilityai/sdxl-turbo")
    return pipe


def test_adversarially_distilled_models_run_without_guidance_unless_asked(cpu_caps) -> None:
    pipe = _as_turbo(tiny_pipeline("sdxl"))
    snapshot = Snapshot(pipe, "sdxl")
    report = optimize(pipe, tier=None, extra=["guidance"], caps=cpu_caps)
    assert report.applied[0].config["mode"] == "off"
    assert _unet_batches(pipe, "sdxl", num_inference_steps=3) == [1, 1, 1]
    assert _unet_batches(pipe, "sdxl", num_inference_steps=3, guidance_scale=5.0) == [2, 2, 2]
    report.undo()
    snapshot.assert_identical()


def test_distilled_models_get_four_steps_and_keep_their_scheduler(cpu_caps) -> None:
    pipe = _as_turbo(tiny_pipeline("sd"))
    result = plan(pipe, tier="fast", caps=cpu_caps)  # the tier that swaps solvers
    names = [step.name for step in result.steps]
    assert "guidance" in names and "step_budget" in names and "scheduler" not in names
    assert next(s for s in result.steps if s.name == "step_budget").config.steps == 4
    reasons = {d.name: d.reason for d in result.skipped}
    assert "distilled" in reasons["scheduler"]


def test_lcm_and_guidance_embedded_models_are_skipped_with_the_reason(cpu_caps) -> None:
    flux = tiny_pipeline("flux")
    flux.transformer.register_to_config(guidance_embeds=True)
    reason = plan(flux, tier=None, extra=["guidance"], caps=cpu_caps).skipped[0].reason
    assert reason.startswith("guidance-embedded-distilled model")
