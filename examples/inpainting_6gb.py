"""An inpainting service in 6 GB of VRAM: the low-memory tier planned against a memory budget, the
report a service logs, and undo as the rollback when a new configuration misbehaves.

python examples/inpainting_6gb.py                   # offline: plans a real-size SDXL for a 6 GB share of
                                                    # an 8 GB GPU (simulated), runs a tiny inpainting pipeline
python examples/inpainting_6gb.py --model diffusers/stable-diffusion-xl-1.0-inpainting-0.1 --size 1024

Part 1 plans the real-size architecture on the meta device (no weights allocated): which offload the
budget calls for, and the error a budget no plan can meet raises. Part 2 optimizes a pipeline for
real, inpaints, then rolls back with `report.undo()` and checks the output is the untouched one again.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch
from PIL import Image

import sdopt.logging
from sdopt import optimize, plan
from sdopt.errors import MemoryBudgetError
from sdopt.simulation.architectures import real_pipeline
from sdopt.testing import fake_capabilities


def main() -> None:
    sdopt.logging.quiet_third_party_imports()  # their import noise off the terminal, as the CLI does
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="an inpainting checkpoint (hub id or path); default: a tiny one")
    parser.add_argument("--budget", default="6GB", help="the device memory the service may use")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64, help="image side (a real SDXL inpainting model: 1024)")
    parser.add_argument("--output", default="inpainted.png")
    args = parser.parse_args()

    print(f"== 1. planning SDXL-size weights for a {args.budget} share of an 8 GB GPU (simulated)")
    gpu = fake_capabilities("rtx3060ti-8gb")
    structure = real_pipeline("sdxl", device="meta")
    for budget in (args.budget, "0.5GB"):
        try:
            planned = plan(structure, tier="low-memory", caps=gpu, memory_budget=budget)
        except MemoryBudgetError as error:
            print(f"{budget}: refused before anything changed: {error}")
            continue
        print(f"{budget}: {', '.join(step.name for step in planned.steps)}")
        print(f"  memory: {planned.footprint.describe()}")

    print("\n== 2. a real inpainting pipeline on this machine, then a rollback")
    pipe = _inpainting_pipeline(args.model)
    call = _call(args.steps, args.size)
    before = _inpaint(pipe, call)
    report = optimize(pipe, tier="low-memory", memory_budget=args.budget, verify=True)
    print(report)  # what a service logs at start-up
    after = _inpaint(pipe, call)
    Image.fromarray(after).save(args.output)
    print(f"inpainted {after.shape[1]}x{after.shape[0]} -> {args.output}")

    # A new release of the service misbehaves: roll the pipeline back to exactly what it was.
    report.undo()
    print(f"rolled back; output identical to before: {np.array_equal(_inpaint(pipe, call), before)}")


def _inpainting_pipeline(model: str | None) -> Any:
    if model:
        from diffusers import AutoPipelineForInpainting

        return AutoPipelineForInpainting.from_pretrained(model)
    from sdopt.testing.zoo import zoo_pipeline

    return zoo_pipeline("StableDiffusionInpaintPipeline")


def _call(steps: int, side: int) -> dict[str, Any]:
    photo = np.zeros((side, side, 3), np.uint8)
    photo[..., 0] = np.linspace(0, 255, side, dtype=np.uint8)  # a red gradient
    mask = np.zeros((side, side), np.uint8)
    mask[side // 4 : 3 * side // 4, side // 4 : 3 * side // 4] = 255  # repaint the centre
    return {
        "prompt": "a wooden bench in a park",
        "image": Image.fromarray(photo),
        "mask_image": Image.fromarray(mask),
        "height": side,
        "width": side,
        "num_inference_steps": steps,
        "output_type": "np",
    }


def _inpaint(pipe: Any, call: dict[str, Any]) -> np.ndarray:
    with torch.inference_mode():
        image = pipe(**call, generator=torch.Generator("cpu").manual_seed(0)).images[0]
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


if __name__ == "__main__":
    main()
