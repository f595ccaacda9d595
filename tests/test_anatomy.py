"""The anatomy must understand any pipeline, including variants it has no special knowledge of."""

from __future__ import annotations

import pytest

from sdopt.anatomy import inspect_pipeline
from sdopt.testing import tiny_pipeline
from tests.helpers import ddpm_pipeline

EXPECTED = {
    "sd": ("sd1", "unet", "unet", ("text_encoder",)),
    "sdxl": ("sdxl", "unet", "unet", ("text_encoder", "text_encoder_2")),
    "sd3": ("sd3", "transformer", "transformer", ("text_encoder", "text_encoder_2", "text_encoder_3")),
    "flux": ("flux", "transformer", "transformer", ("text_encoder", "text_encoder_2")),
    "pixart": ("pixart", "transformer", "transformer", ("text_encoder",)),
}


def test_families_and_parts(family: str) -> None:
    anatomy = inspect_pipeline(tiny_pipeline(family))
    fam, denoiser, kind, encoders = EXPECTED[family]
    assert anatomy.family == fam
    assert anatomy.denoiser_name == denoiser
    assert anatomy.denoiser_kind == kind
    assert anatomy.text_encoder_names == encoders
    assert anatomy.vae_names == ("vae",)
    assert anatomy.vae is anatomy.pipeline.vae
    assert anatomy.scheduler is anatomy.pipeline.scheduler
    assert anatomy.to_dict()["family"] == fam


def test_variants_built_from_the_same_components() -> None:
    from diffusers import (
        ControlNetModel,
        StableDiffusionControlNetPipeline,
        StableDiffusionImg2ImgPipeline,
        StableDiffusionInpaintPipeline,
        StableDiffusionXLImg2ImgPipeline,
    )

    sd = tiny_pipeline("sd")
    assert inspect_pipeline(StableDiffusionImg2ImgPipeline(**sd.components)).family == "sd1"
    assert inspect_pipeline(StableDiffusionInpaintPipeline(**sd.components)).family == "sd1"
    controlnet = ControlNetModel.from_unet(sd.unet)
    cn = inspect_pipeline(StableDiffusionControlNetPipeline(**sd.components, controlnet=controlnet))
    assert (cn.family, cn.denoiser_name, cn.controlnet_names) == ("sd1", "unet", ("controlnet",))
    sdxl = tiny_pipeline("sdxl")
    assert inspect_pipeline(StableDiffusionXLImg2ImgPipeline(**sdxl.components)).family == "sdxl"


def test_sd2_is_told_apart_by_its_text_width() -> None:
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    sd = tiny_pipeline("sd")
    config = dict(sd.unet.config)
    config["cross_attention_dim"] = 1024
    unet = UNet2DConditionModel.from_config(config)
    assert inspect_pipeline(StableDiffusionPipeline(**{**sd.components, "unet": unet})).family == "sd2"


def test_unknown_pipeline_gets_family_other_and_still_finds_parts() -> None:
    anatomy = inspect_pipeline(ddpm_pipeline())
    assert anatomy.family == "other"
    assert anatomy.denoiser_name == "unet"
    assert anatomy.vae is None


@pytest.mark.parametrize("thing", [None, "a string", object(), 42])
def test_non_pipelines_are_rejected_with_what_is_expected(thing: object) -> None:
    with pytest.raises(TypeError, match="DiffusionPipeline"):
        inspect_pipeline(thing)


def test_a_bare_model_is_rejected_with_a_hint() -> None:
    with pytest.raises(TypeError, match="wrap it in its pipeline"):
        inspect_pipeline(tiny_pipeline("sd").unet)
