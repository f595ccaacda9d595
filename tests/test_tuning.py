"""tier="auto": fake optimizations with known effects on a fake clock, so every decision is exact."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from sdopt import optimize, tune
from sdopt.optimization import Optimization
from sdopt.presets import Entry, Preset
from sdopt.registry import register, unregister
from sdopt.testing import fake_capabilities, pipeline_state, state_differences, tiny_pipeline
from sdopt.tuning import CallShape


class FakeClock:
    """Time passes only inside the fake denoiser (its ``cost`` per call) and the decode (0.5 s)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Knob(Optimization):
    """Sets one attribute of the denoiser; the fake clock reads them."""

    kind = "layout"
    attribute: ClassVar[str]
    value: ClassVar[Any]

    def apply(self, pipe: Any, anatomy: Any, caps: Any, config: Any) -> Any:
        unet = anatomy.denoiser
        had, previous = self.attribute in unet.__dict__, unet.__dict__.get(self.attribute)
        setattr(unet, self.attribute, self.value)

        def undo() -> None:
            if had:
                setattr(unet, self.attribute, previous)
            else:
                delattr(unet, self.attribute)

        return undo


def _knob(name: str, attribute: str, value: Any, **more: Any) -> type[Optimization]:
    return type(name.title(), (_Knob,), {"name": name, "attribute": attribute, "value": value, **more})


class Noisy(Optimization):
    """Faster, and changes every denoiser output well beyond any fidelity floor."""

    name = "fake_lossy"
    kind = "layout"
    lossy = True

    def apply(self, pipe: Any, anatomy: Any, caps: Any, config: Any) -> Any:
        unet = anatomy.denoiser
        previous = unet.__dict__.get("fake_speed")
        unet.fake_speed = (previous or 1.0) * 1.6
        handle = unet.register_forward_hook(lambda module, args, output: (output[0] * 3 + 1,))

        def undo() -> None:
            handle.remove()
            if previous is None:
                del unet.fake_speed
            else:
                unet.fake_speed = previous

        return undo


class Kernel(_Knob):
    """Pays only together with fake_compiler, as its declared companion."""

    name = "fake_kernel"
    attribute = "fake_kernel"
    value = True

    def companions(self, anatomy: Any, caps: Any, config: Any) -> dict[str, str]:
        return {"fake_compiler": "the kernel is slow unless compiled"}


FAKES = (
    _knob("fake_faster", "fake_speed", 2.0),
    _knob("fake_slower", "fake_speed", 0.5),
    _knob("fake_neutral", "fake_neutral", True),
    Noisy,
    Kernel,
    _knob("fake_compiler", "fake_compiled", True),
)
QUALITY = Preset(
    "fakes", tuple(Entry(cls.name) for cls in (FAKES[1], FAKES[0], FAKES[2], FAKES[3], FAKES[4], FAKES[5]))
)


@pytest.fixture
def fakes() -> Iterator[None]:
    for cls in FAKES:
        register(cls)
    yield
    for cls in FAKES:
        unregister(cls.name)


@pytest.fixture
def clocked() -> tuple[Any, FakeClock, dict[str, int]]:
    """A tiny SD pipeline whose denoiser advances the fake clock by 1 s / its fake speed, the kernel
    and compiler halving that together; ``calls`` counts the denoiser's real calls."""
    pipe = tiny_pipeline("sd")
    clock = FakeClock()
    calls = {"denoiser": 0}

    def spend(unet: Any, args: Any) -> None:
        calls["denoiser"] += 1
        both = unet.__dict__.get("fake_kernel") and unet.__dict__.get("fake_compiled")
        clock.now += (0.5 if both else 1.0) / unet.__dict__.get("fake_speed", 1.0)

    pipe.unet.register_forward_pre_hook(spend)
    pipe.vae.register_forward_pre_hook(lambda *args: None)
    pipe.vae.decoder.register_forward_pre_hook(lambda *args: setattr(clock, "now", clock.now + 0.5))
    return pipe, clock, calls


def _tune(pipe: Any, clock: FakeClock, quality: Preset = QUALITY, **kwargs: Any) -> Any:
    options = {"call": {"steps": 4}, "caps": fake_capabilities("cpu"), "cache": False, "progress": False}
    return tune(pipe, quality, clock=clock, **{**options, **kwargs})


