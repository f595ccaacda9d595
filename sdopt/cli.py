"""The ``sdopt`` command line: generate, doctor, tiers, optimizations, plan, freeze, tune, bench."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from sdopt import registry
from sdopt.errors import SdoptError
from sdopt.simulation.architectures import REAL_ARCHES, TINY_ARCHES, load_pipeline


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sdopt`` console script; returns the exit status."""
    # transformers warns about optional image-processor backends on import; not our user's concern.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    parser = _parser()
    args = parser.parse_args(argv)
    with _verbosity(args.verbosity):
        if args.command in _LOADS_PIPELINES:
            from sdopt._noise import quiet_imports

            quiet_imports()  # third-party import noise, summarised by `doctor`, printed with --verbose
            if args.verbosity > 0:
                _print_heard()
        try:
            return int(args.handler(args) or 0)
        except (SdoptError, TypeError, ValueError, OSError, ImportError) as error:
            print(f"sdopt: error: {error}", file=sys.stderr)
            return 2
        except RuntimeError as error:
            if type(error).__name__ != "OutOfMemoryError":
                raise
            print(
                f"sdopt: error: out of device memory ({str(error).splitlines()[0]}); plan for less with "
                "--memory-budget, or use --tier low-memory (`sdopt plan` shows the estimate)",
                file=sys.stderr,
            )
            return 2


# The commands that build or load a pipeline (and so import diffusers, peft, torchao...).
_LOADS_PIPELINES = ("generate", "doctor", "plan", "freeze", "tune", "bench")


@contextlib.contextmanager
def _verbosity(verbosity: int) -> Iterator[None]:
    """-q: errors only and no progress bars; default: warnings; -v: what sdopt does; -vv: debug.
    The switches are put back afterwards: ``main`` called in-process leaves its caller's settings."""
    import sdopt.logging

    level, bars = sdopt.logging.get_verbosity(), sdopt.logging._progress_bars
    quiet = verbosity < 0
    if quiet:
        from diffusers.utils import logging as diffusers_logging

        diffusers_level, diffusers_bars = diffusers_logging.get_verbosity(), diffusers_logging.is_progress_bar_enabled()
        sdopt.logging.set_verbosity_error()
        sdopt.logging.disable_progress_bar()
        diffusers_logging.set_verbosity_error()
        diffusers_logging.disable_progress_bar()
    elif verbosity > 0:
        sdopt.logging.set_verbosity(sdopt.logging.INFO if verbosity == 1 else sdopt.logging.DEBUG)
    try:
        yield
    finally:
        sdopt.logging.set_verbosity(level)
        if bars:
            sdopt.logging.enable_progress_bar()
        if quiet:
            diffusers_logging.set_verbosity(diffusers_level)
            if diffusers_bars:
                diffusers_logging.enable_progress_bar()


