from __future__ import annotations

import numpy as np
import pytest

from sdopt import optimize, plan
from sdopt.testing import run_pipeline, tiny_pipeline
from tests.helpers import Snapshot


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_slices_unet_attention_and_restores_the_same_processors(family: str, cpu_caps) -> None:
    pipe = tiny_pipeline(family)
    snapshot = Snapshot(pipe, family)
    originals = {id(m.processor) for m in pipe.unet.modules() if hasattr(m, "processor")}
    report = optimize(pipe, tier=None, extra=[{"name": "attention_slicing", "slice_size": "max"}], caps=cpu_caps)
    classes = {type(m.processor).__name__ for m in pipe.unet.modules() if hasattr(m, "processor")}
    assert classes == {"SlicedAttnProcessor"}
    np.testing.assert_allclose(run_pipeline(pipe, family), snapshot.output, atol=1e-4)
    report.undo()
    assert {id(m.processor) for m in pipe.unet.modules() if hasattr(m, "processor")} == originals
    snapshot.assert_identical()


@pytest.mark.parametrize("family", ["sd3", "flux", "pixart"])
def test_transformer_denoisers_are_skipped_because_diffusers_ignores_it(family: str, cpu_caps) -> None:
    result = plan(tiny_pipeline(family), tier=None, extra=["attention_slicing"], caps=cpu_caps)
    assert result.steps == []
    assert result.skipped[0].reason.startswith("for unet denoisers only")


def test_bad_slice_size_and_already_active(sd_pipe, cpu_caps) -> None:
    bad = plan(sd_pipe, tier=None, extra=[{"name": "attention_slicing", "slice_size": "half"}], caps=cpu_caps)
    assert "slice_size must be" in bad.skipped[0].reason
    report = optimize(sd_pipe, tier=None, extra=["attention_slicing"], caps=cpu_caps)
    assert plan(sd_pipe, tier=None, extra=["attention_slicing"], caps=cpu_caps).skipped[0].reason == "already active"
    report.undo()


def test_ip_adapter_processors_are_not_replaced(cpu_caps) -> None:
    from sdopt.testing import zoo_pipeline

    pipe = zoo_pipeline("StableDiffusionPipeline+IPAdapter")
    result = plan(pipe, tier=None, extra=["attention_slicing"], caps=cpu_caps)
    assert "IP-Adapter attention processors" in result.skipped[0].reason


def test_a_slice_size_under_one_is_refused_not_applied() -> None:
    from sdopt import optimize
    from sdopt.errors import ConfigError
    from sdopt.testing import fake_capabilities, tiny_pipeline

    pipe = tiny_pipeline("sd")
    with pytest.raises(ConfigError, match="slice_size=0 is out of range; allowed: >= 1"):  # before any planning
        optimize(pipe, tier=None, extra=[{"name": "attention_slicing", "slice_size": 0}], caps=fake_capabilities("cpu"))
