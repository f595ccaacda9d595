"""Zoo entries with transformer (DiT) denoisers: Flux and SD3 variants, PixArt-Sigma, Chroma, AuraFlow."""

from __future__ import annotations

from typing import Any

from sdopt.testing.families import flux_components, flux_transformer, pixart_components, sd3_components
from sdopt.testing.parts import TEXT_DIM, kl_vae, t5_text_encoder
from sdopt.testing.tokenizers import tiny_t5_tokenizer
from sdopt.testing.zoo._registry import image, mask, register, text_call


def _t5_call(seed: int, **extra: Any) -> dict[str, Any]:
    return text_call(seed, max_sequence_length=16, **extra)


# --------------------------------------------------------------------------- Flux


@register("FluxImg2ImgPipeline", lambda seed: _t5_call(seed, image=image(), strength=1.0), family="flux")
def _flux_img2img() -> Any:
    from diffusers import FluxImg2ImgPipeline

    return FluxImg2ImgPipeline(**flux_components())


@register(
    "FluxInpaintPipeline", lambda seed: _t5_call(seed, image=image(), mask_image=mask(), strength=1.0), family="flux"
)
def _flux_inpaint() -> Any:
    from diffusers import FluxInpaintPipeline

    return FluxInpaintPipeline(**flux_components())


@register("FluxFillPipeline", lambda seed: _t5_call(seed, image=image(), mask_image=mask()), family="flux")
def _flux_fill() -> Any:
    from diffusers import FluxFillPipeline

    # Packed 2x2: latents (1 channel -> 4) + masked-image latents (4) + the mask as 8x8 pixels per latent (64 -> 256).
    return FluxFillPipeline(**flux_components(in_channels=4 + 4 + 256, out_channels=4))


@register(
    "FluxKontextPipeline",
    lambda seed: _t5_call(seed, image=image(), max_area=64 * 64, _auto_resize=False),
    family="flux",
)
def _flux_kontext() -> Any:
    from diffusers import FluxKontextPipeline

    return FluxKontextPipeline(**flux_components(), image_encoder=None, feature_extractor=None)


@register("FluxControlPipeline", lambda seed: _t5_call(seed, control_image=image()), family="flux")
def _flux_control() -> Any:
    from diffusers import FluxControlPipeline

    # Control latents are concatenated to the packed latents along the channels.
    return FluxControlPipeline(**flux_components(in_channels=8, out_channels=4))


@register("FluxControlNetPipeline", lambda seed: _t5_call(seed, control_image=image()), family="flux")
def _flux_controlnet() -> Any:
    from diffusers import FluxControlNetModel, FluxControlNetPipeline

    reference = flux_transformer()
    controlnet = FluxControlNetModel(
        **{key: reference.config[key] for key in ("patch_size", "in_channels", "attention_head_dim")},
        num_layers=1,
        num_single_layers=1,
        num_attention_heads=reference.config.num_attention_heads,
        joint_attention_dim=TEXT_DIM,
        pooled_projection_dim=TEXT_DIM,
        axes_dims_rope=(4, 4, 8),
    )
    del reference
    return FluxControlNetPipeline(
        **flux_components(), controlnet=controlnet, image_encoder=None, feature_extractor=None
    )


# --------------------------------------------------------------------------- SD3


@register(
    "StableDiffusion3Img2ImgPipeline", lambda seed: _t5_call(seed, size=None, image=image(), strength=1.0), family="sd3"
)
def _sd3_img2img() -> Any:
    from diffusers import StableDiffusion3Img2ImgPipeline

    return StableDiffusion3Img2ImgPipeline(**sd3_components())


@register("StableDiffusion3PAGPipeline", lambda seed: _t5_call(seed, pag_scale=3.0), family="sd3")
def _sd3_pag() -> Any:
    from diffusers import StableDiffusion3PAGPipeline

    return StableDiffusion3PAGPipeline(**sd3_components(), pag_applied_layers=["blocks.0"])


# --------------------------------------------------------------------------- other DiT families


@register(
    "PixArtSigmaPipeline",
    lambda seed: _t5_call(seed, use_resolution_binning=False, clean_caption=False),
    family="pixart",
)
def _pixart_sigma() -> Any:
    from diffusers import PixArtSigmaPipeline

    return PixArtSigmaPipeline(**pixart_components())


def _flux_like_vae() -> Any:
    return kl_vae(1, shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False)


@register("ChromaPipeline", lambda seed: _t5_call(seed, guidance_scale=3.0), family="chroma")
def _chroma() -> Any:
    from diffusers import ChromaPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler

    transformer = ChromaTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TEXT_DIM,
        axes_dims_rope=(4, 4, 8),
        approximator_hidden_dim=32,
        approximator_layers=1,
        approximator_num_channels=16,
    )
    tokenizer = tiny_t5_tokenizer()
    return ChromaPipeline(
        transformer=transformer,
        vae=_flux_like_vae(),
        text_encoder=t5_text_encoder(len(tokenizer)),
        tokenizer=tokenizer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        image_encoder=None,
        feature_extractor=None,
    )


@register("AuraFlowPipeline", lambda seed: _t5_call(seed, guidance_scale=3.0), family="auraflow")
def _auraflow() -> Any:
    from diffusers import AuraFlowPipeline, AuraFlowTransformer2DModel, FlowMatchEulerDiscreteScheduler
    from transformers import UMT5Config, UMT5EncoderModel

    transformer = AuraFlowTransformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        num_mmdit_layers=1,
        num_single_dit_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=TEXT_DIM,
        joint_attention_dim=TEXT_DIM,
        out_channels=4,
        pos_embed_max_size=64,
    )
    tokenizer = tiny_t5_tokenizer()
    encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=TEXT_DIM,
            d_ff=37,
            d_kv=8,
            num_heads=4,
            num_layers=2,
            relative_attention_num_buckets=8,
            dropout_rate=0.0,
            pad_token_id=0,
            eos_token_id=1,
        )
    )
    return AuraFlowPipeline(
        transformer=transformer,
        vae=kl_vae(4),
        text_encoder=encoder,
        tokenizer=tokenizer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )
