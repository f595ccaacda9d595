"""SD1.5's UNet alone (random weights, bfloat16 over half precision, batch 2, 64x64 latents): OpenVINO bf16 with
the UNet converted whole, block by block, and block by block under feature caching (DeepCache, interval 3),
one mode per process (run it three times), six calls at new timesteps after the converting one.

Usage (about 2 minutes per mode on 2 cores, most of it the conversion)::

    for mode in whole blocks blocks+cache; do python benchmarks/openvino_blocks_unet.py $mode; done

Under feature caching the timed calls alternate: every third one runs the deep blocks (a full step), the
two after it replay their output (shallow steps).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

MODES = ("whole", "blocks", "blocks+cache")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from sdopt import optimize
    from sdopt.architectures import real_pipeline
    from sdopt.capabilities import detect

    torch.set_num_threads(args.threads)
    caps = detect()
    pipe = real_pipeline("sd15")
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 4, 64, 64, generator=generator).to(torch.bfloat16)
    text = torch.randn(2, 77, 768, generator=generator).to(torch.bfloat16)
    with tempfile.TemporaryDirectory() as cache:
        step = {"name": "openvino_runtime", "precision": "bf16", "vae": False, "cache_dir": cache}
        extra: list = ["half_precision", "channels_last", {**step, "blocks": args.mode != "whole"}]
        if args.mode == "blocks+cache":
            extra.append("feature_cache")
        report = optimize(pipe, tier=None, extra=extra, caps=caps)

        def call(timestep: int) -> float:
            started = time.perf_counter()
            with torch.no_grad():
                pipe.unet(latents, torch.tensor(timestep), encoder_hidden_states=text)
            return round(time.perf_counter() - started, 3)

        first = call(999)  # PyTorch answers while each model converts
        times = [call(timestep) for timestep in (900, 800, 700, 600, 500, 400)]
        row = {
            "mode": args.mode,
            "cpu": caps.cpu.model,
            "cpu_class": caps.cpu.cpu_class,
            "threads": args.threads,
            "applied": [decision.name for decision in report.applied],
            "first_call_s": round(first, 1),
            "s_per_call": times,
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
