from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sdopt import optimize, plan
from sdopt.testing import fake_capabilities, run_pipeline, tiny_pipeline
from tests.helpers import Snapshot


def _psnr(reference: np.ndarray, output: np.ndarray) -> float:
    mse = float(np.mean((reference.astype(np.float64) - output.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def test_weights_rest_small_and_each_layer_computes_in_float32(sd_pipe, cpu_caps) -> None:
    layer = sd_pipe.unet.down_blocks[0].resnets[0].conv1
    seen: list[torch.dtype] = []
    convolve = layer._conv_forward  # what Conv2d.forward calls with the weight, inside diffusers' hook

    def record(input, weight, bias):  # noqa: A002
        seen.append(weight.dtype)
        return convolve(input, weight, bias)

    layer._conv_forward = record
    report = optimize(sd_pipe, tier=None, extra=["weight_storage"], caps=cpu_caps)
    assert report.applied and "unet in bfloat16" in report.applied[0].reason
    assert layer.weight.dtype == torch.bfloat16
    assert sd_pipe.unet.conv_norm_out.weight.dtype == torch.float32  # norms are not cast
    embedding = sd_pipe.text_encoder.get_input_embeddings()
    assert embedding.weight.dtype == torch.float32  # transformers models read embedding weights directly
    run_pipeline(sd_pipe, "sd")
    assert seen and set(seen) == {torch.float32}  # upcast for compute by diffusers' hook
    assert layer.weight.dtype == torch.bfloat16  # and back to storage after


@pytest.mark.parametrize(("dtype", "floor_db"), [("bfloat16", 40.0), ("float8_e4m3fn", 20.0)])
def test_fidelity_and_exact_undo(dtype: str, floor_db: float, cpu_caps) -> None:
    pipe = tiny_pipeline("sd")
    snapshot = Snapshot(pipe, "sd")
    report = optimize(pipe, tier=None, extra=[{"name": "weight_storage", "dtype": dtype}], caps=cpu_caps)
    assert report.applied[0].lossy
    output = run_pipeline(pipe, "sd")
    # Measured: bfloat16 60.2 dB, float8_e4m3fn 37.0 dB against float32 on this pipeline.
    assert _psnr(snapshot.output, output) >= floor_db
    report.undo()
    assert not any("_diffusers_hook" in module.__dict__ for module in pipe.unet.modules())  # hooks removed
    snapshot.assert_identical()


def test_auto_leaves_16_bit_components_alone(cpu_caps) -> None:
    pipe = tiny_pipeline("sd").to(torch.bfloat16)
    report = optimize(pipe, tier=None, extra=["weight_storage"], caps=cpu_caps)
    assert not report.applied and "float8_e4m3fn" in report.skipped[0].reason


def test_the_planned_footprint_counts_the_small_storage(cpu_caps) -> None:
    pipe = tiny_pipeline("sdxl")
    plain = plan(pipe, tier=None, caps=cpu_caps).footprint
    stored = plan(pipe, tier=None, extra=["weight_storage"], caps=cpu_caps).footprint
    assert plain is not None and stored is not None
    assert 0.5 * plain.total_gb < stored.total_gb < 0.75 * plain.total_gb


def test_low_memory_stores_small_only_where_half_precision_does_not_apply() -> None:
    pipe = tiny_pipeline("sd")
    here = plan(pipe, tier="low-memory@3", caps=fake_capabilities("cpu"))
    assert "weight_storage" in [step.name for step in here.steps]
    amx = plan(pipe, tier="low-memory@3", caps=fake_capabilities("cpu-amx"))
    assert "half_precision" in [step.name for step in amx.steps]
    assert "half_precision" in {d.name: d.reason for d in amx.skipped}["weight_storage"]


def test_a_module_that_casts_to_its_layers_stored_dtype_stays_in_the_compute_dtype(cpu_caps) -> None:
    """Kandinsky 2.2's ImageProjection casts its input to its Linear's stored dtype before the Linear's
    casting hook upcasts the weight: stored small, that Linear would get bfloat16 against float32."""
    from sdopt.testing.zoo import run_zoo_pipeline, zoo_pipeline

    pipe = zoo_pipeline("KandinskyV22Pipeline")
    expected = run_zoo_pipeline(pipe, "KandinskyV22Pipeline")
    report = optimize(pipe, tier=None, extra=["weight_storage"], caps=cpu_caps)
    assert [d.name for d in report.applied] == ["weight_storage"]
    assert pipe.unet.encoder_hid_proj.image_embeds.weight.dtype == torch.float32
    assert pipe.unet.conv_in.weight.dtype == torch.bfloat16  # the rest of the UNet does rest small
    result = run_zoo_pipeline(pipe, "KandinskyV22Pipeline")
    assert np.asarray(result).shape == np.asarray(expected).shape
    report.undo()
    assert np.array_equal(np.asarray(run_zoo_pipeline(pipe, "KandinskyV22Pipeline")), np.asarray(expected))
