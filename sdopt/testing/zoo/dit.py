"""Zoo entries with transformer (DiT) denoisers: Flux and SD3 variants, PixArt-Sigma, Chroma, AuraFlow,
Sana, Lumina 2, HunyuanDiT."""

from __future__ import annotations

from typing import Any

from sdopt.simulation.families import flux_components, flux_transformer, pixart_components, sd3_components
from sdopt.simulation.parts import TEXT_DIM, gemma2_text_encoder, kl_vae, t5_text_encoder
from sdopt.simulation.tokenizers import tiny_bert_tokenizer, tiny_gemma_tokenizer, tiny_t5_tokenizer
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
    encoder = t5_text_encoder(len(tokenizer), umt5=True)
    return AuraFlowPipeline(
        transformer=transformer,
        vae=kl_vae(4),
        text_encoder=encoder,
        tokenizer=tokenizer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )


def _gemma_pair() -> tuple[Any, Any]:
    tokenizer = tiny_gemma_tokenizer()
    return tokenizer, gemma2_text_encoder(len(tokenizer))


@register(
    "SanaPipeline",
    lambda seed: _t5_call(seed, use_resolution_binning=False, complex_human_instruction=None, clean_caption=False),
    family="sana",
)
def _sana() -> Any:
    from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaPipeline, SanaTransformer2DModel

    transformer = SanaTransformer2DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=4,
        num_layers=1,
        num_cross_attention_heads=2,
        cross_attention_head_dim=4,
        cross_attention_dim=8,
        caption_channels=TEXT_DIM,
        sample_size=8,
        patch_size=1,
    )
    vae = AutoencoderDC(  # a deep-compression autoencoder with Sana's real 32x downscale
        in_channels=3,
        latent_channels=4,
        attention_head_dim=2,
        encoder_block_types=("ResBlock",) * 6,
        decoder_block_types=("ResBlock",) * 6,
        encoder_block_out_channels=(4,) * 6,
        decoder_block_out_channels=(4,) * 6,
        encoder_qkv_multiscales=((),) * 6,
        decoder_qkv_multiscales=((),) * 6,
        encoder_layers_per_block=(1,) * 6,
        decoder_layers_per_block=(1,) * 6,
        downsample_block_type="conv",
        upsample_block_type="interpolate",
        decoder_norm_types="rms_norm",
        decoder_act_fns="silu",
        scaling_factor=0.41407,
    )
    tokenizer, text_encoder = _gemma_pair()
    return SanaPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
    )


@register("Lumina2Pipeline", lambda seed: _t5_call(seed, system_prompt=""), family="lumina")
def _lumina2() -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, Lumina2Pipeline, Lumina2Transformer2DModel

    transformer = Lumina2Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        hidden_size=16,
        num_layers=2,
        num_refiner_layers=1,
        num_attention_heads=2,
        num_kv_heads=1,
        multiple_of=16,
        axes_dim_rope=(4, 2, 2),
        axes_lens=(64, 64, 64),
        cap_feat_dim=TEXT_DIM,
    )
    tokenizer, text_encoder = _gemma_pair()
    return Lumina2Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=kl_vae(4, shift_factor=0.0609, scaling_factor=1.5035),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
    )


@register(
    "HunyuanDiTPipeline",
    lambda seed: {**text_call(seed), "use_resolution_binning": False, "guidance_scale": 5.0},
    family="hunyuandit",
)
def _hunyuan_dit() -> Any:
    from diffusers import DDPMScheduler, HunyuanDiT2DModel, HunyuanDiTPipeline
    from transformers import BertConfig, BertModel

    transformer = HunyuanDiT2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=3,
        hidden_size=24,
        cross_attention_dim=TEXT_DIM,
        cross_attention_dim_t5=TEXT_DIM,
        pooled_projection_dim=16,
        text_len=77,
        text_len_t5=256,  # the pipeline pads T5 prompts to 256 tokens
        activation_fn="gelu-approximate",
    )
    tokenizer = tiny_bert_tokenizer()
    bert = BertModel(
        BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=TEXT_DIM,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            max_position_embeddings=80,
        ),
        add_pooling_layer=False,
    )
    tokenizer_2 = tiny_t5_tokenizer()
    return HunyuanDiTPipeline(
        vae=kl_vae(4),
        text_encoder=bert,
        tokenizer=tokenizer,
        transformer=transformer,
        scheduler=DDPMScheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        text_encoder_2=t5_text_encoder(len(tokenizer_2)),
        tokenizer_2=tokenizer_2,
    )
