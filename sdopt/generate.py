"""Load, optimize, generate: the main job in one call (and in ``sdopt generate``).

``generate`` loads a pipeline (a checkpoint, or a built-in architecture with random weights),
optimizes it with a tier or a pinned preset, renders the prompt and times it. With
``compare=True`` the untouched pipeline renders the same prompt and seed too, its calls interleaved
with the optimized ones on a CPU, so the result also says whether the optimized pipeline is faster
beyond the noise of the runs and how far its image drifted.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sdopt.fidelity import max_abs_difference, psnr, to_uint8
from sdopt.logging import get_logger
from sdopt.outputs import IMAGE_SUFFIXES, checked
from sdopt.presets import Preset
from sdopt.report import Report
from sdopt.simulation import trained as trained_models
from sdopt.simulation.architectures import REAL_ARCHES, TINY_ARCHES, TRAINED_ARCHES, load_pipeline
from sdopt.timing import Speedup, interleave, speedup, torch_threads

_logger = get_logger(__name__)

DEFAULT_PROMPT = "a lighthouse on a cliff at dawn, oil painting"
"""What ``sdopt generate`` renders when no ``--prompt`` is given."""
TRAINED_PROMPT = "a red circle at the top left on a white background"
"""The default on the trained tiny pipelines, which know only their scene domain (`sdopt.quality`)."""


def default_prompt(source: str) -> str:
    """What to render when no prompt is given: a caption of the scene domain on ``trained-*``."""
    return TRAINED_PROMPT if source in TRAINED_ARCHES else DEFAULT_PROMPT


RANDOM_WEIGHTS = (
    "random weights (a built-in architecture): the image is noise; timings are real, and fidelity is numerical "
    "drift, not image quality. --model PATH_OR_ID renders a real checkpoint"
)


@dataclass
class Generation:
    """What `generate` made: the images, the optimization report, and how long it took.

    ``seconds`` holds each timed call of the optimized pipeline and ``warmup_seconds`` its untimed
    first calls (the first includes any compilation or calibration; without warm-up, the first timed
    call does). With ``compare=True``, ``untouched_seconds`` (and ``untouched_warmup_seconds``) are the
    same calls on the pipeline as it was loaded, interleaved with the optimized ones call by call so
    that a machine getting busier hits both alike; ``comparison`` tells a speed-up from the noise, and
    ``psnr_db``/``max_abs_diff`` compare the first images (uint8).
    """

    source: str
    images: list[Any]
    report: Report
    seconds: list[float]
    batch: int
    call: dict[str, Any]
    load_s: float
    optimize_s: float
    untouched_images: list[Any] | None = None
    untouched_seconds: list[float] | None = None
    warmup_seconds: list[float] = field(default_factory=list)
    untouched_warmup_seconds: list[float] = field(default_factory=list)
    psnr_db: float | None = None
    max_abs_diff: int | None = None
    notes: list[str] = field(default_factory=list)
    pipe: Any = field(default=None, repr=False)

    @property
    def per_image_s(self) -> float:
        """Seconds per image: the median warm call / batch (the first call alone when it is all there is)."""
        return _per_image(self._warm(self.seconds, self.warmup_seconds), self.batch)

    @property
    def untouched_per_image_s(self) -> float | None:
        if not self.untouched_seconds:
            return None
        return _per_image(self._warm(self.untouched_seconds, self.untouched_warmup_seconds), self.batch)

    @property
    def speedup(self) -> float | None:
        """Untouched seconds per image / optimized seconds per image (``compare=True`` only); whether it
        is more than noise: `comparison`."""
        comparison = self.comparison
        return None if comparison is None else comparison.ratio

    @property
    def comparison(self) -> Speedup | None:
        """The optimized calls against the untouched ones, with the spread they show (``compare=True`` only)."""
        if not self.untouched_seconds:
            return None
        warm = self._warm(self.seconds, self.warmup_seconds)
        return speedup(self._warm(self.untouched_seconds, self.untouched_warmup_seconds), warm)

    @staticmethod
    def _warm(seconds: list[float], warmup: list[float]) -> list[float]:
        """The calls that were warm: all timed ones after a warm-up, else all but the first (when more)."""
        return seconds if warmup or len(seconds) == 1 else seconds[1:]

    def save(self, output: str | Path) -> list[Path]:
        """Write the images to ``output`` (``out-1.png``, ``out-2.png``... for several) and, with a
        comparison, the untouched images beside them (``out.untouched.png``); returns the paths."""
        output = check_image_path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        written = _write(self.images, output)
        if self.untouched_images is not None:
            written += _write(self.untouched_images, output.with_name(f"{output.stem}.untouched{output.suffix}"))
        return written

    def summary(self) -> str:
        """The timing and fidelity lines ``sdopt generate`` prints under the report."""
        warm = self._warm(self.seconds, self.warmup_seconds)
        first = (self.warmup_seconds or self.seconds)[0]
        lines = [
            f"loaded in {self.load_s:.1f} s, optimized in {self.optimize_s:.1f} s",
            f"time per image: {self.per_image_s:.2f} s "
            + (
                f"(median of {len(warm)} warm call(s); first call {first:.2f} s)"
                if self.warmup_seconds or len(self.seconds) > 1
                else "(one call, a first call: includes any compilation; --runs 2 times a warm one too)"
            ),
        ]
        comparison = self.comparison
        if comparison is not None and self.untouched_per_image_s is not None:
            lines.append(
                f"untouched pipeline: {self.untouched_per_image_s:.2f} s per image, its calls interleaved with the "
                f"optimized ones (optimized: {comparison.describe()})"
            )
            if self.psnr_db is not None:
                fidelity = "identical" if self.psnr_db == float("inf") else f"{self.psnr_db:.1f} dB PSNR"
                lines.append(f"fidelity vs untouched: {fidelity} (max abs difference {self.max_abs_diff}/255)")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def check_image_path(output: str | Path) -> Path:
    """``output`` as a path, if it names an image file `Generation.save` can write."""
    return checked(output, IMAGE_SUFFIXES, "the image file")


def generate(
    source: str,
    *,
    tier: str | None = "balanced",
    preset: str | Path | Preset | None = None,
    prompt: str | None = None,
    negative_prompt: str | None = None,
    steps: int | None = None,
    height: int | None = None,
    width: int | None = None,
    guidance: float | None = None,
    seed: int = 0,
    batch: int = 1,
    runs: int = 1,
    warmup: int | None = None,
    threads: int | None = None,
    device: str | None = None,
    compare: bool = False,
    memory_budget: float | str | None = None,
    image: Any = None,
    mask_image: Any = None,
    undoable: bool = True,
    exclude: Sequence[str] = (),
    progress: Callable[[str], None] | None = None,
) -> Generation:
    """Load ``source``, optimize it with ``tier`` (or ``preset``), render ``prompt`` and time it.

    ``source`` is a local path or hub id (``from_pretrained``) or a built-in architecture
    (``tiny-sd``, ``sd15``, ``sdxl``... random weights, no download; ``trained-sd`` / ``trained-dit``:
    tiny and trained, see `sdopt.simulation.trained`). ``None`` prompt renders `default_prompt`;
    ``None`` size, steps and guidance take the pipeline's own defaults (guidance
    on a trained pipeline: `sdopt.simulation.trained.GUIDANCE`). ``warmup`` untimed calls
    (default: 1 with ``compare``, else none) precede ``runs`` timed calls. ``compare`` times the
    untouched pipeline too, call for call interleaved with the optimized one (a copy sharing the
    weights the optimization leaves alone). ``threads`` is torch's CPU thread count while this runs
    (default on a CPU: chosen by the machine's load, see `sdopt.timing.choose_threads`; elsewhere left
    as it is); the notes say which was used. ``image`` and ``mask_image`` (PIL images or paths) feed
    image-to-image and inpainting pipelines; without them such pipelines get a made-up input. The
    optimized pipeline is in ``.pipe``. ``progress`` is told each
    phase as it starts (loading, optimizing, each call and which pipeline makes it).

    Examples:
        >>> from sdopt.generate import generate
        >>> result = generate("tiny-sd", tier="balanced", steps=2, compare=True)
        >>> result.images[0].size, result.psnr_db > 30
        ((64, 64), True)
    """
    from sdopt.api import optimize
    from sdopt.bench.instruments import light_copy
    from sdopt.calls import CallShape
    from sdopt.capabilities import detect
    from sdopt.loading import place, stand_ins_for
    from sdopt.tiers import is_auto, resolve_tier

    warmup = (1 if compare else 0) if warmup is None else warmup
    if batch < 1 or runs < 1 or warmup < 0:
        raise ValueError(f"batch and runs must be >= 1, warmup >= 0 (got batch={batch}, runs={runs}, warmup={warmup})")
    if isinstance(preset, (str, Path)):
        preset = Preset.load(preset)  # a malformed file fails here, before minutes of loading
    how: dict[str, Any] = {"preset": preset} if preset is not None else {"tier": tier}
    if preset is None and tier is not None and not is_auto(tier):
        resolve_tier(tier)
    caps = detect(device=device) if device else detect()
    caps.require_usable_device()  # before minutes of loading, not an AssertionError from torch after them
    built_in = source in TINY_ARCHES or source in REAL_ARCHES
    notes = [RANDOM_WEIGHTS] if built_in else []
    measured_tier = how.get("tier") is not None and is_auto(how["tier"])
    # Random-weight architectures get random-weight replacement models (tiny VAE...), as in `sdopt bench`.
    say = progress or (lambda message: _logger.info("%s", message))
    with _torch_threads(threads, caps, notes), stand_ins_for(source):
        started = time.perf_counter()
        say(f"loading {source}" + (" (random weights, no download)" if built_in else ""))
        pipe = load_pipeline(source, "cpu" if caps.device == "cuda" else caps.device)
        placed = caps.device != "cuda" or place(pipe, caps, **how, exclude=list(exclude), memory_budget=memory_budget)
        if compare and not placed:
            notes.append("the plan offloads (the pipeline does not fit): the untouched pipeline ran on the CPU")
        load_s = time.perf_counter() - started
        guidance = trained_models.guidance_for(source, guidance)  # trained-*: the one they read prompts best at
        call = {"height": height, "width": width or height, "steps": steps, "guidance": guidance, "batch": batch}
        shape = CallShape.of(pipe, call)  # None: the pipeline's own default
        kwargs = _call_kwargs(pipe, shape, seed, prompt or default_prompt(source), negative_prompt, image, mask_image)
        render = _renderer(pipe, kwargs, seed, "optimized")

        def announce(names: list[str]) -> Callable[[int, int, bool], None]:
            def before_each(lane: int, index: int, warming: bool) -> None:
                what = "warm-up call" if warming else f"timed call {index - warmup + 1}/{runs}"
                say(f"{what} on the {names[lane]} pipeline")

            return before_each

        # On a CPU the untouched pipeline is a copy sharing the weights the optimization leaves alone (it keeps
        # the ones it replaces: sdopt never writes into a tensor in place), so both are timed call for call in
        # turn. On an accelerator the copy would hold the original weights beside the optimized ones in device
        # memory: the untouched calls come first there, on the pipeline itself, warm-up included.
        interleaved = compare and caps.device == "cpu"
        untouched_render = _renderer(light_copy(pipe), kwargs, seed, "untouched") if interleaved else None
        untouched = None
        if compare and not interleaved:
            notes.append(f"on {caps.device} the untouched calls ran before optimizing, not interleaved (memory)")
            timed_first = interleave([render], warmup=warmup, runs=runs, before_each=announce(["untouched"]))
            untouched = timed_first[0]

        started = time.perf_counter()
        say(f"optimizing with {how.get('tier') or 'the preset'}" + (" (measuring: tier auto)" if measured_tier else ""))
        measured: dict[str, Any] = {"call": shape} if measured_tier else {}
        report = optimize(
            pipe, **how, **measured, caps=caps, memory_budget=memory_budget, undoable=undoable, exclude=list(exclude)
        )
        optimize_s = time.perf_counter() - started
        lanes = [render] if untouched_render is None else [untouched_render, render]
        names = ["optimized"] if untouched_render is None else ["untouched", "optimized"]
        timed = interleave(lanes, warmup=warmup, runs=runs, before_each=announce(names))
        outputs, seconds, warmup_seconds = timed[-1]
        images = _frames(outputs[-1])
        if untouched_render is not None:
            untouched = timed[0]

    result = Generation(
        source=source,
        images=_to_pil(images),
        report=report,
        seconds=seconds,
        batch=batch,
        call={key: value for key, value in kwargs.items() if isinstance(value, (str, int, float))},
        load_s=load_s,
        optimize_s=optimize_s,
        notes=notes,
        pipe=pipe,
    )
    result.warmup_seconds = warmup_seconds
    if untouched is not None:
        untouched_images = _frames(untouched[0][-1])
        reference = _to_uint8(untouched_images[0])
        candidate = _to_uint8(images[0])
        result.untouched_images = _to_pil(untouched_images)
        result.untouched_seconds = untouched[1]
        result.untouched_warmup_seconds = untouched[2]
        if reference.shape == candidate.shape:
            result.psnr_db = psnr(reference, candidate)
            result.max_abs_diff = max_abs_difference(reference, candidate)
        else:  # a pipeline whose optimized call returns another size: no pixel-by-pixel comparison
            result.notes.append(
                f"no fidelity: the optimized image is {candidate.shape[:2]}, the untouched one "
                f"{reference.shape[:2]} (height, width)"
            )
    return result


def _call_kwargs(
    pipe: Any, shape: Any, seed: int, prompt: str, negative_prompt: str | None, image: Any, mask_image: Any
) -> dict[str, Any]:
    from sdopt.calls import call_parameters

    parameters = call_parameters(pipe)
    kwargs = shape.kwargs(pipe, seed)
    if "prompt" in parameters:
        kwargs["prompt"] = prompt
    if negative_prompt is not None and "negative_prompt" in parameters:
        kwargs["negative_prompt"] = negative_prompt
    for name, given in (("image", image), ("mask_image", mask_image)):
        if given is None:
            continue
        if name not in parameters:
            raise ValueError(f"{type(pipe).__name__} takes no {name}; leave --{name.replace('_', '-')} out")
        kwargs[name] = _open_image(given, "L" if name == "mask_image" else "RGB")
    return kwargs  # output_type="np" where the pipeline takes one, from the call shape's kwargs


def _open_image(given: Any, mode: str) -> Any:
    if isinstance(given, (str, Path)):
        from PIL import Image

        with Image.open(given) as opened:
            return opened.convert(mode)
    return given


def _renderer(pipe: Any, kwargs: dict[str, Any], seed: int, label: str) -> Callable[[], Any]:
    import torch

    # The bars say which pipeline is working; diffusers' setter replaces the whole config, so keep the rest.
    pipe.set_progress_bar_config(**{**getattr(pipe, "_progress_bar_config", {}), "desc": label})

    def render() -> Any:
        call = dict(kwargs)
        if "generator" in call:
            call["generator"] = torch.Generator("cpu").manual_seed(seed)  # the same noise on every call
        with torch.inference_mode():
            output = pipe(**call)
        return output.images if hasattr(output, "images") else getattr(output, "frames", output)

    return render


@contextlib.contextmanager
def _torch_threads(requested: int | None, caps: Any, notes: list[str]) -> Iterator[None]:
    """torch's CPU thread count while generating, noted, then put back: ``requested``, else on a CPU target
    chosen by load over its physical cores (torch's own default), else left as it is."""
    if requested is None and caps.device != "cpu":
        yield
        return
    with torch_threads(requested, cores=caps.cpu.physical_cores) as why:
        notes.append(why)
        yield


def _frames(output: Any) -> list[Any]:
    """Each image of a call's output (``np``: batch x H x W x C; video pipelines: their first frames)."""
    if isinstance(output, np.ndarray):
        while output.ndim > 4:
            output = output[:, 0]
        return list(output) if output.ndim == 4 else [output]
    if isinstance(output, list) and output and isinstance(output[0], list):  # frames per video
        return [frames[0] for frames in output]
    return list(output)


def _to_uint8(image: Any) -> np.ndarray:
    if hasattr(image, "convert"):  # a PIL image
        return np.asarray(image.convert("RGB"))
    return to_uint8(image)


def _to_pil(images: Sequence[Any]) -> list[Any]:
    from PIL import Image

    pictures = []
    for image in images:
        if hasattr(image, "convert"):
            pictures.append(image)
            continue
        pixels = _to_uint8(image)
        pictures.append(Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels))
    return pictures


def _write(images: Sequence[Any], output: Path) -> list[Path]:
    if len(images) == 1:
        images[0].save(output)
        return [output]
    paths = [output.with_name(f"{output.stem}-{index}{output.suffix}") for index in range(1, len(images) + 1)]
    for picture, path in zip(images, paths, strict=True):
        picture.save(path)
    return paths


def _per_image(warm: Sequence[float], batch: int) -> float:
    return statistics.median(warm) / batch
