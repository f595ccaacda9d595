"""The Ray Serve deployment around `Replica` (imported only with Ray installed).

HTTP: ``POST /`` (or ``/generate``) with an ``application/json`` body -> ``image/png``; every refusal
(405, 415, 422 naming the field, 503 when the replica holds too many requests, 504 past the timeout,
500 for a failed call) is `sdopt.serve.http`'s. ``GET /report`` -> this replica's report and
capabilities fingerprint, only with ``expose_report=True`` (it shows the process and where undo's
originals are kept; ``sdopt.serve.reports`` asks every replica through the Python handle instead).
Python: through a deployment handle, ``handle.generate.remote({"prompt": ...})`` -> PNG bytes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from sdopt.serve.http import FrontDoor, read_capped
from sdopt.serve.replica import PresetSource, Replica
from sdopt.serve.requests import GenerateRequest, InvalidRequest, Limits

DEFAULT_MAX_BATCH_SIZE = 4
DEFAULT_BATCH_WAIT_TIMEOUT_S = 0.05


@serve.deployment
class SdoptDeployment:
    """A Serve replica: the pipeline with the pinned preset applied strictly, requests batched."""

    def __init__(
        self,
        model: str,
        preset: PresetSource,
        strict: bool,
        device: str | None,
        from_pretrained_kwargs: dict[str, Any],
        expose_report: bool = False,
    ) -> None:
        # A preset made for another machine raises here (strict): Serve marks the replica failed with
        # the differences in the error, and the deployment never serves different images.
        self.replica = Replica(model, preset, strict=strict, device=device, **from_pretrained_kwargs)
        self.door = FrontDoor(
            expose_report=expose_report, describe=self.replica.describe, check=self.replica.check_request
        )

    def reconfigure(self, config: dict[str, Any]) -> None:
        """``user_config``: ``preset`` (a path or a preset's dict), ``max_batch_size``, ``batch_wait_timeout_s``,
        ``limits`` (`sdopt.serve.requests.Limits` fields)."""
        if "limits" in config:  # fields left out keep their current values
            self.door.limits = Limits.from_config(config["limits"], base=self.door.limits)
        if "max_batch_size" in config:
            self._batched.set_max_batch_size(int(config["max_batch_size"]))  # type: ignore[attr-defined]
        if "batch_wait_timeout_s" in config:
            self._batched.set_batch_wait_timeout_s(float(config["batch_wait_timeout_s"]))  # type: ignore[attr-defined]
        if "preset" in config:
            self.replica.reconfigure(config["preset"])

    def check_health(self) -> None:
        self.replica.check()

    async def __call__(self, request: Request) -> Response:
        body = await read_capped(request.stream(), self.door.limits.body_bytes)
        answer = await self.door.answer(request.method, request.url.path, dict(request.headers), body, self._batched)
        return Response(answer.body, status_code=answer.status, media_type=answer.media_type, headers=answer.headers)

    async def generate(self, body: dict[str, Any]) -> bytes:
        """The same from Python: ``await handle.generate.remote({...})`` -> PNG bytes (raises
        `InvalidRequest` on a malformed body, or what the pipeline call raised)."""
        request = GenerateRequest.parse(body, self.door.limits)
        errors = self.replica.check_request(request)
        if errors:
            raise InvalidRequest(errors)
        result = await self._batched(request)
        if isinstance(result, BaseException):
            raise result
        return result

    def report(self) -> dict[str, Any]:
        return self.replica.describe()

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH_SIZE, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_TIMEOUT_S)
    async def _batched(self, requests: list[GenerateRequest]) -> list[bytes | Exception]:
        # The pipeline call blocks: it runs in a worker thread so the replica keeps answering. A failed
        # call group comes back as its error, in its requests' places only.
        return await asyncio.to_thread(self.replica.generate_each, requests)


def build(args: dict[str, Any]) -> Any:
    """The application builder for ``serve run`` config files (``import_path: sdopt.serve.app:build``)."""
    from sdopt.serve import deployment

    return deployment(**args)
