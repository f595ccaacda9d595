from __future__ import annotations

import functools

import numpy as np
import pytest

from sdopt import optimize, plan
from sdopt.testing import call_kwargs, run_pipeline
from tests.helpers import Snapshot


@pytest.fixture
def steps_asked(monkeypatch):
    """Record the num_inference_steps that reach the pipeline class's own __call__."""

    def install(pipe) -> list:
        asked: list = []
        cls = type(pipe)
        original = cls.__call__

        @functools.wraps(original)  # keeps the signature step_budget inspects
        def recorder(self, *args, **kwargs):
            asked.append(kwargs.get("num_inference_steps"))
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__call__", recorder)
        return asked

    return install


def _call(pipe, family, **overrides) -> None:
    kwargs = call_kwargs(family)
    kwargs.pop("num_inference_steps")
    kwargs.update(overrides)
    pipe(**kwargs)


def test_default_steps_are_lowered_and_explicit_ones_respected(pipe, family, cpu_caps, steps_asked) -> None:
    snapshot = Snapshot(pipe, family)
    asked = steps_asked(pipe)
    report = optimize(pipe, tier=None, extra=[{"name": "step_budget", "steps": 3}], caps=cpu_caps)
    _call(pipe, family)
    _call(pipe, family, num_inference_steps=5)
    assert asked == [3, 5]
    assert type(pipe).__name__ == snapshot.state["pipeline_class"][0]
    report.undo()
    snapshot.assert_identical()


def test_cap_lowers_explicit_values_too(sd_pipe, cpu_caps, steps_asked) -> None:
    asked = steps_asked(sd_pipe)
    report = optimize(sd_pipe, tier=None, extra=[{"name": "step_budget", "steps": 3, "cap": True}], caps=cpu_caps)
    _call(sd_pipe, "sd", num_inference_steps=8)
    _call(sd_pipe, "sd", num_inference_steps=2)
    assert "capped at 3" in report.applied[0].reason
    report.undo()
    _call(sd_pipe, "sd", num_inference_steps=8)
    assert asked == [3, 2, 8]


def test_tier_budget_follows_the_device(sd_pipe, cpu_caps, cuda_caps) -> None:
    on_cpu = {s.name: s.config for s in plan(sd_pipe, tier="fast", caps=cpu_caps).steps}
    on_gpu = {s.name: s.config for s in plan(sd_pipe, tier="fast", caps=cuda_caps).steps}
    assert on_cpu["step_budget"].steps == 20 and on_gpu["step_budget"].steps == 25


def test_already_within_budget_is_skipped(sd_pipe, cpu_caps) -> None:
    result = plan(sd_pipe, tier=None, extra=[{"name": "step_budget", "steps": 60}], caps=cpu_caps)
    assert "default of 50 steps is already within the budget of 60" in result.skipped[0].reason


def test_the_wrapped_pipeline_still_saves_under_its_own_class(sd_pipe, cpu_caps, tmp_path) -> None:
    from diffusers import DiffusionPipeline

    report = optimize(sd_pipe, tier=None, extra=[{"name": "step_budget", "steps": 3}], caps=cpu_caps)
    sd_pipe.save_pretrained(tmp_path)
    report.undo()
    loaded = DiffusionPipeline.from_pretrained(tmp_path)
    assert type(loaded).__name__ == "StableDiffusionPipeline"
    loaded.set_progress_bar_config(disable=True)
    assert np.array_equal(run_pipeline(loaded, "sd"), run_pipeline(sd_pipe, "sd"))


@pytest.mark.parametrize("steps", [0])
def test_zero_means_by_device(sd_pipe, cpu_caps, steps) -> None:
    result = plan(sd_pipe, tier=None, extra=[{"name": "step_budget", "steps": steps}], caps=cpu_caps)
    assert result.steps[0].config.steps == 20


@pytest.mark.parametrize("name", ["step_budget", "guidance", "resolution"])
def test_a_second_optimize_does_not_wrap_the_call_again(name, cpu_caps) -> None:
    from sdopt.calls import call_layers
    from sdopt.testing import tiny_pipeline

    pipe = tiny_pipeline("sd")
    first = optimize(pipe, tier=None, extra=[name], caps=cpu_caps)
    second = optimize(pipe, tier=None, extra=[name], caps=cpu_caps)
    assert [d.name for d in first.applied] == [name] and second.applied == []
    assert second.skipped[0].reason.startswith("already active")
    assert call_layers(pipe) == [name]
    first.undo()
    assert call_layers(pipe) == []


def test_one_step_on_pixart_without_an_lcm_scheduler_is_skipped_with_the_reason(cpu_caps) -> None:
    from diffusers import LCMScheduler

    from sdopt.testing import tiny_pipeline

    pipe = tiny_pipeline("pixart")
    report = optimize(pipe, tier=None, extra=[{"name": "step_budget", "steps": 1, "cap": True}], caps=cpu_caps)
    assert not report.applied and "LCM scheduler" in report.skipped[0].reason
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    report = optimize(pipe, tier=None, extra=[{"name": "step_budget", "steps": 1, "cap": True}], caps=cpu_caps)
    assert [d.name for d in report.applied] == ["step_budget"]
    assert pipe(**call_kwargs("pixart")).images.shape[0] == 1  # capped at one step, and it runs
    report.undo()
