"""Tiny random-weight building blocks shared by the tiny pipelines: text encoders, VAEs."""

from __future__ import annotations

from typing import Any

import torch

from sdopt.simulation.tokenizers import tiny_clip_tokenizer

TEXT_DIM = 32
"""Hidden size of every tiny text encoder."""


def clip_text_encoder(vocab_size: int, *, with_projection: bool) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        hidden_size=TEXT_DIM,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=2,
        projection_dim=TEXT_DIM,
        vocab_size=vocab_size,
        hidden_act="gelu",
    )
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(config)


def t5_text_encoder(vocab_size: int, *, umt5: bool = False) -> Any:
    """A two-layer T5 encoder; ``umt5`` gives the UMT5 variant (Wan, AuraFlow)."""
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    config_class: Any = UMT5Config if umt5 else T5Config
    model_class: Any = UMT5EncoderModel if umt5 else T5EncoderModel
    config = config_class(
        vocab_size=vocab_size,
        d_model=TEXT_DIM,
        d_ff=37,
        d_kv=8,
        num_heads=4,
        num_layers=2,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    return model_class(config)


def clip_vision_encoder(image_size: int, patch_size: int) -> Any:
    """A one-layer CLIP image encoder with projection (IP-Adapter, SVD)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        hidden_size=TEXT_DIM,
        projection_dim=TEXT_DIM,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=37,
        image_size=image_size,
        patch_size=patch_size,
    )
    return CLIPVisionModelWithProjection(config)


def kl_vae(latent_channels: int, **extra: Any) -> Any:
    from diffusers import AutoencoderKL

    # Four resolution levels, so vae_scale_factor is 8 as in the real models.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=64,
        **extra,
    )


def tiny_autoencoder_tiny(latent_channels: int = 4, *, seed: int = 0) -> Any:
    """A random-weight ``AutoencoderTiny`` with the real downscale factor 8, for ``tiny_vae`` tests.

    Examples:
        >>> from sdopt.testing import tiny_autoencoder_tiny
        >>> tiny_autoencoder_tiny(16).config.latent_channels
        16
    """
    from diffusers import AutoencoderTiny

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model: Any = AutoencoderTiny(
            encoder_block_out_channels=(8, 8, 8, 8),
            decoder_block_out_channels=(8, 8, 8, 8),
            num_encoder_blocks=(1, 1, 1, 1),
            num_decoder_blocks=(1, 1, 1, 1),
            latent_channels=latent_channels,
        )
    return model.eval()


def clip_pair() -> tuple[Any, Any]:
    tokenizer = tiny_clip_tokenizer()
    return tokenizer, clip_text_encoder(len(tokenizer), with_projection=False)


def gemma2_text_encoder(vocab_size: int) -> Any:
    """A two-layer Gemma 2 encoder (the text encoder of Sana and Lumina 2)."""
    from transformers import Gemma2Config, Gemma2Model

    config = Gemma2Config(
        vocab_size=vocab_size,
        hidden_size=TEXT_DIM,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        query_pre_attn_scalar=8,
        max_position_embeddings=128,
        sliding_window=64,
    )
    return Gemma2Model(config)
