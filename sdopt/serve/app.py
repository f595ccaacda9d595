"""The Ray Serve deployment around `Replica` (imported only with Ray installed).

HTTP: ``POST /`` (or ``/generate``) with a JSON body -> ``image/png``; a malformed body -> 422 with
the field at fault; ``GET /report`` -> this replica's report and capabilities fingerprint (each
request lands on one replica; ``sdopt.serve.reports`` asks every replica). Python: through a
deployment handle, ``handle.generate.remote({"prompt": ...})`` -> PNG bytes.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sdopt.serve.replica import PresetSource, Replica
from sdopt.serve.requests import GenerateRequest, InvalidRequest

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
    ) -> None:
        # A preset made for another machine raises here (strict): Serve marks the replica failed with
        # the differences in the error, and the deployment never serves different images.
        self.replica = Replica(model, preset, strict=strict, device=device, **from_pretrained_kwargs)

    def reconfigure(self, config: dict[str, Any]) -> None:
        """``user_config``: ``preset`` (a path or a preset's dict), ``max_batch_size``, ``batch_wait_timeout_s``."""
        if "max_batch_size" in config:
            self._batched.set_max_batch_size(int(config["max_batch_size"]))  # type: ignore[attr-defined]
        if "batch_wait_timeout_s" in config:
            self._batched.set_batch_wait_timeout_s(float(config["batch_wait_timeout_s"]))  # type: ignore[attr-defined]
        if "preset" in config:
            self.replica.reconfigure(config["preset"])

    def check_health(self) -> None:
        self.replica.check()

    async def __call__(self, request: Request) -> Response:
        if request.method == "GET" and request.url.path.rstrip("/").endswith("/report"):
            return JSONResponse(self.replica.describe())
        if request.method != "POST":
            return JSONResponse({"detail": "POST a JSON body to generate, or GET /report"}, status_code=405)
        try:
            parsed = GenerateRequest.parse(await request.body())
        except InvalidRequest as error:
            return JSONResponse(error.body(), status_code=422)
        png = await self._batched(parsed)
        return Response(png, media_type="image/png", headers={"x-sdopt-replica": str(os.getpid())})

    async def generate(self, body: dict[str, Any]) -> bytes:
        """The same from Python: ``await handle.generate.remote({...})`` -> PNG bytes (raises
        `InvalidRequest` on a malformed body)."""
        return await self._batched(GenerateRequest.parse(body))

    def report(self) -> dict[str, Any]:
        return self.replica.describe()

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH_SIZE, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_TIMEOUT_S)
    async def _batched(self, requests: list[GenerateRequest]) -> list[bytes]:
        # The pipeline call blocks: it runs in a worker thread so the replica keeps answering.
        return await asyncio.to_thread(self.replica.generate, requests)


def build(args: dict[str, Any]) -> Any:
    """The application builder for ``serve run`` config files (``import_path: sdopt.serve.app:build``)."""
    from sdopt.serve import deployment

    return deployment(**args)
