"""The use-case matrix: latency, quality, memory and throughput, each mapped to the tier that serves
it best on this machine, printed as a table from measurements taken here in one interleaved run.

python examples/use_case_matrix.py                        # tiny SD, random weights: seconds
python examples/use_case_matrix.py --arch sd15 --steps 20 # real size (random weights): minutes on a CPU
python examples/use_case_matrix.py --model PATH_OR_ID --steps 20

- latency: one image as fast as possible, any fidelity to the untouched pipeline;
- quality: the fastest tier whose image stays within --min-psnr of the untouched pipeline's;
- memory: the smallest peak (device memory on a GPU, host memory on a CPU);
- throughput: the most images per second at --batch images per call.
"""

from __future__ import annotations

import argparse

import sdopt.logging
from sdopt.bench import bench


def main() -> None:
    sdopt.logging.quiet_third_party_imports()  # their import noise off the terminal, as the CLI does
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--arch", default="tiny-sd")
    source.add_argument("--model")
    parser.add_argument("--tiers", default="conservative,balanced,fast,low-memory")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4, help="images per call for the throughput row")
    parser.add_argument("--runs", type=int, default=3, help="timed calls per tier (3 tell the noise)")
    parser.add_argument("--min-psnr", type=float, default=40.0, help="the quality row's fidelity floor, dB")
    args = parser.parse_args()

    tiers = ["baseline", *args.tiers.split(",")]
    common = {"steps": args.steps, "runs": args.runs, "warmup": 1}
    single = bench(args.model or args.arch, tiers, **common)
    batched = bench(args.model or args.arch, tiers, batch=args.batch, **common)

    def peak(tier) -> float:
        return tier.device_peak_gb if tier.device_peak_gb is not None else tier.host_peak_gb

    faithful = [t for t in single.tiers if (t.psnr_db or 0.0) >= args.min_psnr]
    rows = [
        ("latency", "s per image", min(single.tiers, key=lambda t: t.median_s), lambda t: f"{t.median_s:.3f} s"),
        (
            "quality",
            f"fastest at >= {args.min_psnr:g} dB",
            min(faithful, key=lambda t: t.median_s),
            lambda t: f"{t.median_s:.3f} s, {t.psnr_db:.1f} dB",
        ),
        ("memory", f"peak {single.memory_kind}", min(single.tiers, key=peak), lambda t: f"{peak(t):.3f} GB"),
        (
            "throughput",
            f"images/s, batch {args.batch}",
            max(batched.tiers, key=lambda t: args.batch / t.median_s),
            lambda t: f"{args.batch / t.median_s:.1f} images/s",
        ),
    ]
    print(f"\nUse-case matrix for {single.pipeline} on {single.device} ({args.steps} steps):")
    print(f"{'goal':<11} {'measured as':<24} {'pick':<13} {'measured':<22} {'speed vs untouched':>18}")
    for goal, measure, pick, shown in rows:
        speed = (
            f"{pick.speedup or 1.0:.2f}x" if pick.verdict in (None, "faster", "slower") else "no measurable difference"
        )
        print(f"{goal:<11} {measure:<24} {pick.tier:<13} {shown(pick):<22} {speed:>18}")
    print("\nEvery tier, one image per call:")
    print(single.table())


if __name__ == "__main__":
    main()
