"""The speed guard (issue 26): a speed step stays only if the timed call gets faster. A fake clock
advances by a fixed cost per denoiser call, which the fake steps below scale."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from sdopt import optimize, speed_guard
from sdopt.optimization import Optimization
from sdopt.registry import register, unregister
from sdopt.testing import fake_capabilities, tiny_pipeline
from tests.helpers import Snapshot

CALL = {"steps": 3}


class FakeClock:
    """Seconds pass only when the denoiser runs: ``cost`` per call, times the pipeline's speed factor."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _scaling(name: str, factor: float, *, first_call_s: float = 0.0, **attributes: Any) -> type[Optimization]:
    """A step that makes each denoiser call ``factor`` times as long (after an optional slow first call)."""

    def apply(self, pipe, anatomy, caps, config):
        previous = pipe.unet.__dict__.get("_fake_factor", 1.0)
        pipe.unet.__dict__["_fake_factor"] = previous * factor
        if first_call_s:
            pipe.unet.__dict__["_fake_first_call_s"] = first_call_s

        def undo():
            pipe.unet.__dict__["_fake_factor"] = previous
            pipe.unet.__dict__.pop("_fake_first_call_s", None)
            if previous == 1.0:
                del pipe.unet.__dict__["_fake_factor"]

        return undo

    return type(name.title(), (Optimization,), {"name": name, "kind": "layout", "apply": apply, **attributes})


def _marking(name: str) -> type[Optimization]:
    """A memory step (never timed) that marks the UNet."""

    def apply(self, pipe, anatomy, caps, config):
        pipe.unet.__dict__["_fake_memory"] = True
        return lambda: pipe.unet.__dict__.pop("_fake_memory", None)

    attributes = {"name": name, "kind": "memory", "effect": "memory", "apply": apply}
    return type(name.title(), (Optimization,), attributes)


@pytest.fixture
def clocked(monkeypatch) -> Iterator[tuple[Any, FakeClock]]:
    clock = FakeClock()
    monkeypatch.setattr(speed_guard, "device_clock", lambda device: clock)
    pipe = tiny_pipeline("sd")

    def advance(module, args):
        first = module.__dict__.pop("_fake_first_call_s", 0.0)
        clock.now += 1.0 * module.__dict__.get("_fake_factor", 1.0) + first

    handle = pipe.unet.register_forward_pre_hook(advance)
    names = []
    for cls in (
        _scaling("fake_fast", 0.5),
        _scaling("fake_slow", 2.0),
        _scaling("fake_same", 1.0),
        _scaling("fake_compiled", 0.8, first_call_s=100.0),
        _scaling("fake_needs_partner", 1.5, companions=lambda self, a, c, cfg: {"fake_partner": "pays only with it"}),
        _scaling("fake_partner", 0.5, kind="compile"),
        _scaling("fake_needs_slow", 1.5, companions=lambda self, a, c, cfg: {"fake_slow": "pays only with it"}),
        _scaling("fake_untimed", 0.5, speed_judged=False),
        _scaling("fake_early", 2.0, kind="precision"),
        _scaling("fake_after", 0.5, kind="attention", companions=lambda self, a, c, cfg: {"fake_early": "needs it"}),
        _scaling("fake_slow_late", 2.0, kind="compile"),
        _scaling("fake_needs_late", 1.5, companions=lambda self, a, c, cfg: {"fake_slow_late": "pays only with it"}),
        _marking("fake_memory"),
    ):
        register(cls)
        names.append(cls.name)
    yield pipe, clock
    for name in names:
        unregister(name)
    handle.remove()


def test_keeps_a_faster_step_and_rolls_back_a_slower_one_with_its_figure(clocked) -> None:
    pipe, _ = clocked
    snapshot = Snapshot(pipe, "sd")
    report = optimize(pipe, tier=None, extra=["fake_slow", "fake_fast"], guard=True, call=CALL)
    assert [d.name for d in report.applied] == ["fake_fast"]
    assert "speed guard: call 2.00x" in report.applied[0].reason
    slow = next(d for d in report.skipped if d.name == "fake_slow")
    assert slow.reason.startswith("rolled back: speed guard: call 0.50x") and "slower" in slow.reason
    assert pipe.unet._fake_factor == 0.5  # the slow step's own undo ran at once
    assert "rolled back: fake_slow" in report.guard and "(2.00x)" in report.guard
    report.undo()
    assert "_fake_factor" not in pipe.unet.__dict__
    snapshot.assert_identical()


