"""The ``sdopt`` command line: tiers, optimizations, doctor, plan."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from sdopt import registry
from sdopt.errors import SdoptError

TINY_ARCHES = {
    "tiny-sd": "sd",
    "tiny-sdxl": "sdxl",
    "tiny-sd3": "sd3",
    "tiny-flux": "flux",
    "tiny-pixart": "pixart",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sdopt`` console script; returns the exit status."""
    # transformers warns about optional image-processor backends on import; not our user's concern.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (SdoptError, TypeError, ValueError, OSError) as error:
        print(f"sdopt: error: {error}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdopt", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    tiers = commands.add_parser("tiers", help="list the tiers and what each contains")
    tiers.add_argument("--json", action="store_true", help="print JSON instead of a table")
    tiers.set_defaults(handler=_tiers)

    optimizations = commands.add_parser("optimizations", help="list the registered optimizations")
    optimizations.add_argument("--json", action="store_true", help="print JSON instead of a table")
    optimizations.set_defaults(handler=_optimizations)

    doctor = commands.add_parser("doctor", help="show what sdopt detects on this machine")
    doctor.add_argument("--json", action="store_true", help="print JSON")
    doctor.set_defaults(handler=_doctor)

    plan = commands.add_parser("plan", help="show what a tier would do to a pipeline (changes nothing)")
    source = plan.add_mutually_exclusive_group(required=True)
    source.add_argument("--arch", choices=sorted(TINY_ARCHES), help="a built-in architecture (no download)")
    source.add_argument("--model", help="a local path or hub id loaded with from_pretrained")
    plan.add_argument("--tier", default="balanced", help="tier name, optionally pinned (balanced@1)")
    plan.add_argument("--exclude", default="", help="comma-separated optimization names to leave out")
    plan.add_argument("--extra", default="", help="comma-separated optimization names to add")
    plan.add_argument("--device", help="plan for this device type instead of the detected one")
    plan.add_argument("--json", action="store_true", help="print JSON")
    plan.set_defaults(handler=_plan)
    return parser


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _load_pipeline(arch: str | None, model: str | None) -> Any:
    if arch is not None:
        from sdopt.testing import tiny_pipeline

        return tiny_pipeline(TINY_ARCHES[arch])
    from diffusers import DiffusionPipeline

    assert model is not None
    return DiffusionPipeline.from_pretrained(model)


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]
    for index, row in enumerate([headers, *rows]):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        if index == 0:
            print("  ".join("-" * width for width in widths))


def _tiers(args: argparse.Namespace) -> int:
    from sdopt.tiers import list_tiers

    rows = list_tiers()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = []
    for row in rows:
        label = row["label"] + (" (default)" if row["default"] else "") + ("" if row["latest"] else " (old)")
        for index, step in enumerate(row["steps"]):
            when = ", ".join(f"{k}={v}" for k, v in step.get("when", {}).items()) or "always"
            opt = registry.get(step["name"])
            table.append((label if index == 0 else "", step["name"], "lossy" if opt.lossy else "lossless", when))
        table.append(("", "", "", ""))
    _print_table(("tier", "optimization", "quality", "when"), table[:-1])
    print("\nEach optimization also has its own requirements; `sdopt plan` shows the outcome here.")
    return 0


def _optimizations(args: argparse.Namespace) -> int:
    rows = registry.list_optimizations()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    _print_table(
        ("name", "kind", "lossy", "effect", "summary"),
        [(r["name"], r["kind"], "yes" if r["lossy"] else "no", r["effect"], r["summary"]) for r in rows],
    )
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from sdopt.capabilities import detect

    caps = detect()
    data = caps.to_dict()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"device       {caps.device} ({caps.device_reason})")
    print(f"cpu          {caps.cpu.model}; bf16 accelerated: {caps.cpu.bf16_accelerated}")
    print(f"cpu flags    {' '.join(caps.cpu.flags) or '(unknown)'}")
    for gpu in caps.cuda:
        print(f"cuda:{gpu.index}       {gpu.name} {gpu.arch} {gpu.total_memory_gb:.1f} GB usable={gpu.usable}")
    print(f"memory       {caps.ram_total_gb:.1f} GB RAM ({caps.ram_available_gb:.1f} GB available)")
    versions = ", ".join(f"{k} {v}" for k, v in caps.versions.items() if v)
    print(f"versions     {versions}")
    installed = [f"{name} {info['version']}" for name, info in caps.packages.items() if info.get("installed")]
    print(f"packages     {', '.join(installed) or 'none of the optional ones'}")
    print(f"fingerprint  {caps.fingerprint}")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from sdopt.api import plan
    from sdopt.capabilities import detect
    from sdopt.tiers import resolve_tier

    resolve_tier(args.tier)  # fail on a bad tier before loading a model
    for name in _names(args.exclude) + _names(args.extra):
        registry.get(name)
    caps = detect(device=args.device) if args.device else None
    pipe = _load_pipeline(args.arch, args.model)
    result = plan(pipe, tier=args.tier, exclude=_names(args.exclude), extra=_names(args.extra), caps=caps)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
