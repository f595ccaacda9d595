"""The replica's front door, without Ray or a web framework: every refusal before the pipeline.

`answer` turns one HTTP request (method, path, headers, body) into a status, a body and headers:
405 for other methods, 404 for ``/report`` unless the deployment exposes it, 415 unless the body is
``application/json`` (a cross-origin page can send ``text/plain`` without a preflight, and so make a
replica work for it), 422 naming the field for a body too large, a malformed or too costly request
or a size the pipeline cannot make, 503 with ``Retry-After`` when the replica already holds
`Limits.max_queued` requests (load shedding: a queue that only grows helps nobody), 504 when the
answer takes longer than `Limits.timeout_s`, 500 naming the error when the pipeline call fails (only
that request's call group fails), else 200 with the PNG. `sdopt.serve.app` wraps it for Ray Serve.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sdopt.serve.requests import GenerateRequest, InvalidRequest, Limits

Generate = Callable[[GenerateRequest], Awaitable["bytes | BaseException"]]


@dataclass
class Answer:
    """What to send back."""

    status: int
    body: bytes
    media_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, payload: Any, **headers: str) -> Answer:
        return cls(status, json.dumps(payload).encode(), headers=dict(headers))

    def detail(self) -> Any:
        return json.loads(self.body)["detail"]


@dataclass
class FrontDoor:
    """One replica's admission state: its limits, whether ``/report`` is exposed, the requests it holds.

    Examples:
        >>> import asyncio
        >>> from sdopt.serve.http import FrontDoor
        >>> async def generate(request):
        ...     return b"png"
        >>> door = FrontDoor()
        >>> asyncio.run(door.answer("POST", "/", {"content-type": "text/plain"}, b'{"prompt": "a"}', generate)).status
        415
    """

    limits: Limits = field(default_factory=Limits)
    expose_report: bool = False
    describe: Callable[[], Mapping[str, Any]] | None = None
    check: Callable[[GenerateRequest], list[dict[str, Any]]] | None = None
    pending: int = 0

    async def answer(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes, generate: Generate
    ) -> Answer:
        if method == "GET" and path.rstrip("/").endswith("/report"):
            if not self.expose_report or self.describe is None:
                return Answer.json(404, {"detail": "no /report here: deploy with expose_report=True to see it"})
            return Answer.json(200, dict(self.describe()))
        if method != "POST":
            return Answer.json(405, {"detail": "POST a JSON body to generate"}, allow="POST")
        content_type = {k.lower(): v for k, v in headers.items()}.get("content-type", "")
        if content_type.split(";")[0].strip().lower() != "application/json":
            return Answer.json(415, {"detail": f"send the body as application/json (got {content_type or 'none'!r})"})
        declared = {k.lower(): v for k, v in headers.items()}.get("content-length", "")
        if len(body) > self.limits.body_bytes or (declared.isdigit() and int(declared) > self.limits.body_bytes):
            error = {
                "loc": ["body"],
                "msg": f"{len(body)} bytes; at most {self.limits.body_bytes}",
                "type": "too_large",
            }
            return Answer.json(422, {"detail": [error]})
        try:
            request = GenerateRequest.parse(body, self.limits)
            errors = self.check(request) if self.check is not None else []
            if errors:
                raise InvalidRequest(errors)
        except InvalidRequest as error:
            return Answer.json(422, error.body())
        if self.pending >= self.limits.max_queued:
            detail = f"this replica already holds {self.pending} requests; try again shortly"
            return Answer.json(503, {"detail": detail}, **{"retry-after": "1"})
        # The call counts until it ends, not until the client stops waiting: a 504 (or a client gone)
        # does not stop the pipeline call, so it must not free its place in the count either.
        self.pending += 1
        task = asyncio.ensure_future(generate(request))
        task.add_done_callback(self._release)
        try:
            result = await asyncio.wait_for(asyncio.shield(task), timeout=self.limits.timeout_s)
        except asyncio.TimeoutError:
            detail = f"no image within {self.limits.timeout_s:g} s (the call may still finish on the replica)"
            return Answer.json(504, {"detail": detail})
        if isinstance(result, BaseException):  # the call group failed: this request's answer only
            return Answer.json(500, {"detail": f"the pipeline call failed: {type(result).__name__}: {result}"})
        return Answer(200, result, "image/png")

    def _release(self, task: asyncio.Future[Any]) -> None:
        self.pending -= 1
        if not task.cancelled():
            task.exception()  # retrieved: a failed call that nobody awaited any more is not logged as lost


async def read_capped(chunks: Any, limit: int) -> bytes:
    """A request body read from its ``chunks`` (an async iterator) up to one chunk past ``limit``: enough
    to know it is too large without holding all of it."""
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            break
    return bytes(body)
