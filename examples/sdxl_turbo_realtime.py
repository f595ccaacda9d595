"""SDXL-Turbo in real time: a practitioner's benchmark (load, first generation, average generation)
of the untouched pipeline against sdopt's tiers, and which of the usual real-time tricks (TAESD,
the fp16-fix VAE, torch.compile, offload) each tier applied here, or why not.

python examples/sdxl_turbo_realtime.py                                  # tiny SDXL saved as "sdxl-turbo-tiny"
python examples/sdxl_turbo_realtime.py --model stabilityai/sdxl-turbo --size 512 --runs 10

SDXL-Turbo is adversarially distilled: 1-4 steps, no classifier-free guidance. sdopt recognises it
by name and caps the steps and guidance to what it was distilled for (`step_budget`, `guidance`).
TAESD (`tiny_vae`) replaces a VAE decode that costs as much as a step; the fp16-fix VAE is only
needed where SDXL runs in float16; compile pays on CUDA only after its first call (long-running
servers); offload saves memory and costs time, so it is planned only where the model does not fit.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import sdopt.logging
from sdopt.generate import generate

TRICKS = ("tiny_vae", "vae_fp16_fix", "torch_compile", "model_offload", "step_budget", "guidance")


def main() -> None:
    sdopt.logging.quiet_third_party_imports()  # their import noise off the terminal, as the CLI does
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="an SDXL-Turbo checkpoint (hub id or path); default: a tiny one")
    parser.add_argument("--tiers", default="balanced,fast", help="tiers to compare with the untouched pipeline")
    parser.add_argument("--size", type=int, help="image side (SDXL-Turbo: 512)")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3, help="timed generations after the first")
    parser.add_argument("--device", help="cuda, cpu... (default: the detected one)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    model = args.model or _tiny_turbo()
    rows = []
    for tier in [None, *args.tiers.split(",")]:
        result = generate(
            model,
            tier=tier,
            steps=args.steps,
            guidance=0.0,
            height=args.size,
            runs=args.runs + 1,
            device=args.device,
            prompt="a cinematic photo of a lighthouse at dawn",
        )
        warm = result.seconds[1:]
        average = sum(warm) / len(warm)
        rows.append((tier or "untouched", result.load_s + result.optimize_s, result.seconds[0], average))
        if tier is not None:
            print(f"\n{result.report.source}:")
            for decision in [*result.report.applied, *result.report.skipped]:
                if decision.name in TRICKS:
                    print(f"  {decision.status:<8} {decision.name:<14} {decision.reason}")
        del result  # one pipeline in memory at a time

    print(f"\n{'setup':<10} {'load+optimize s':>16} {'first s':>8} {'average s':>10} {'images/s':>9}")
    for name, load, first, average in rows:
        print(f"{name:<10} {load:>16.2f} {first:>8.3f} {average:>10.3f} {1 / average:>9.1f}")


def _tiny_turbo() -> str:
    """A tiny random-weight SDXL saved under a Turbo-like name, loaded back with from_pretrained."""
    from sdopt.testing import tiny_pipeline

    path = Path(tempfile.mkdtemp()) / "sdxl-turbo-tiny"
    tiny_pipeline("sdxl").save_pretrained(path)
    return str(path)


if __name__ == "__main__":
    main()
