"""Less classifier-free guidance: none for guidance-distilled models, and only for the first steps (CFG truncation)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from sdopt.anatomy import Anatomy
from sdopt.calls import CallLayer, call_default, call_layers, call_parameters, wrap_call
from sdopt.capabilities import Capabilities
from sdopt.optimization import Optimization, Undo, register, within

# Pipelines whose CFG state lives entirely in `_callback_tensor_inputs` (diffusers' own dynamic-CFG
# recipe works there); others, e.g. inpainting, double more tensors than they hand to callbacks.
_VERIFIED = (
    "StableDiffusionPipeline",
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionXLPipeline",
    "StableDiffusionXLImg2ImgPipeline",
)


@dataclass(frozen=True)
class GuidanceConfig:
    """``mode``: "truncate" stops guidance after ``stop_at`` of the steps (0.5: the second half runs
    unguided); "off" makes ``guidance_scale`` default to 0 (guidance-distilled models such as SDXL-Turbo
    are made to sample without it; an explicit value from the caller is respected); "auto": "off" for
    adversarially distilled models, "truncate" for the others."""

    mode: Literal["auto", "truncate", "off"] = "auto"
    stop_at: float = field(default=0.5, metadata=within(0, 1, above=True, below=True))


@register
class Guidance(Optimization):
    """The late steps refine details where guidance matters little; without it each step runs the
    denoiser on one batch instead of two. ``stop_at=0.5`` removes a quarter of the denoiser work.
    Done with diffusers' ``callback_on_step_end`` (its documented dynamic-CFG recipe), chained
    with the caller's own callback. Lossy. For adversarially distilled models (SD/SDXL-Turbo,
    Lightning, Hyper-SD), whose pipelines still default to a guidance scale of 5-7.5, guidance is
    turned off by default instead: half the denoiser work, and the image the model was trained for.

    Examples:
        >>> from sdopt import optimize
        >>> from sdopt.testing import tiny_pipeline
        >>> pipe = tiny_pipeline("sd")
        >>> report = optimize(pipe, tier=None, extra=["guidance"])
        >>> report.applied[0].reason
        'classifier-free guidance stops after 50% of the steps'
        >>> report.undo()
    """

    name = "guidance"
    kind = "sampling"
    summary = "classifier-free guidance only for the first part of the steps"
    Config = GuidanceConfig
    lossy = True

    def resolve(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> Any:
        if config.mode != "auto":
            return config
        mode = "off" if anatomy.distillation == "adversarial" else "truncate"
        return GuidanceConfig(mode, config.stop_at)  # type: ignore[arg-type]

    def check(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> str | None:
        if self.name in call_layers(anatomy.pipeline):
            return "already active (a previous optimize() wraps the pipeline's call with it)"
        if not 0.0 < config.stop_at < 1.0:
            return f"stop_at must be between 0 and 1, got {config.stop_at}"
        if anatomy.distillation in ("lcm", "guidance-embedded"):
            kind = anatomy.distillation
            return f"{kind}-distilled model: the pipeline already runs it without classifier-free guidance"
        if "guidance_scale" not in call_parameters(anatomy.pipeline):
            return f"{anatomy.pipeline_class} takes no guidance_scale"
        mode = self.resolve(anatomy, caps, config).mode
        if mode == "off":
            if call_default(anatomy.pipeline, "guidance_scale") in (0, 0.0, 1, 1.0):
                return "the pipeline already defaults to no guidance"
            return None
        if anatomy.pipeline_class not in _VERIFIED:
            return f"CFG truncation is verified for {', '.join(_VERIFIED)} only, not {anatomy.pipeline_class}"
        return None

    def describe(self, config: Any, anatomy: Anatomy) -> str:
        if config.mode == "off":
            return "guidance_scale defaults to 0: no classifier-free guidance (an explicit value is respected)"
        return f"classifier-free guidance stops after {config.stop_at:.0%} of the steps"

    def apply(self, pipe: Any, anatomy: Anatomy, caps: Capabilities, config: Any) -> Undo:
        if config.mode == "off":
            return wrap_call(pipe, _NoGuidance(self.name))
        doubled = [name for name in type(pipe)._callback_tensor_inputs if name != "latents"]
        return wrap_call(pipe, _TruncatedGuidance(self.name, config.stop_at, doubled))


class _NoGuidance(CallLayer):
    def adjust(self, pipe: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        kwargs.setdefault("guidance_scale", 0.0)
        return kwargs


class _TruncatedGuidance(CallLayer):
    def __init__(self, name: str, stop_at: float, doubled: list[str]) -> None:
        super().__init__(name)
        self.stop_at, self.doubled = stop_at, doubled

    def adjust(self, pipe: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        scale = kwargs.get("guidance_scale", call_default(pipe, "guidance_scale"))
        if scale is None or scale <= 1:
            return kwargs  # no guidance to stop
        user_callback = kwargs.get("callback_on_step_end")
        user_inputs = getattr(user_callback, "tensor_inputs", None) or kwargs.get(
            "callback_on_step_end_tensor_inputs", ["latents"]
        )
        stop_at, doubled = self.stop_at, self.doubled

        def stop_guidance(p: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if step + 1 == max(1, int(p._num_timesteps * stop_at)):
                p._guidance_scale = 0.0
                batch = tensors["latents"].shape[0]
                for name in doubled:
                    value = tensors.get(name)
                    if value is not None and value.shape[0] == 2 * batch:
                        tensors[name] = value.chunk(2)[1]  # keep the conditional half
            if user_callback is not None:
                tensors = user_callback(p, step, timestep, tensors) or tensors
            return tensors

        kwargs["callback_on_step_end"] = stop_guidance
        kwargs["callback_on_step_end_tensor_inputs"] = sorted({"latents", *doubled, *user_inputs})
        return kwargs
