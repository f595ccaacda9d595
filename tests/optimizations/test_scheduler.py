from __future__ import annotations

import numpy as np
import pytest

from sdopt import optimize, plan
from sdopt.optimizations.scheduler import SOLVERS
from sdopt.testing import run_pipeline, tiny_pipeline, zoo_pipeline
from tests.helpers import Snapshot


@pytest.mark.parametrize(
    ("family", "expected"),
    [
        ("sd", "DPMSolverMultistepScheduler"),
        ("sdxl", "DPMSolverMultistepScheduler"),
        ("pixart", "DPMSolverMultistepScheduler"),
    ],
)
def test_auto_picks_dpm_solver_and_keeps_every_original_setting(family, expected, cpu_caps) -> None:
    pipe = tiny_pipeline(family)
    snapshot = Snapshot(pipe, family)
    before = dict(pipe.scheduler.config)
    report = optimize(pipe, tier=None, extra=["scheduler"], caps=cpu_caps)
    assert type(pipe.scheduler).__name__ == expected and pipe.config.scheduler[1] == expected
    for key in ("beta_schedule", "beta_start", "beta_end", "timestep_spacing", "steps_offset", "prediction_type"):
        if key in before:
            assert pipe.scheduler.config[key] == before[key], key
    assert pipe.scheduler.config.algorithm_type == "dpmsolver++"
    assert np.isfinite(run_pipeline(pipe, family)).all()
    report.undo()
    snapshot.assert_identical()


def test_a_same_class_rebuild_keeps_the_output_identical() -> None:
    """diffusers' from_config drops keys listed in _use_default_values; the rebuild must not."""
    from diffusers import DDIMScheduler

    from sdopt.optimizations._sampling import rebuild

    pipe = tiny_pipeline("sd")
    pipe.scheduler = DDIMScheduler(steps_offset=1, timestep_spacing="trailing", beta_schedule="scaled_linear")
    # As recorded when a config file lacks these keys and a later version's defaults differ:
    pipe.scheduler.register_to_config(_use_default_values=["steps_offset", "timestep_spacing"])
    original = pipe.scheduler
    expected = run_pipeline(pipe, "sd", num_inference_steps=4)

    pipe.scheduler = DDIMScheduler.from_config(original.config)  # the trap: settings lost
    assert not np.array_equal(run_pipeline(pipe, "sd", num_inference_steps=4), expected)
    pipe.scheduler = rebuild(original, "DDIMScheduler", {})
    assert np.array_equal(run_pipeline(pipe, "sd", num_inference_steps=4), expected)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_flow_models_only_take_flow_solvers(family, cpu_caps) -> None:
    pipe = tiny_pipeline(family)
    auto = plan(pipe, tier=None, extra=["scheduler"], caps=cpu_caps)
    assert (
        auto.skipped[0].reason
        == "flow-matching model: it keeps the scheduler it ships with (FlowMatchEulerDiscreteScheduler)"
    )
    wrong = plan(pipe, tier=None, extra=[{"name": "scheduler", "solver": "dpmpp_2m"}], caps=cpu_caps)
    assert "flow-matching model" in wrong.skipped[0].reason
    snapshot = Snapshot(pipe, family)
    report = optimize(pipe, tier=None, extra=[{"name": "scheduler", "solver": "flow_unipc"}], caps=cpu_caps)
    assert type(pipe.scheduler).__name__ == "UniPCMultistepScheduler" and pipe.scheduler.config.use_flow_sigmas
    assert np.isfinite(run_pipeline(pipe, family)).all()
    report.undo()
    snapshot.assert_identical()


def test_lcm_distilled_unets_get_the_lcm_scheduler(cpu_caps) -> None:
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    sd = tiny_pipeline("sd")
    config = {k: v for k, v in sd.unet.config.items() if k != "_use_default_values"}
    config["time_cond_proj_dim"] = 8
    pipe = StableDiffusionPipeline(**{**sd.components, "unet": UNet2DConditionModel.from_config(config)})
    result = plan(pipe, tier=None, extra=["scheduler"], caps=cpu_caps)
    assert result.steps[0].config.solver == "lcm"


def test_unknown_families_need_an_explicit_solver(cpu_caps) -> None:
    from tests.helpers import ddpm_pipeline

    result = plan(ddpm_pipeline(), tier=None, extra=["scheduler"], caps=cpu_caps)
    assert "no solver verified for the other family" in result.skipped[0].reason
    assert set(SOLVERS) >= {"dpmpp_2m", "unipc", "euler", "lcm", "flow_euler", "flow_unipc"}


@pytest.mark.parametrize("name", ["KandinskyV22Pipeline", "IFPipeline", "StableVideoDiffusionPipeline"])
def test_families_dpm_solver_was_not_verified_on_keep_their_scheduler(name, cpu_caps) -> None:
    # DPM-Solver++ on Kandinsky 2.2 (learned variance) sliced its 4 latent channels to 3 and failed.
    result = plan(zoo_pipeline(name), tier=None, extra=["scheduler"], caps=cpu_caps)
    assert "no solver verified" in result.skipped[0].reason


def test_a_flow_model_with_another_scheduler_keeps_it(cpu_caps) -> None:
    # e.g. SanaSprint's SCM scheduler, whose pipeline calls set_timesteps(max_timesteps=...).
    from diffusers import UniPCMultistepScheduler

    pipe = tiny_pipeline("flux")
    pipe.scheduler = UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction")
    result = plan(pipe, tier=None, extra=["scheduler"], caps=cpu_caps)
    assert "keeps the scheduler it ships with (UniPCMultistepScheduler)" in result.skipped[0].reason


def test_lcm_and_animatediff_pipelines_get_their_solvers(cpu_caps) -> None:
    lcm = plan(zoo_pipeline("LatentConsistencyModelPipeline"), tier=None, extra=["scheduler"], caps=cpu_caps)
    assert lcm.skipped[0].reason == "already LCMScheduler"
    animatediff = plan(zoo_pipeline("AnimateDiffPipeline"), tier=None, extra=["scheduler"], caps=cpu_caps)
    assert animatediff.steps[0].config.solver == "dpmpp_2m"
