"""Pin a preset, then serve it: every Ray Serve replica applies the same frozen steps (strictly: a
replica on a machine the preset was not frozen on refuses to start), and says so at /report.

python examples/serve_pinned.py       # tiny SD, 2 local replicas, 4 requests (pip install sdopt[serve])
python examples/serve_pinned.py --model stabilityai/sd-turbo --steps 4 --replicas 1

In production: freeze once on the serving hardware and commit the file
(`sdopt freeze --model ... --tier balanced -o sdopt-preset.toml`, or `sdopt tune` for `auto`), then
`serve run examples/serve/serve_config.yaml` with `preset: sdopt-preset.toml`. This script does both
steps in one process on a local Ray cluster and stops it at the end.
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import urllib.request
from pathlib import Path

import sdopt.logging
import sdopt.serve
from sdopt import optimize
from sdopt.simulation.architectures import load_pipeline


def main() -> None:
    sdopt.logging.quiet_third_party_imports()  # their import noise off the terminal, as the CLI does
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-sd", help="a hub id, a local path or a built-in architecture")
    parser.add_argument("--tier", default="balanced")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--preset", help="where to write the frozen preset (default: a temp dir)")
    args = parser.parse_args()

    # 1. Freeze: what the tier would apply on this machine, fully resolved (changes nothing).
    preset_path = Path(args.preset or Path(tempfile.mkdtemp()) / "sdopt-preset.toml")
    planned = optimize(load_pipeline(args.model), tier=args.tier, dry_run=True)
    preset = planned.to_preset("served-app")
    preset.save(preset_path)
    print(f"froze {planned.source} into {preset_path}: {', '.join(preset.names()) or 'nothing to apply here'}")

    # 2. Serve it on a local Ray cluster.
    import ray
    from ray import serve

    port = _free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = sdopt.serve.deployment(
            args.model,
            preset=preset_path,
            num_replicas=args.replicas,
            ray_actor_options={"num_cpus": 0.5},
            expose_report=True,  # GET /report below; off by default (it shows the process and undo's files)
        )
        serve.run(app, name="default", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        images = {
            _post(url, {"prompt": "a red fox in snow", "steps": args.steps, "seed": 1}) for _ in range(args.requests)
        }
        print(f"{args.requests} requests answered with {len(images)} distinct PNG(s) (same prompt and seed)")
        reports = sdopt.serve.reports(replicas=args.replicas)
        applied = {tuple(report["applied"]) for report in reports}
        print(f"{len(reports)} replica(s) report applied: {[list(a) for a in applied]}")
        assert applied == {tuple(preset.names())}, "a replica did not apply exactly the pinned preset"
        with urllib.request.urlopen(f"{url}/report", timeout=60) as response:
            print(f"GET /report: preset {json.loads(response.read())['preset']}")
    finally:
        serve.shutdown()
        ray.shutdown()


def _post(url: str, body: dict) -> bytes:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return response.read()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


if __name__ == "__main__":
    main()
