"""Data-parallel generation with accelerate: one pinned preset on every process, prompts split.

    accelerate launch --num_processes 2 examples/distributed_generate.py --arch tiny-sd -o out/
    accelerate launch --multi_gpu --num_processes 4 examples/distributed_generate.py \
        --model stabilityai/sdxl-turbo --preset sdopt-preset.toml -o out/

Each process loads the pipeline on its own device, applies the preset strictly (a process whose
machine differs stops with the differences), checks that every process applied the same steps,
renders its share of the prompts, and process 0 gathers and saves every image. Without --preset
the tier given by --tier is frozen on process 0 and sent to the others, so all apply the same.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object

import sdopt.logging
from sdopt import Preset, plan
from sdopt.distributed import optimize_everywhere
from sdopt.presets import Entry
from sdopt.simulation.architectures import load_pipeline

PROMPTS = [
    "a lighthouse on a cliff at dawn",
    "a red fox in fresh snow",
    "an isometric city block at night",
    "a bowl of ramen, studio light",
    "a paper boat on a puddle",
]


def main() -> None:
    sdopt.logging.quiet_third_party_imports()  # their import noise off the terminal, as the CLI does
    parser = argparse.ArgumentParser()
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--arch", default="tiny-sd", help="a built-in architecture, random weights (default tiny-sd)")
    source.add_argument("--model", help="a local path or hub id")
    parser.add_argument("--preset", help="a pinned preset file (default: freeze --tier on process 0)")
    parser.add_argument("--tier", default="balanced")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("-o", "--output", help="the folder for the images (default: a new temporary folder)")
    args = parser.parse_args()

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("WORLD_SIZE", "1"))))
    # Without a GPU (or under `accelerate launch --cpu`), the processes meet on the CPU over gloo.
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") or not torch.cuda.is_available()
    state = PartialState(cpu=use_cpu)
    pipe = load_pipeline(args.model or args.arch, state.device.type)
    pipe.set_progress_bar_config(disable=True)
    if args.preset:
        preset = Preset.load(args.preset)
    else:  # decided once, on process 0, and shipped as data: every process applies the same steps
        steps = plan(pipe, tier=args.tier).steps if state.is_main_process else []
        frozen = [[(step.name, step.optimization.config_to_dict(step.config)) for step in steps]]
        if state.num_processes > 1:
            broadcast_object_list(frozen)
        preset = Preset("distributed", tuple(Entry(name, config) for name, config in frozen[0]))
    report = optimize_everywhere(pipe, preset, state=state)

    mine = []
    with state.split_between_processes(list(enumerate(PROMPTS))) as share:
        for index, prompt in share:
            generator = torch.Generator("cpu").manual_seed(index)
            image = pipe(prompt, num_inference_steps=args.steps, generator=generator).images[0]
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            mine.append((index, state.process_index, buffer.getvalue()))
    everything = gather_object(mine) if state.num_processes > 1 else mine
    if state.is_main_process:
        output = Path(args.output or tempfile.mkdtemp(prefix="sdopt-distributed-"))
        output.mkdir(parents=True, exist_ok=True)
        for index, _, png in sorted(everything):
            (output / f"{index:03d}.png").write_bytes(png)
        summary = {
            "processes": state.num_processes,
            "images": {f"{index:03d}.png": rank for index, rank, _ in sorted(everything)},
            "applied": [d.name for d in report.applied],
        }
        (output / "summary.json").write_text(json.dumps(summary, indent=2))
        print(json.dumps(summary))
        print(f"wrote {len(everything)} images and summary.json to {output}")
    state.wait_for_everyone()


if __name__ == "__main__":
    main()
