"""Shared by the sampling optimizations (scheduler, step_budget, distill_lora): rebuilding a scheduler
from all of another's settings, and the call layer that sets the step count."""

from __future__ import annotations

from typing import Any

from sdopt.calls import CallLayer


def rebuild(scheduler: Any, class_name: str, settings: dict[str, Any]) -> Any:
    """A ``class_name`` scheduler from ALL of ``scheduler``'s settings (plus ``settings``)."""
    import diffusers

    full_config = {k: v for k, v in scheduler.config.items() if k != "_use_default_values"}
    return getattr(diffusers, class_name).from_config({**full_config, **settings})


class StepCount(CallLayer):
    """``num_inference_steps`` defaults to ``steps``; with ``cap``, a larger explicit value is lowered to it."""

    def __init__(self, name: str, steps: int, cap: bool) -> None:
        super().__init__(name)
        self.steps, self.cap = steps, cap

    def adjust(self, pipe: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        asked = kwargs.get("num_inference_steps")
        if asked is None:
            kwargs["num_inference_steps"] = self.steps
        elif self.cap:
            kwargs["num_inference_steps"] = min(asked, self.steps)
        return kwargs
