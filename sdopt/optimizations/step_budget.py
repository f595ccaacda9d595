"""A default (or a cap) for the number of denoising steps, applied when the pipeline is called."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sdopt.anatomy import Anatomy
from sdopt.calls import call_default, call_layers, call_parameters, wrap_call
from sdopt.capabilities import Capabilities
from sdopt.optimization import Optimization, Undo, register, within
from sdopt.optimizations._sampling import StepCount


@dataclass(frozen=True)
class StepBudgetConfig:
    """``steps``: the budget (0: 4 for LCM- and adversarially distilled models such as SDXL-Turbo,
    else 20 on CPU, 25 elsewhere); ``cap``: also lower explicit larger values."""

    steps: int = field(default=0, metadata=within(0))
    cap: bool = False


@register
class StepBudget(Optimization):
    """Fewer denoising steps when the caller does not ask for a number (SD pipelines default to 50;
    with DPM-Solver++ 20-25 give nearly the same image). An explicit ``num_inference_steps`` is
    respected unless ``cap=True``. Time per image falls in proportion. Lossy.

    Examples:
        >>> from sdopt import optimize
        >>> from sdopt.testing import tiny_pipeline
        >>> pipe = tiny_pipeline("sd")
        >>> report = optimize(pipe, tier=None, extra=[{"name": "step_budget", "steps": 20}])
        >>> report.applied[0].reason
        'num_inference_steps defaults to 20 instead of 50 (an explicit value is respected)'
        >>> report.undo()
    """

    name = "step_budget"
    speed_judged = False  # fewer default steps: a call with an explicit count shows nothing
    kind = "sampling"
    summary = "fewer denoising steps by default (or capped)"
    Config = StepBudgetConfig
    lossy = True
    after = ("scheduler",)

    def resolve(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> Any:
        if config.steps:
            return config
        if anatomy.distillation in ("lcm", "adversarial"):
            return StepBudgetConfig(4, config.cap)  # what these models are distilled for
        return StepBudgetConfig(20 if caps.device == "cpu" else 25, config.cap)

    def check(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> str | None:
        if self.name in call_layers(anatomy.pipeline):
            return "already active (a previous optimize() wraps the pipeline's call with it)"
        pipe = anatomy.pipeline
        if "num_inference_steps" not in call_parameters(pipe):
            return f"{anatomy.pipeline_class} takes no num_inference_steps"
        steps = self.resolve(anatomy, caps, config).steps
        if steps < 1:
            return f"steps must be >= 1, got {steps}"
        if steps == 1 and pipe.__class__.__name__.startswith("PixArt") and not _returns_denoised(pipe):
            # diffusers' PixArt takes element [1] of scheduler.step() on a one-step call (DMD models' LCM
            # scheduler returns the denoised sample there); any other scheduler raises IndexError.
            return (
                f"one step on {anatomy.pipeline_class} needs an LCM scheduler (one-step DMD models), "
                f"not {type(getattr(pipe, 'scheduler', None)).__name__}: use steps >= 2"
            )
        default = call_default(pipe, "num_inference_steps")
        if isinstance(default, int) and default <= steps and not config.cap:
            return f"the pipeline's default of {default} steps is already within the budget of {steps}"
        return None

    def describe(self, config: Any, anatomy: Anatomy) -> str:
        default = call_default(anatomy.pipeline, "num_inference_steps")
        if config.cap:
            return f"num_inference_steps capped at {config.steps}, also when passed explicitly"
        return f"num_inference_steps defaults to {config.steps} instead of {default} (an explicit value is respected)"

    def apply(self, pipe: Any, anatomy: Anatomy, caps: Capabilities, config: Any) -> Undo:
        return wrap_call(pipe, StepCount(self.name, config.steps, config.cap))


def _returns_denoised(pipe: Any) -> bool:
    """Whether the scheduler's ``step(..., return_dict=False)`` gives the denoised sample second."""
    return type(getattr(pipe, "scheduler", None)).__name__ == "LCMScheduler"
