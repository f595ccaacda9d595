from __future__ import annotations

import numpy as np
import torch

from sdopt import optimize, plan
from sdopt.testing import run_pipeline, tiny_pipeline
from tests.helpers import Snapshot


def _layouts(module: torch.nn.Module) -> set[bool]:
    return {
        p.is_contiguous(memory_format=torch.channels_last)
        for p in module.parameters()
        if p.dim() == 4 and p.shape[-1] > 1
    }


def test_converts_unet_and_vae_weights_and_undoes(sd_pipe, cpu_caps) -> None:
    snapshot = Snapshot(sd_pipe, "sd")
    report = optimize(sd_pipe, tier=None, extra=["channels_last"], caps=cpu_caps)
    assert [d.name for d in report.applied] == ["channels_last"]
    assert _layouts(sd_pipe.unet) == {True} and _layouts(sd_pipe.vae) == {True}
    weight = sd_pipe.unet.conv_in.weight
    output = run_pipeline(sd_pipe, "sd")
    assert np.abs(output - snapshot.output).max() < 1e-4
    report.undo()
    assert sd_pipe.unet.conv_in.weight is weight  # same Parameter object, layout restored
    assert _layouts(sd_pipe.unet) == {False}
    snapshot.assert_identical()


def test_transformer_denoisers_keep_their_layout_only_the_vae_converts(cpu_caps) -> None:
    pipe = tiny_pipeline("flux")
    report = optimize(pipe, tier=None, extra=["channels_last"], caps=cpu_caps)
    assert _layouts(pipe.vae) == {True}
    assert _layouts(pipe.transformer) in (set(), {False})
    report.undo()


def test_explicit_components_and_skip_reasons(sd_pipe, cpu_caps) -> None:
    report = optimize(sd_pipe, tier=None, extra=[{"name": "channels_last", "components": ["vae"]}], caps=cpu_caps)
    assert _layouts(sd_pipe.vae) == {True} and _layouts(sd_pipe.unet) == {False}
    again = plan(sd_pipe, tier=None, extra=[{"name": "channels_last", "components": ["vae"]}], caps=cpu_caps)
    assert again.skipped[0].reason == "already channels-last"
    report.undo()
    wrong = plan(sd_pipe, tier=None, extra=[{"name": "channels_last", "components": ["vea"]}], caps=cpu_caps)
    assert "no module component named vea" in wrong.skipped[0].reason
