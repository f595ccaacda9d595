from __future__ import annotations

import numpy as np
import pytest
import torch

from sdopt import load
from sdopt.testing import fake_capabilities, run_pipeline, tiny_pipeline


@pytest.fixture
def saved(tmp_path_factory):
    def save(family: str) -> str:
        path = tmp_path_factory.mktemp(family)
        tiny_pipeline(family).save_pretrained(path)
        return str(path)

    return save


def test_loads_in_the_tier_dtype_then_optimizes(saved) -> None:
    pipe, report = load(saved("sd"), tier="balanced", caps=fake_capabilities("cpu-amx"))
    assert pipe.unet.dtype == torch.bfloat16 and pipe.vae.dtype == torch.bfloat16
    assert "channels_last" in [d.name for d in report.applied]
    assert np.isfinite(run_pipeline(pipe, "sd")).all()


def test_float32_machines_load_in_float32(saved) -> None:
    pipe, report = load(saved("sd"), tier="balanced", caps=fake_capabilities("cpu-avx2"))
    assert pipe.unet.dtype == torch.float32
    assert "no bf16 units" in {d.name: d.reason for d in report.skipped}["half_precision"]


def test_sdxl_in_float16_keeps_its_vae_in_float32_and_guarded(saved) -> None:
    from diffusers import StableDiffusionXLPipeline

    pipe, report = load(
        StableDiffusionXLPipeline, saved("sdxl"), tier="conservative", caps=fake_capabilities("t4-16gb")
    )
    assert pipe.unet.dtype == torch.float16 and pipe.vae.dtype == torch.float32
    assert "decode" in pipe.vae.__dict__  # inputs cast to the VAE's dtype, NaN guard
    assert np.isfinite(run_pipeline(pipe, "sdxl")).all()


def test_explicit_from_pretrained_options_win(saved) -> None:
    pipe, _ = load(saved("pixart"), tier="balanced", caps=fake_capabilities("cpu-amx"), torch_dtype=torch.float32)
    assert pipe.transformer.dtype == torch.bfloat16  # optimize's half_precision still casts
    pipe, _ = load(saved("pixart"), tier=None, caps=fake_capabilities("cpu-amx"))
    assert pipe.transformer.dtype == torch.float32


def test_a_class_needs_a_path() -> None:
    from diffusers import StableDiffusionPipeline

    with pytest.raises(TypeError, match="needs the path"):
        load(StableDiffusionPipeline)
