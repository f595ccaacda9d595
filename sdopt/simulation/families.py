"""The five text-to-image families sdopt is verified on, as tiny offline pipelines."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from sdopt.simulation.parts import TEXT_DIM, clip_pair, clip_text_encoder, kl_vae, t5_text_encoder
from sdopt.simulation.tokenizers import tiny_clip_tokenizer, tiny_t5_tokenizer

FAMILIES: tuple[str, ...] = ("sd", "sdxl", "sd3", "flux", "pixart")
"""Names accepted by `tiny_pipeline` and `call_kwargs`."""


def sd_unet(**overrides: Any) -> Any:
    """The tiny SD1.x UNet (``overrides`` change its config, e.g. ``in_channels=9`` for inpainting)."""
    from diffusers import UNet2DConditionModel

    config: dict[str, Any] = {
        "block_out_channels": (8, 16),
        "layers_per_block": 1,
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": TEXT_DIM,
        "attention_head_dim": 4,
        "norm_num_groups": 4,
    }
    return UNet2DConditionModel(**{**config, **overrides})


def sd_components(**unet_overrides: Any) -> dict[str, Any]:
    """UNet, VAE, CLIP text encoder, tokenizer and PNDM scheduler of the tiny SD1.x pipeline."""
    from diffusers import PNDMScheduler

    unet = sd_unet(**unet_overrides)
    tokenizer, text_encoder = clip_pair()
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        steps_offset=1,
    )
    return {
        "unet": unet,
        "vae": kl_vae(4),
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": scheduler,
    }


NO_SAFETY_CHECKER: dict[str, Any] = {
    "safety_checker": None,
    "feature_extractor": None,
    "requires_safety_checker": False,
}


def _build_sd() -> Any:
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(**sd_components(), **NO_SAFETY_CHECKER, image_encoder=None)


def sdxl_unet(**overrides: Any) -> Any:
    """The tiny SDXL UNet: the SD1.x one with SDXL's conditioning (``overrides`` change its config)."""
    sdxl: dict[str, Any] = {
        "attention_head_dim": (2, 4),
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 8,
        "transformer_layers_per_block": (1, 2),
        "projection_class_embeddings_input_dim": 6 * 8 + TEXT_DIM,
        "cross_attention_dim": 2 * TEXT_DIM,
    }
    return sd_unet(**{**sdxl, **overrides})


def sdxl_components(**unet_overrides: Any) -> dict[str, Any]:
    """UNet, VAE, two CLIP text encoders and tokenizers, Euler scheduler of the tiny SDXL pipeline."""
    from diffusers import EulerDiscreteScheduler

    unet = sdxl_unet(**unet_overrides)
    tokenizer, text_encoder = clip_pair()
    tokenizer_2 = tiny_clip_tokenizer()
    text_encoder_2 = clip_text_encoder(len(tokenizer_2), with_projection=True)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        steps_offset=1,
        beta_schedule="scaled_linear",
        timestep_spacing="leading",
    )
    return {
        "unet": unet,
        "vae": kl_vae(4, force_upcast=True),
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "scheduler": scheduler,
    }


def _build_sdxl() -> Any:
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline(**sdxl_components(), image_encoder=None, feature_extractor=None)


def sd3_components() -> dict[str, Any]:
    """Transformer, VAE, CLIP x2 + T5 text encoders and tokenizers, flow-matching scheduler of tiny SD3."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    transformer = SD3Transformer2DModel(
        sample_size=8,
        patch_size=1,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=TEXT_DIM,
        joint_attention_dim=TEXT_DIM,
        pooled_projection_dim=2 * TEXT_DIM,
        out_channels=4,
    )
    tokenizer, tokenizer_2 = tiny_clip_tokenizer(), tiny_clip_tokenizer()
    text_encoder = clip_text_encoder(len(tokenizer), with_projection=True)
    text_encoder_2 = clip_text_encoder(len(tokenizer_2), with_projection=True)
    tokenizer_3 = tiny_t5_tokenizer()
    vae = kl_vae(4, shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False)
    return {
        "transformer": transformer,
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "text_encoder_3": t5_text_encoder(len(tokenizer_3)),
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "tokenizer_3": tokenizer_3,
        "scheduler": FlowMatchEulerDiscreteScheduler(),
    }


def _build_sd3() -> Any:
    from diffusers import StableDiffusion3Pipeline

    return StableDiffusion3Pipeline(**sd3_components())


def flux_transformer(**overrides: Any) -> Any:
    """The tiny Flux transformer (``overrides`` change its config, e.g. ``in_channels`` for Fill/Control)."""
    from diffusers import FluxTransformer2DModel

    config: dict[str, Any] = {
        "patch_size": 1,
        "in_channels": 4,
        "num_layers": 1,
        "num_single_layers": 1,
        "attention_head_dim": 16,
        "num_attention_heads": 2,
        "joint_attention_dim": TEXT_DIM,
        "pooled_projection_dim": TEXT_DIM,
        "axes_dims_rope": (4, 4, 8),
    }
    return FluxTransformer2DModel(**{**config, **overrides})


def flux_components(**transformer_overrides: Any) -> dict[str, Any]:
    """Transformer, VAE (1 latent channel, packed 2x2), CLIP + T5, flow-matching scheduler of tiny Flux."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    transformer = flux_transformer(**transformer_overrides)
    tokenizer, text_encoder = clip_pair()
    tokenizer_2 = tiny_t5_tokenizer()
    # Flux packs 2x2 latent patches: 1 latent channel x 4 = the transformer's 4 input channels.
    vae = kl_vae(1, shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False)
    return {
        "transformer": transformer,
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": t5_text_encoder(len(tokenizer_2)),
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "scheduler": FlowMatchEulerDiscreteScheduler(),
    }


