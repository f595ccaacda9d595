"""The call a tuning measures: size, steps, guidance and batch, defaulting to the pipeline's own."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from sdopt.anatomy import inspect_pipeline
from sdopt.footprint import default_height
from sdopt.optimizations._call_wrapper import call_default, call_parameters
from sdopt.verification import placeholder_image, verification_kwargs

_FIELDS = ("height", "width", "steps", "guidance", "batch")


@dataclass(frozen=True)
class CallShape:
    """The shape of the calls an app makes: what a tuning measures and what its cache is keyed by.

    ``None`` fields take the pipeline's defaults (:meth:`of`); ``guidance`` and the size stay
    ``None`` for pipelines that take none.

    Examples:
        >>> from sdopt.testing import tiny_pipeline
        >>> from sdopt.tuning import CallShape
        >>> CallShape.of(tiny_pipeline("sd"), {"steps": 4})
        CallShape(height=64, width=64, steps=4, guidance=7.5, batch=1)
    """

    height: int | None = None
    width: int | None = None
    steps: int | None = None
    guidance: float | None = None
    batch: int = 1

    @classmethod
    def of(cls, pipe: Any, call: Mapping[str, Any] | CallShape | None = None) -> CallShape:
        """The shape ``call`` describes, its missing fields filled from ``pipe``'s defaults."""
        if isinstance(call, CallShape):
            given = call
        else:
            values = dict(call or {})
            unknown = sorted(set(values) - set(_FIELDS))
            if unknown:
                raise ValueError(f"unknown call field(s) {', '.join(unknown)}; a call shape has {', '.join(_FIELDS)}")
            given = cls(**values)
        parameters = call_parameters(pipe)
        side = default_height(inspect_pipeline(pipe)) if "height" in parameters else None
        steps = call_default(pipe, "num_inference_steps") if "num_inference_steps" in parameters else None
        guidance = call_default(pipe, "guidance_scale") if "guidance_scale" in parameters else None
        return replace(
            given,
            height=given.height or side,
            width=given.width or given.height or side,
            steps=given.steps or steps,
            guidance=given.guidance if given.guidance is not None else guidance,
        )

    def kwargs(self, pipe: Any, seed: int = 0) -> dict[str, Any]:
        """The keyword arguments of one call of ``pipe`` at this shape (made-up prompt and images)."""
        parameters = call_parameters(pipe)
        kwargs = verification_kwargs(pipe)
        if self.height is not None and "height" in parameters:
            kwargs["height"], kwargs["width"] = self.height, self.width or self.height
        for name in ("image", "control_image", "mask_image"):
            if name in kwargs and self.height is not None:
                kwargs[name] = placeholder_image(self.height, self.width or self.height, mask=name == "mask_image")
        if self.steps is not None and "num_inference_steps" in parameters:
            kwargs["num_inference_steps"] = self.steps
        if self.guidance is not None and "guidance_scale" in parameters:
            kwargs["guidance_scale"] = self.guidance
        if self.batch != 1 and "num_images_per_prompt" in parameters:
            kwargs["num_images_per_prompt"] = self.batch
        if "generator" in parameters:
            kwargs["generator"] = torch.Generator("cpu").manual_seed(seed)
        return kwargs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        size = f"{self.width}x{self.height}" if self.height else "default size"
        guidance = f", guidance {self.guidance:g}" if self.guidance is not None else ""
        return f"{size}, {self.steps} steps{guidance}, batch {self.batch}"
