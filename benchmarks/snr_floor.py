"""How much denoiser error the trained tiny pipelines tolerate: the evidence behind ``static_int8``'s
``min_snr_db`` (issue 28).

``static_int8`` refuses an int8 program whose denoiser output falls under ``min_snr_db`` of
signal-to-noise ratio against float32. This script adds seeded Gaussian error to every denoiser
output of ``trained-sd`` and ``trained-dit`` at a given SNR (error power = output power / 10^(SNR/10),
per call) and measures prompt accuracy and domain FID on the 48 quality captions, so the floor is the
SNR at which what the images show starts to change. White noise is a stand-in for int8's rounding
error (which is structured); what the int8 programs themselves measure is in the static_int8 rows
of ``benchmarks/results/quality-gates.json`` (``after_calls``).

    python benchmarks/snr_floor.py --json benchmarks/results/snr-floor.json   # ~5 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

import torch

from sdopt.bench.quality import score
from sdopt.bench.quality_gate import Baseline
from sdopt.simulation import trained

LEVELS_DB = (10.0, 15.0, 20.0, 25.0, 30.0, 40.0)


def with_error(denoiser: Any, snr_db: float) -> Any:
    """Patch ``denoiser.forward`` to add error at ``snr_db``; returns the function that removes it."""
    forward = denoiser.forward
    draw = torch.Generator().manual_seed(0)

    def noisy(*args: Any, **kwargs: Any) -> Any:
        output = forward(*args, **kwargs)
        sample = output[0] if isinstance(output, tuple) else output.sample
        rms = sample.float().pow(2).mean().sqrt()
        sample.add_(torch.randn(sample.shape, generator=draw).to(sample) * rms * 10 ** (-snr_db / 20))
        return output

    denoiser.forward = noisy
    return lambda: denoiser.__dict__.pop("forward")


def run(kind: str, steps: int) -> dict[str, Any]:
    pipe = trained.load(kind)
    baseline = Baseline.measure(pipe, steps=steps)
    rows = []
    for level in LEVELS_DB:
        restore = with_error(pipe.unet if kind == "sd" else pipe.transformer, level)
        try:
            quality = score(baseline.calls.render(pipe), baseline.calls.prompts, baseline.images)
        finally:
            restore()
        rows.append({"snr_db": level, **vars(quality)})
        print(kind, rows[-1], flush=True)
    return {"untouched": vars(baseline.quality), "noise_floor": baseline.floor, "rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(2)
    from sdopt import detect

    machine = f"{detect().cpu.model} ({platform.machine()}), 2 threads"
    results: dict[str, Any] = {"machine": machine, "steps": args.steps}
    for kind in trained.KINDS:
        results[kind] = run(kind, args.steps)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
