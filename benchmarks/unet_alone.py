"""SD1.5's UNet alone (random weights, batch 2 and 64x64 latents unless told): PyTorch float32 against OpenVINO f32 and
int8 inside OpenVINO, side by side in one process, optionally with the kernels capped to AVX2.

``--isa avx2`` re-runs this script with oneDNN (PyTorch's and OpenVINO's), ATen and MKL capped to AVX2
(``ONEDNN_MAX_CPU_ISA``, ``ATEN_CPU_CAPABILITY``, ``MKL_ENABLE_INSTRUCTIONS``): on a CPU with AVX-512 this
emulates the AVX2-only class's code paths (the same cores, caches and memory). It is an emulation, not
that class: OpenVINO 2026.4's release wheels cap only its oneDNN kernels (convolutions, matrix
multiplications), not its own JIT kernels (``OV_CPU_MAX_ISA`` is a debug-build switch there), and an
AVX2-only CPU differs in more than its instruction set. The capped run prints the ISA oneDNN reports.

Usage (about 10 minutes on 2 cores)::

    python benchmarks/unet_alone.py --isa avx2 --modes pytorch,ov-f32,ov-int8 --json /tmp/unet-avx2.json

Modes: ``pytorch`` (float32 eager), ``ov-f32`` (OpenVINO f32), ``ov-int8`` (int8 inside OpenVINO, f32 rest,
the weight range openvino_runtime picks for this CPU), ``ov-int8-w8`` / ``ov-int8-w7`` (8-bit or 7-bit
weights forced). Each OpenVINO mode reports its SNR against PyTorch float32 on a timestep it was not
calibrated on.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

AVX2_CAP = {
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "DNNL_MAX_CPU_ISA": "AVX2",
    "OV_CPU_MAX_ISA": "AVX2",  # honoured by OpenVINO builds with debug capabilities only
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
}
CALIBRATION_TIMESTEPS = (999, 750, 500, 250, 1)
CHECK_TIMESTEP = 600


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--isa", choices=("native", "avx2"), default="native")
    parser.add_argument("--modes", default="pytorch,ov-f32,ov-int8")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2, help="2: one step with classifier-free guidance")
    parser.add_argument("--latent", type=int, default=64, help="latent side (64: 512x512 images)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.isa == "avx2" and os.environ.get("ONEDNN_MAX_CPU_ISA") != "AVX2":
        # oneDNN reads its cap once, at its first dispatch: set before anything imports torch or openvino.
        env = {**os.environ, **AVX2_CAP}
        sys.exit(subprocess.call([sys.executable, *sys.argv], env=env))
    rows = run(
        args.modes.split(","), runs=args.runs, threads=args.threads, isa=args.isa, batch=args.batch, side=args.latent
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


def run(modes: list[str], *, runs: int, threads: int, isa: str, batch: int, side: int) -> dict[str, Any]:
    import torch

    from sdopt.architectures import real_pipeline
    from sdopt.capabilities import detect
    from sdopt.optimizations._openvino import OpenVinoRunner
    from sdopt.optimizations._openvino_int8 import weight_bits
    from sdopt.optimizations._sensitive import kept_float
    from sdopt.optimizations._snr import snr_db

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    caps = detect()
    header = {
        "isa": isa,
        "cpu": caps.cpu.model,
        "cpu_class": caps.cpu.cpu_class,
        "torch_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": threads,
        "batch": batch,
        "latent": side,
        "env": {key: os.environ.get(key, "") for key in AVX2_CAP},
    }
    print(json.dumps(header), flush=True)
    unet = real_pipeline("sd15").unet.eval()
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(batch, 4, side, side, generator=generator)
    text = torch.randn(batch, 77, 768, generator=generator)

    def call(module_call: Any, timestep: int) -> torch.Tensor:
        with torch.no_grad():
            return module_call(latents, torch.tensor(timestep), encoder_hidden_states=text).sample

    reference = call(unet, CHECK_TIMESTEP)
    rows: dict[str, Any] = {"header": header, "modes": {}}
    for mode in modes:
        started = time.perf_counter()
        forced = {"ov-int8-w8": 8, "ov-int8-w7": 7}.get(mode)
        with tempfile.TemporaryDirectory() as root:
            if mode == "pytorch":
                runner: Any = unet
            else:
                keep = kept_float(unet, ("auto",)) if mode.startswith("ov-int8") else None
                runner = OpenVinoRunner(
                    unet,
                    "forward",
                    unet.forward,
                    precision="f32",
                    min_snr_db=0.0,
                    root=Path(root),
                    label="unet",
                    int8_keep_float=keep,
                    int8_weight_bits=forced or weight_bits(caps.cpu.int8_accelerated),
                )
                for timestep in CALIBRATION_TIMESTEPS if keep is not None else CALIBRATION_TIMESTEPS[:1]:
                    call(runner, timestep)  # PyTorch answers while it calibrates (int8) or converts
                with torch.no_grad():
                    runner.build_pending()
            ready = time.perf_counter() - started
            output = call(runner, CHECK_TIMESTEP)  # warm-up (and the check)
            times = []
            for _ in range(runs):
                began = time.perf_counter()
                call(runner, CHECK_TIMESTEP)
                times.append(time.perf_counter() - began)
            row = {
                "s_per_call": min(times),
                "s_per_call_all": [round(t, 3) for t in times],
                "snr_db_vs_pytorch_f32": None if mode == "pytorch" else round(snr_db(reference, output), 2),
                "ready_s": round(ready, 1),
                "events": getattr(runner, "events", []),
                "openvino_calls": getattr(runner, "openvino_calls", None),
            }
            if mode != "pytorch":
                runner.forget()
        rows["modes"][mode] = row
        print(mode, json.dumps(row), flush=True)
    return rows


if __name__ == "__main__":
    main()
