"""The OpenVINO peer: the same random-weight SD1.5 architecture, exported with optimum-intel.

Run through nox (optimum-intel pins versions that conflict with sdopt's environment, so it has its
own virtualenv):

    nox -s openvino_peer -- --steps 4 --runs 2 --json benchmarks/results/openvino-sd15-4steps.json

Two phases: `save DIR` (in sdopt's environment: writes the exact pipeline `sdopt bench --arch sd15`
measures, seed 0) and `run DIR` (in the OpenVINO environment: exports it, then times dynamic-shape
and static-shape (reshaped to 512x512, batch 1) pipelines on the same prompts and seeds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

PROMPTS = (
    "a lighthouse on a cliff at dawn, oil painting",
    "a red fox in fresh snow, photograph",
    "an isometric city block at night, neon signs",
)


def save(directory: str) -> None:
    from sdopt.architectures import real_pipeline

    real_pipeline("sd15").save_pretrained(directory)
    print(f"saved the random-weight sd15 pipeline to {directory}")


def run(directory: str, steps: int, runs: int, warmup: int, size: int, out: str | None) -> None:
    import numpy as np
    from optimum.intel import OVStableDiffusionPipeline

    results = {}
    for shape in ("dynamic", "static"):
        started = time.perf_counter()
        pipe = OVStableDiffusionPipeline.from_pretrained(directory, export=True, compile=False)
        if shape == "static":
            pipe.reshape(batch_size=1, height=size, width=size, num_images_per_prompt=1)
        pipe.compile()
        load_s = time.perf_counter() - started
        latencies, first = [], None
        for index in range(warmup + runs):
            generator = np.random.RandomState(index)
            begin = time.perf_counter()
            pipe(
                PROMPTS[index % len(PROMPTS)],
                num_inference_steps=steps,
                guidance_scale=7.5,
                height=size,
                width=size,
                generator=generator,
            )
            elapsed = time.perf_counter() - begin
            first = elapsed if first is None else first
            if index >= warmup:
                latencies.append(elapsed)
            print(f"openvino {shape} image {index + 1}: {elapsed:.2f} s", file=sys.stderr)
        results[shape] = {
            "export_and_compile_s": load_s,
            "first_call_s": first,
            "latencies_s": latencies,
            "median_s": statistics.median(latencies),
        }
        del pipe
    print(json.dumps(results, indent=2))
    if out:
        with open(out, "w") as handle:
            json.dump({"steps": steps, "size": size, "runs": runs, "results": results}, handle, indent=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=["save", "run"])
    parser.add_argument("directory")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.phase == "save":
        save(args.directory)
    else:
        run(args.directory, args.steps, args.runs, args.warmup, args.size, args.json)


if __name__ == "__main__":
    main()
