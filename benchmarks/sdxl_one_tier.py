"""One tier on the random-weight SDXL architecture at 1024x1024, alone in its process (a float32 SDXL
pipeline beside another does not fit a 24 GB host): two calls, each call's time and when each UNet
call started, the process's peak RSS (sampled every 50 ms, conversions and builds included) and what
call-time steps did. Writes JSON after each call.

    HF_HUB_OFFLINE=1 python benchmarks/sdxl_one_tier.py balanced --steps 4 \\
        --json benchmarks/results/cpu-epyc-bf16-sdxl-1024-balanced4.json
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any

import torch


def _rss_gb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tier", help="a tier, or 'baseline' for the untouched float32 pipeline")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=2, help="calls timed one after another (1 for the baseline)")
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from sdopt import optimize
    from sdopt.simulation.architectures import real_pipeline

    peak = [0.0]

    def watch() -> None:
        while True:
            peak[0] = max(peak[0], _rss_gb())
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()
    row: dict[str, Any] = {"tier": args.tier, "steps": args.steps, "size": 1024, "threads": args.threads}
    pipe = real_pipeline("sdxl")
    row["built_rss_gb"] = round(_rss_gb(), 2)
    started = time.perf_counter()
    report = optimize(pipe, tier=None if args.tier == "baseline" else args.tier)
    row["optimize_s"] = round(time.perf_counter() - started, 1)
    row["applied"] = [decision.name for decision in report.applied]
    row["optimized_rss_gb"] = round(_rss_gb(), 2)
    step_starts: list[float] = []
    pipe.unet.register_forward_pre_hook(lambda module, inputs: step_starts.append(time.perf_counter()))
    for call in range(args.calls):
        step_starts.clear()
        started = time.perf_counter()
        pipe(
            "a mountain lake at dawn",
            num_inference_steps=args.steps,
            height=1024,
            width=1024,
            generator=torch.Generator().manual_seed(0),
        )
        row[f"call{call}_s"] = round(time.perf_counter() - started, 1)
        row[f"call{call}_step_starts"] = [round(at - started, 1) for at in step_starts]
        row["peak_rss_gb"] = round(peak[0], 2)
        row["after_calls"] = dict(report.after_calls)
        Path(args.json).write_text(json.dumps(row, indent=1))
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