def _print_heard() -> None:
    from sdopt._noise import heard

    for package, lines in heard().items():
        print(f"[{package} on import]", file=sys.stderr)
        for line in lines:
            print(f"  {line}", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdopt", description=__doc__)
    # -q/-v are accepted after any command: `sdopt generate ... --quiet`.
    common = argparse.ArgumentParser(add_help=False)
    loudness = common.add_mutually_exclusive_group()
    loudness.add_argument(
        "-q", "--quiet", dest="verbosity", action="store_const", const=-1, help="errors only, no progress bars"
    )
    loudness.add_argument(
        "-v",
        "--verbose",
        dest="verbosity",
        action="count",
        help="say what sdopt does (-vv: every decision), and print what third-party packages printed on import",
    )
    common.set_defaults(verbosity=0)
    commands = _Commands(parser.add_subparsers(dest="command", required=True), common)

    generate = commands.add_parser(
        "generate", help="load, optimize and generate an image; --compare also times the untouched pipeline"
    )
    _add_measured_source(generate, required=True)
    recipe = generate.add_mutually_exclusive_group()
    recipe.add_argument("--tier", default="balanced", help="tier name, optionally pinned (balanced@2), or auto")
    recipe.add_argument("--preset", help="a pinned preset file (.toml/.json) instead of a tier")
    generate.add_argument("--prompt", default=None, help="what to render (default: a lighthouse at dawn)")
    generate.add_argument("--negative-prompt")
    generate.add_argument("--steps", type=int, help="denoising steps (default: the pipeline's)")
    generate.add_argument("--height", type=int, help="image height (default: the pipeline's)")
    generate.add_argument("--width", type=int, help="image width (default: the height)")
    generate.add_argument("--guidance", type=float, help="guidance scale (default: the pipeline's)")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--batch", type=int, default=1, help="images per call")
    generate.add_argument(
        "--runs", type=int, default=1, help="timed calls (without warm-up, the first includes any compilation)"
    )
    generate.add_argument(
        "--warmup", type=int, help="untimed first calls (default: 1 with --compare, else 0), each side"
    )
    generate.add_argument("--image", help="input image for image-to-image and inpainting pipelines")
    generate.add_argument("--mask-image", help="inpainting mask (white = repaint)")
    generate.add_argument("--device", help="run on this device type instead of the detected one")
    generate.add_argument("--threads", type=int, help="torch CPU threads (default: chosen by the machine's load)")
    generate.add_argument("--memory-budget", help="the most device memory the plan may use, e.g. 6GB")
    generate.add_argument("--exclude", default="", help="comma-separated optimization names to leave out")
    generate.add_argument(
        "--compare", action="store_true", help="render the same image untouched first: speedup and fidelity"
    )
    generate.add_argument("--json", dest="json_out", help="also write the report and timings as JSON")
    generate.add_argument("-o", "--output", required=True, help="the image file to write (.png, .jpg, .webp)")
    generate.set_defaults(handler=_generate)

    tiers = commands.add_parser("tiers", help="list the tiers and what each contains")
    tiers.add_argument("--json", action="store_true", help="print JSON instead of a table")
    tiers.add_argument("--markdown", action="store_true", help="print the Markdown tables of docs/tiers.md")
    tiers.add_argument(
        "--fit",
        action="store_true",
        help="print docs/fit.md's table: whether each tier fits each GPU, per architecture",
    )
    tiers.set_defaults(handler=_tiers)

    optimizations = commands.add_parser("optimizations", help="list the registered optimizations")
    optimizations.add_argument("--json", action="store_true", help="print JSON instead of a table")
    optimizations.add_argument(
        "--write-docs", metavar="DIR", help="write the documentation page of each optimization (docs/catalogue)"
    )
    optimizations.set_defaults(handler=_optimizations)

    doctor = commands.add_parser("doctor", help="show what sdopt detects on this machine")
    doctor.add_argument("--json", action="store_true", help="print JSON")
    doctor.set_defaults(handler=_doctor)

    plan = commands.add_parser("plan", help="show what a tier would do to a pipeline (changes nothing)")
    _add_planning_arguments(plan)
    plan.add_argument("--json", action="store_true", help="print JSON")
    plan.set_defaults(handler=_plan)

    freeze = commands.add_parser(
        "freeze", help="plan a tier on this machine and write the pinned preset (what exactly it would apply)"
    )
    _add_planning_arguments(freeze)
    freeze.add_argument("--name", help="the preset's name (default: the output file's stem)")
    freeze.add_argument("-o", "--output", required=True, help="the preset file to write (.toml or .json)")
    freeze.set_defaults(handler=_freeze)

    tune = commands.add_parser(
        "tune",
        help="measure which of a quality tier's steps make a pipeline faster here, and pin them (tier 'auto')",
    )
    _add_measured_source(tune, required=False)  # not with --clear-cache
    tune.add_argument(
        "--quality",
        default="balanced",
        help="the tier whose steps are the candidates and whose fidelity floor they keep (default balanced)",
    )
    tune.add_argument("--height", type=int, help="the app's image height (default: the pipeline's)")
    tune.add_argument("--width", type=int, help="the app's image width (default: the height)")
    tune.add_argument("--steps", type=int, help="the app's step count (default: the pipeline's)")
    tune.add_argument("--guidance", type=float, help="the app's guidance scale (default: the pipeline's)")
    tune.add_argument("--batch", type=int, default=1, help="images per call")
    tune.add_argument("--budget-s", type=float, help="the most seconds measuring may take")
    tune.add_argument("--min-psnr-db", type=float, help="override the quality's fidelity floor")
    tune.add_argument("--exclude", default="", help="comma-separated optimization names to leave out")
    tune.add_argument("--device", help="tune for this device type instead of the detected one")
    tune.add_argument("--threads", type=int, help="torch CPU threads")
    tune.add_argument("--memory-budget", help="the most device memory the plan may use, e.g. 6GB")
    tune.add_argument("--no-cache", action="store_true", help="measure again even if a stored tuning fits")
    tune.add_argument("--clear-cache", action="store_true", help="forget every stored tuning and exit")
    tune.add_argument("--name", help="the preset's name (default: the output file's stem)")
    tune.add_argument("--json", dest="json_out", help="also write the tuning record (every measurement) as JSON")
    tune.add_argument("-o", "--output", help="the preset file to write (.toml or .json)")
    tune.set_defaults(handler=_tune)

    bench = commands.add_parser("bench", help="measure tiers side by side on this machine")
    _add_measured_source(bench, required=True)
    bench.add_argument(
        "--tiers",
        default="baseline,balanced",
        help="comma-separated tiers, preset files (.toml/.json) or auto[:quality]; 'baseline' = as loaded",
    )
    bench.add_argument("--steps", type=int, default=20)
    bench.add_argument("--height", type=int)
    bench.add_argument("--width", type=int)
    bench.add_argument("--guidance", type=float, default=7.5)
    bench.add_argument("--runs", type=int, default=3, help="timed calls per tier")
    bench.add_argument("--batch", type=int, default=1, help="images per call (throughput: images/s)")
    bench.add_argument("--warmup", type=int, default=1, help="untimed first images per tier")
    bench.add_argument("--prompts", help="a text file, one prompt per line")
    bench.add_argument("--device", help="measure on this device type instead of the detected one")
    bench.add_argument("--threads", type=int, help="torch CPU threads")
    bench.add_argument("--json", dest="json_out", help="write the results as JSON")
    bench.add_argument("--markdown", help="write the table as Markdown")
    bench.add_argument("--plot", help="write a PNG bar chart (needs sdopt[bench])")
    bench.add_argument(
        "--no-undo",
        action="store_true",
        help="optimize with undoable=False (keeps nothing for undo) instead of the defaults users get",
    )
    bench.add_argument("--memory-budget", help="the most device memory each tier's plan may use, e.g. 6GB")
    bench.set_defaults(handler=_bench)
    return parser


class _Commands:
    """Subcommands that all accept the common options (-q/-v)."""

    def __init__(self, actions: Any, common: argparse.ArgumentParser) -> None:
        self._actions = actions
        self._common = common

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return self._actions.add_parser(name, parents=[self._common], **kwargs)


def _add_measured_source(command: argparse.ArgumentParser, *, required: bool) -> None:
    """``--arch`` (real-size or tiny, random weights) or ``--model``, for the commands that run the pipeline."""
    source = command.add_mutually_exclusive_group(required=required)
    source.add_argument(
        "--arch", choices=sorted([*TINY_ARCHES, *REAL_ARCHES]), help="a built-in architecture, random weights"
    )
    source.add_argument("--model", help="a local path or hub id loaded with from_pretrained")


def _add_planning_arguments(command: argparse.ArgumentParser) -> None:
    """The pipeline source, tier, exclusions, extras and device shared by ``plan`` and ``freeze``."""
    source = command.add_mutually_exclusive_group(required=True)
    source.add_argument("--arch", choices=sorted(TINY_ARCHES), help="a built-in architecture (no download)")
    source.add_argument("--model", help="a local path or hub id loaded with from_pretrained")
    command.add_argument("--tier", default="balanced", help="tier name, optionally pinned (balanced@1)")
    command.add_argument("--exclude", default="", help="comma-separated optimization names to leave out")
    command.add_argument("--extra", default="", help="comma-separated optimization names to add")
    command.add_argument("--device", help="plan for this device type instead of the detected one")
    command.add_argument(
        "--memory-budget", help="the most device memory the plan may use, e.g. 6GB (default: what is free)"
    )


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]
    for index, row in enumerate([headers, *rows]):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        if index == 0:
            print("  ".join("-" * width for width in widths))


