from __future__ import annotations

import numpy as np
import pytest

from sdopt import optimize, plan
from sdopt.testing import call_kwargs, run_pipeline, run_zoo_pipeline, tiny_pipeline, zoo_pipeline
from tests.helpers import Snapshot


def test_denoises_smaller_and_returns_the_requested_size(pipe, family, cpu_caps) -> None:
    snapshot = Snapshot(pipe, family)
    latent_sizes: list[tuple[int, ...]] = []
    denoiser = pipe.unet if family in ("sd", "sdxl") else pipe.transformer

    def record(module, args, kwargs):
        sample = args[0] if args else kwargs.get("hidden_states", kwargs.get("sample"))
        latent_sizes.append(tuple(sample.shape))

    hook = denoiser.register_forward_pre_hook(record, with_kwargs=True)
    report = optimize(pipe, tier=None, extra=[{"name": "resolution", "scale": 0.5}], caps=cpu_caps)
    image = run_pipeline(pipe, family, height=128, width=128)
    hook.remove()
    assert image.shape == (1, 128, 128, 3) and np.isfinite(image).all()
    # 128 px requested, 64 px denoised: 8x8 latents (Flux: 16 packed tokens of 2x2 patches).
    expected = {"flux": (1, 16, 4)}.get(family)
    assert latent_sizes and (latent_sizes[0] == expected if expected else latent_sizes[0][-2:] == (8, 8))
    report.undo()
    snapshot.assert_identical()


@pytest.mark.parametrize("output_type", ["pil", "pt"])
def test_every_output_type_is_upscaled(sd_pipe, cpu_caps, output_type) -> None:
    report = optimize(sd_pipe, tier=None, extra=["resolution"], caps=cpu_caps)
    images = run_pipeline(sd_pipe, "sd", height=128, width=96, output_type=output_type)
    size = images[0].size if output_type == "pil" else tuple(images.shape[-2:])
    assert size == ((96, 128) if output_type == "pil" else (128, 96))
    report.undo()


def test_bad_scale_and_img2img_are_skipped(cpu_caps) -> None:
    from diffusers import StableDiffusionImg2ImgPipeline

    from sdopt.errors import ConfigError

    with pytest.raises(ConfigError, match=r"scale=1.5 is out of range; allowed: >= 0.25 and < 1"):
        plan(tiny_pipeline("sd"), tier=None, extra=[{"name": "resolution", "scale": 1.5}], caps=cpu_caps)
    img2img = StableDiffusionImg2ImgPipeline(**tiny_pipeline("sd").components)
    assert "takes no height/width" in plan(img2img, tier=None, extra=["resolution"], caps=cpu_caps).skipped[0].reason


def _latent_sizes(denoiser) -> tuple[list[tuple[int, ...]], object]:
    seen: list[tuple[int, ...]] = []

    def record(module, args, kwargs):
        sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        seen.append(tuple(sample.shape))

    return seen, denoiser.register_forward_pre_hook(record, with_kwargs=True)


def test_without_a_size_the_pipelines_own_default_is_scaled_and_restored(sd_pipe, cpu_caps) -> None:
    # The tiny SD's default is unet.sample_size (8) x vae_scale_factor (8) = 64 px, not 512 px.
    report = optimize(sd_pipe, tier=None, extra=[{"name": "resolution", "scale": 0.5}], caps=cpu_caps)
    seen, hook = _latent_sizes(sd_pipe.unet)
    kwargs = call_kwargs("sd")
    del kwargs["height"], kwargs["width"]
    image = sd_pipe(**kwargs).images
    hook.remove()
    report.undo()
    assert image.shape == (1, 64, 64, 3)
    assert seen[0][-2:] == (4, 4)  # 32 px denoised


def test_video_frames_are_upscaled_too(cpu_caps) -> None:
    pipe = zoo_pipeline("AnimateDiffPipeline")
    expected = run_zoo_pipeline(pipe, "AnimateDiffPipeline").shape
    report = optimize(pipe, tier=None, extra=[{"name": "resolution", "scale": 0.5}], caps=cpu_caps)
    assert [d.name for d in report.applied] == ["resolution"]
    seen, hook = _latent_sizes(pipe.unet)
    frames = run_zoo_pipeline(pipe, "AnimateDiffPipeline")
    hook.remove()
    report.undo()
    assert frames.shape == expected and seen[0][-2:] == (4, 4)


def test_pipelines_without_vae_scale_factor_use_their_own_factor(cpu_caps) -> None:
    # Kandinsky 2.2 calls it movq_scale_factor; the VAE is a VQModel.
    pipe = zoo_pipeline("KandinskyV22Pipeline")
    expected = run_zoo_pipeline(pipe, "KandinskyV22Pipeline").shape
    report = optimize(pipe, tier=None, extra=[{"name": "resolution", "scale": 0.5}], caps=cpu_caps)
    assert run_zoo_pipeline(pipe, "KandinskyV22Pipeline").shape == expected
    report.undo()


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("WanPipeline", "for model families"),
        ("StableDiffusionInpaintPipeline", "takes image, mask_image"),
        ("StableDiffusionControlNetPipeline", "takes image"),
        ("FluxKontextPipeline", "takes image"),
    ],
)
def test_unverified_families_and_spatial_inputs_are_skipped(name: str, reason: str, cpu_caps) -> None:
    result = plan(zoo_pipeline(name), tier=None, extra=["resolution"], caps=cpu_caps)
    assert reason in result.skipped[0].reason


def test_a_call_with_its_own_latents_runs_at_their_size(sd_pipe, cpu_caps) -> None:
    import torch

    report = optimize(sd_pipe, tier=None, extra=[{"name": "resolution", "scale": 0.5}], caps=cpu_caps)
    seen, hook = _latent_sizes(sd_pipe.unet)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    image = run_pipeline(sd_pipe, "sd", latents=latents)
    hook.remove()
    report.undo()
    assert image.shape == (1, 64, 64, 3) and seen[0][-2:] == (8, 8)
