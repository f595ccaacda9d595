"""What a client may ask a replica for, checked before it reaches the pipeline.

The body is JSON: ``prompt`` (required), ``negative_prompt``, ``steps``, ``guidance``, ``height``,
``width``, ``seed``. A bad field is refused with the field named (HTTP 422, as FastAPI and pydantic
report validation errors), and the replica keeps serving.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

MAX_SIDE = 4096
MAX_STEPS = 500


@dataclass(frozen=True)
class Limits:
    """What one request may cost a replica, refused with 422 beyond it: the prompts' bytes, the pixels of
    the image, and pixels x steps (the denoising work: 1024x1024 at 50 steps fits the default, 4096x4096
    at 500 steps is 160 times over it).

    Examples:
        >>> from sdopt.serve.requests import GenerateRequest, InvalidRequest, Limits
        >>> try:
        ...     GenerateRequest.parse({"prompt": "x", "height": 4096, "width": 4096, "steps": 500})
        ... except InvalidRequest as error:
        ...     print(error.errors[0]["loc"], error.errors[0]["type"])
        ['body', 'height'] too_large
    """

    prompt_bytes: int = 4096
    pixels: int = 2048 * 2048
    pixel_steps: int = 1024 * 1024 * 100
    body_bytes: int = 64 * 1024
    """The JSON body's size (422 beyond it, before it is parsed)."""
    max_queued: int = 16
    """Requests one replica holds (queued or running) before it answers 503 with Retry-After."""
    timeout_s: float = 300.0
    """Seconds a client waits for its image before a 504."""

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | Limits | None, base: Limits | None = None) -> Limits:
        """Limits from a deployment's ``limits`` (a mapping of these fields, or `Limits`), the fields it
        leaves out taken from ``base`` (default: the defaults); each value must be a positive number
        (an integer except ``timeout_s``), or the error names the field.

        Examples:
            >>> from sdopt.serve.requests import Limits
            >>> Limits.from_config({"pixels": 512 * 512}).pixels
            262144
            >>> Limits.from_config({"max_queued": 0})
            Traceback (most recent call last):
            ...
            ValueError: serve limits: max_queued must be a positive integer, got 0
        """
        if config is None:
            return base or cls()
        if isinstance(config, Limits):
            config = asdict(config)
        if not isinstance(config, Mapping):
            raise ValueError(f"serve limits must be a mapping of {', '.join(cls.__dataclass_fields__)}, got {config!r}")
        unknown = sorted(set(config) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(
                f"serve limits: unknown field(s) {', '.join(unknown)}; known: {', '.join(cls.__dataclass_fields__)}"
            )
        for name, value in config.items():
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            whole = name != "timeout_s"
            if not number or (whole and not isinstance(value, int)) or not (math.isfinite(value) and value > 0):
                kind = "integer" if whole else "number"
                raise ValueError(f"serve limits: {name} must be a positive {kind}, got {value!r}")
        return replace(base or cls(), **dict(config))


class InvalidRequest(ValueError):
    """A request the replica refuses; ``errors`` follow FastAPI's 422 body: ``loc``, ``msg``, ``type``."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))
        self.errors = errors

    def body(self) -> dict[str, Any]:
        return {"detail": self.errors}


@dataclass(frozen=True)
class GenerateRequest:
    """One image to generate.

    Examples:
        >>> from sdopt.serve.requests import GenerateRequest
        >>> GenerateRequest.parse(b'{"prompt": "a fox", "steps": 4, "seed": 7}').call_group()
        (4, 7.5, None, None)
    """

    prompt: str
    negative_prompt: str | None = None
    steps: int = 20
    guidance: float = 7.5
    height: int | None = None
    width: int | None = None
    seed: int = 0

    @classmethod
    def parse(cls, body: bytes | str | Mapping[str, Any], limits: Limits = Limits()) -> GenerateRequest:
        """Validate a JSON body (bytes, text or an already decoded mapping) against ``limits``; raises
        `InvalidRequest`."""
        if isinstance(body, (bytes, str)):
            try:
                body = json.loads(body or b"{}")
            except ValueError as error:
                raise InvalidRequest([_error(("body",), f"not JSON: {error}", "json_invalid")]) from error
        if not isinstance(body, Mapping):
            raise InvalidRequest([_error(("body",), "expected a JSON object", "dict_type")])
        errors: list[dict[str, Any]] = []
        unknown = sorted(set(body) - set(cls.__dataclass_fields__))
        errors += [_error(("body", name), "unknown field", "extra_forbidden") for name in unknown]
        values: dict[str, Any] = {}
        if not isinstance(body.get("prompt"), str) or not body["prompt"].strip():
            errors.append(_error(("body", "prompt"), "a non-empty string is required", "missing"))
        else:
            values["prompt"] = body["prompt"]
        if body.get("negative_prompt") is not None:
            if isinstance(body["negative_prompt"], str):
                values["negative_prompt"] = body["negative_prompt"]
            else:
                errors.append(_error(("body", "negative_prompt"), "must be a string", "string_type"))
        for name, low, high in (("steps", 1, MAX_STEPS), ("seed", 0, 2**63 - 1)):
            if name in body:
                value = body[name]
                if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                    errors.append(_error(("body", name), f"must be an integer from {low} to {high}", "int_range"))
                else:
                    values[name] = value
        if "guidance" in body:
            value = body["guidance"]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 50:
                errors.append(_error(("body", "guidance"), "must be a number from 0 to 50", "float_range"))
            else:
                values["guidance"] = float(value)
        for name in ("height", "width"):
            value = body.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 8 <= value <= MAX_SIDE or value % 8:
                errors.append(_error(("body", name), f"must be a multiple of 8 from 8 to {MAX_SIDE}", "int_multiple"))
            else:
                values[name] = value
        errors += _over_limits(values, limits)
        if errors:
            raise InvalidRequest(errors)
        return cls(**values)

    def call_group(self) -> tuple[Any, ...]:
        """Requests with the same group can share one batched pipeline call."""
        return (self.steps, self.guidance, self.height, self.width)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _error(loc: tuple[str, ...], msg: str, kind: str) -> dict[str, Any]:
    return {"loc": list(loc), "msg": msg, "type": kind}


def _over_limits(values: Mapping[str, Any], limits: Limits) -> list[dict[str, Any]]:
    """The fields of an otherwise valid request that make it cost more than ``limits`` allow."""
    errors = []
    for name in ("prompt", "negative_prompt"):
        size = len(str(values.get(name) or "").encode())
        if size > limits.prompt_bytes:
            errors.append(_error(("body", name), f"{size} bytes; at most {limits.prompt_bytes}", "too_large"))
    sides = [side for side in (values.get("height"), values.get("width")) if side is not None]
    if sides:  # one side given: the other defaults to it (the pipeline's own size is its business)
        pixels = sides[0] * sides[-1]
        steps = values.get("steps", GenerateRequest.steps)
        if pixels > limits.pixels:
            errors.append(_error(("body", "height"), f"{pixels} pixels; at most {limits.pixels}", "too_large"))
        elif pixels * steps > limits.pixel_steps:
            errors.append(
                _error(("body", "steps"), f"{pixels} pixels x {steps} steps; at most {limits.pixel_steps}", "too_large")
            )
    return errors