def _build_flux() -> Any:
    from diffusers import FluxPipeline

    return FluxPipeline(**flux_components())


PIXART_TRANSFORMER: dict[str, Any] = {
    "sample_size": 8,
    "num_layers": 2,
    "patch_size": 2,
    "attention_head_dim": 8,
    "num_attention_heads": 3,
    "caption_channels": TEXT_DIM,
    "in_channels": 4,
    "cross_attention_dim": 24,
    "out_channels": 8,
    "attention_bias": True,
    "activation_fn": "gelu-approximate",
    "num_embeds_ada_norm": 1000,
    "norm_type": "ada_norm_single",
    "norm_elementwise_affine": False,
    "norm_eps": 1e-6,
}
"""The tiny PixArt transformer's config (Latte's transformer shares it)."""


def pixart_components() -> dict[str, Any]:
    """Transformer, VAE, T5 text encoder and tokenizer, DDIM scheduler of tiny PixArt."""
    from diffusers import DDIMScheduler, PixArtTransformer2DModel

    transformer = PixArtTransformer2DModel(**PIXART_TRANSFORMER)
    tokenizer = tiny_t5_tokenizer()
    return {
        "transformer": transformer,
        "vae": kl_vae(4),
        "text_encoder": t5_text_encoder(len(tokenizer)),
        "tokenizer": tokenizer,
        "scheduler": DDIMScheduler(),
    }


def _build_pixart() -> Any:
    from diffusers import PixArtAlphaPipeline

    return PixArtAlphaPipeline(**pixart_components())


_BUILDERS: dict[str, Callable[[], Any]] = {
    "sd": _build_sd,
    "sdxl": _build_sdxl,
    "sd3": _build_sd3,
    "flux": _build_flux,
    "pixart": _build_pixart,
}


def _check_family(family: str) -> None:
    if family not in _BUILDERS:
        raise ValueError(f"unknown tiny pipeline family {family!r}; choose one of: {', '.join(FAMILIES)}")


def tiny_pipeline(family: str = "sd", *, seed: int = 0) -> Any:
    """Build a tiny random-weight pipeline of ``family`` offline, in eval mode, on the CPU.

    ``family`` is one of `FAMILIES`. The same ``seed`` gives the same weights.

    Examples:
        >>> from sdopt.testing import tiny_pipeline
        >>> type(tiny_pipeline("flux")).__name__
        'FluxPipeline'
    """
    _check_family(family)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipe = _BUILDERS[family]()
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            # Constructors leave modules in train mode; dropout would make outputs random.
            component.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call_kwargs(family: str = "sd", *, seed: int = 0, steps: int = 2, size: int = 64) -> dict[str, Any]:
    """Keyword arguments for a quick deterministic call of a `tiny_pipeline`.

    Returns a fresh dict (with a fresh seeded ``generator``) on each call, so two calls with
    the same arguments give the same image.

    Examples:
        >>> from sdopt.testing import tiny_pipeline, call_kwargs
        >>> pipe = tiny_pipeline("pixart")
        >>> pipe(**call_kwargs("pixart")).images[0].shape
        (64, 64, 3)
    """
    _check_family(family)
    kwargs: dict[str, Any] = {
        "prompt": "a tiny red fox",
        "num_inference_steps": steps,
        "height": size,
        "width": size,
        "generator": torch.Generator("cpu").manual_seed(seed),
        "output_type": "np",
    }
    if family in ("sd3", "flux", "pixart"):
        kwargs["max_sequence_length"] = 16
    if family == "pixart":
        kwargs["use_resolution_binning"] = False
        kwargs["clean_caption"] = False
    if family == "flux":
        kwargs["guidance_scale"] = 3.5
    return kwargs


def run_pipeline(pipe: Any, family: str, **overrides: Any) -> Any:
    """Call ``pipe`` with `call_kwargs` (plus ``overrides``) and return the image array."""
    kwargs = call_kwargs(family)
    kwargs.update(overrides)
    with torch.inference_mode():
        return pipe(**kwargs).images
