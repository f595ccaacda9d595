"""optimize(): exact undo, transactional rollback at every position, honest reports, bad input."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from sdopt import optimize, plan
from sdopt.errors import OptimizationFailed, StrictModeError, UndoError, UnknownTierError
from sdopt.optimization import Optimization
from sdopt.registry import register, unregister
from sdopt.testing import fake_capabilities, pipeline_state, run_pipeline, state_differences, tiny_pipeline
from sdopt.tiers import list_tiers
from tests.helpers import Snapshot

TIERS = [row["label"] for row in list_tiers()]
ALL_BUILTINS = ["channels_last", "fuse_qkv", "attention_slicing", "vae_slicing", "vae_tiling"]


@pytest.mark.parametrize("device", ["cpu-amx", "cuda"])
def test_balanced_then_undo_is_bit_identical(pipe, family: str, device: str) -> None:
    snapshot = Snapshot(pipe, family)
    report = optimize(pipe, tier="balanced", caps=fake_capabilities(device, vram_gb=6))
    assert report.applied, str(report)
    snapshot.assert_state_changed()
    report.undo()
    snapshot.assert_identical()


@pytest.mark.slow
def test_every_tier_and_every_builtin_undoes_exactly(pipe, family: str) -> None:
    snapshot = Snapshot(pipe, family)
    for tier in TIERS:
        report = optimize(pipe, tier=tier, extra=ALL_BUILTINS, caps=fake_capabilities("cuda", vram_gb=6))
        optimized = run_pipeline(pipe, family)
        assert np.isfinite(optimized).all(), tier
        if not any(d.lossy for d in report.applied):
            # Reduced precision on random tiny weights drifts by up to ~0.1 (images in [0, 1]);
            # each optimization's own test holds it to a tighter tolerance.
            assert np.abs(optimized - snapshot.output).max() < 0.25, tier
        report.undo()
        snapshot.assert_identical()


def test_img2img_variant_of_the_tiny_sd_components() -> None:
    from diffusers import StableDiffusionImg2ImgPipeline

    from sdopt.testing import call_kwargs

    pipe = StableDiffusionImg2ImgPipeline(**tiny_pipeline("sd").components)
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))

    def run() -> np.ndarray:
        kwargs = call_kwargs("sd", steps=4)
        del kwargs["height"], kwargs["width"]
        with torch.inference_mode():
            return pipe(image=image, strength=0.75, **kwargs).images

    run()
    before = run()
    report = optimize(pipe, tier="balanced", extra=ALL_BUILTINS, caps=fake_capabilities("cuda", vram_gb=6))
    assert set(ALL_BUILTINS) <= {d.name for d in report.applied}
    report.undo()
    assert np.array_equal(run(), before)


def test_report_accounts_for_every_candidate_and_serializes(sd_pipe, cpu_caps) -> None:
    report = optimize(sd_pipe, tier="balanced", caps=cpu_caps, extra=["vae_slicing"])
    latest = next(row for row in list_tiers() if row["latest"] and row["name"] == "balanced")
    tier_names = {step["name"] for step in latest["steps"]}
    decided = [d.name for d in report.applied + report.skipped + report.failed]
    assert sorted(decided) == sorted(tier_names | {"vae_slicing"})
    assert len(decided) == len(set(decided))
    data = json.loads(json.dumps(report.to_dict()))
    assert {d["name"]: d["config"] for d in data["applied"]}["vae_slicing"] == {}
    assert all(d["reason"] for d in data["skipped"])
    text = str(report)
    assert "applied" in text and "vae_slicing" in text and "not wanted here" in text
    report.undo()


# --------------------------------------------------------------------------- fault injection


class _Boom(RuntimeError):
    pass


def _failing_at(position: int, planned: list[str]) -> type[Optimization]:
    """An optimization that raises, ordered to run after the first ``position`` planned steps."""

    def apply(self, pipe, anatomy, caps, config):
        raise _Boom("injected failure")

    return type(
        "Failing",
        (Optimization,),
        {
            "name": "failing",
            "kind": "layout",
            "apply": apply,
            "after": tuple(planned[:position]),
            "before": tuple(planned[position:]),
        },
    )


@pytest.fixture
def inject() -> Iterator[Any]:
    def add(position: int, planned: list[str]) -> None:
        register(_failing_at(position, planned), replace=True)

    yield add
    unregister("failing")


def test_failure_at_every_position_rolls_back_exactly(pipe, family: str, inject) -> None:
    caps = fake_capabilities("cuda", vram_gb=6)
    planned = [s.name for s in plan(pipe, tier="low-memory", extra=ALL_BUILTINS, caps=caps).steps]
    assert len(planned) >= 4
    snapshot = Snapshot(pipe, family)
    for position in range(len(planned) + 1):
        inject(position, planned)
        steps = [s.name for s in plan(pipe, tier="low-memory", extra=[*planned, "failing"], caps=caps).steps]
        assert steps.index("failing") == position
        with pytest.raises(OptimizationFailed, match="'failing' failed.*injected failure") as error:
            optimize(pipe, tier="low-memory", extra=[*planned, "failing"], caps=caps, strict=True)
        assert isinstance(error.value.cause, _Boom)
        snapshot.assert_identical()


def test_failure_without_strict_is_reported_and_the_rest_applied(sd_pipe, inject) -> None:
    caps = fake_capabilities("cuda", vram_gb=6)
    planned = [s.name for s in plan(sd_pipe, tier="low-memory", extra=ALL_BUILTINS, caps=caps).steps]
    inject(2, planned)
    snapshot = Snapshot(sd_pipe, "sd")
    report = optimize(sd_pipe, tier="low-memory", extra=[*ALL_BUILTINS, "failing"], caps=caps)
    assert [d.name for d in report.failed] == ["failing"]
    assert "_Boom: injected failure" in report.failed[0].reason
    assert [d.name for d in report.applied] == planned
    report.undo()
    snapshot.assert_identical()


def test_a_failing_undo_does_not_stop_the_others(sd_pipe, cpu_caps) -> None:
    from sdopt.errors import RollbackError

    class BadUndo(Optimization):
        name = "bad_undo"
        kind = "compile"

        def apply(self, pipe, anatomy, caps, config):
            def undo() -> None:
                raise RuntimeError("cannot")

            return undo

    register(BadUndo)
    try:
        report = optimize(sd_pipe, tier=None, extra=["vae_slicing", "bad_undo"], caps=cpu_caps)
        with pytest.raises(RollbackError, match="bad_undo: RuntimeError: cannot"):
            report.undo()
        assert sd_pipe.vae.use_slicing is False  # the other undo still ran
    finally:
        unregister("bad_undo")


# --------------------------------------------------------------------------- options


def test_dry_run_changes_nothing(sd_pipe, cpu_caps) -> None:
    snapshot = Snapshot(sd_pipe, "sd")
    report = optimize(sd_pipe, tier="low-memory", caps=cpu_caps, dry_run=True)
    assert report.applied == [] and [d.status for d in report.planned] == ["planned"] * len(report.planned)
    assert report.planned
    snapshot.assert_identical()
    report.undo()  # nothing to undo: allowed


def test_undoable_false_keeps_nothing_and_undo_refuses(sd_pipe, cpu_caps) -> None:
    report = optimize(sd_pipe, tier="balanced", caps=cpu_caps, undoable=False)
    assert report.applied and not report.undoable
    with pytest.raises(UndoError, match="undoable=False"):
        report.undo()


def test_undo_twice_and_out_of_order_are_refused(sd_pipe, cpu_caps) -> None:
    snapshot = Snapshot(sd_pipe, "sd")
    first = optimize(sd_pipe, tier=None, extra=["vae_slicing"], caps=cpu_caps)
    second = optimize(sd_pipe, tier=None, extra=["channels_last"], caps=cpu_caps)
    with pytest.raises(UndoError, match="undo its report first"):
        first.undo()
    second.undo()
    first.undo()
    with pytest.raises(UndoError, match="already undone"):
        first.undo()
    snapshot.assert_identical()


def test_a_second_optimize_skips_what_is_already_active(sd_pipe, cpu_caps) -> None:
    first = optimize(sd_pipe, tier="low-memory", caps=cpu_caps)
    second = optimize(sd_pipe, tier="low-memory", caps=cpu_caps)
    assert second.applied == []
    reasons = {d.name: d.reason for d in second.skipped}
    assert {reasons[name] for name in ("attention_slicing", "vae_slicing", "vae_tiling")} == {
        "already active",
        "already enabled",
    }
    second.undo()
    first.undo()


def test_strict_refuses_requested_optimizations_that_cannot_apply(cpu_caps) -> None:
    pipe = tiny_pipeline("flux")
    snapshot = Snapshot(pipe, "flux")
    with pytest.raises(StrictModeError, match="attention_slicing: for unet denoisers only"):
        optimize(pipe, tier="balanced", extra=["attention_slicing"], caps=cpu_caps, strict=True)
    snapshot.assert_identical()
    # A tier's own hardware-dependent skips are normal, even in strict mode.
    optimize(pipe, tier="balanced", caps=cpu_caps, strict=True).undo()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"tier": "turbo"}, UnknownTierError, "valid tiers: conservative, balanced"),
        ({"tier": "balanced@999"}, UnknownTierError, "versions that exist: balanced@1"),
        ({"extra": ["vae_slicin"]}, ValueError, "did you mean 'vae_slicing'"),
        ({"exclude": ["tiny_vea"]}, ValueError, "registered optimizations are"),
        ({"extra": "vae_slicing"}, TypeError, "list of optimization names"),
        ({"extra": [{"name": "vae_tiling", "size": 3}]}, ValueError, "allowed options: overlap, tile_size"),
    ],
)
def test_bad_input_is_a_clear_error_and_changes_nothing(sd_pipe, kwargs, error, match) -> None:
    snapshot = Snapshot(sd_pipe, "sd")
    with pytest.raises(error, match=match):
        optimize(sd_pipe, **kwargs)
    snapshot.assert_identical()


@pytest.mark.parametrize("thing", [None, "runwayml/stable-diffusion-v1-5", torch.nn.Linear(2, 2)])
def test_non_pipelines_get_a_type_error(thing: Any) -> None:
    with pytest.raises(TypeError, match="expects a diffusers DiffusionPipeline"):
        optimize(thing)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"caps": object()}, "caps must be an sdopt.Capabilities"),
        ({"preset": "app.toml"}, r"pass Preset.load\('app.toml'\)"),
        ({"exclude": [None]}, "exclude must list optimization names"),
    ],
)
def test_wrong_argument_types_name_the_argument_and_the_fix(arguments, message) -> None:
    from sdopt.testing import pipeline_state, state_differences, tiny_pipeline

    pipe = tiny_pipeline("sd")
    before = pipeline_state(pipe)
    with pytest.raises(TypeError, match=message):
        optimize(pipe, **arguments)
    assert state_differences(before, pipeline_state(pipe)) == []


def test_a_second_thread_optimizing_the_same_pipeline_is_told_never_silently_reverted() -> None:
    import threading

    from sdopt.optimization import Optimization, register
    from sdopt.registry import unregister
    from sdopt.testing import fake_capabilities, tiny_pipeline

    inside, release = threading.Event(), threading.Event()

    class Slow(Optimization):
        name = "slow_for_threads"
        kind = "layout"

        def apply(self, pipe, anatomy, caps, config):  # type: ignore[no-untyped-def]
            inside.set()
            release.wait(10)
            return lambda: None

    register(Slow)
    try:
        pipe, caps = tiny_pipeline("sd"), fake_capabilities("cpu")
        reports = []
        first = threading.Thread(
            target=lambda: reports.append(optimize(pipe, tier=None, extra=["slow_for_threads"], caps=caps))
        )
        first.start()
        assert inside.wait(10)
        with pytest.raises(RuntimeError, match="another thread is optimizing or undoing this pipeline"):
            optimize(pipe, tier=None, extra=["channels_last"], caps=caps)
        from diffusers import StableDiffusionPipeline

        sibling = StableDiffusionPipeline.from_pipe(pipe)  # shares the UNet the first thread is changing
        with pytest.raises(RuntimeError, match="or one sharing its models"):
            optimize(sibling, tier=None, extra=["channels_last"], caps=caps)
        release.set()
        first.join(10)
        assert [d.name for d in reports[0].applied] == ["slow_for_threads"]
        reports[0].undo()
    finally:
        release.set()
        unregister("slow_for_threads")


def test_bad_auto_requests_name_what_is_wrong(sd_pipe, cpu_caps) -> None:
    from sdopt.errors import UnknownTierError

    with pytest.raises(UnknownTierError, match="tier 'auto' has no versions .*quality='balanced@"):
        optimize(sd_pipe, tier="auto@zzz", caps=cpu_caps, dry_run=True)
    for call, field in (
        ({"height": -64}, "height"),
        ({"steps": 0}, "steps"),
        ({"steps": 1.5}, "steps"),
        ({"guidance": float("nan")}, "guidance"),
        ({"batch": True}, "batch"),
    ):
        with pytest.raises(ValueError, match=f"call shape: {field} must be"):
            optimize(sd_pipe, tier="auto", call=call, caps=cpu_caps, dry_run=True)


def test_weights_never_loaded_are_refused_but_can_be_planned(cpu_caps) -> None:
    from sdopt.errors import PlanningError

    pipe = tiny_pipeline("sd")
    pipe.unet.to("meta")
    assert optimize(pipe, tier="balanced", caps=cpu_caps, dry_run=True).planned  # planning is fine
    with pytest.raises(PlanningError, match="unet has weights on the meta device"):
        optimize(pipe, tier="balanced", caps=cpu_caps)


def test_pipelines_sharing_a_model_are_undone_in_order(cpu_caps) -> None:
    from diffusers import StableDiffusionPipeline

    from sdopt.errors import UndoError

    first = tiny_pipeline("sd")
    second = StableDiffusionPipeline.from_pipe(first)  # the same UNet, VAE and text encoder
    assert second.unet is first.unet
    before = pipeline_state(first)
    bf16 = fake_capabilities("cpu-amx")
    older = optimize(first, tier=None, extra=["channels_last"], caps=cpu_caps)
    newer = optimize(second, tier=None, extra=["half_precision"], caps=bf16)
    with pytest.raises(
        UndoError, match=r"shared with another pipeline \(explicit optimizations\) is still applied; undo its report"
    ):
        older.undo()  # would restore the UNet's layout under the other pipeline's bf16 weights
    assert first.unet.dtype == torch.bfloat16  # nothing was undone
    newer.undo()
    older.undo()
    assert state_differences(before, pipeline_state(first)) == []