def test_a_step_that_changes_nothing_is_rolled_back_as_not_faster(clocked) -> None:
    pipe, _ = clocked
    report = optimize(pipe, tier=None, extra=["fake_same"], guard=True, call=CALL)
    assert report.applied == []
    assert report.skipped[0].reason.startswith("rolled back: speed guard: call 1.00x")
    assert "not faster beyond the noise" in report.skipped[0].reason


def test_the_first_call_is_a_warm_up_reported_not_held_against_the_step(clocked) -> None:
    pipe, _ = clocked
    report = optimize(pipe, tier=None, extra=["fake_compiled"], guard=True, call=CALL)
    assert [d.name for d in report.applied] == ["fake_compiled"]
    assert "call 1.25x" in report.applied[0].reason and "first call 10" in report.applied[0].reason
    report.undo()


def test_a_step_and_its_companion_are_judged_together(clocked) -> None:
    pipe, _ = clocked
    # 1.5 x 0.5 = 0.75 of the time: the pair pays although one of them alone is slower.
    report = optimize(pipe, tier=None, extra=["fake_needs_partner", "fake_partner"], guard=True, call=CALL)
    assert {d.name for d in report.applied} == {"fake_needs_partner", "fake_partner"}
    assert all("call 1.33x" in d.reason for d in report.applied)
    report.undo()
    assert "_fake_factor" not in pipe.unet.__dict__


def test_a_group_that_does_not_pay_is_rolled_back_whole(clocked) -> None:
    pipe, _ = clocked
    snapshot = Snapshot(pipe, "sd")
    report = optimize(pipe, tier=None, extra=["fake_needs_slow", "fake_slow", "fake_fast"], guard=True, call=CALL)
    assert [d.name for d in report.applied] == ["fake_fast"]
    rolled = {d.name: d.reason for d in report.skipped if d.reason.startswith("rolled back")}
    assert set(rolled) == {"fake_needs_slow", "fake_slow"}
    assert all(reason.startswith("rolled back (with fake_needs_slow, fake_slow): ") for reason in rolled.values())
    assert pipe.unet._fake_factor == 0.5
    report.undo()
    snapshot.assert_identical()


def test_off_by_default_on_cpus_with_the_reason_and_on_for_gpus(clocked, monkeypatch) -> None:
    pipe, clock = clocked
    on_cpu = optimize(pipe, tier=None, extra=["fake_slow"], caps=fake_capabilities("cpu"))
    assert on_cpu.guard.startswith("speed guard: not measured (on a CPU one call takes seconds")
    assert [d.name for d in on_cpu.applied] == ["fake_slow"]
    assert clock.now == 0.0  # nothing was timed
    on_cpu.undo()
    gpu = fake_capabilities("h200-141gb")
    elsewhere = optimize(pipe, tier=None, extra=["fake_slow"], caps=gpu)  # the pipeline is on the CPU
    assert elsewhere.guard.endswith("(the denoiser is on cpu, the plan targets cuda; move the pipeline first)")
    elsewhere.undo()
    monkeypatch.setattr(speed_guard, "guard_by_default", lambda device, anatomy: "")  # as if it were on the GPU
    on_gpu = optimize(pipe, tier=None, extra=["fake_slow"], caps=gpu)
    assert on_gpu.applied == [] and on_gpu.guard.startswith("speed guard: untouched call")
    off = optimize(pipe, tier=None, extra=["fake_slow"], caps=gpu, guard=False)
    assert [d.name for d in off.applied] == ["fake_slow"] and off.guard == ""
    off.undo()


def test_guard_must_be_a_bool(clocked) -> None:
    pipe, _ = clocked
    with pytest.raises(TypeError, match="guard must be True, False or None"):
        optimize(pipe, tier=None, extra=["fake_fast"], guard="yes")  # type: ignore[arg-type]


