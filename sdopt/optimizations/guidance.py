"""Stop classifier-free guidance after a fraction of the steps (CFG truncation)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sdopt.anatomy import Anatomy
from sdopt.capabilities import Capabilities
from sdopt.optimizations._call_wrapper import call_default, wrap_call
from sdopt.optimizations.base import Optimization, Undo
from sdopt.registry import register

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
    """``stop_at``: fraction of the steps after which guidance stops (0.5: the second half runs unguided)."""

    stop_at: float = 0.5


@register
class Guidance(Optimization):
    """The late steps refine details where guidance matters little; without it each step runs the
    denoiser on one batch instead of two. ``stop_at=0.5`` removes a quarter of the denoiser work.
    Done with diffusers' ``callback_on_step_end`` (its documented dynamic-CFG recipe), chained
    with the caller's own callback. Lossy.

    Example:
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

    def check(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> str | None:
        if not 0.0 < config.stop_at < 1.0:
            return f"stop_at must be between 0 and 1, got {config.stop_at}"
        if anatomy.pipeline_class not in _VERIFIED:
            return f"CFG truncation is verified for {', '.join(_VERIFIED)} only, not {anatomy.pipeline_class}"
        return None

    def describe(self, config: Any, anatomy: Anatomy) -> str:
        return f"classifier-free guidance stops after {config.stop_at:.0%} of the steps"

    def apply(self, pipe: Any, anatomy: Anatomy, caps: Capabilities, config: Any) -> Undo:
        doubled = [name for name in type(pipe)._callback_tensor_inputs if name != "latents"]

        def adjust(kwargs: dict[str, Any]) -> dict[str, Any]:
            scale = kwargs.get("guidance_scale", call_default(pipe, "guidance_scale"))
            if scale is None or scale <= 1:
                return kwargs  # no guidance to stop
            user_callback = kwargs.get("callback_on_step_end")
            user_inputs = getattr(user_callback, "tensor_inputs", None) or kwargs.get(
                "callback_on_step_end_tensor_inputs", ["latents"]
            )

            def stop_guidance(p: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
                if step + 1 == max(1, int(p._num_timesteps * config.stop_at)):
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

        return wrap_call(pipe, adjust)
