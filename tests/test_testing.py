"""The tiny offline pipelines users test against must be real, deterministic and loadable."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdopt.testing import (
    FAMILIES,
    call_kwargs,
    pipeline_state,
    run_pipeline,
    state_differences,
    tiny_pipeline,
)


def test_every_family_builds_runs_and_is_deterministic(family: str) -> None:
    pipe = tiny_pipeline(family)
    assert pipe.vae_scale_factor == 8
    assert all(not m.training for m in pipe.components.values() if isinstance(m, torch.nn.Module))
    first = run_pipeline(pipe, family)
    second = run_pipeline(tiny_pipeline(family), family)
    assert first.shape == (1, 64, 64, 3)
    assert np.isfinite(first).all()
    assert np.array_equal(first, second)


def test_different_seeds_give_different_weights() -> None:
    a = tiny_pipeline("sd", seed=0).unet.conv_in.weight
    b = tiny_pipeline("sd", seed=1).unet.conv_in.weight
    assert not torch.equal(a, b)


def test_save_and_from_pretrained_round_trip_offline(family: str, tmp_path) -> None:
    from diffusers import DiffusionPipeline

    pipe = tiny_pipeline(family)
    expected = run_pipeline(pipe, family)
    pipe.save_pretrained(tmp_path)
    loaded = DiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is type(pipe)
    for name, module in pipe.components.items():
        if isinstance(module, torch.nn.Module):
            original, reloaded = module.state_dict(), getattr(loaded, name).state_dict()
            assert original.keys() == reloaded.keys()
            assert all(torch.equal(original[key], reloaded[key]) for key in original), name
    # The weights are bit-identical; the tiny Flux's output was seen to differ by ~3e-6 after loading
    # (memory-mapped tensors can take other kernel paths), so the output is compared within float rounding.
    np.testing.assert_allclose(run_pipeline(loaded, family), expected, rtol=0, atol=1e-5)


def test_call_kwargs_are_fresh_each_time() -> None:
    first, second = call_kwargs("sd"), call_kwargs("sd")
    assert first["generator"] is not second["generator"]
    assert first["num_inference_steps"] == 2 and first["height"] == 64


def test_unknown_family_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="sdxl"):
        tiny_pipeline("sd5")


def test_state_snapshot_sees_weights_strides_processors_and_flags() -> None:
    pipe = tiny_pipeline("sd")
    before = pipeline_state(pipe)
    with torch.no_grad():
        pipe.unet.conv_in.weight[0, 0, 0, 0] += 1
    assert any("conv_in.weight" in d for d in state_differences(before, pipeline_state(pipe)))

    pipe = tiny_pipeline("sd")
    before = pipeline_state(pipe)
    pipe.unet.conv_in.weight.data = pipe.unet.conv_in.weight.data.contiguous(memory_format=torch.channels_last)
    assert state_differences(before, pipeline_state(pipe))

    pipe = tiny_pipeline("sd")
    before = pipeline_state(pipe)
    pipe.vae.enable_slicing()
    assert any("use_slicing" in d for d in state_differences(before, pipeline_state(pipe)))

    pipe = tiny_pipeline("sd")
    before = pipeline_state(pipe)
    pipe.unet.set_attention_slice("max")
    assert any("processor" in d for d in state_differences(before, pipeline_state(pipe)))


def test_families_constant_matches_builders() -> None:
    assert FAMILIES == ("sd", "sdxl", "sd3", "flux", "pixart")
