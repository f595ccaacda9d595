"""The first call of a new process under a tier, then a second call: what a freshly started app pays.

Builds the SD1.5 architecture (random weights), optimizes it with the tier given, and times two
512x512 calls of 4 steps; prints one JSON line with the applied steps, both times and what the
call-time steps reported. Run it twice against an empty cache folder: the first run is cold (every
conversion or build happens), the second warm (read from the on-disk cache):

    rm -rf /tmp/sdopt-cache; export SDOPT_CACHE_DIR=/tmp/sdopt-cache
    python benchmarks/first_call_new_process.py balanced >> first-call.jsonl   # cold
    python benchmarks/first_call_new_process.py balanced >> first-call.jsonl   # warm

A preset file (``.toml`` or ``.json``) may stand for the tier. Published replacement models that are
not cached (TAESD, the LCM-LoRA) get random-weight stand-ins, as in ``sdopt bench --arch``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from sdopt import optimize
from sdopt.presets import Preset
from sdopt.simulation.architectures import real_pipeline
from sdopt.weights import stand_ins


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tier", help="a tier, e.g. balanced or balanced@4, or a preset file")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = real_pipeline("sd15")
    pipe.set_progress_bar_config(disable=True)
    started = time.perf_counter()
    with stand_ins():
        if args.tier.endswith((".toml", ".json")):
            report = optimize(pipe, preset=Preset.load(args.tier))
        else:
            report = optimize(pipe, tier=args.tier)
        optimized = time.perf_counter() - started
        times = []
        for _ in range(2):
            started = time.perf_counter()
            pipe(prompt="a castle by the sea", num_inference_steps=4, generator=torch.Generator().manual_seed(0))
            times.append(time.perf_counter() - started)
    record = {
        "tier": args.tier,
        "applied": [decision.name for decision in report.applied],
        "optimize_s": round(optimized, 1),
        "first_call_s": round(times[0], 1),
        "second_call_s": round(times[1], 1),
        "after_calls": report.after_calls,
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