def test_auto_keeps_exactly_what_helps(fakes, clocked) -> None:
    pipe, clock, _ = clocked
    before = pipeline_state(pipe)
    tuning = _tune(pipe, clock)
    verdicts = {"+".join(t.names): t.kept for t in tuning.trials}
    assert verdicts == {
        "fake_slower": False,
        "fake_faster": True,
        "fake_neutral": False,
        "fake_lossy": False,
        "fake_kernel+fake_compiler": True,
    }
    by_name = {"+".join(t.names): t for t in tuning.trials}
    # A whole call: 5 denoiser calls (PNDM's 4 steps) + 0.5 s of decode: 5.5 s untouched, 3 s with
    # fake_faster, 1.75 s with the kernel and its compiler as well.
    assert by_name["fake_faster"].ratio == pytest.approx(5.5 / 3)
    assert by_name["fake_kernel+fake_compiler"].ratio == pytest.approx(3 / 1.75)
    assert by_name["fake_slower"].ratio == pytest.approx(5.5 / 10.5)
    assert by_name["fake_neutral"].ratio == pytest.approx(1.0)
    assert by_name["fake_lossy"].ratio > 1 and by_name["fake_lossy"].psnr_db < 40
    assert "under the floor of 40 dB" in by_name["fake_lossy"].why
    assert "slower here" in by_name["fake_slower"].why
    assert "not faster beyond the noise" in by_name["fake_neutral"].why
    assert [e.name for e in tuning.preset.entries] == ["fake_faster", "fake_kernel", "fake_compiler"]
    assert tuning.best_call_s == pytest.approx(1.75)
    assert state_differences(before, pipeline_state(pipe)) == []


@dataclass(frozen=True)
class _TwoPartConfig:
    lossy_part: bool = True


class TwoPart(Optimization):
    """Faster either way; its lossy option also changes every denoiser output beyond any floor."""

    name = "fake_two_part"
    kind = "layout"
    lossy = True
    Config = _TwoPartConfig

    def gentler(self, config: Any) -> Any:
        return replace(config, lossy_part=False) if config.lossy_part else None

    def apply(self, pipe: Any, anatomy: Any, caps: Any, config: Any) -> Any:
        unet = anatomy.denoiser
        unet.fake_speed = 2.0
        hooks = (
            [unet.register_forward_hook(lambda module, args, output: (output[0] * 3 + 1,))] if config.lossy_part else []
        )

        def undo() -> None:
            del unet.fake_speed
            for hook in hooks:
                hook.remove()

        return undo


def test_a_step_under_the_floor_is_timed_again_with_its_gentler_config(clocked, monkeypatch, tmp_path) -> None:
    pipe, clock, calls = clocked
    monkeypatch.setenv("SDOPT_CACHE_DIR", str(tmp_path))
    register(TwoPart)
    try:
        before = pipeline_state(pipe)
        tuning = _tune(pipe, clock, Preset("fakes", (Entry("fake_two_part"),)), cache=True)
        first, second = tuning.trials
        assert not first.kept and first.psnr_db < 40 and "under the floor of 40 dB" in first.why
        assert second.kept and second.why.startswith("with lossy_part=False: ") and second.psnr_db == float("inf")
        (entry,) = tuning.preset.entries
        assert entry.name == "fake_two_part" and entry.config["lossy_part"] is False
        assert tuning.trial_for("fake_two_part") is second
        assert state_differences(before, pipeline_state(pipe)) == []
        # stored with the gentler config, and read back without measuring again
        calls["denoiser"] = 0
        cached = _tune(pipe, clock, Preset("fakes", (Entry("fake_two_part"),)), cache=True)
        assert cached.from_cache and calls["denoiser"] == 0 and cached.preset.to_dict() == tuning.preset.to_dict()
        # the tuned preset replays the gentler config: the images are the untouched pipeline's
        untouched = pipe(
            prompt="a", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)
        )
        report = optimize(pipe, preset=tuning.preset, caps=fake_capabilities("cpu"))
        tuned = pipe(prompt="a", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0))
        report.undo()
        np.testing.assert_array_equal(untouched.images, tuned.images)
    finally:
        unregister(TwoPart.name)


def test_openvino_int8_is_gentler_without_int8() -> None:
    from sdopt.registry import get

    step = get("openvino_runtime")
    assert step.gentler(step.make_config({"int8": True, "blocks": True})) == step.make_config({"blocks": True})
    assert step.gentler(step.make_config({})) is None


