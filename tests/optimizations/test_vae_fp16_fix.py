from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from sdopt import optimize, plan
from sdopt.testing import fake_capabilities, run_pipeline, tiny_pipeline
from tests.helpers import Snapshot


@pytest.fixture
def saved_fixed_vae(tmp_path):
    """A random-weight 'fp16-safe' copy of the tiny SDXL VAE architecture, saved like the real one."""
    from diffusers import AutoencoderKL

    config = dict(tiny_pipeline("sdxl").vae.config)
    config["force_upcast"] = False
    AutoencoderKL.from_config(config).save_pretrained(tmp_path)
    return str(tmp_path)


def test_swaps_the_vae_so_half_precision_casts_it_and_undo_restores(saved_fixed_vae) -> None:
    pipe = tiny_pipeline("sdxl")
    snapshot = Snapshot(pipe, "sdxl")
    original = pipe.vae
    extra = ["half_precision", {"name": "vae_fp16_fix", "source": saved_fixed_vae}]
    report = optimize(pipe, tier=None, extra=extra, caps=fake_capabilities("t4-16gb"))
    assert [d.name for d in report.applied] == ["vae_fp16_fix", "half_precision"]
    assert pipe.vae is not original and pipe.vae.config.force_upcast is False
    assert {p.dtype for p in pipe.vae.parameters()} == {torch.float16}
    assert report.applied[1].reason == "weights in float16"
    assert np.isfinite(run_pipeline(pipe, "sdxl")).all()
    report.undo()
    assert pipe.vae is original
    snapshot.assert_identical()


def test_without_the_weights_it_is_skipped_and_the_vae_stays_float32() -> None:
    pipe = tiny_pipeline("sdxl")
    report = optimize(pipe, tier="balanced", caps=fake_capabilities("t4-16gb"))
    reasons = {d.name: d.reason for d in report.skipped}
    assert "cannot load the fp16-safe VAE 'madebyollin/sdxl-vae-fp16-fix'" in reasons["vae_fp16_fix"]
    assert "the VAE stays float32" in reasons["vae_fp16_fix"]
    assert {p.dtype for p in pipe.vae.parameters()} == {torch.float32}
    assert np.isfinite(run_pipeline(pipe, "sdxl")).all()
    report.undo()


def test_skipped_where_it_is_not_needed() -> None:
    sdxl_bf16 = plan(tiny_pipeline("sdxl"), tier=None, extra=["vae_fp16_fix"], caps=fake_capabilities("h100-80gb"))
    assert "only needed when SDXL runs in float16" in sdxl_bf16.skipped[0].reason
    sd = plan(tiny_pipeline("sd"), tier=None, extra=["vae_fp16_fix"], caps=fake_capabilities("t4-16gb"))
    assert sd.skipped[0].reason.startswith("for model families sdxl only")


def test_output_guard_redecodes_overflowing_images_in_float32() -> None:
    pipe = tiny_pipeline("sd")
    with torch.no_grad():
        pipe.vae.decoder.conv_out.weight.mul_(1e5)  # overflows float16, finite in float32
    report = optimize(pipe, tier=None, extra=[{"name": "half_precision", "dtype": "float16"}])
    redecoded = []
    original_to = pipe.vae.to

    def counting_to(*args, **kwargs):
        redecoded.append(args)
        return original_to(*args, **kwargs)

    pipe.vae.to = counting_to
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = run_pipeline(pipe, "sd", output_type="pt")
    del pipe.vae.to
    assert any("decoding them again in float32" in str(w.message) for w in caught)
    assert redecoded == [(torch.float32,), (torch.float16,)]
    assert torch.isfinite(image).all()
    assert {p.dtype for p in pipe.vae.parameters()} == {torch.float16}
    report.undo()