def _tiers(args: argparse.Namespace) -> int:
    from sdopt.tiers import list_tiers

    if args.fit:
        from sdopt.fit import fit_markdown

        print(fit_markdown(), end="")
        return 0
    rows = list_tiers()
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
            table.append((label if index == 0 else "", step["name"], "lossy" if opt.lossy else "lossless", when))
        table.append(("", "", "", ""))
    _print_table(("tier", "optimization", "quality", "when"), table[:-1])
    print("\nEach optimization also has its own requirements; `sdopt plan` shows the outcome here.")
    return 0


def _optimizations(args: argparse.Namespace) -> int:
    if args.write_docs:
        from sdopt.optimization_docs import write_catalogue

        written = write_catalogue(args.write_docs)
        print(f"wrote {len(written)} pages to {args.write_docs}")
        return 0
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
    if args.json:
        print(json.dumps(caps.to_dict(), indent=2))
        return 0
    rows: list[tuple[str, str]] = [
        ("device", f"{caps.device} ({caps.device_reason})"),
        ("half precision", caps.half_dtype),
        ("cpu", f"{caps.cpu.model}, {caps.cpu.physical_cores} cores / {caps.cpu.logical_cores} threads"),
        ("cpu flags", " ".join(caps.cpu.flags) or "(unknown)"),
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
    _print_table(("capability", "value"), rows)
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
    _print_table(("tier", "applies", "skips (see `sdopt plan` for reasons)"), table)
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


def _generate(args: argparse.Namespace) -> int:
    from sdopt.generate import DEFAULT_PROMPT, check_image_path, generate

    check_image_path(args.output)  # before minutes of loading and rendering
    for name in _names(args.exclude):
        registry.get(name)
    result = generate(
        args.arch or args.model,
        tier=None if args.preset else args.tier,
        preset=args.preset,
        prompt=args.prompt or DEFAULT_PROMPT,
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
        exclude=_names(args.exclude),
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


def _plan(args: argparse.Namespace) -> int:
    from sdopt.api import plan
    from sdopt.capabilities import detect
    from sdopt.tiers import is_auto, resolve_tier

    if not is_auto(args.tier):  # auto plans its quality tier's candidates (see plan())
        resolve_tier(args.tier)  # fail on a bad tier before loading a model
    for name in _names(args.exclude) + _names(args.extra):
        registry.get(name)
    caps = detect(device=args.device) if args.device else None
    pipe = load_pipeline(args.arch or args.model)
    result = plan(
        pipe,
        tier=args.tier,
        exclude=_names(args.exclude),
        extra=_names(args.extra),
        caps=caps,
        memory_budget=args.memory_budget,
    )
    print(json.dumps(result.to_dict(), indent=2) if args.json else result)
    return 0


def _freeze(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sdopt.api import optimize
    from sdopt.capabilities import detect
    from sdopt.tiers import resolve_tier

    output = Path(args.output)
    if output.suffix not in (".toml", ".json"):
        raise ValueError(f"--output {output}: the preset file must end in .toml or .json")
    resolve_tier(args.tier)
    for name in _names(args.exclude) + _names(args.extra):
        registry.get(name)
    caps = detect(device=args.device) if args.device else None
    pipe = load_pipeline(args.arch or args.model)
    report = optimize(
        pipe,
        tier=args.tier,
        exclude=_names(args.exclude),
        extra=_names(args.extra),
        caps=caps,
        dry_run=True,
        memory_budget=args.memory_budget,
    )
    preset = report.to_preset(args.name or output.stem)
    preset.save(output)
    print(report)
    print(f"\nwrote {output}: {len(preset.entries)} steps pinned (fingerprint {preset.fingerprint})")
    print(f"replay with: optimize(pipe, preset=Preset.load({str(output)!r}))")
    return 0


def _tune(args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    import torch

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
    if output.suffix not in (".toml", ".json"):
        raise ValueError(f"--output {output}: the preset file must end in .toml or .json")
    resolve_tier(args.quality)
    for name in _names(args.exclude):
        registry.get(name)
    if args.threads:
        torch.set_num_threads(args.threads)
    caps = detect(device=args.device) if args.device else detect()
    call = {"height": args.height, "width": args.width, "steps": args.steps, "guidance": args.guidance}
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
            exclude=_names(args.exclude),
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


def _bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from sdopt.bench import DEFAULT_PROMPTS, bench
    from sdopt.timing import choose_threads

    threads, why = choose_threads(args.threads)
    torch.set_num_threads(threads)
    print(why, file=sys.stderr)
    prompts: Sequence[str] = DEFAULT_PROMPTS
    if args.prompts:
        prompts = [line.strip() for line in Path(args.prompts).read_text().splitlines() if line.strip()]
    result = bench(
        args.arch or args.model,
        _names(args.tiers),
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