def test_optimize_auto_reports_the_measurements_and_undoes_exactly(fakes, clocked, monkeypatch, tmp_path) -> None:
    pipe, clock, _ = clocked
    monkeypatch.setenv("SDOPT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr("sdopt.tuning.search.now", clock)
    monkeypatch.setattr("sdopt.tiers._TIERS", {**__import__("sdopt.tiers").tiers._TIERS, "fakes": {1: QUALITY}})
    before = pipeline_state(pipe)
    report = optimize(pipe, tier="auto", quality="fakes", call={"steps": 4}, caps=fake_capabilities("cpu"))
    assert report.source == "auto:fakes@1"
    reasons = {d.name: d.reason for d in report.decisions}
    assert reasons["fake_faster"].startswith("kept: call 1.83x (+-0.00)")
    assert reasons["fake_slower"].startswith("dropped: call 0.52x")
    assert [d.name for d in report.applied] == ["fake_faster", "fake_kernel", "fake_compiler"]
    assert pipe.unet.fake_speed == 2.0
    assert report.to_dict()["tuning"]["trials"][0]["names"] == ["fake_slower"]
    report.undo()
    assert state_differences(before, pipeline_state(pipe)) == []


def test_a_cached_tuning_measures_nothing(fakes, clocked, monkeypatch, tmp_path) -> None:
    pipe, clock, calls = clocked
    monkeypatch.setenv("SDOPT_CACHE_DIR", str(tmp_path))
    first = _tune(pipe, clock, cache=True)
    assert calls["denoiser"] > 0 and not first.from_cache
    calls["denoiser"] = 0
    second = _tune(pipe, clock, cache=True)
    assert calls["denoiser"] == 0 and second.from_cache
    assert second.preset.to_dict() == first.preset.to_dict()
    assert [t.to_dict() for t in second.trials] == [t.to_dict() for t in first.trials]
    # Another call shape is another measurement.
    third = _tune(pipe, clock, cache=True, call={"steps": 3})
    assert not third.from_cache and calls["denoiser"] > 0
    from sdopt.tuning import clear_cache

    assert clear_cache() == 2


def test_a_planted_tuning_entry_cannot_add_a_step_outside_the_candidates(fakes, clocked, monkeypatch, tmp_path) -> None:
    import json

    pipe, clock, calls = clocked
    monkeypatch.setenv("SDOPT_CACHE_DIR", str(tmp_path))
    first = _tune(pipe, clock, cache=True)
    (stored,) = list(tmp_path.rglob("*.json"))
    data = json.loads(stored.read_text())
    data["preset"]["steps"].append({"name": "resolution", "config": {"scale": 0.25}})  # not a candidate
    stored.write_text(json.dumps(data))
    calls["denoiser"] = 0
    again = _tune(pipe, clock, cache=True)
    assert not again.from_cache and calls["denoiser"] > 0  # measured again, the planted step never applied
    assert "resolution" not in [entry.name for entry in again.preset.entries]
    assert again.preset.to_dict() == first.preset.to_dict()


def test_the_time_budget_stops_measuring(fakes, clocked, monkeypatch, tmp_path) -> None:
    pipe, clock, calls = clocked
    monkeypatch.setenv("SDOPT_CACHE_DIR", str(tmp_path))
    tuning = _tune(pipe, clock, budget_s=30.0, cache=True)
    reached = [t for t in tuning.trials if not t.why.startswith("not measured")]
    assert 0 < len(reached) < len(tuning.trials)
    assert all(t.why == "not measured: the time budget of 30 s was spent" for t in tuning.trials[len(reached) :])
    assert clock.now < 30.0 + 20  # one measurement block may run past the budget, not more
    assert list((tmp_path / "tune").glob("*.json")) == []  # an incomplete tuning is not cached
    from sdopt.report import Report
    from sdopt.tuning import with_tuning

    report = with_tuning(Report("x", "StableDiffusionPipeline", "sd1", "cpu", "f"), tuning)
    assert any("time budget of 30 s ran out before" in warning for warning in report.warnings)
    assert {d.name for d in report.skipped} >= set(tuning.trials[-1].names)


class Breaks(Optimization):
    """Raises (an error, or the user's Ctrl-C) on its second real denoiser call."""

    name = "fake_breaks"
    kind = "layout"
    error: ClassVar[type[BaseException]] = RuntimeError

    def apply(self, pipe: Any, anatomy: Any, caps: Any, config: Any) -> Any:
        seen = []
        error = self.error

        def hook(module: Any, args: Any) -> None:
            seen.append(1)
            if len(seen) == 2:
                raise error("injected in the middle of a measurement")

        return anatomy.denoiser.register_forward_pre_hook(hook).remove


def _image(pipe: Any) -> np.ndarray:
    generator = torch.Generator("cpu").manual_seed(0)
    return pipe(prompt="x", num_inference_steps=2, output_type="np", generator=generator).images


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failure_or_interrupt_during_a_measurement_restores_the_pipeline(fakes, clocked, error) -> None:
    pipe, clock, _ = clocked
    register(type("Breaks", (Breaks,), {"error": error}))
    try:
        before = pipeline_state(pipe)
        reference = _image(pipe)
        quality = Preset(
            "q", (Entry("fake_faster"), Entry("fake_breaks"), Entry("fake_kernel"), Entry("fake_compiler"))
        )
        tuning = _tune(pipe, clock, quality=quality)
    finally:
        unregister("fake_breaks")
    assert state_differences(before, pipeline_state(pipe)) == []
    assert np.array_equal(_image(pipe), reference)
    assert tuning.trials[0].kept and tuning.trials[0].names == ("fake_faster",)
    if error is KeyboardInterrupt:  # the decisions so far are kept, the rest was never tried
        assert tuning.interrupted and len(tuning.trials) == 1
        assert [e.name for e in tuning.preset.entries] == ["fake_faster"]
    else:  # the failed candidate is dropped with the error, the others are measured
        assert tuning.trials[1].why.startswith("failed while measured: RuntimeError: injected")
        assert tuning.trials[2].kept and not tuning.interrupted


def test_a_real_tuning_on_a_tiny_pipeline_leaves_it_unchanged() -> None:
    pipe = tiny_pipeline("sd")
    before = pipeline_state(pipe)
    tuning = tune(pipe, "fast", call={"steps": 2}, caps=fake_capabilities("cpu"), cache=False, progress=False)
    assert tuning.trials and all(t.ratio is not None for t in tuning.trials if t.kept)
    assert state_differences(before, pipeline_state(pipe)) == []
    assert tuning.baseline_s is not None and tuning.baseline_s > 0


def test_call_shape_defaults_and_errors() -> None:
    pipe = tiny_pipeline("sd")
    assert CallShape.of(pipe) == CallShape(height=64, width=64, steps=50, guidance=7.5, batch=1)
    kwargs = CallShape(height=32, width=48, steps=3, guidance=1.0, batch=2).kwargs(pipe, seed=1)
    assert (kwargs["height"], kwargs["width"], kwargs["num_inference_steps"]) == (32, 48, 3)
    assert kwargs["guidance_scale"] == 1.0 and kwargs["num_images_per_prompt"] == 2
    with pytest.raises(ValueError, match="unknown call field.*size"):
        CallShape.of(pipe, {"size": 3})


def test_auto_in_plan_and_in_errors() -> None:
    from sdopt import plan
    from sdopt.errors import UnknownTierError
    from sdopt.tiers import resolve_tier

    planned = plan(tiny_pipeline("sd"), tier="auto", quality="fast", caps=fake_capabilities("cpu"))
    assert planned.source.startswith("fast@") and any(n.startswith("auto: these are") for n in planned.notes)
    with pytest.raises(UnknownTierError, match="measured on the pipeline"):
        resolve_tier("auto")
    with pytest.raises(ValueError, match="either tier='auto' or preset"):
        optimize(tiny_pipeline("sd"), tier="auto", preset=QUALITY)


def test_the_fake_denoiser_is_really_short_circuited(clocked) -> None:
    from sdopt.timed_calls import timed_call

    pipe, clock, calls = clocked
    kwargs = CallShape.of(pipe, {"steps": 10}).kwargs(pipe)
    sample = timed_call(pipe, kwargs, clock, real=3)
    assert calls["denoiser"] == 3  # of 11 (PNDM's 10 steps)
    assert sample.denoiser_calls == 11 and sample.call_s == pytest.approx(11.5)
    assert isinstance(pipe.__dict__["unet"], torch.nn.Module)  # the stand-in is gone


def test_a_damaged_cache_entry_is_measured_again(fakes, clocked, monkeypatch, tmp_path) -> None:
    pipe, clock, calls = clocked
    monkeypatch.setenv("SDOPT_CACHE_DIR", str(tmp_path))
    first = _tune(pipe, clock, cache=True)
    (entry,) = (tmp_path / "tune").glob("*.json")
    entry.write_text('{"quality": ')
    calls["denoiser"] = 0
    again = _tune(pipe, clock, cache=True)
    assert not again.from_cache and calls["denoiser"] > 0
    assert again.preset.to_dict() == first.preset.to_dict()


def test_other_weights_are_another_cache_entry(fakes, clocked, monkeypatch, tmp_path) -> None:
    pipe, clock, _ = clocked
    monkeypatch.setenv("SDOPT_CACHE_DIR", str(tmp_path))
    _tune(pipe, clock, cache=True)
    with torch.no_grad():
        pipe.unet.conv_out.weight.mul_(1.01)
    assert not _tune(pipe, clock, cache=True).from_cache
