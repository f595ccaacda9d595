"""Zoo entries that generate video: Wan (text and video to video), CogVideoX, LTX-Video, Latte, SVD."""

from __future__ import annotations

from typing import Any

import torch

from sdopt.simulation.families import PIXART_TRANSFORMER
from sdopt.simulation.parts import TEXT_DIM, clip_vision_encoder, kl_vae, t5_text_encoder
from sdopt.simulation.tokenizers import tiny_t5_tokenizer
from sdopt.testing.zoo._registry import image, register, text_call, video


def _video_call(seed: int, *, frames: int, size: int, **extra: Any) -> dict[str, Any]:
    return text_call(seed, size=size, num_frames=frames, max_sequence_length=16, **extra)


def _umt5_pair() -> tuple[Any, Any]:
    tokenizer = tiny_t5_tokenizer()
    return tokenizer, t5_text_encoder(len(tokenizer), umt5=True)


def _wan_components() -> dict[str, Any]:
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel

    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=16,
        out_channels=16,
        text_dim=TEXT_DIM,
        freq_dim=32,
        ffn_dim=32,
        num_layers=1,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    tokenizer, text_encoder = _umt5_pair()
    return {
        "transformer": transformer,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=7.0),
    }


@register("WanPipeline", lambda seed: _video_call(seed, frames=5, size=16), output="frames", family="wan")
def _wan() -> Any:
    from diffusers import WanPipeline

    return WanPipeline(**_wan_components())


@register(
    "WanVideoToVideoPipeline",
    lambda seed: {**text_call(seed, size=16, max_sequence_length=16), "video": video(5, 16), "strength": 1.0},
    output="frames",
    family="wan",
)
def _wan_video_to_video() -> Any:
    from diffusers import WanVideoToVideoPipeline

    return WanVideoToVideoPipeline(**_wan_components())


@register("CogVideoXPipeline", lambda seed: _video_call(seed, frames=8, size=16), output="frames", family="cogvideox")
def _cogvideox() -> Any:
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel

    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=4,
        attention_head_dim=8,
        in_channels=4,
        out_channels=4,
        time_embed_dim=2,
        text_embed_dim=TEXT_DIM,
        num_layers=1,
        sample_width=2,
        sample_height=2,
        sample_frames=9,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=16,
    )
    vae = AutoencoderKLCogVideoX(
        in_channels=3,
        out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
    )
    tokenizer = tiny_t5_tokenizer()
    return CogVideoXPipeline(
        transformer=transformer,
        vae=vae,
        text_encoder=t5_text_encoder(len(tokenizer)),
        tokenizer=tokenizer,
        scheduler=CogVideoXDDIMScheduler(),
    )


@register("LTXPipeline", lambda seed: _video_call(seed, frames=9, size=32), output="frames", family="ltx")
def _ltx() -> Any:
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )

    transformer = LTXVideoTransformer3DModel(
        in_channels=8,
        out_channels=8,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=4,
        attention_head_dim=8,
        cross_attention_dim=TEXT_DIM,
        num_layers=1,
        caption_channels=TEXT_DIM,
    )
    vae = AutoencoderKLLTXVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=8,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False),
        decoder_inject_noise=(False, False, False, False, False),
        upsample_residual=(False, False, False, False),
        upsample_factor=(1, 1, 1, 1),
        timestep_conditioning=False,
        patch_size=1,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    )
    tokenizer = tiny_t5_tokenizer()
    return LTXPipeline(
        transformer=transformer,
        vae=vae,
        text_encoder=t5_text_encoder(len(tokenizer)),
        tokenizer=tokenizer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )


@register(
    "LattePipeline",
    lambda seed: {**text_call(seed, size=64, video_length=2, clean_caption=False), "enable_temporal_attentions": True},
    output="frames",
    family="latte",
)
def _latte() -> Any:
    from diffusers import DDIMScheduler, LattePipeline, LatteTransformer3DModel

    transformer = LatteTransformer3DModel(**{**PIXART_TRANSFORMER, "num_layers": 1, "video_length": 2})
    tokenizer = tiny_t5_tokenizer()
    return LattePipeline(
        transformer=transformer,
        vae=kl_vae(4),
        text_encoder=t5_text_encoder(len(tokenizer)),
        tokenizer=tokenizer,
        scheduler=DDIMScheduler(),
    )


def _svd_call(seed: int) -> dict[str, Any]:
    return {
        "image": image(64),
        "height": 64,
        "width": 64,
        "num_frames": 2,
        "num_inference_steps": 2,
        "decode_chunk_size": 2,
        "generator": torch.Generator("cpu").manual_seed(seed),
        "output_type": "np",
    }


@register("StableVideoDiffusionPipeline", _svd_call, output="frames", family="svd")
def _stable_video_diffusion() -> Any:
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPImageProcessor

    unet = UNetSpatioTemporalConditionModel(
        block_out_channels=(32, 64),  # its resnets normalize in 32 groups
        layers_per_block=1,
        sample_size=8,
        in_channels=8,
        out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        cross_attention_dim=TEXT_DIM,
        num_attention_heads=(2, 4),
        projection_class_embeddings_input_dim=3 * 8,
        addition_time_embed_dim=8,
    )
    vae = AutoencoderKLTemporalDecoder(
        block_out_channels=(32, 32, 32, 32),  # its temporal decoder normalizes in 32 groups
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
    )
    vision = clip_vision_encoder(image_size=224, patch_size=32)  # the pipeline resizes its input to 224 px
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        interpolation_type="linear",
        use_karras_sigmas=True,
        timestep_type="continuous",
        prediction_type="v_prediction",
        sigma_max=700.0,
        sigma_min=0.002,
        steps_offset=1,
    )
    return StableVideoDiffusionPipeline(
        vae=vae,
        image_encoder=vision,
        unet=unet,
        scheduler=scheduler,
        feature_extractor=CLIPImageProcessor(crop_size=224, size=224),
    )
