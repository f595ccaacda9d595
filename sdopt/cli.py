"""The ``sdopt`` command line: generate, doctor, tiers, optimizations, plan, freeze, tune, bench."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

from sdopt import commands
from sdopt.errors import SdoptError
from sdopt.outputs import IMAGE_SUFFIXES, PRESET_SUFFIXES, checked
from sdopt.simulation.architectures import REAL_ARCHES, TINY_ARCHES, TRAINED_ARCHES


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sdopt`` console script; returns the exit status."""
    # transformers warns about optional image-processor backends on import; not our user's concern.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    parser = _parser()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as stop:  # bad arguments (argparse printed the reason), --help, --version
            return stop.code if isinstance(stop.code, int) else 2
        with _verbosity(args.verbosity):
            return _run(args)
    except KeyboardInterrupt:
        print("sdopt: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
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


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad argument told in one line (the usage is one --help away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    from sdopt._version import __version__

    parser = _Parser(prog="sdopt", description=__doc__)
    parser.add_argument("--version", action="version", version=f"sdopt {__version__}")
    # -q/-v are accepted after any command: `sdopt generate ... --quiet`.
    common = _Parser(add_help=False)
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
    subcommands = _Commands(parser.add_subparsers(dest="command", required=True), common)

    generate = subcommands.add_parser(
        "generate", help="load, optimize and generate an image; --compare also times the untouched pipeline"
    )
    _add_measured_source(generate, required=True)
    recipe = generate.add_mutually_exclusive_group()
    recipe.add_argument(
        "--tier", type=_tier, default="balanced", help="tier name, optionally pinned (balanced@2), or auto"
    )
    recipe.add_argument("--preset", type=_preset_file, help="a pinned preset file (.toml/.json) instead of a tier")
    generate.add_argument(
        "--prompt", default=None, help="what to render (default: a lighthouse at dawn; on trained-*, a red circle)"
    )
    generate.add_argument("--negative-prompt")
    generate.add_argument("--steps", type=_positive, help="denoising steps (default: the pipeline's)")
    generate.add_argument("--height", type=_side, help="image height, a multiple of 8 (default: the pipeline's)")
    generate.add_argument("--width", type=_side, help="image width, a multiple of 8 (default: the height)")
    generate.add_argument("--guidance", type=float, help="guidance scale (default: the pipeline's)")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--batch", type=_positive, default=1, help="images per call")
    generate.add_argument(
        "--runs", type=_positive, default=1, help="timed calls (without warm-up, the first includes any compilation)"
    )
    generate.add_argument(
        "--warmup", type=_non_negative, help="untimed first calls (default: 1 with --compare, else 0), each side"
    )
    generate.add_argument("--image", help="input image for image-to-image and inpainting pipelines")
    generate.add_argument("--mask-image", help="inpainting mask (white = repaint)")
    generate.add_argument("--device", help="run on this device type instead of the detected one")
    generate.add_argument("--threads", type=_positive, help="torch CPU threads (default: chosen by the machine's load)")
    generate.add_argument("--memory-budget", help="the most device memory the plan may use, e.g. 6GB")
    generate.add_argument("--exclude", default="", help="comma-separated optimization names to leave out")
    generate.add_argument(
        "--compare",
        action="store_true",
        help="time the untouched pipeline too, calls interleaved: the speedup (or none) and the fidelity",
    )
    generate.add_argument("--json", dest="json_out", help="also write the report and timings as JSON")
    generate.add_argument(
        "-o", "--output", type=_image_file, default="sdopt.png", help="the image file to write (default: sdopt.png)"
    )
    generate.set_defaults(handler=commands.generate_command)

    tiers = subcommands.add_parser("tiers", help="list the tiers and what each contains")
    tiers.add_argument("--json", action="store_true", help="print JSON instead of a table")
    tiers.add_argument("--all", action="store_true", help="the published older versions too (pinned presets use them)")
    tiers.add_argument("--markdown", action="store_true", help="print the Markdown tables of docs/tiers.md")
    tiers.add_argument(
        "--fit",
        action="store_true",
        help="print docs/fit.md's table: whether each tier fits each GPU, per architecture",
    )
    tiers.set_defaults(handler=commands.tiers_command)

    optimizations = subcommands.add_parser("optimizations", help="list the registered optimizations")
    optimizations.add_argument("--json", action="store_true", help="print JSON instead of a table")
    optimizations.add_argument(
        "--write-docs",
        metavar="DIR",
        help="write the documentation page of each optimization to DIR (the docs build makes its own)",
    )
    optimizations.set_defaults(handler=commands.optimizations_command)

    doctor = subcommands.add_parser("doctor", help="show what sdopt detects on this machine")
    doctor.add_argument("--json", action="store_true", help="print JSON")
    doctor.set_defaults(handler=commands.doctor_command)

    plan = subcommands.add_parser("plan", help="show what a tier would do to a pipeline (changes nothing)")
    _add_planning_arguments(plan)
    plan.add_argument("--json", action="store_true", help="print JSON")
    plan.set_defaults(handler=commands.plan_command)

    freeze = subcommands.add_parser(
        "freeze", help="plan a tier on this machine and write the pinned preset (what exactly it would apply)"
    )
    _add_planning_arguments(freeze)
    freeze.add_argument("--name", help="the preset's name (default: the output file's stem)")
    freeze.add_argument(
        "-o", "--output", type=_preset_output, required=True, help="the preset file to write (.toml or .json)"
    )
    freeze.set_defaults(handler=commands.freeze_command)

    tune = subcommands.add_parser(
        "tune",
        help="measure which of a quality tier's steps make a pipeline faster here, and pin them (tier 'auto')",
    )
    _add_measured_source(tune, required=False)  # not with --clear-cache
    tune.add_argument(
        "--quality",
        default="balanced",
        help="the tier whose steps are the candidates and whose fidelity floor they keep (default balanced)",
    )
    tune.add_argument("--height", type=_side, help="the app's image height (default: the pipeline's)")
    tune.add_argument("--width", type=_side, help="the app's image width (default: the height)")
    tune.add_argument("--steps", type=_positive, help="the app's step count (default: the pipeline's)")
    tune.add_argument(
        "--guidance", type=float, help="the app's guidance scale (default: the pipeline's; trained-*: 4.5)"
    )
    tune.add_argument("--batch", type=_positive, default=1, help="images per call")
    tune.add_argument("--budget-s", type=float, help="the most seconds measuring may take")
    tune.add_argument("--min-psnr-db", type=float, help="override the quality's fidelity floor")
    tune.add_argument("--exclude", default="", help="comma-separated optimization names to leave out")
    tune.add_argument("--device", help="tune for this device type instead of the detected one")
    tune.add_argument("--threads", type=_positive, help="torch CPU threads")
    tune.add_argument("--memory-budget", help="the most device memory the plan may use, e.g. 6GB")
    tune.add_argument("--no-cache", action="store_true", help="measure again even if a stored tuning fits")
    tune.add_argument("--clear-cache", action="store_true", help="forget every stored tuning and exit")
    tune.add_argument("--name", help="the preset's name (default: the output file's stem)")
    tune.add_argument("--json", dest="json_out", help="also write the tuning record (every measurement) as JSON")
    tune.add_argument("-o", "--output", type=_preset_output, help="the preset file to write (.toml or .json)")
    tune.set_defaults(handler=commands.tune_command)

    bench = subcommands.add_parser("bench", help="measure tiers side by side on this machine")
    _add_measured_source(bench, required=True)
    bench.add_argument(
        "--tiers",
        default="baseline,balanced",
        help="comma-separated tiers, preset files (.toml/.json) or auto[:quality]; 'baseline' = as loaded, "
        "'untouched-half' = as a GPU user loads it (float16/bfloat16), 'recipe' = the published hand recipe",
    )
    bench.add_argument("--steps", type=_positive, default=20)
    bench.add_argument("--height", type=_side)
    bench.add_argument("--width", type=_side)
    bench.add_argument("--guidance", type=float, help="guidance scale (default: 7.5; the trained pipelines' own, 4.5)")
    bench.add_argument("--runs", type=_positive, default=3, help="timed calls per tier")
    bench.add_argument("--batch", type=_positive, default=1, help="images per call (throughput: images/s)")
    bench.add_argument("--warmup", type=_non_negative, default=1, help="untimed first images per tier")
    bench.add_argument("--prompts", help="a text file, one prompt per line")
    bench.add_argument("--device", help="measure on this device type instead of the detected one")
    bench.add_argument("--threads", type=_positive, help="torch CPU threads")
    bench.add_argument("--json", dest="json_out", help="write the results as JSON")
    bench.add_argument("--markdown", help="write the table as Markdown")
    bench.add_argument("--plot", help="write a PNG bar chart (needs sdopt[bench])")
    bench.add_argument(
        "--no-undo",
        action="store_true",
        help="optimize with undoable=False (keeps nothing for undo) instead of the defaults users get",
    )
    bench.add_argument("--memory-budget", help="the most device memory each tier's plan may use, e.g. 6GB")
    bench.add_argument(
        "--no-gpu-references",
        action="store_true",
        help="on GPUs, do not add the untouched-half and recipe rows (speedups then against the baseline)",
    )
    bench.add_argument(
        "--recipe-compile",
        choices=("max-autotune", "default", "none"),
        default="max-autotune",
        help="how the recipe row compiles: as published (minutes on SDXL), inductor's default, or not at all",
    )
    bench.add_argument(
        "--no-quality",
        action="store_true",
        help="on trained-sd / trained-dit, skip the quality columns (48 extra images per row)",
    )
    bench.set_defaults(handler=commands.bench_command)
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
        "--arch",
        choices=sorted([*TINY_ARCHES, *REAL_ARCHES, *TRAINED_ARCHES]),
        help="a built-in architecture: random weights, or trained-sd / trained-dit (tiny, trained, shipped)",
    )
    source.add_argument("--model", type=_model, help="a local path or hub id loaded with from_pretrained")


def _add_planning_arguments(command: argparse.ArgumentParser) -> None:
    """The pipeline source, tier, exclusions, extras and device shared by ``plan`` and ``freeze``."""
    source = command.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--arch",
        choices=sorted([*TINY_ARCHES, *REAL_ARCHES, *TRAINED_ARCHES]),
        help="a built-in architecture (no download; real-size ones are planned from their structure alone)",
    )
    source.add_argument("--model", type=_model, help="a local path or hub id loaded with from_pretrained")
    command.add_argument("--tier", type=_tier, default="balanced", help="tier name, optionally pinned (balanced@1)")
    command.add_argument("--exclude", default="", help="comma-separated optimization names to leave out")
    command.add_argument("--extra", default="", help="comma-separated optimization names to add")
    command.add_argument("--device", help="plan for this device type instead of the detected one")
    command.add_argument(
        "--memory-budget", help="the most device memory the plan may use, e.g. 6GB (default: what is free)"
    )


# ---- argument types: bad input is refused at parse time, in one line, before any heavy import


def _positive(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive whole number")
    return value


def _non_negative(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def _side(text: str) -> int:
    value = _positive(text)
    if value % 8:
        below, above = max(8, value - value % 8), value - value % 8 + 8
        raise argparse.ArgumentTypeError(
            f"{value} is not a multiple of 8 (the VAEs halve the image three times); try {below} or {above}"
        )
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _model(text: str) -> str:
    from sdopt.simulation.architectures import check_source

    try:
        check_source(text)  # a mistyped folder fails now, not after the imports
    except OSError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _tier(text: str) -> str:
    from sdopt.tiers import is_auto, resolve_tier

    if not is_auto(text):
        try:
            resolve_tier(text)
        except (SdoptError, TypeError) as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _preset_file(text: str) -> str:
    from sdopt.presets import Preset

    try:
        Preset.load(text)  # parsed now: a typo fails here, not after minutes of loading
    except (SdoptError, OSError) as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _preset_output(text: str) -> str:
    try:
        checked(text, PRESET_SUFFIXES, "the preset file")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _image_file(text: str) -> str:
    try:
        checked(text, IMAGE_SUFFIXES, "the image file")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
