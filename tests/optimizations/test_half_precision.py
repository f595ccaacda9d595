from __future__ import annotations

import numpy as np
import pytest
import torch

from sdopt import optimize, plan
from sdopt.testing import fake_capabilities, run_pipeline, tiny_pipeline
from tests.helpers import Snapshot


def _dtypes(module: torch.nn.Module) -> set[torch.dtype]:
    return {p.dtype for p in module.parameters()}


def test_bf16_on_an_amx_cpu_casts_everything_and_undoes_exactly(pipe, family: str) -> None:
    snapshot = Snapshot(pipe, family)
    weight = next(pipe.vae.parameters())
    report = optimize(pipe, tier=None, extra=["half_precision"], caps=fake_capabilities("cpu-amx"))
    assert report.applied[0].config["dtype"] == "bfloat16"
    for name, module in pipe.components.items():
        if isinstance(module, torch.nn.Module):
            assert _dtypes(module) == {torch.bfloat16}, name
    output = run_pipeline(pipe, family)
    # Random tiny weights amplify rounding; real SD1.5 measured 47 dB PSNR vs fp32 in bf16.
    assert np.isfinite(output).all() and np.abs(output - snapshot.output).mean() < 0.02
    report.undo()
    assert next(pipe.vae.parameters()) is weight and weight.dtype == torch.float32
    snapshot.assert_identical()


def test_fp16_keeps_the_sdxl_vae_in_float32_and_feeds_it_its_dtype() -> None:
    pipe = tiny_pipeline("sdxl")
    snapshot = Snapshot(pipe, "sdxl")
    report = optimize(pipe, tier=None, extra=["half_precision"], caps=fake_capabilities("t4-16gb"))
    assert report.applied[0].config == {"dtype": "float16", "vae": "auto", "components": []}
    assert "VAE kept in float32" in report.applied[0].reason
    assert _dtypes(pipe.unet) == {torch.float16} and _dtypes(pipe.vae) == {torch.float32}
    assert "decode" in pipe.vae.__dict__
    output = run_pipeline(pipe, "sdxl")  # would raise a dtype mismatch without the input cast
    assert np.isfinite(output).all()
    report.undo()
    assert "decode" not in pipe.vae.__dict__
    snapshot.assert_identical()


def test_fp16_keeps_modules_marked_keep_in_fp32() -> None:
    pipe = tiny_pipeline("sd3")
    report = optimize(pipe, tier=None, extra=["half_precision"], caps=fake_capabilities("t4-16gb"))
    t5 = pipe.text_encoder_3
    assert "wo" in t5._keep_in_fp32_modules
    wo = {p.dtype for n, p in t5.named_parameters() if ".wo." in n}
    rest = {p.dtype for n, p in t5.named_parameters() if ".wo." not in n}
    assert wo == {torch.float32} and rest == {torch.float16}
    assert np.isfinite(run_pipeline(pipe, "sd3")).all()
    report.undo()
    assert _dtypes(t5) == {torch.float32}


def test_cpu_without_bf16_units_is_skipped_unless_asked() -> None:
    pipe = tiny_pipeline("sd")
    result = plan(pipe, tier=None, extra=["half_precision"], caps=fake_capabilities("cpu-avx2"))
    assert "no bf16 units" in result.skipped[0].reason
    forced = plan(
        pipe, tier=None, extra=[{"name": "half_precision", "dtype": "bfloat16"}], caps=fake_capabilities("cpu-avx2")
    )
    assert forced.steps[0].config.dtype == "bfloat16"


def test_already_in_the_dtype_is_skipped(sd_pipe) -> None:
    caps = fake_capabilities("cpu-amx")
    report = optimize(sd_pipe, tier=None, extra=["half_precision"], caps=caps)
    assert plan(sd_pipe, tier=None, extra=["half_precision"], caps=caps).skipped[0].reason == "already bfloat16"
    report.undo()


@pytest.mark.parametrize("vae", ["half", "float32"])
def test_explicit_vae_choice(vae: str) -> None:
    pipe = tiny_pipeline("sd")
    report = optimize(
        pipe, tier=None, extra=[{"name": "half_precision", "vae": vae}], caps=fake_capabilities("cpu-amx")
    )
    assert _dtypes(pipe.vae) == {torch.bfloat16 if vae == "half" else torch.float32}
    assert np.isfinite(run_pipeline(pipe, "sd")).all()
    report.undo()


def test_on_this_machine_the_detected_capabilities_choose_the_dtype() -> None:
    from sdopt import detect

    caps = detect()
    if caps.device != "cpu" or not caps.cpu.bf16_accelerated:
        pytest.skip("this check is about CPUs where bf16 is faster than fp32 (AMX, or measured)")
    pipe = tiny_pipeline("sd")
    report = optimize(pipe, tier=None, extra=["half_precision"])  # balanced@4 may run OpenVINO here instead
    assert {d.name: d.config for d in report.applied}["half_precision"]["dtype"] == "bfloat16"
    assert np.isfinite(run_pipeline(pipe, "sd")).all()
    report.undo()


def test_undo_reverts_the_casts_the_pipeline_made_while_optimized() -> None:
    # SDXL img2img moves its force_upcast VAE (kept float32 under float16) to float32 to encode and
    # then to the UNet's float16; undo must bring back the original float32 VAE all the same.
    from sdopt.testing import pipeline_state, run_zoo_pipeline, state_differences, zoo_pipeline

    name = "StableDiffusionXLImg2ImgPipeline"
    pipe = zoo_pipeline(name)
    expected = run_zoo_pipeline(pipe, name)
    before = pipeline_state(pipe)
    half = [{"name": "half_precision", "dtype": "float16"}]
    report = optimize(pipe, tier=None, extra=half, caps=fake_capabilities("t4-16gb"))
    assert pipe.vae.dtype == torch.float32
    run_zoo_pipeline(pipe, name)
    assert pipe.vae.dtype == torch.float16  # the pipeline's own doing
    report.undo()
    assert state_differences(before, pipeline_state(pipe)) == []
    assert np.array_equal(run_zoo_pipeline(pipe, name), expected)


def test_the_dtype_boundary_leaves_timesteps_in_float32() -> None:
    # diffusers computes time embeddings in float32 on purpose: 961 is 960 in bfloat16.
    pipe = tiny_pipeline("sd")
    seen: list[torch.Tensor] = []
    pipe.unet.time_proj.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    report = optimize(pipe, tier=None, extra=["half_precision"], caps=fake_capabilities("cpu-amx"))
    pipe.unet(torch.randn(1, 4, 8, 8), torch.tensor([961.0]), encoder_hidden_states=torch.randn(1, 77, 32))
    report.undo()
    assert seen[0].dtype == torch.float32 and seen[0].item() == 961.0


def test_a_denoiser_left_in_float32_takes_the_cast_encoders_outputs() -> None:
    # SDXL's pooled embeddings come from text_encoder_2: cast alone, they used to reach the float32 UNet.
    pipe = tiny_pipeline("sdxl")
    snapshot = Snapshot(pipe, "sdxl")
    extra = [{"name": "half_precision", "dtype": "bfloat16", "components": ["text_encoder_2"]}]
    report = optimize(pipe, tier=None, extra=extra, caps=fake_capabilities("cpu-amx"))
    assert pipe.text_encoder_2.dtype == torch.bfloat16 and pipe.unet.dtype == torch.float32
    assert np.isfinite(run_pipeline(pipe, "sdxl")).all()
    report.undo()
    snapshot.assert_identical()
