"""A bounded load test of the Ray Serve app on this machine: N requests from a local client.

    python benchmarks/serve_load.py --arch tiny-sd --replicas 2 --requests 60 --concurrency 4 \
        --json benchmarks/results/serve-load.json

Starts local Ray and the sdopt app (each replica applies the same preset strictly), sends the
requests from `concurrency` client threads to 127.0.0.1 and reports images/s, p50/p95 latency and
failed requests. Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


def _post(url: str, body: dict[str, Any]) -> tuple[int, float]:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    except OSError:
        status = 0
    return status, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="tiny-sd")
    parser.add_argument("--preset", help="a preset file (default: the arch as loaded)")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--max-batch-size", type=int, default=4)
    parser.add_argument("--cpus-per-replica", type=float, default=1.0)
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args()

    import ray
    from ray import serve

    import sdopt.serve

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ray.init(include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    started = time.perf_counter()
    app = sdopt.serve.deployment(
        args.arch,
        preset=args.preset,
        num_replicas=args.replicas,
        max_batch_size=args.max_batch_size,
        ray_actor_options={"num_cpus": args.cpus_per_replica},
    )
    serve.run(app, name="default", route_prefix="/")
    startup_s = time.perf_counter() - started
    url = f"http://127.0.0.1:{port}/"
    results: list[tuple[int, float]] = []
    lock = threading.Lock()
    counter = iter(range(args.requests))

    def client() -> None:
        for index in counter:
            outcome = _post(url, {"prompt": f"request {index}", "steps": args.steps, "seed": index})
            with lock:
                results.append(outcome)

    began = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(args.concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    latencies = sorted(seconds for status, seconds in results if status == 200)
    summary = {
        "arch": args.arch,
        "replicas": args.replicas,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "steps": args.steps,
        "max_batch_size": args.max_batch_size,
        "startup_s": round(startup_s, 2),
        "elapsed_s": round(elapsed, 2),
        "images_per_s": round(len(latencies) / elapsed, 3),
        "p50_s": round(statistics.median(latencies), 3) if latencies else None,
        "p95_s": round(latencies[max(0, int(0.95 * len(latencies)) - 1)], 3) if latencies else None,
        "failed": sum(1 for status, _ in results if status != 200),
        "replica_reports_identical": len(
            {json.dumps(r["applied"]) for r in sdopt.serve.reports(replicas=args.replicas)}
        )
        == 1,
    }
    serve.shutdown()
    ray.shutdown()
    print(json.dumps(summary, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
