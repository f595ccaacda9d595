"""Swap the sampler for a faster solver suited to the model, keeping every setting of the original."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sdopt.anatomy import Anatomy
from sdopt.capabilities import Capabilities
from sdopt.optimization import Optimization, Undo, register
from sdopt.optimizations._sampling import rebuild

# solver name -> (diffusers class, settings it needs on top of the original config)
SOLVERS: dict[str, tuple[str, dict[str, Any]]] = {
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "lcm": ("LCMScheduler", {}),
    "flow_euler": ("FlowMatchEulerDiscreteScheduler", {}),
    "flow_unipc": ("UniPCMultistepScheduler", {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}),
}
_FLOW_SOLVERS = ("flow_euler", "flow_unipc")
# Families trained on flow matching: only flow solvers apply, and "auto" keeps the one the pipeline
# ships with (SanaSprint's SCM scheduler takes set_timesteps(max_timesteps=...), which others refuse).
_FLOW_FAMILIES = ("sd3", "flux", "sana", "chroma", "auraflow", "wan", "ltx", "lumina", "hunyuanvideo", "qwenimage")
# Families DPM-Solver++ was verified on (epsilon or v-prediction UNets, PixArt). Elsewhere the swap
# can break the pipeline: Kandinsky 2.2's UNet predicts a learned variance that DPM-Solver slices to
# IF's 3 pixel channels, and the SD latent upscaler is tied to its Euler "sample" scheduler.
_DPM_FAMILIES = ("sd1", "sd2", "sdxl", "pixart")


@dataclass(frozen=True)
class SchedulerConfig:
    """``solver``: "auto" (by family and weights) or one of `SOLVERS`."""

    solver: Literal["auto", "dpmpp_2m", "unipc", "euler", "lcm", "flow_euler", "flow_unipc"] = "auto"


@register
class Scheduler(Optimization):
    """A solver that reaches the same quality in fewer steps: DPM-Solver++ (2M) for SD1/SD2/SDXL/PixArt
    (epsilon or v-prediction), LCM for UNets distilled with LCM (``time_cond_proj_dim``);
    flow-matching families (SD3, Flux, Sana) accept only flow solvers and keep FlowMatchEuler on
    "auto". diffusers' ``from_config`` drops every key listed in ``_use_default_values`` (even a
    DDIM -> DDIM swap changed outputs because ``steps_offset``/``timestep_spacing`` were lost), so
    the new scheduler is built from the complete original config. Undo restores the original object.

    Examples:
        >>> from sdopt import optimize
        >>> from sdopt.testing import tiny_pipeline
        >>> pipe = tiny_pipeline("sd")
        >>> report = optimize(pipe, tier=None, extra=["scheduler"])
        >>> type(pipe.scheduler).__name__, pipe.scheduler.config.timestep_spacing
        ('DPMSolverMultistepScheduler', 'leading')
        >>> report.undo()
    """

    name = "scheduler"
    speed_judged = False  # a solver for fewer steps: at the same count it computes the same
    kind = "scheduler"
    summary = "a faster solver suited to the model (DPM-Solver++, UniPC, LCM, flow solvers)"
    Config = SchedulerConfig
    lossy = True  # a different solver follows a different (equally good) trajectory

    def resolve(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> Any:
        if config.solver != "auto":
            return config
        if anatomy.family in _FLOW_FAMILIES:
            return SchedulerConfig("flow_euler")
        if anatomy.distillation == "lcm" and anatomy.family in _DPM_FAMILIES:
            return SchedulerConfig("lcm")  # LCM-distilled UNet
        return SchedulerConfig("dpmpp_2m")

    def check(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> str | None:
        scheduler = anatomy.scheduler
        if scheduler is None or not hasattr(scheduler, "config"):
            return "the pipeline has no scheduler"
        if anatomy.distillation == "adversarial" and config.solver == "auto":
            kept = type(scheduler).__name__
            return f"adversarially distilled model: it keeps the scheduler it was distilled with ({kept})"
        if config.solver == "auto":
            if anatomy.family in _FLOW_FAMILIES:
                kept = type(scheduler).__name__
                return f"flow-matching model: it keeps the scheduler it ships with ({kept})"
            if anatomy.family not in _DPM_FAMILIES:
                return (
                    f"no solver verified for the {anatomy.family} family, so no safe automatic choice "
                    "(pass an explicit solver)"
                )
        solver = self.resolve(anatomy, caps, config).solver
        flow_model = anatomy.family in _FLOW_FAMILIES or "FlowMatch" in type(scheduler).__name__
        if flow_model and solver not in _FLOW_SOLVERS:
            return f"{anatomy.pipeline_class} is a flow-matching model: use flow_euler or flow_unipc, not {solver}"
        if not flow_model and solver in _FLOW_SOLVERS:
            return f"{solver} is for flow-matching models; {anatomy.pipeline_class} is not one"
        wanted_class, settings = SOLVERS[solver]
        if type(scheduler).__name__ == wanted_class and all(scheduler.config.get(k) == v for k, v in settings.items()):
            return f"already {wanted_class}"
        return None

    def describe(self, config: Any, anatomy: Anatomy) -> str:
        return f"scheduler {SOLVERS[config.solver][0]} ({config.solver}), original settings kept"

    def apply(self, pipe: Any, anatomy: Anatomy, caps: Capabilities, config: Any) -> Undo:
        name = anatomy.scheduler_name or "scheduler"  # check() made sure there is one
        original = getattr(pipe, name)
        class_name, settings = SOLVERS[config.solver]
        setattr(pipe, name, rebuild(original, class_name, settings))
        return lambda: setattr(pipe, name, original)
