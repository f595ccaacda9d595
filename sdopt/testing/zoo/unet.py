"""Zoo entries with UNet denoisers: SD1.x/SDXL variants (img2img, inpaint, ControlNet, T2I-Adapter,
PAG, IP-Adapter), LCM, AnimateDiff, Kandinsky 2.2 and 3, DeepFloyd IF, Stable Cascade's prior,
pixel-space DDPM and audio."""

from __future__ import annotations

from typing import Any

import torch

from sdopt.simulation.families import NO_SAFETY_CHECKER, sd_components, sdxl_components
from sdopt.simulation.parts import TEXT_DIM, clip_text_encoder, clip_vision_encoder, t5_text_encoder
from sdopt.simulation.tokenizers import tiny_clip_tokenizer, tiny_t5_tokenizer
from sdopt.testing.zoo._registry import image, mask, register, text_call

_SD_DOWN = ("DownBlock2D", "CrossAttnDownBlock2D")
_SD_UP = ("CrossAttnUpBlock2D", "UpBlock2D")


def _img2img(seed: int) -> dict[str, Any]:
    return text_call(seed, size=None, image=image(), strength=1.0)


def _inpaint(seed: int) -> dict[str, Any]:
    return text_call(seed, image=image(), mask_image=mask(), strength=1.0)


def _controlnet(**overrides: Any) -> Any:
    from diffusers import ControlNetModel

    config: dict[str, Any] = {
        "block_out_channels": (8, 16),
        "layers_per_block": 1,
        "in_channels": 4,
        "down_block_types": _SD_DOWN,
        "cross_attention_dim": TEXT_DIM,
        "attention_head_dim": 4,
        "norm_num_groups": 4,
        "conditioning_embedding_out_channels": (4, 4, 4, 4),  # 8x down: control images at pixel size
    }
    return ControlNetModel(**{**config, **overrides})


def _sdxl_controlnet_model() -> Any:
    return _controlnet(
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + TEXT_DIM,
        cross_attention_dim=2 * TEXT_DIM,
    )


# --------------------------------------------------------------------------- SD 1.x


@register("StableDiffusionImg2ImgPipeline", _img2img, family="sd1")
def _sd_img2img() -> Any:
    from diffusers import StableDiffusionImg2ImgPipeline

    return StableDiffusionImg2ImgPipeline(**sd_components(), **NO_SAFETY_CHECKER, image_encoder=None)


@register("StableDiffusionInpaintPipeline", _inpaint, family="sd1")
def _sd_inpaint() -> Any:
    from diffusers import StableDiffusionInpaintPipeline

    # Inpainting UNets take latents + mask + masked-image latents: 4 + 1 + 4 channels.
    return StableDiffusionInpaintPipeline(**sd_components(in_channels=9), **NO_SAFETY_CHECKER, image_encoder=None)


@register("StableDiffusionControlNetPipeline", lambda seed: text_call(seed, image=image()), family="sd1")
def _sd_controlnet() -> Any:
    from diffusers import StableDiffusionControlNetPipeline

    return StableDiffusionControlNetPipeline(
        **sd_components(), controlnet=_controlnet(), **NO_SAFETY_CHECKER, image_encoder=None
    )


@register(
    "StableDiffusionControlNetImg2ImgPipeline",
    lambda seed: text_call(seed, size=None, image=image(), control_image=image(seed=1), strength=1.0),
    family="sd1",
)
def _sd_controlnet_img2img() -> Any:
    from diffusers import StableDiffusionControlNetImg2ImgPipeline

    return StableDiffusionControlNetImg2ImgPipeline(
        **sd_components(), controlnet=_controlnet(), **NO_SAFETY_CHECKER, image_encoder=None
    )


