"""The bench runner: what each tier buys on this machine, measured side by side in one run.

Every tier gets its own fresh copy of the pipeline; runs are interleaved (baseline, tier A,
tier B, baseline, ...) so machine drift hits all tiers alike; every tier renders the same prompts
with the same seeds, so fidelity is measured against the baseline image by image.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdopt.anatomy import inspect_pipeline
from sdopt.bench.instruments import light_copy
from sdopt.bench.lanes import Images, Rendered, peer_renderer, pipeline_renderer, run_interleaved
from sdopt.bench.quality import TIMED_PROMPTS, BenchQuality, QualityCalls, quality_prompts
from sdopt.bench.recipes import (
    RECIPE,
    UNTOUCHED_HALF,
    apply_recipe,
    recipe_context,
    renderer_in_context,
    untouched_half,
)
from sdopt.bench.results import (
    BASELINE,
    DEFAULT_PROMPTS,
    RANDOM_WEIGHTS_NOTE,
    BenchResult,
    Peer,
    TierResult,
    summarize,
)
from sdopt.calls import default_height
from sdopt.loading import place, stand_ins_for
from sdopt.logging import progress_bar
from sdopt.outputs import PRESET_SUFFIXES
from sdopt.simulation import trained as trained_models
from sdopt.simulation.architectures import REAL_ARCHES, TINY_ARCHES, TRAINED_ARCHES, load_pipeline
from sdopt.tiers import AUTO, DEFAULT_TIER


def bench(
    source: str,
    tiers: Sequence[str] = (BASELINE, "balanced"),
    *,
    steps: int = 20,
    height: int | None = None,
    width: int | None = None,
    guidance: float | None = None,
    runs: int = 3,
    warmup: int = 1,
    prompts: Sequence[str] = DEFAULT_PROMPTS,
    device: str | None = None,
    seed: int = 0,
    clock: Callable[[], float] = time.perf_counter,
    progress: Callable[[str], None] | None = None,
    peers: Sequence[Peer] = (),
    undoable: bool = True,
    memory_budget: float | str | None = None,
    batch: int = 1,
    gpu_references: bool = True,
    recipe_compile: str = "max-autotune",
    quality: bool | None = None,
) -> BenchResult:
    """Measure ``tiers`` on the pipeline ``source``: a real-size architecture (``sd15``, ``sdxl``,
    ``sd3``, ``flux``, ``pixart``, random weights), a tiny test one (``tiny-sd``...), or a local
    path / hub id loaded with ``from_pretrained``. ``"baseline"`` is the pipeline as loaded.
    A tier may also be a preset file (``.toml``/``.json``, from ``sdopt freeze``), shown by its
    file name, or ``auto`` / ``auto:<quality>`` (tuned for this bench's call shape; the measuring
    time is its own column, apart from the optimize time). ``peers`` are other runtimes rendering
    the same prompts and seeds in the same interleaved loop.

    Two reference rows (`sdopt.bench.recipes`): ``untouched-half``, the pipeline as a GPU user loads
    it (float16, or bfloat16 for models published in it), and ``recipe``, the family's published hand
    recipe (diffusion-fast, flux-fast), compiled with ``recipe_compile``. On CUDA and MPS both are
    added when not listed (``gpu_references=False``: not), and speedups are ratios to
    ``untouched-half``; elsewhere to the baseline.

    On the trained tiny pipelines (``trained-sd``, ``trained-dit``) each row also renders 48 domain
    captions (at their guidance, `sdopt.simulation.trained.GUIDANCE`, unless ``guidance`` is given)
    and reports prompt accuracy, domain FID and pairwise PSNR / SSIM against the baseline,
    with the baseline's noise floor (`sdopt.bench.quality`); ``quality=False`` leaves that out (it
    cannot be asked of other pipelines: their images cannot be read). Their timed calls render domain
    captions unless ``prompts`` are given.

    Tiers are optimized as a user's defaults would (``undoable=True``: originals spilled, see
    docs/memory.md; ``undoable=False`` for ``--no-undo``), under ``memory_budget`` if given. On CPU
    the tiers render interleaved, image by image, from copies that share the loaded pipeline's
    unchanged weights (one float32 copy in memory, whatever the number of tiers); when the weights
    the tiers change would not all fit in RAM beside it, they run one after another instead, each
    on a pipeline built for it once the baseline is done. On CUDA they run one after another,
    each alone on the device (the loaded pipeline waits on the host), so each tier's device peak
    is its own.

    Examples:
        >>> from sdopt.bench import bench
        >>> result = bench("tiny-sd", ["baseline", "balanced"], steps=2, runs=1, warmup=0)
        >>> [t.tier for t in result.tiers], result.tiers[0].speedup
        (['baseline', 'balanced'], 1.0)
    """
    # A random-weight architecture gets random-weight replacement models (TAESD...) when their real
    # weights are not cached, so fast and ultra are timed with the parts a user with a network gets.
    with stand_ins_for(source):
        return _bench(
            source,
            tiers,
            steps=steps,
            height=height,
            width=width,
            guidance=_guidance(source, guidance),
            runs=runs,
            warmup=warmup,
            prompts=prompts,
            device=device,
            seed=seed,
            clock=clock,
            progress=progress,
            peers=peers,
            undoable=undoable,
            memory_budget=memory_budget,
            batch=batch,
            gpu_references=gpu_references,
            recipe_compile=recipe_compile,
            quality=quality,
        )


def _bench(
    source: str,
    tiers: Sequence[str],
    *,
    steps: int,
    height: int | None,
    width: int | None,
    guidance: float,
    runs: int,
    warmup: int,
    prompts: Sequence[str],
    device: str | None,
    seed: int,
    clock: Callable[[], float],
    progress: Callable[[str], None] | None,
    peers: Sequence[Peer],
    undoable: bool,
    memory_budget: float | str | None,
    batch: int,
    gpu_references: bool,
    recipe_compile: str,
    quality: bool | None,
) -> BenchResult:
    from sdopt.api import optimize
    from sdopt.capabilities import detect
    from sdopt.tiers import resolve_tier

    # Bad tiers and presets fail here, before minutes of loading.
    how = {tier: _how_to_optimize(tier, resolve_tier) for tier in tiers if tier not in REFERENCE_ROWS}
    if runs < 1 or warmup < 0 or batch < 1:
        raise ValueError(f"runs and batch must be >= 1, warmup >= 0 (got runs={runs}, batch={batch}, warmup={warmup})")
    if batch > 1 and peers:
        raise ValueError("peers render one image per call: benchmark --batch without them")
    if not prompts:
        raise ValueError("no prompts to render")
    trained = source in TRAINED_ARCHES
    if quality and not trained:
        raise ValueError(
            f"quality is measured on the trained pipelines only ({', '.join(TRAINED_ARCHES)}): "
            f"{source}'s images cannot be read; its rows keep PSNR against the baseline"
        )
    quality = trained if quality is None else quality
    if trained and tuple(prompts) == DEFAULT_PROMPTS:
        prompts = TIMED_PROMPTS  # captions of the domain it was trained on
    caps = detect(device=device) if device else detect()
    caps.require_usable_device()
    target = caps.device
    tiers = rows_for(tiers, target, gpu_references=gpu_references)
    names = [*map(_row_name, tiers), *(peer.name for peer in peers)]
    if len(set(names)) != len(names):
        raise ValueError(f"every tier and peer needs its own name (got {', '.join(names)})")
    bar = progress_bar(total=(warmup + runs) * len(names), desc="sdopt bench", unit="call")

    def say(message: str) -> None:
        bar.set_postfix_str(message)
        if progress is not None:
            progress(message)

    peer_results: list[TierResult] = []
    loaded: list[Peer] = []
    try:
        # Peers first: their set-up (an export, say) may need memory the tiers' copies would hold.
        for peer in peers:
            say(f"loading peer {peer.name}")
            result = TierResult(peer.name)
            started = clock()
            description = peer.load()
            loaded.append(peer)
            result.optimize_s = clock() - started
            result.report = {"peer": description}
            peer_results.append(result)

        say(f"building {source} on {target}")
        # On CUDA the loaded pipeline waits on the host: only the tier being measured is on the device.
        loaded_pipe: list[Any] = [load_pipeline(source, "cpu" if target == "cuda" else target)]
        base = loaded_pipe[0]
        height = height or default_height(inspect_pipeline(base)) or 512
        width = width or height
        extra = trained_models.call_kwargs(base) if trained else {}
        images = Images(prompts, steps, guidance, height, width, seed, batch, extra)
        results = [TierResult(_row_name(tier)) for tier in tiers]
        # Each lane's report, until its calls are done: what call-time steps did is only known after them.
        live_reports: dict[int, Any] = {}

        def record_after_calls(result: TierResult) -> None:
            report = live_reports.pop(id(result), None)
            if report is not None and isinstance(result.report, dict):
                result.report["after_calls"] = dict(report.after_calls)

        calls = QualityCalls(quality_prompts(), steps, guidance, height, width, seed)
        judged = BenchQuality(calls, say) if quality else None

        def judge(tier: str, result: TierResult) -> None:
            if judged is not None:
                judged.judge(tier, result)

        pipeline_name = type(base).__name__
        options: dict[str, Any] = {"caps": caps, "undoable": undoable, "memory_budget": memory_budget, "verify": True}
        references: dict[int, np.ndarray] = {}
        serial_why = "" if target == "cuda" else _why_not_interleaved(base, tiers, how, caps, memory_budget)
        del base

        def lane(tier: str, result: TierResult) -> Callable[[int], Rendered]:
            if loaded_pipe:
                shared = loaded_pipe[0]
                pipe = shared if tier == BASELINE and target != "cuda" else light_copy(shared)
            else:  # the loaded pipeline is gone (CPU, one tier at a time): the tier builds its own
                say(f"building {source} for {tier}")
                pipe = load_pipeline(source, target)
            pipe.set_progress_bar_config(disable=True)  # sdopt's own bar over the images instead
            if judged is not None:
                judged.watch(tier, pipe, recipe_context if tier == RECIPE else contextlib.nullcontext)
            if target == "cuda":  # on the device unless the tier's plan offloads
                place(pipe, caps, **(how.get(tier) or {"tier": None}), memory_budget=memory_budget)
            if tier in (UNTOUCHED_HALF, RECIPE):
                started = clock()
                if tier == UNTOUCHED_HALF:
                    result.applied = [untouched_half(pipe)]
                else:
                    result.applied = apply_recipe(pipe, device=target, compile=recipe_compile)
                result.optimize_s = clock() - started
                result.report = {"reference": result.applied}
                render = pipeline_renderer(pipe, target, images, clock)
                return renderer_in_context(render) if tier == RECIPE else render
            if tier != BASELINE:
                started = clock()
                # The bench's calls are what tier="auto" tunes for and what the speed guard times (on GPUs).
                report = optimize(pipe, **how[tier], call=images.call_shape(), **options)
                result.optimize_s = clock() - started
                if report.tuning is not None:  # measuring is reported apart from applying
                    result.tuning_s = report.tuning.seconds
                    result.optimize_s -= report.tuning.seconds
                result.applied = [d.name for d in report.applied]
                result.report = report.to_dict()
                live_reports[id(result)] = report
                return pipeline_renderer(pipe, target, images, clock, report)
            return pipeline_renderer(pipe, target, images, clock)

        if target == "cuda" or serial_why:
            # The baseline first (the others are compared with its images), then one tier at a time.
            for index in sorted(range(len(tiers)), key=lambda i: tiers[i] != BASELINE):
                render = lane(tiers[index], results[index])
                run_interleaved([results[index]], [render], warmup, runs, say, references, bar.update)
                judge(tiers[index], results[index])
                record_after_calls(results[index])
                del render  # the tier's pipeline goes before the next one comes
                if serial_why and tiers[index] == BASELINE:
                    loaded_pipe.clear()  # on CPU each tier then builds its own: never two float32 copies
                gc.collect()
                if target == "cuda":
                    torch.cuda.empty_cache()
            for peer, result in zip(peers, peer_results, strict=True):
                render = peer_renderer(peer, images, clock)
                run_interleaved([result], [render], warmup, runs, say, references, bar.update)
        else:
            renderers = [lane(tier, result) for tier, result in zip(tiers, results, strict=True)]
            loaded_pipe.clear()  # the baseline lane holds it, if any
            renderers += [peer_renderer(peer, images, clock) for peer in peers]
            run_interleaved([*results, *peer_results], renderers, warmup, runs, say, references, bar.update)
            for index in sorted(range(len(tiers)), key=lambda i: tiers[i] != BASELINE):
                judge(tiers[index], results[index])
                record_after_calls(results[index])
        results += peer_results
    finally:
        bar.close()
        for peer in loaded:
            peer.close()
    reference = UNTOUCHED_HALF if target in GPU_DEVICES and UNTOUCHED_HALF in tiers else BASELINE
    summarize(results, reference)

    notes = []
    if source in REAL_ARCHES or source in TINY_ARCHES:
        notes.append(RANDOM_WEIGHTS_NOTE)
    notes.append(
        "host peak: process RSS high-water during the tier's calls minus the RSS before them, plus the tier's "
        "host-resident weights and originals kept in memory (tiers share unchanged weights in this process; "
        "each row is what the tier would hold alone)"
    )
    if target == "cuda":
        notes.append("device peak: CUDA max allocated during the tier's calls; tiers ran one after another, alone")
    elif serial_why:
        notes.append(f"tiers ran one after another, not interleaved, each on a pipeline built for it: {serial_why}")
    notes.append(
        "optimized with undo's originals kept (the default: checkpoint or spill file, docs/memory.md)"
        if undoable
        else "optimized with --no-undo (nothing kept for undo)"
    )
    if memory_budget is not None:
        notes.append(f"memory budget: {memory_budget}")
    if any("random weights of its published architecture" in str(t.report) for t in results):
        notes.append("replacement models not cached here (TAESD, the fp16-fix VAE) ran with random weights")
    notes.append("fidelity: worst PSNR / largest max abs difference over the runs vs the baseline's image (uint8)")
    if judged is not None:
        notes += judged.notes()
    if reference != BASELINE:
        notes.append(f"speedup: against {reference} (the pipeline as a GPU user loads it), not the float32 baseline")
    if RECIPE in tiers:
        notes.append(
            f"recipe: the family's published hand recipe (diffusion-fast / flux-fast, sdopt.bench.recipes), "
            f"compiled with mode {recipe_compile!r}"
        )
    notes.append(
        "speedup: the reference row's median over the tier's, with its noise (+-, from both sides' ranges over the "
        "runs); a ratio inside the noise reads 'no difference', and fewer than 3 runs tell nothing"
    )
    if peers:
        notes.append(
            f"peers ({', '.join(p.name for p in peers)}): 'optimize s' is their load time, peak memory and "
            "per-step/decode times are what they report of themselves"
        )
    return BenchResult(
        source=source,
        pipeline=pipeline_name,
        device=caps.device if target != "cuda" or not caps.cuda else f"cuda ({caps.cuda[0].name})",
        settings={
            "steps": steps,
            "height": height,
            "width": width,
            "guidance": guidance,
            "runs": runs,
            "warmup": warmup,
            "prompts": list(prompts),
            "seed": seed,
            "threads": torch.get_num_threads(),
            "undoable": undoable,
            "memory_budget": memory_budget,
            "batch": batch,
        },
        machine={"cpu": caps.cpu.model, "fingerprint": caps.fingerprint, **caps.versions},
        tiers=results,
        memory_kind="CUDA max allocated" if target == "cuda" else "RSS",
        notes=notes,
        speedup_reference=reference,
        quality=None if judged is None else judged.summary(),
    )


REFERENCE_ROWS = (BASELINE, UNTOUCHED_HALF, RECIPE)
"""Rows that are not sdopt tiers: the pipeline as loaded, as a GPU user loads it, and the hand recipe."""


GPU_DEVICES = ("cuda", "mps")


def rows_for(tiers: Sequence[str], device: str, *, gpu_references: bool = True) -> list[str]:
    """The rows a bench of ``tiers`` on ``device`` renders: on GPUs the reference rows are added when
    missing (``gpu_references``), reference rows first.

    Examples:
        >>> from sdopt.bench.runner import rows_for
        >>> rows_for(["balanced", "baseline"], "cuda")
        ['baseline', 'untouched-half', 'recipe', 'balanced']
        >>> rows_for(["balanced", "baseline"], "cpu")
        ['balanced', 'baseline']
    """
    if device not in GPU_DEVICES or not gpu_references:
        return list(tiers)
    rows = [*tiers, *(row for row in (UNTOUCHED_HALF, RECIPE) if row not in tiers)]
    return sorted(rows, key=lambda row: REFERENCE_ROWS.index(row) if row in REFERENCE_ROWS else len(REFERENCE_ROWS))


def _guidance(source: str, guidance: float | None) -> float:
    """As given; else a trained pipeline's own (`sdopt.simulation.trained.GUIDANCE`), else 7.5."""
    resolved = trained_models.guidance_for(source, guidance)
    return 7.5 if resolved is None else resolved


