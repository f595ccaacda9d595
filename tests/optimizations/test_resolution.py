from __future__ import annotations

import numpy as np
import pytest

from sdopt import optimize, plan
from sdopt.testing import run_pipeline, tiny_pipeline
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

    bad = plan(tiny_pipeline("sd"), tier=None, extra=[{"name": "resolution", "scale": 1.5}], caps=cpu_caps)
    assert "scale must be" in bad.skipped[0].reason
    img2img = StableDiffusionImg2ImgPipeline(**tiny_pipeline("sd").components)
    assert "takes no height/width" in plan(img2img, tier=None, extra=["resolution"], caps=cpu_caps).skipped[0].reason