@register("StableDiffusionAdapterPipeline", lambda seed: text_call(seed, image=image()), family="sd1")
def _sd_adapter() -> Any:
    from diffusers import StableDiffusionAdapterPipeline, T2IAdapter

    adapter = T2IAdapter(in_channels=3, channels=[8, 16], num_res_blocks=1, downscale_factor=8)
    # The adapter's features join the UNet after each cross-attention down block, before it
    # downsamples: as in SD1.5, the tiny UNet here starts with one and ends with a plain block.
    unet = {"down_block_types": _SD_DOWN[::-1], "up_block_types": _SD_UP[::-1]}
    return StableDiffusionAdapterPipeline(
        **sd_components(**unet),
        adapter=adapter,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


@register("StableDiffusionPAGPipeline", lambda seed: text_call(seed, pag_scale=3.0), family="sd1")
def _sd_pag() -> Any:
    from diffusers import StableDiffusionPAGPipeline

    return StableDiffusionPAGPipeline(
        **sd_components(), **NO_SAFETY_CHECKER, image_encoder=None, pag_applied_layers=["mid"]
    )


def _ip_adapter_call(seed: int) -> dict[str, Any]:
    return text_call(seed, ip_adapter_image=image(32, seed=3))


@register("StableDiffusionPipeline+IPAdapter", _ip_adapter_call, family="sd1")
def _sd_ip_adapter() -> Any:
    """SD1.x with an IP-Adapter loaded through diffusers' own loader (weights saved to a temp dir)."""
    import tempfile

    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor

    vision = clip_vision_encoder(image_size=32, patch_size=8)
    processor = CLIPImageProcessor(crop_size=32, size=32)
    pipe: Any = StableDiffusionPipeline(**sd_components(), **NO_SAFETY_CHECKER, image_encoder=vision)
    pipe.register_modules(feature_extractor=processor)
    # An IP-Adapter state dict in diffusers' layout: an image projection (4 tokens) and, for each
    # cross-attention layer of the UNet, extra key/value projections for the image tokens.
    state: dict[str, torch.Tensor] = {
        "image_proj.proj.weight": torch.randn(4 * TEXT_DIM, TEXT_DIM) * 0.02,
        "image_proj.proj.bias": torch.zeros(4 * TEXT_DIM),
        "image_proj.norm.weight": torch.ones(TEXT_DIM),
        "image_proj.norm.bias": torch.zeros(TEXT_DIM),
    }
    index = 1
    for name, processor_ in pipe.unet.attn_processors.items():
        if name.endswith("attn2.processor"):
            hidden = pipe.unet.get_submodule(name.removesuffix(".processor")).to_k.out_features
            state[f"ip_adapter.{index}.to_k_ip.weight"] = torch.randn(hidden, TEXT_DIM) * 0.02
            state[f"ip_adapter.{index}.to_v_ip.weight"] = torch.randn(hidden, TEXT_DIM) * 0.02
        index += 2 if name.endswith("attn2.processor") else 0
        del processor_
    folder = tempfile.mkdtemp(prefix="sdopt-ip-adapter-")
    flat = {key: value.contiguous() for key, value in state.items()}
    save_file(flat, f"{folder}/ip_adapter.safetensors")
    pipe.load_ip_adapter(folder, subfolder="", weight_name="ip_adapter.safetensors", image_encoder_folder=None)
    return pipe


@register("LatentConsistencyModelPipeline", lambda seed: text_call(seed, guidance_scale=6.0), family="sd1")
def _lcm() -> Any:
    from diffusers import LatentConsistencyModelPipeline, LCMScheduler

    components = sd_components(time_cond_proj_dim=TEXT_DIM)
    components["scheduler"] = LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    return LatentConsistencyModelPipeline(**components, **NO_SAFETY_CHECKER, image_encoder=None)


def _motion_adapter(**extra: Any) -> Any:
    from diffusers import MotionAdapter

    return MotionAdapter(
        block_out_channels=(8, 16),
        motion_layers_per_block=1,
        motion_norm_num_groups=4,
        motion_num_attention_heads=2,
        motion_max_seq_length=8,
        **extra,
    )


def _animatediff_scheduler() -> Any:
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", steps_offset=1)


@register("AnimateDiffPipeline", lambda seed: text_call(seed, num_frames=2), output="frames", family="sd1")
def _animatediff() -> Any:
    from diffusers import AnimateDiffPipeline

    components = {**sd_components(), "scheduler": _animatediff_scheduler()}
    return AnimateDiffPipeline(
        **components, motion_adapter=_motion_adapter(), feature_extractor=None, image_encoder=None
    )


# --------------------------------------------------------------------------- SDXL


@register("StableDiffusionXLImg2ImgPipeline", _img2img, family="sdxl")
def _sdxl_img2img() -> Any:
    from diffusers import StableDiffusionXLImg2ImgPipeline

    return StableDiffusionXLImg2ImgPipeline(**sdxl_components(), image_encoder=None, feature_extractor=None)


@register("StableDiffusionXLInpaintPipeline", _inpaint, family="sdxl")
def _sdxl_inpaint() -> Any:
    from diffusers import StableDiffusionXLInpaintPipeline

    return StableDiffusionXLInpaintPipeline(**sdxl_components(), image_encoder=None, feature_extractor=None)


@register("StableDiffusionXLControlNetPipeline", lambda seed: text_call(seed, image=image()), family="sdxl")
def _sdxl_controlnet() -> Any:
    from diffusers import StableDiffusionXLControlNetPipeline

    return StableDiffusionXLControlNetPipeline(
        **sdxl_components(), controlnet=_sdxl_controlnet_model(), image_encoder=None, feature_extractor=None
    )


@register("StableDiffusionXLPAGPipeline", lambda seed: text_call(seed, pag_scale=3.0), family="sdxl")
def _sdxl_pag() -> Any:
    from diffusers import StableDiffusionXLPAGPipeline

    return StableDiffusionXLPAGPipeline(
        **sdxl_components(), image_encoder=None, feature_extractor=None, pag_applied_layers=["mid"]
    )


@register("AnimateDiffSDXLPipeline", lambda seed: text_call(seed, num_frames=2), output="frames", family="sdxl")
def _animatediff_sdxl() -> Any:
    from diffusers import AnimateDiffSDXLPipeline

    components = {**sdxl_components(), "scheduler": _animatediff_scheduler()}
    adapter = _motion_adapter(use_motion_mid_block=False)
    return AnimateDiffSDXLPipeline(**components, motion_adapter=adapter, image_encoder=None, feature_extractor=None)


# --------------------------------------------------------------------------- other UNet families


def _simple_cross_attention_unet(**overrides: Any) -> Any:
    """A UNet of the unCLIP lineage (Kandinsky 2.2, IF): SimpleCrossAttn blocks, no BasicTransformerBlock."""
    from diffusers import UNet2DConditionModel

    config: dict[str, Any] = {
        "block_out_channels": (8, 16),
        "layers_per_block": 1,
        "sample_size": 8,
        "down_block_types": ("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        "up_block_types": ("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
        "attention_head_dim": 4,
        "norm_num_groups": 4,
        "resnet_time_scale_shift": "scale_shift",
        "cross_attention_dim": 16,
    }
    return UNet2DConditionModel(**{**config, **overrides})


def _kandinsky22_call(seed: int) -> dict[str, Any]:
    generator = torch.Generator("cpu").manual_seed(1000 + seed)
    embeds = torch.randn(1, TEXT_DIM, generator=generator)
    kwargs = text_call(seed, image_embeds=embeds, negative_image_embeds=torch.zeros_like(embeds))
    del kwargs["prompt"]
    return kwargs


def _movq() -> Any:
    from diffusers import VQModel

    return VQModel(
        block_out_channels=(32, 32, 32, 32),  # its spatial norms use 32 groups
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=32,
        num_vq_embeddings=16,
        vq_embed_dim=4,
        norm_type="spatial",
    )


@register("KandinskyV22Pipeline", _kandinsky22_call, family="kandinsky")
def _kandinsky22() -> Any:
    from diffusers import DDPMScheduler, KandinskyV22Pipeline

    unet = _simple_cross_attention_unet(
        in_channels=4,
        out_channels=8,  # learned variance
        addition_embed_type="image",
        encoder_hid_dim=TEXT_DIM,
        encoder_hid_dim_type="image_proj",
        class_embed_type=None,
    )
    scheduler = DDPMScheduler(
        beta_schedule="linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        variance_type="learned_range",
        thresholding=False,
        prediction_type="epsilon",
    )
    return KandinskyV22Pipeline(unet=unet, scheduler=scheduler, movq=_movq())


@register("Kandinsky3Pipeline", lambda seed: text_call(seed, guidance_scale=3.0), family="kandinsky")
def _kandinsky3() -> Any:
    from diffusers import DDPMScheduler, Kandinsky3Pipeline, Kandinsky3UNet

    unet = Kandinsky3UNet(
        in_channels=4,
        time_embedding_dim=8,
        groups=2,
        attention_head_dim=4,
        layers_per_block=2,  # its blocks' channel bookkeeping breaks with one layer per block
        block_out_channels=(16, 32),
        cross_attention_dim=8,
        encoder_hid_dim=TEXT_DIM,
    )
    tokenizer = tiny_t5_tokenizer()
    scheduler = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, steps_offset=1, beta_schedule="squaredcos_cap_v2", thresholding=False
    )
    return Kandinsky3Pipeline(
        unet=unet, scheduler=scheduler, movq=_movq(), text_encoder=t5_text_encoder(len(tokenizer)), tokenizer=tokenizer
    )


@register("IFPipeline", lambda seed: text_call(seed, size=16), family="if")
def _deepfloyd_if() -> Any:
    from diffusers import DDPMScheduler, IFPipeline

    unet = _simple_cross_attention_unet(
        in_channels=3,
        out_channels=6,  # learned variance
        sample_size=16,
        cross_attention_dim=TEXT_DIM,
        encoder_hid_dim=TEXT_DIM,
        addition_embed_type="text",
        addition_embed_type_num_heads=2,
        cross_attention_norm="group_norm",
        act_fn="gelu",
    )
    tokenizer = tiny_t5_tokenizer()
    scheduler = DDPMScheduler(
        beta_schedule="squaredcos_cap_v2",
        thresholding=True,
        dynamic_thresholding_ratio=0.95,
        sample_max_value=1.0,
        prediction_type="epsilon",
        variance_type="learned_range",
    )
    return IFPipeline(
        unet=unet,
        scheduler=scheduler,
        text_encoder=t5_text_encoder(len(tokenizer)),
        tokenizer=tokenizer,
        safety_checker=None,
        feature_extractor=None,
        watermarker=None,
        requires_safety_checker=False,
    )


def _unconditional_call(seed: int) -> dict[str, Any]:
    return {"num_inference_steps": 2, "generator": torch.Generator("cpu").manual_seed(seed), "output_type": "np"}


@register("DDPMPipeline", _unconditional_call, family="other")
def _ddpm() -> Any:
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    )
    return DDPMPipeline(unet=unet, scheduler=DDPMScheduler())