def _is_preset_file(tier: str) -> bool:
    return Path(tier).suffix in PRESET_SUFFIXES


def _how_to_optimize(tier: str, resolve_tier: Callable[[str], Any]) -> dict[str, Any]:
    name, _, quality = tier.partition(":")
    if name == AUTO:  # "auto" or "auto:fast": the quality tier's steps that measure faster here
        resolve_tier(quality or DEFAULT_TIER)
        return {"tier": AUTO, "quality": quality or DEFAULT_TIER}
    if _is_preset_file(tier):
        from sdopt.presets import Preset

        return {"tier": None, "preset": Preset.load(tier)}
    resolve_tier(tier)
    return {"tier": tier}


def _row_name(tier: str) -> str:
    return Path(tier).name if _is_preset_file(tier) else tier


def _why_not_interleaved(
    base: Any, tiers: Sequence[str], how: dict[str, dict[str, Any]], caps: Any, memory_budget: float | str | None
) -> str:
    """Why the tiers cannot all stay in host memory at once (empty when they can). Interleaved lanes
    share the loaded pipeline's unchanged weights, but each holds the weights its tier changed."""
    from sdopt.api import plan
    from sdopt.probes.cpu import ram_gb

    before = plan(base, tier=None, caps=caps).footprint
    if before is None:
        return ""
    extra, activations = 0.0, before.activations_gb
    for tier in tiers:
        if tier in REFERENCE_ROWS:  # the baseline, or rows whose weights are not planned
            continue
        footprint = plan(base, **how[tier], caps=caps, memory_budget=memory_budget).footprint
        if footprint is not None:
            activations = max(activations, footprint.activations_gb)
            if abs(footprint.total_gb - before.total_gb) > 1e-6:  # its weights differ from the shared ones
                extra += footprint.total_gb
    available = ram_gb()[1]
    needed = extra + activations + 1.0  # a GB of headroom for the process itself
    if needed <= available:
        return ""
    return (
        f"interleaving would hold ~{extra:.1f} GB of the tiers' own weights (+ ~{activations:.1f} GB of "
        f"activations) beside the loaded pipeline, with {available:.1f} GB of RAM available"
    )
