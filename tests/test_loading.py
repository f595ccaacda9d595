from __future__ import annotations

import importlib.util

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


def test_sdxl_in_float16_keeps_its_vae_in_float32_and_guarded(saved, monkeypatch) -> None:
    from diffusers import DiffusionPipeline, StableDiffusionXLPipeline

    monkeypatch.setattr(DiffusionPipeline, "to", lambda self, *args, **kwargs: self)  # a T4 simulated on the CPU

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


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed")
def test_quantize_4bit_off_cuda_swaps_the_denoisers_layers_after_loading(saved) -> None:
    caps = fake_capabilities("cpu", packages={"bitsandbytes": True})
    pipe, report = load(saved("sd"), tier=None, caps=caps, quantize="4bit")
    assert [d.name for d in report.applied] == ["quantize_4bit"]
    assert any(type(m).__name__ == "Linear4bit" for m in pipe.unet.modules())
    assert np.isfinite(run_pipeline(pipe, "sd")).all()


def test_quantize_4bit_on_cuda_loads_through_diffusers_quantization_config(saved) -> None:
    from sdopt.loading import _four_bit_config

    config = _four_bit_config(saved("flux"), torch.bfloat16)
    assert config.quant_backend == "bitsandbytes_4bit"
    assert config.components_to_quantize == ["transformer"]
    assert config.quant_kwargs["bnb_4bit_quant_type"] == "nf4"
    assert config.quant_kwargs["bnb_4bit_compute_dtype"] == torch.bfloat16


def test_quantize_needs_bitsandbytes_and_a_known_mode(saved) -> None:
    path = saved("sd")
    with pytest.raises(ImportError, match=r"pip install sdopt\[bnb\]"):
        load(path, tier=None, caps=fake_capabilities("cpu"), quantize="4bit")
    with pytest.raises(ValueError, match="quantize must be '4bit'"):
        load(path, tier=None, caps=fake_capabilities("cpu"), quantize="3bit")  # type: ignore[arg-type]


def test_load_passes_dtype_not_the_deprecated_torch_dtype(saved, monkeypatch) -> None:
    from diffusers import DiffusionPipeline

    seen: dict[str, object] = {}
    original = DiffusionPipeline.from_pretrained.__func__

    def spy(cls, source, **kwargs):
        seen.update(kwargs)
        return original(cls, source, **kwargs)

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", classmethod(spy))
    pipe, _ = load(saved("sd"), tier="balanced", caps=fake_capabilities("cpu-amx"))
    assert seen.get("dtype") == torch.bfloat16 and "torch_dtype" not in seen


def test_load_moves_the_pipeline_to_the_planned_device_unless_it_offloads(saved, monkeypatch) -> None:
    from diffusers import DiffusionPipeline

    moved: list[object] = []
    monkeypatch.setattr(DiffusionPipeline, "to", lambda self, *args, **kwargs: moved.append(args) or self)
    load(saved("sd"), tier="balanced", caps=fake_capabilities("t4-16gb"), verify=False)
    assert moved == [("cuda",)]
    moved.clear()
    load(
        saved("sd"),
        tier=None,
        extra=[{"name": "model_offload", "only_if_needed": False, "device": "cpu"}],
        caps=fake_capabilities("t4-16gb"),
        verify=False,
    )
    assert ("cuda",) not in moved  # diffusers' offload keeps the components on the CPU itself
