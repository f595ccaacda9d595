"""What each ``sdopt`` command does, once `sdopt.cli` has parsed and checked its arguments."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from sdopt import registry
from sdopt.simulation import trained as trained_models
from sdopt.simulation.architectures import REAL_ARCHES, load_pipeline


def names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]
    for index, row in enumerate([headers, *rows]):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        if index == 0:
            print("  ".join("-" * width for width in widths))


def tiers_command(args: argparse.Namespace) -> int:
    from sdopt.tiers import list_tiers

    if args.fit:
        from sdopt.fit import fit_markdown

        print(fit_markdown(), end="")
        return 0
    rows = [row for row in list_tiers() if args.all or row["latest"]]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if args.markdown:
        from sdopt.tiers import tiers_markdown

        print(tiers_markdown(), end="")
        return 0
    table = []
    for row in rows:
        label = row["label"] + (" (default)" if row["default"] else "") + ("" if row["latest"] else " (old)")
        for index, step in enumerate(row["steps"]):
            when = ", ".join(f"{k}={v}" for k, v in step.get("when", {}).items()) or "always"
            opt = registry.get(step["name"])
            lossy = opt.lossy_with(opt.make_config(step.get("config", {})))
            table.append((label if index == 0 else "", step["name"], "lossy" if lossy else "lossless", when))
        table.append(("", "", "", ""))
    print_table(("tier", "optimization", "quality", "when"), table[:-1])
    print("\nEach optimization also has its own requirements; `sdopt plan` shows the outcome here.")
    if not args.all:
        print("Older versions, which pinned presets keep using: `sdopt tiers --all`.")
    return 0


def optimizations_command(args: argparse.Namespace) -> int:
    if args.write_docs:
        from sdopt.optimization_docs import write_catalogue

        written = write_catalogue(args.write_docs)
        print(f"wrote {len(written)} pages to {args.write_docs}")
        return 0
    rows = registry.list_optimizations()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print_table(
        ("name", "kind", "lossy", "effect", "summary"),
        [(r["name"], r["kind"], "yes" if r["lossy"] else "no", r["effect"], r["summary"]) for r in rows],
    )
    return 0


def doctor_command(args: argparse.Namespace) -> int:
    from sdopt.capabilities import detect

    caps = detect()
    if args.json:
        print(json.dumps(caps.to_dict(), indent=2))
        return 0
    rows: list[tuple[str, str]] = [
        ("device", f"{caps.device} ({caps.device_reason})"),
        ("half precision", caps.half_dtype),
        ("cpu", f"{caps.cpu.model}, {caps.cpu.physical_cores} cores / {caps.cpu.logical_cores} threads"),
        ("cpu flags", " ".join(caps.cpu.flags) or "(unknown)"),
        (
            "cpu class",
            caps.cpu.cpu_class + (f" (capped by ONEDNN_MAX_CPU_ISA={caps.cpu.isa_cap})" if caps.cpu.isa_cap else ""),
        ),
        ("cpu bf16 / int8", f"accelerated: {caps.cpu.bf16_accelerated} / {caps.cpu.int8_accelerated}"),
    ]
    for gpu in caps.cuda:
        state = "usable" if gpu.usable else f"NOT usable: {gpu.reason}"
        rows.append((f"cuda:{gpu.index}", f"{gpu.name} {gpu.arch}, {gpu.total_memory_gb:.1f} GB, {state}"))
    if caps.mps.available:
        rows.append(("mps", "usable" if caps.mps.usable else f"NOT usable: {caps.mps.reason}"))
    rows.append(("memory", f"{caps.ram_total_gb:.1f} GB RAM ({caps.ram_available_gb:.1f} GB available)"))
    rows.append(("versions", ", ".join(f"{k} {v}" for k, v in caps.versions.items() if v)))
    for name, info in caps.packages.items():
        if info.get("installed"):
            state = "usable" if info.get("usable") else f"not usable: {info.get('reason')}"
            rows.append((name, f"{info['version']} ({state})"))
    rows.append(("C++ compiler", caps.cxx_compiler or "none (torch.compile on CPU unavailable)"))
    rows.append(("fingerprint", caps.fingerprint))
    print_table(("capability", "value"), rows)
    for warning in caps.warnings:
        print(f"warning: {warning}")
    _print_import_noise(caps, verbose=args.verbosity > 0)

    from sdopt.api import plan
    from sdopt.simulation.families import tiny_pipeline
    from sdopt.tiers import list_tiers

    print("\nWhat each tier does here (for a Stable Diffusion 1.x pipeline):")
    pipe = tiny_pipeline("sd")
    table = []
    for row in list_tiers():
        if row["latest"]:
            result = plan(pipe, tier=row["label"], caps=caps)
            applied = ", ".join(step.name for step in result.steps) or "nothing"
            table.append((row["label"], applied, ", ".join(d.name for d in result.skipped) or "-"))
    print_table(("tier", "applies", "skips (see `sdopt plan` for reasons)"), table)
    return 0


def _print_import_noise(caps: Any, *, verbose: bool) -> None:
    """One line per package that printed on import (here or in its probe); the lines themselves
    were printed above with --verbose."""
    from sdopt._noise import heard, summary

    noise = heard()
    for name, info in caps.packages.items():
        if info.get("messages") and name not in noise:
            noise[name] = list(info["messages"])
    if noise:
        print(
            "\nThird-party messages kept off the terminal" + (" (printed above):" if verbose else " (-v prints them):")
        )
        for package, lines in noise.items():
            print(f"  {package}: {summary(lines)}")


def generate_command(args: argparse.Namespace) -> int:
    from sdopt.generate import default_prompt, generate

    for name in names(args.exclude):
        registry.get(name)
    result = generate(
        args.arch or args.model,
        tier=None if args.preset else args.tier,
        preset=args.preset,
        prompt=args.prompt or default_prompt(args.arch or args.model),
        negative_prompt=args.negative_prompt,
        steps=args.steps,
        height=args.height,
        width=args.width,
        guidance=args.guidance,
        seed=args.seed,
        batch=args.batch,
        runs=args.runs,
        warmup=args.warmup,
        threads=args.threads,
        device=args.device,
        compare=args.compare,
        memory_budget=args.memory_budget,
        image=args.image,
        mask_image=args.mask_image,
        exclude=names(args.exclude),
        progress=None if args.verbosity < 0 else lambda message: print(f"sdopt: {message}", file=sys.stderr),
    )
    written = result.save(args.output)
    if args.verbosity >= 0:
        print(result.report)
        print()
    print(result.summary())
    print("wrote " + ", ".join(str(path) for path in written))
    if args.json_out:
        from pathlib import Path

        data = {
            "source": result.source,
            "call": result.call,
            "seconds": result.seconds,
            "per_image_s": result.per_image_s,
            "warmup_seconds": result.warmup_seconds,
            "untouched_seconds": result.untouched_seconds,
            "untouched_warmup_seconds": result.untouched_warmup_seconds,
            "speedup": result.speedup,
            "speedup_spread": result.comparison.spread if result.comparison is not None else None,
            "verdict": result.comparison.describe() if result.comparison is not None else None,
            "psnr_db": None if result.psnr_db in (None, float("inf")) else result.psnr_db,
            "identical": result.psnr_db == float("inf"),
            "max_abs_diff": result.max_abs_diff,
            "images": [str(path) for path in written],
            "report": result.report.to_dict(),
            "notes": result.notes,
        }
        Path(args.json_out).write_text(json.dumps(data, indent=2, default=str) + "\n")
    return 0


def plan_command(args: argparse.Namespace) -> int:
    from sdopt.api import plan

    pipe, how = _planning_inputs(args)  # auto plans its quality tier's candidates (see plan())
    result = plan(pipe, **how)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result)
    return 0


def freeze_command(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sdopt.api import optimize
    from sdopt.tiers import resolve_tier

    output = Path(args.output)
    resolve_tier(args.tier)  # "auto" is measured, not frozen from a plan: refused here with the way to tune it
    pipe, how = _planning_inputs(args)
    report = optimize(pipe, **how, dry_run=True)
    preset = report.to_preset(args.name or output.stem)
    preset.save(output)
    print(report)
    print(f"\nwrote {output}: {len(preset.entries)} steps pinned (fingerprint {preset.fingerprint})")
    print(f"replay with: optimize(pipe, preset=Preset.load({str(output)!r}))")
    return 0


def tune_command(args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    from sdopt.capabilities import detect
    from sdopt.loading import place, stand_ins_for
    from sdopt.tiers import resolve_tier
    from sdopt.tuning import clear_cache, tune

    if args.clear_cache:
        print(f"removed {clear_cache()} stored tuning(s)")
        return 0
    if not (args.arch or args.model) or not args.output:
        raise ValueError("sdopt tune needs --arch or --model, and -o/--output (or --clear-cache alone)")
    output = Path(args.output)
    resolve_tier(args.quality)
    for name in names(args.exclude):
        registry.get(name)
    with _threads(args.threads):
        caps = detect(device=args.device) if args.device else detect()
        caps.require_usable_device()
        guidance = trained_models.guidance_for(args.arch or "", args.guidance)  # trained-*: theirs, as generate
        call = {"height": args.height, "width": args.width, "steps": args.steps, "guidance": guidance}
        call = {key: value for key, value in call.items() if value is not None}
        # Random-weight architectures get random-weight replacement models, as in `sdopt bench`.
        with stand_ins_for(args.arch or args.model):
            pipe = load_pipeline(args.arch or args.model, "cpu" if caps.device == "cuda" else caps.device)
            if caps.device == "cuda":
                place(pipe, caps, tier=args.quality, memory_budget=args.memory_budget)
            tuning = tune(
                pipe,
                args.quality,
                call={**call, "batch": args.batch},
                budget_s=args.budget_s,
                caps=caps,
                exclude=names(args.exclude),
                memory_budget=args.memory_budget,
                min_psnr_db=args.min_psnr_db,
                cache=not args.no_cache,
            )
        print(tuning)
        preset = dataclasses.replace(tuning.preset, name=args.name or output.stem)
        preset.save(output)
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(tuning.to_dict(), indent=2, default=str) + "\n")
        print(f"\nwrote {output}: {len(preset.entries)} steps pinned (fingerprint {preset.fingerprint})")
        print(f"replay with: optimize(pipe, preset=Preset.load({str(output)!r}), strict=True)")
        return 0


def bench_command(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sdopt.bench import DEFAULT_PROMPTS, bench

    with _threads(args.threads):
        prompts: Sequence[str] = DEFAULT_PROMPTS
        if args.prompts:
            prompts = [line.strip() for line in Path(args.prompts).read_text().splitlines() if line.strip()]
        result = bench(
            args.arch or args.model,
            names(args.tiers),
            steps=args.steps,
            height=args.height,
            width=args.width,
            guidance=args.guidance,
            runs=args.runs,
            warmup=args.warmup,
            device=args.device,
            prompts=prompts,
            undoable=not args.no_undo,
            memory_budget=args.memory_budget,
            batch=args.batch,
            gpu_references=not args.no_gpu_references,
            recipe_compile=args.recipe_compile,
            quality=False if args.no_quality else None,
        )
        print(result.table())
        written = []
        if args.json_out:
            result.save_json(args.json_out)
            written.append(args.json_out)
        if args.markdown:
            Path(args.markdown).write_text(result.to_markdown())
            written.append(args.markdown)
        if args.plot:
            result.plot(args.plot)
            written.append(args.plot)
        if written:
            print("wrote " + ", ".join(written))
        return 0


def _planning_inputs(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The pipeline ``plan`` and ``freeze`` work on, and the keyword arguments of their request (names
    checked against the registry before anything is loaded)."""
    from sdopt.capabilities import detect

    for name in names(args.exclude) + names(args.extra):
        registry.get(name)
    caps = detect(device=args.device) if args.device else None
    how = {
        "tier": args.tier,
        "exclude": names(args.exclude),
        "extra": names(args.extra),
        "caps": caps,
        "memory_budget": args.memory_budget,
    }
    return pipeline_to_plan(args), how


def pipeline_to_plan(args: argparse.Namespace) -> Any:
    """The pipeline ``plan`` and ``freeze`` plan for: a real-size architecture as structure alone (on the
    meta device: no weights, so ``--arch sdxl`` plans in seconds in no memory), else loaded."""
    if args.arch in REAL_ARCHES:
        from sdopt.simulation.architectures import real_pipeline

        return real_pipeline(args.arch, device="meta")
    return load_pipeline(args.arch or args.model)


@contextlib.contextmanager
def _threads(requested: int | None) -> Iterator[None]:
    """torch's thread count for a command that times calls: ``--threads``, else chosen by the machine's load
    over its physical cores (torch's own default); said on stderr, and put back when the command ends (a
    caller running ``main()`` in its own process keeps its setting)."""
    from sdopt.capabilities import detect
    from sdopt.timing import torch_threads

    with torch_threads(requested, cores=detect().cpu.physical_cores) as why:
        print(why, file=sys.stderr)
        yield
