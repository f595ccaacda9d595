"""distill_lora: skipped with the reason offline, fuses a LoRA of LCM-LoRA's rank and layers (tested
with random weights), runs 4 steps at batch 1 with the LCM scheduler, and undoes exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sdopt import optimize, plan
from sdopt.optimizations.distill_lora import RANK, random_lora
from sdopt.testing import tiny_pipeline
from sdopt.testing.state import pipeline_state, state_differences
from sdopt.weights import stand_ins

pytest.importorskip("peft")


@pytest.fixture
def local_lora(tmp_path):
    """A LoRA directory like the published one (file name, rank, layers), with random weights."""

    def make(family: str) -> str:
        state = random_lora(tiny_pipeline(family).unet, rank=RANK, scale=0.05)
        save_file(state, str(tmp_path / "pytorch_lora_weights.safetensors"))
        return str(tmp_path)

    return make


def _unet_batches(pipe, **call) -> tuple[list[int], np.ndarray]:
    batches: list[int] = []
    hook = pipe.unet.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    try:
        image = pipe("a photo", generator=torch.Generator().manual_seed(0), output_type="np", **call).images
    finally:
        hook.remove()
    return batches, image


def test_skipped_with_the_reason_when_the_lora_is_neither_local_nor_cached() -> None:
    result = plan(tiny_pipeline("sdxl"), tier=None, extra=["distill_lora"])
    assert result.skipped[0].reason == (
        "latent-consistency/lcm-lora-sdxl is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
    )
    flux = plan(tiny_pipeline("flux"), tier=None, extra=["distill_lora"])
    assert "for model families sd1, sdxl only" in flux.skipped[0].reason


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_fused_lora_runs_four_steps_without_cfg_and_undo_is_exact(family, local_lora) -> None:
    pipe = tiny_pipeline(family)
    _, reference = _unet_batches(pipe, num_inference_steps=6)
    before = pipeline_state(pipe)  # after a call: transformers adds its output hooks at the first one
    weight = pipe.unet.down_blocks[0].resnets[0].conv1.weight
    original = weight.detach().clone()
    report = optimize(pipe, tier=None, extra=[{"name": "distill_lora", "source": local_lora(family)}])
    assert [d.name for d in report.applied] == ["distill_lora"], report
    assert type(pipe.scheduler).__name__ == "LCMScheduler"
    assert not any(hasattr(module, "base_layer") for module in pipe.unet.modules())  # plain layers, fused
    assert not torch.equal(pipe.unet.down_blocks[0].resnets[0].conv1.weight, original)
    batches, image = _unet_batches(pipe, num_inference_steps=30, guidance_scale=7.5)
    assert batches == [1, 1, 1, 1]  # 4 steps, one batch each: guidance off
    assert image.shape == reference.shape
    report.undo()
    assert state_differences(before, pipeline_state(pipe)) == []
    assert torch.equal(pipe.unet.down_blocks[0].resnets[0].conv1.weight, original)
    np.testing.assert_array_equal(_unet_batches(pipe, num_inference_steps=6)[1], reference)


def test_wins_the_sampler_steps_and_guidance_when_listed_first(local_lora) -> None:
    extra = [{"name": "distill_lora", "source": local_lora("sd")}, "scheduler", "step_budget", "guidance"]
    result = plan(tiny_pipeline("sd"), tier=None, extra=extra)
    assert [step.name for step in result.steps] == ["distill_lora"]
    assert all("conflicts with distill_lora" in d.reason for d in result.skipped)


def test_an_arch_bench_gets_random_weights_of_the_published_lora_and_says_so() -> None:
    pipe = tiny_pipeline("sd")
    with stand_ins():
        report = optimize(pipe, tier=None, extra=["distill_lora"])
    assert "random weights of its published architecture" in report.applied[0].reason
    batches, _ = _unet_batches(pipe)
    assert batches == [1, 1, 1, 1]
    report.undo()