def test_a_timed_call_that_fails_fails_the_step_and_rolls_it_back(clocked) -> None:
    pipe, _ = clocked

    def breaks(self, pipe, anatomy, caps, config):
        original = pipe.unet.forward

        def broken(*args, **kwargs):
            raise RuntimeError("no kernel for this")

        pipe.unet.forward = broken
        return lambda: setattr(pipe.unet, "forward", original) or pipe.unet.__dict__.pop("forward", None)

    register(type("Breaks", (Optimization,), {"name": "fake_breaks", "kind": "layout", "apply": breaks}))
    try:
        report = optimize(pipe, tier=None, extra=["fake_fast", "fake_breaks"], guard=True, call=CALL)
    finally:
        unregister("fake_breaks")
    assert [d.name for d in report.applied] == ["fake_fast"]
    assert report.failed[0].name == "fake_breaks" and "no kernel for this" in report.failed[0].reason
    report.undo()
    assert "forward" not in pipe.unet.__dict__


def test_a_step_the_guard_does_not_time_is_not_credited_to_the_next_one(clocked) -> None:
    pipe, _ = clocked
    # fake_untimed halves the call but is not judged; fake_same after it changes nothing and must not
    # inherit that gain: the reference is timed again after the untimed step.
    report = optimize(pipe, tier=None, extra=["fake_untimed", "fake_same"], guard=True, call=CALL)
    assert [d.name for d in report.applied] == ["fake_untimed"]
    assert report.skipped[0].name == "fake_same" and "call 1.00x" in report.skipped[0].reason
    report.undo()


def test_a_memory_step_inside_a_rolled_back_group_stays_and_dependants_are_left_out(clocked) -> None:
    pipe, _ = clocked
    snapshot = Snapshot(pipe, "sd")
    # Plan order: fake_early (precision), fake_needs_late (layout), fake_memory (memory), fake_after
    # (attention, needs fake_early), fake_slow_late (compile). fake_needs_late needs fake_slow_late, so
    # fake_memory sits inside their unit without being part of their group.
    extra = ["fake_early", "fake_needs_late", "fake_memory", "fake_after", "fake_slow_late"]
    report = optimize(pipe, tier=None, extra=extra, guard=True, call=CALL)
    assert [d.name for d in report.applied] == ["fake_memory"]
    assert pipe.unet.__dict__.get("_fake_memory") is True and "_fake_factor" not in pipe.unet.__dict__
    reasons = {d.name: d.reason for d in report.skipped}
    assert reasons["fake_early"].startswith("rolled back: speed guard: call 0.50x")
    assert reasons["fake_after"] == "not applied: it pays only with fake_early, which the speed guard rolled back"
    assert reasons["fake_needs_late"].startswith("rolled back (with fake_needs_late, fake_slow_late): ")
    assert reasons["fake_slow_late"] == reasons["fake_needs_late"]
    report.undo()
    snapshot.assert_identical()


def test_presets_strict_requests_and_memory_budgets_are_not_guarded_by_default(clocked, monkeypatch) -> None:
    from sdopt.presets import Preset

    pipe, clock = clocked
    monkeypatch.setattr(speed_guard, "guard_by_default", lambda device, anatomy: "")  # as if on the GPU
    gpu = fake_capabilities("h200-141gb")
    pinned = optimize(pipe, tier=None, preset=Preset("pinned", ("fake_slow",)), caps=gpu)
    assert [d.name for d in pinned.applied] == ["fake_slow"] and "a preset or strict=True" in pinned.guard
    pinned.undo()
    strict = optimize(pipe, tier=None, extra=["fake_slow"], caps=gpu, strict=True)
    assert [d.name for d in strict.applied] == ["fake_slow"]
    strict.undo()
    assert clock.now == 0.0
    forced = optimize(pipe, tier=None, preset=Preset("pinned", ("fake_slow",)), caps=gpu, guard=True, call=CALL)
    assert forced.applied == []


def test_a_bad_call_shape_is_the_callers_error(clocked) -> None:
    pipe, _ = clocked
    with pytest.raises(ValueError, match="call shape: height must be a positive integer"):
        optimize(pipe, tier=None, extra=["fake_fast"], guard=True, call={"height": -8})
