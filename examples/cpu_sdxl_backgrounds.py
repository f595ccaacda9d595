"""A CPU-only server rendering SDXL backgrounds (a video tool's 1920x1080 plates): what each tier
costs per image at each step budget, and which tier meets a time budget at the best fidelity.

python examples/cpu_sdxl_backgrounds.py                       # tiny SDXL, random weights: seconds
python examples/cpu_sdxl_backgrounds.py --arch sdxl --height 1080 --width 1920 --steps 4,20 --budget-s 600
python examples/cpu_sdxl_backgrounds.py --model stabilityai/stable-diffusion-xl-base-1.0 --steps 20

Each step budget is one `sdopt.bench` run: the tiers render the same prompts and seeds interleaved
on this machine, against the untouched pipeline (`baseline`). A size that is not a multiple of 64
(1080) is timed at the next multiple (1088), which SDXL's UNet needs; a server crops the 8 rows. Real-size
architectures (`--arch sdxl`) build random weights in place: timings and memory are real, images
are noise (fidelity is numerical drift, not quality).
"""

from __future__ import annotations

import argparse

import sdopt.logging
from sdopt.bench import TierResult, bench


def main() -> None:
    sdopt.logging.quiet_third_party_imports()  # their import noise off the terminal, as the CLI does
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--arch", default="tiny-sdxl", help="tiny-sdxl (default) or sdxl, random weights")
    source.add_argument("--model", help="a local path or hub id of an SDXL checkpoint")
    parser.add_argument("--tiers", default="balanced,fast", help="tiers to compare with the untouched pipeline")
    parser.add_argument("--steps", default="4,8", help="comma-separated step budgets")
    parser.add_argument("--height", type=int, help="background height (default: the model's)")
    parser.add_argument("--width", type=int, help="background width (default: the height)")
    parser.add_argument("--budget-s", type=float, help="seconds per image the service can afford")
    parser.add_argument("--runs", type=int, default=3, help="timed images per tier and budget (3 tell the noise)")
    args = parser.parse_args()

    height = _renderable(args.height) if args.height else None
    width = _renderable(args.width or args.height) if (args.width or args.height) else None
    if height and (height, width) != (args.height, args.width or args.height):
        print(f"timing {width}x{height}, the multiple of 64 that holds {args.width or args.height}x{args.height}")
    rows = []
    for steps in (int(s) for s in args.steps.split(",")):
        result = bench(
            args.model or args.arch,
            ["baseline", *args.tiers.split(",")],
            steps=steps,
            height=height,
            width=width,
            guidance=5.0,
            runs=args.runs,
            warmup=1,  # first calls (compilation, int8 calibration) are not what a running server pays
            device="cpu",
        )
        rows += [(steps, tier) for tier in result.tiers]
        size = f"{result.settings['width']}x{result.settings['height']}"
    print(f"\nSDXL backgrounds on this CPU, {size}:")
    print(f"{'steps':>5}  {'tier':<12} {'s/image':>8} {'speedup':>8} {'PSNR dB':>8} {'host GB':>8}  applied")
    for steps, tier in rows:
        psnr = "inf" if tier.psnr_db == float("inf") else f"{tier.psnr_db:.1f}"
        print(
            f"{steps:>5}  {tier.tier:<12} {tier.median_s:>8.2f} {_speedup(tier):>8} {psnr:>8} "
            f"{tier.host_peak_gb:>8.2f}  {', '.join(tier.applied) or '-'}"
        )
    print("speedup: 'same' when inside the noise of the runs, '?' with fewer than 3 runs (sdopt.timing)")
    if args.budget_s is not None:
        affordable = [(steps, tier) for steps, tier in rows if tier.median_s <= args.budget_s]
        if not affordable:
            fastest = min(rows, key=lambda row: row[1].median_s)
            print(
                f"\nnothing meets {args.budget_s:g} s/image; the fastest is {fastest[1].tier} at {fastest[0]} steps "
                f"({fastest[1].median_s:.2f} s): fewer steps, a smaller size, or the `fast`/`ultra` tiers"
            )
        else:
            # More steps first (quality), then fidelity to the untouched pipeline.
            steps, best = max(affordable, key=lambda row: (row[0], row[1].psnr_db or 0.0))
            print(f"\nwithin {args.budget_s:g} s/image: {best.tier} at {steps} steps ({best.median_s:.2f} s/image)")


def _renderable(side: int) -> int:
    return -(-side // 64) * 64


def _speedup(tier: TierResult) -> str:
    if tier.verdict in (None, "faster", "slower"):  # None: the baseline itself
        return f"{tier.speedup:.2f}x"
    return "same" if tier.verdict == "no measurable difference" else f"{tier.speedup:.2f}x?"


if __name__ == "__main__":
    main()
