"""The quality gate: a step that really loses prompt accuracy is refused and undone, a step that
keeps the arithmetic is held to pairwise PSNR, and the noise floor widens what counts as a loss."""

from __future__ import annotations

import numpy as np
import pytest

from sdopt.bench.quality import Quality, quality_prompts
from sdopt.bench.quality_gate import ACCURACY_TOLERANCE, KEEPS_MIN_PSNR_DB, Baseline, gate, judge
from sdopt.calls import call_layers
from sdopt.simulation import trained
from sdopt.testing import tiny_pipeline, trained_pipeline


@pytest.fixture(scope="module")
def dit_baseline() -> tuple[object, Baseline]:
    pipe = trained_pipeline("dit")
    return pipe, Baseline.measure(pipe, steps=8)


def _one_image(pipe: object) -> np.ndarray:
    return trained.generate(pipe, ["a green square at the top right on a gray background"], steps=8)[0]


def test_a_step_that_really_loses_accuracy_is_refused_and_undone(dit_baseline) -> None:
    pipe, baseline = dit_baseline
    before = _one_image(pipe)
    verdict = gate(pipe, baseline, extra=[{"name": "step_budget", "steps": 2, "cap": True}])
    assert not verdict.kept and verdict.applied == ["step_budget"] and not verdict.keeps_arithmetic
    assert verdict.quality is not None
    assert verdict.quality.prompt_accuracy < baseline.quality.prompt_accuracy - ACCURACY_TOLERANCE
    assert "prompt accuracy" in verdict.reason and verdict.report is None
    assert "step_budget" not in call_layers(pipe)
    assert np.array_equal(_one_image(pipe), before)


def test_a_step_that_keeps_the_arithmetic_is_held_to_pairwise_psnr(dit_baseline) -> None:
    pipe, baseline = dit_baseline
    verdict = gate(pipe, baseline, extra=["fuse_qkv"])
    assert verdict.kept and verdict.keeps_arithmetic and verdict.applied == ["fuse_qkv"]
    assert verdict.quality is not None and verdict.quality.psnr_db is not None
    assert verdict.quality.psnr_db >= KEEPS_MIN_PSNR_DB and "pairwise PSNR" in verdict.reason
    verdict.report.undo()


def test_the_noise_floor_and_the_tolerances_decide() -> None:
    base = Baseline(None, [], Quality(0.90, 100.0), {"accuracy_spread": 0.0, "fid_spread": 0.0})  # type: ignore[arg-type]
    assert judge(base, Quality(0.86, 120.0, 30.0, 0.9), keeps_arithmetic=False)[0]  # within 0.05 and 50%
    assert not judge(base, Quality(0.84, 120.0, 30.0, 0.9), keeps_arithmetic=False)[0]
    assert not judge(base, Quality(0.90, 151.0, 30.0, 0.9), keeps_arithmetic=False)[0]
    noisy = Baseline(None, [], Quality(0.90, 100.0), {"accuracy_spread": 0.10, "fid_spread": 80.0})  # type: ignore[arg-type]
    assert judge(noisy, Quality(0.81, 175.0, 30.0, 0.9), keeps_arithmetic=False)[0]  # seed alone moves it so
    assert not judge(base, Quality(0.90, 100.0, KEEPS_MIN_PSNR_DB - 1, 0.99), keeps_arithmetic=True)[0]
    assert judge(base, Quality(0.50, 300.0, KEEPS_MIN_PSNR_DB + 1, 0.99), keeps_arithmetic=True)[0]


def test_a_pipeline_outside_the_scene_domain_is_refused() -> None:
    with pytest.raises(ValueError, match="scene domain"):
        Baseline.measure(tiny_pipeline("sd"), steps=2, prompts=quality_prompts()[:3])
