"""Serving with Ray Serve: the same pinned preset on every replica (``pip install sdopt[serve]``).

Each replica loads the pipeline, applies the preset with ``strict=True`` (a machine whose
capabilities differ fails the replica's start, with the differences in the log and in Serve's
status), warms up with one call, then serves PNGs for JSON requests, batched. Ray is imported only
when a deployment is built: ``import sdopt`` never imports it.

Example (needs Ray; see docs/serving.md)::

    from ray import serve
    import sdopt.serve

    app = sdopt.serve.deployment("stabilityai/sd-turbo", preset="sdopt-preset.toml", num_replicas=2)
    serve.run(app)   # POST http://127.0.0.1:8000/ {"prompt": "a fox", "steps": 4, "seed": 1}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sdopt.presets import Preset
from sdopt.serve.replica import PresetSource, Replica, as_preset
from sdopt.serve.requests import GenerateRequest, InvalidRequest, Limits

__all__ = ["GenerateRequest", "InvalidRequest", "Limits", "Replica", "deployment", "reports"]


def deployment(
    model: str,
    preset: PresetSource = None,
    *,
    strict: bool = True,
    num_replicas: int = 1,
    max_batch_size: int = 4,
    batch_wait_timeout_s: float = 0.05,
    device: str | None = None,
    name: str = "sdopt",
    ray_actor_options: dict[str, Any] | None = None,
    deployment_options: dict[str, Any] | None = None,
    limits: Mapping[str, Any] | Limits | None = None,
    expose_report: bool = False,
    **from_pretrained_kwargs: Any,
) -> Any:
    """A Ray Serve application serving ``model`` with ``preset`` applied on every replica.

    ``model`` is a hub id, a local directory (``from_pretrained(model, **from_pretrained_kwargs)``) or
    an ``--arch`` name; ``preset`` a preset file, a `Preset` or its dict. The preset is
    checked here first (a malformed file fails now, naming file, line and key), and sent to the
    replicas as data, so every replica applies the very same steps. ``max_batch_size`` and
    ``batch_wait_timeout_s`` drive Serve's request batching (the throughput lever on GPUs); a
    later ``user_config`` may change them, and a new ``preset``, without a restart.
    ``deployment_options`` go to ``serve.deployment`` as is (autoscaling, health-check period...).
    ``limits``: what one request may cost (`sdopt.serve.requests.Limits`: prompt and body bytes,
    pixels, pixels x steps, requests held per replica, seconds before a 504), checked here and
    changeable through ``user_config``. ``expose_report``: answer ``GET /report`` (off: it shows the
    process id and where undo's originals are kept to any client).
    """
    try:
        from sdopt.serve.app import SdoptDeployment
    except ImportError as error:
        raise ImportError(
            f"sdopt.serve needs Ray Serve ({error.name or error} is missing): pip install sdopt[serve]"
        ) from error
    pinned = as_preset(preset)
    data = pinned.to_dict() if isinstance(pinned, Preset) else None
    options: dict[str, Any] = {
        "name": name,
        "num_replicas": num_replicas,
        "user_config": {
            "max_batch_size": max_batch_size,
            "batch_wait_timeout_s": batch_wait_timeout_s,
            "limits": asdict(Limits.from_config(limits)),  # refused here, naming the field, if malformed
        },
        "max_constructor_retry_count": 1,  # a strict refusal does not go away on a retry
        **(deployment_options or {}),
    }
    if ray_actor_options is not None:
        options["ray_actor_options"] = ray_actor_options
    kwargs = {key: str(value) if isinstance(value, Path) else value for key, value in from_pretrained_kwargs.items()}
    # serve.deployment made the class a Deployment, which mypy cannot see through the decorator.
    bound = SdoptDeployment.options(**options)  # type: ignore[attr-defined]
    return bound.bind(model, data, strict, device, kwargs, expose_report)


def reports(app_name: str = "default", deployment_name: str = "sdopt", replicas: int = 1) -> list[dict[str, Any]]:
    """The reports of a running deployment's replicas (asked through its handle until ``replicas``
    distinct replicas have answered, or a bounded number of tries)."""
    from ray import serve

    handle = serve.get_deployment_handle(deployment_name, app_name=app_name)
    seen: dict[int, dict[str, Any]] = {}
    for _ in range(max(8, replicas * 8)):
        report = handle.report.remote().result()
        seen.setdefault(report["pid"], report)
        if len(seen) >= replicas:
            break
    return list(seen.values())
