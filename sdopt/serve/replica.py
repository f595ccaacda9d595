"""One serving replica, without Ray: load, apply the pinned preset strictly, warm up, generate.

`sdopt.serve.app` wraps it in a Ray Serve deployment; keeping the work here means it is tested
and usable without Ray (a FastAPI app or a queue worker can hold a `Replica` too).
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from sdopt.presets import Preset
from sdopt.serve.requests import GenerateRequest
from sdopt.verification import run_verification

PresetSource = str | Path | Preset | Mapping[str, Any] | None
"""A preset file, a `Preset`, its ``to_dict()`` form, or ``None`` (the pipeline as loaded)."""


class Replica:
    """A pipeline loaded, optimized with one preset (``strict``: refused on a machine it was not made
    for) and warmed up; `generate` turns requests into PNG bytes.

    Examples:
        >>> from sdopt.serve.replica import Replica
        >>> from sdopt.serve.requests import GenerateRequest
        >>> replica = Replica("tiny-sd", preset=None, warmup=False)
        >>> png = replica.generate([GenerateRequest("a fox", steps=2, seed=1)])[0]
        >>> png[:4]
        b'\\x89PNG'
    """

    def __init__(
        self,
        model: str,
        preset: PresetSource = None,
        *,
        strict: bool = True,
        device: str | None = None,
        warmup: bool = True,
        **from_pretrained_kwargs: Any,
    ) -> None:
        from sdopt.capabilities import detect

        self.model = model
        self.strict = strict
        self.caps = detect(device=device) if device else detect()
        self.pipe = _load(model, self.caps.device, from_pretrained_kwargs)
        self.pipe.set_progress_bar_config(disable=True)
        self._lock = threading.Lock()  # one pipeline call at a time: diffusers pipelines are not thread-safe
        self.preset: Preset | None = None
        self.report: Any = None
        self.reconfigured: dict[str, Any] = {}
        self._apply(as_preset(preset))
        if warmup:
            self.generate([GenerateRequest("warm-up", steps=2)])

    def _apply(self, preset: Preset | None) -> None:
        from sdopt.api import optimize

        self.report = optimize(self.pipe, tier=None, preset=preset, caps=self.caps, strict=self.strict)
        self.preset = preset

    def generate(self, requests: Sequence[GenerateRequest]) -> list[bytes]:
        """PNG bytes per request, in order; requests with the same steps, guidance and size share one
        batched call, each image from its own seed (the same image whatever it is batched with, up to
        the rounding of batched kernels). Raises the first failure (see `generate_each`)."""
        results = self.generate_each(requests)
        for result in results:
            if isinstance(result, Exception):
                raise result
        return [result for result in results if isinstance(result, bytes)]

    def generate_each(self, requests: Sequence[GenerateRequest]) -> list[bytes | Exception]:
        """As `generate`, but a call that fails fails only the requests of its call group: their
        places hold the error, the other groups' their PNGs."""
        results: dict[int, bytes | Exception] = {}
        groups: dict[tuple[Any, ...], list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(request.call_group(), []).append(index)
        with self._lock:
            for indices in groups.values():
                try:
                    images = self._call([requests[i] for i in indices])
                except Exception as error:  # this group's call only: the others are still made
                    results.update(dict.fromkeys(indices, error))
                    continue
                for index, image in zip(indices, images, strict=True):
                    results[index] = _png(image)
        return [results[index] for index in range(len(requests))]

    def check_request(self, request: GenerateRequest) -> list[dict[str, Any]]:
        """Why this pipeline cannot make ``request`` (422 errors naming the field), found before the call:
        each side must be a multiple of the pixels one denoiser token covers (16 for Flux, 8 for SD)."""
        from sdopt.anatomy import inspect_pipeline
        from sdopt.calls import latents_per_token, pixels_per_latent

        anatomy = inspect_pipeline(self.pipe)
        multiple = pixels_per_latent(anatomy) * latents_per_token(anatomy)
        errors = []
        for name in ("height", "width"):
            side = getattr(request, name)
            if side is not None and side % multiple:
                errors.append(
                    {
                        "loc": ["body", name],
                        "msg": f"{anatomy.pipeline_class} makes sides in multiples of {multiple}, got {side}",
                        "type": "int_multiple",
                    }
                )
        return errors

    def _call(self, requests: Sequence[GenerateRequest]) -> list[Any]:
        first = requests[0]
        kwargs: dict[str, Any] = {
            "prompt": [r.prompt for r in requests],
            "num_inference_steps": first.steps,
            "guidance_scale": first.guidance,
            "generator": [torch.Generator("cpu").manual_seed(r.seed) for r in requests],
            "output_type": "pil",
        }
        if any(r.negative_prompt for r in requests):
            kwargs["negative_prompt"] = [r.negative_prompt or "" for r in requests]
        if first.height is not None:
            kwargs["height"] = first.height
        if first.width is not None:
            kwargs["width"] = first.width
        with torch.inference_mode():
            return list(self.pipe(**kwargs).images)

    def check(self) -> None:
        """A real minimal call (see `sdopt.verification`), unless a request is being served right
        now (which shows the pipeline works); raises what the pipeline raises."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            run_verification(self.pipe)
        finally:
            self._lock.release()

    def reconfigure(self, preset: PresetSource) -> dict[str, Any]:
        """Undo the current preset and apply ``preset`` strictly, then make a real minimal call with it; if
        the new one cannot apply here or breaks that call, the old one stays (re-applied) and the
        returned record says why."""
        new = as_preset(preset)
        label = new.label if new is not None else "none"
        if _same(new, self.preset):
            self.reconfigured = {"preset": label, "status": "unchanged"}
            return self.reconfigured
        from sdopt.api import optimize

        with self._lock:
            try:  # refused here (another machine's preset, a step that cannot run) changes nothing
                optimize(self.pipe, tier=None, preset=new, caps=self.caps, strict=self.strict, dry_run=True)
            except Exception as error:
                self.reconfigured = {"preset": label, "status": "refused, old preset kept", "why": _text(error)}
                return self.reconfigured
            old = self.preset
            self.report.undo()
            try:
                self._apply(new)
            except Exception as error:  # it rolled itself back: the old preset goes on again
                self._apply(old)
                self.reconfigured = {"preset": label, "status": "failed, old preset kept", "why": _text(error)}
                return self.reconfigured
            try:  # a preset that applies but breaks calls would fail every request and health check
                run_verification(self.pipe)
            except Exception as error:
                self.report.undo()
                self._apply(old)
                why = f"the verification call failed: {_text(error)}"
                self.reconfigured = {"preset": label, "status": "failed, old preset kept", "why": why}
                return self.reconfigured
        self.reconfigured = {"preset": label, "status": "applied"}
        return self.reconfigured

    def describe(self) -> dict[str, Any]:
        """What this replica runs: the model, the preset, the report and the machine's fingerprint."""
        return {
            "model": self.model,
            "pid": os.getpid(),
            "preset": self.preset.label if self.preset is not None else None,
            "fingerprint": self.caps.fingerprint,
            "made_on": self.caps.fingerprint_facts(),
            "applied": [d.name for d in self.report.applied],
            "report": self.report.to_dict(),
            "reconfigured": self.reconfigured,
        }


def as_preset(source: PresetSource) -> Preset | None:
    """A `Preset` from a file path, its dict form or itself."""
    if source is None or isinstance(source, Preset):
        return source
    if isinstance(source, Mapping):
        return Preset.from_dict(source, source="the serve config")
    return Preset.load(source)


def _same(a: Preset | None, b: Preset | None) -> bool:
    return (a.to_dict() if a is not None else None) == (b.to_dict() if b is not None else None)


def _text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _load(model: str, device: str, from_pretrained_kwargs: Mapping[str, Any]) -> Any:
    from sdopt.simulation.architectures import REAL_ARCHES, TINY_ARCHES, TRAINED_ARCHES, load_pipeline

    if model in TINY_ARCHES or model in REAL_ARCHES or model in TRAINED_ARCHES or not from_pretrained_kwargs:
        return load_pipeline(model, device)
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(model, **from_pretrained_kwargs)
    return pipe.to(device) if device != "cpu" else pipe


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