def _dance_call(seed: int) -> dict[str, Any]:
    return {"num_inference_steps": 2, "generator": torch.Generator("cpu").manual_seed(seed)}


@register("DanceDiffusionPipeline", _dance_call, output="audios", family="other")
def _dance_diffusion() -> Any:
    from diffusers import DanceDiffusionPipeline, IPNDMScheduler, UNet1DModel

    unet = UNet1DModel(
        block_out_channels=(32, 32, 64),  # 1-D attention has channels // 32 heads
        extra_in_channels=64,  # the Fourier time embedding joins the input
        sample_size=512,
        sample_rate=16_000,
        in_channels=2,
        out_channels=2,
        flip_sin_to_cos=True,
        use_timestep_embedding=False,
        time_embedding_type="fourier",
        mid_block_type="UNetMidBlock1D",
        down_block_types=("DownBlock1DNoSkip", "DownBlock1D", "AttnDownBlock1D"),
        up_block_types=("AttnUpBlock1D", "UpBlock1D", "UpBlock1DNoSkip"),
    )
    return DanceDiffusionPipeline(unet=unet, scheduler=IPNDMScheduler())


def _cascade_prior_call(seed: int) -> dict[str, Any]:
    return text_call(seed, size=128, output_type="pt")  # the prior's output is image embeddings


@register("StableCascadePriorPipeline", _cascade_prior_call, output="image_embeddings", family="stable_cascade")
def _stable_cascade_prior() -> Any:
    from diffusers import DDPMWuerstchenScheduler, StableCascadePriorPipeline
    from diffusers.models import StableCascadeUNet

    prior = StableCascadeUNet(
        in_channels=16,
        out_channels=16,
        timestep_ratio_embedding_dim=16,
        conditioning_dim=TEXT_DIM,
        block_out_channels=(TEXT_DIM, TEXT_DIM),
        num_attention_heads=(2, 2),
        down_num_layers_per_block=(1, 1),
        up_num_layers_per_block=(1, 1),
        clip_text_in_channels=TEXT_DIM,
        clip_text_pooled_in_channels=TEXT_DIM,
        clip_image_in_channels=TEXT_DIM,
        clip_seq=4,
        dropout=(0.0, 0.0),
        switch_level=(False,),
    )
    tokenizer = tiny_clip_tokenizer()
    return StableCascadePriorPipeline(
        tokenizer=tokenizer,
        text_encoder=clip_text_encoder(len(tokenizer), with_projection=True),
        prior=prior,
        scheduler=DDPMWuerstchenScheduler(),
        resolution_multiple=42.67,
    )
