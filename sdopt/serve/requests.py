"""What a client may ask a replica for, checked before it reaches the pipeline.

The body is JSON: ``prompt`` (required), ``negative_prompt``, ``steps``, ``guidance``, ``height``,
``width``, ``seed``. A bad field is refused with the field named (HTTP 422, as FastAPI and pydantic
report validation errors), and the replica keeps serving.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

MAX_SIDE = 4096
MAX_STEPS = 500


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
    def parse(cls, body: bytes | str | Mapping[str, Any]) -> GenerateRequest:
        """Validate a JSON body (bytes, text or an already decoded mapping); raises `InvalidRequest`."""
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
