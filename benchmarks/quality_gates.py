"""What each optimization costs in quality, on the trained tiny pipelines (issue 28).

For ``trained-sd`` and ``trained-dit``: the untouched pipeline renders the 48 quality captions
(`sdopt.bench.quality`), then again at other seeds (the noise floor), then each candidate alone
(``optimize(pipe, tier=None, extra=[...])``, undone after) and each tier, through
`sdopt.bench.quality_gate.gate`; every row gives prompt accuracy, domain FID and mean pairwise PSNR /
SSIM against the untouched images, what was applied (or why not) and whether the gate keeps it:
steps that keep the arithmetic are held to pairwise PSNR, steps that change it to accuracy and FID
against the noise floor. Writes JSON and a Markdown table.

    python benchmarks/quality_gates.py --json q-gates.json --markdown q-gates.md   # ~10 min, 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from sdopt.bench.quality import quality_prompts
from sdopt.bench.quality_gate import Baseline, gate
from sdopt.bench.results import json_safe
from sdopt.simulation import trained

ARITHMETIC_KEEPING: list[tuple[str, list[Any]]] = [
    ("attention_slicing", ["attention_slicing"]),
    ("vae_slicing", ["vae_slicing"]),
    ("vae_tiling", ["vae_tiling"]),
    ("channels_last", ["channels_last"]),
]
ARITHMETIC_CHANGING: list[tuple[str, list[Any]]] = [
    ("half_precision bf16", [{"name": "half_precision", "dtype": "bfloat16"}]),
    ("quantize_int8", ["quantize_int8"]),
    ("static_int8", ["static_int8"]),
    ("scheduler dpmpp_2m", [{"name": "scheduler", "solver": "dpmpp_2m"}]),
    ("guidance stop_at 0.5", [{"name": "guidance", "stop_at": 0.5}]),
    ("feature_cache interval 2", [{"name": "feature_cache", "interval": 2}]),
    ("feature_cache interval 3", [{"name": "feature_cache", "interval": 3}]),
    ("feature_cache interval 4", [{"name": "feature_cache", "interval": 4}]),
    ("feature_cache threshold 0.05", [{"name": "feature_cache", "threshold": 0.05}]),
    ("feature_cache threshold 0.1", [{"name": "feature_cache", "threshold": 0.1}]),
    ("feature_cache threshold 0.2", [{"name": "feature_cache", "threshold": 0.2}]),
    ("torch_compile", [{"name": "torch_compile", "accept_cpu_first_call": True}]),
    ("resolution 0.75", [{"name": "resolution", "scale": 0.75}]),
    ("step_budget 10 (cap)", [{"name": "step_budget", "steps": 10, "cap": True}]),
    ("step_budget 4 (cap)", [{"name": "step_budget", "steps": 4, "cap": True}]),
]
TIERS = ("conservative", "balanced", "fast", "ultra")


def row(label: str, kind: str, baseline: Baseline, how: dict[str, Any]) -> dict[str, Any]:
    pipe = trained.load(kind)
    started = time.perf_counter()
    verdict = gate(pipe, baseline, **how)
    found: dict[str, Any] = {
        "row": label,
        "applied": verdict.applied,
        "kept": verdict.kept,
        "keeps_arithmetic": verdict.keeps_arithmetic,
        "why": verdict.reason,
    }
    if verdict.quality is not None:
        found.update(vars(verdict.quality), seconds=round(time.perf_counter() - started, 1))
    if verdict.report is not None and verdict.applied:
        found["after_calls"] = verdict.report.after_calls  # static_int8: its denoiser SNR, measured
        verdict.report.undo()
    print(f"{kind} {label}: {found}", flush=True)
    return found


def run(kind: str, steps: int, guidance: float) -> dict[str, Any]:
    started = time.perf_counter()
    baseline = Baseline.measure(trained.load(kind), steps=steps, guidance=guidance)
    seconds = time.perf_counter() - started
    print(f"{kind} untouched: {vars(baseline.quality)}; floor {baseline.floor}", flush=True)
    rows = [row(label, kind, baseline, {"tier": None, "extra": extra}) for label, extra in ARITHMETIC_KEEPING]
    rows += [row(label, kind, baseline, {"tier": None, "extra": extra}) for label, extra in ARITHMETIC_CHANGING]
    rows += [row(f"tier {tier}", kind, baseline, {"tier": tier}) for tier in TIERS]
    return {
        "untouched": {**vars(baseline.quality), "seconds": round(seconds, 1)},
        "noise_floor": baseline.floor,
        "rows": rows,
    }


def _applied(entry: dict[str, Any]) -> str:
    """The steps applied, and what a call-time step said when it fell back (static_int8's own check)."""
    fell_back = [f"{name}: {note}" for name, note in (entry.get("after_calls") or {}).items() if "runs float32" in note]
    return ", ".join(entry["applied"]) + "".join(f" ({note})" for note in fell_back)


def _psnr(value: Any) -> str:
    return "identical" if value in ("inf", float("inf")) else f"{value:.1f}"


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Machine: {results['machine']}; {results['steps']} steps, guidance {results['guidance']}, "
        f"{len(quality_prompts())} captions, one image each.",
        "",
    ]
    for kind in trained.KINDS:
        found = results[kind]
        floor, base = found["noise_floor"], found["untouched"]
        lines += [
            f"**trained-{kind}**: untouched accuracy {base['prompt_accuracy']:.3f}, domain FID "
            f"{base['domain_fid']:.2f}; noise floor (another seed): accuracy +-{floor['accuracy_spread']:.3f}, "
            f"FID +-{floor['fid_spread']:.2f}, PSNR {floor['psnr_db']:.1f} dB, SSIM {floor['ssim']:.3f}",
            "",
            "| row | class | accuracy (delta) | domain FID (delta) | PSNR dB | SSIM | gate | applied |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for entry in found["rows"]:
            if not entry["applied"]:
                lines.append(f"| {entry['row']} | - | - | - | - | - | - | {entry['why'][:120]} |")
                continue
            label = entry["row"]
            klass = "keeps" if entry["keeps_arithmetic"] else "changes"
            accuracy, fid = entry["prompt_accuracy"], entry["domain_fid"]
            lines.append(
                f"| {label} | {klass} | {accuracy:.3f} ({accuracy - base['prompt_accuracy']:+.3f}) "
                f"| {fid:.2f} ({fid - base['domain_fid']:+.2f}) | {_psnr(entry['psnr_db'])} "
                f"| {entry['ssim']:.3f} | {'kept' if entry['kept'] else 'refused'} | {_applied(entry)} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=trained.GUIDANCE)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=sorted(trained.KINDS))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # static_int8 calibrates on the first call it sees and keeps the program on disk: a cache of its
    # own makes every run build its programs from this run's calls, not reuse another run's.
    os.environ.setdefault("SDOPT_CACHE_DIR", tempfile.mkdtemp(prefix="sdopt-quality-gates-"))
    from sdopt import detect

    results: dict[str, Any] = {
        "machine": f"{detect().cpu.model} ({platform.machine()}), {args.threads} threads, torch {torch.__version__}",
        "steps": args.steps,
        "guidance": args.guidance,
    }
    for kind in [args.only] if args.only else trained.KINDS:
        results[kind] = run(kind, args.steps, args.guidance)
    if args.json:
        args.json.write_text(json.dumps(json_safe(results), indent=2, allow_nan=False) + "\n")
    if args.markdown and not args.only:
        args.markdown.write_text(markdown(results) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
