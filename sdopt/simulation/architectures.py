"""Real-size architectures with random weights, built offline, for benchmarks and planning.

The configurations are those of the published models (Stable Diffusion 1.5, SDXL base, SD3
medium, FLUX.1-dev, PixArt-alpha), text encoders included; tokenizers are the small in-memory
ones of `sdopt.testing` (token ids stay within the encoders' vocabularies). With random
weights images are noise, but every layer runs at its real size, so timings and memory are real.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdopt.simulation.trained import TRAINED_ARCHES

if TYPE_CHECKING:  # torch is imported when a pipeline is built, not when the CLI starts
    import torch

REAL_ARCHES: tuple[str, ...] = ("sd15", "sdxl", "sd3", "flux", "pixart")
"""Names accepted by `real_pipeline`."""

TINY_ARCHES: dict[str, str] = {
    "tiny-sd": "sd",
    "tiny-sdxl": "sdxl",
    "tiny-sd3": "sd3",
    "tiny-flux": "flux",
    "tiny-pixart": "pixart",
}
"""The test-size architectures (``--arch tiny-sd``), by the `sdopt.testing.tiny_pipeline` family they build."""


def _clip_tokenizer() -> Any:
    from sdopt.simulation.tokenizers import tiny_clip_tokenizer as make

    return make()


def _t5_tokenizer(model_max_length: int) -> Any:
    from sdopt.simulation.tokenizers import tiny_t5_tokenizer as make

    return make(model_max_length)


def _clip(hidden: int, layers: int, heads: int, intermediate: int, *, projection: int | None = None) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        hidden_act="quick_gelu" if hidden == 768 else "gelu",
        projection_dim=projection or hidden,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _clip_l(projection: bool = False) -> Any:
    return _clip(768, 12, 12, 3072, projection=768 if projection else None)


def _clip_g() -> Any:
    return _clip(1280, 32, 20, 5120, projection=1280)


def _t5_xxl() -> Any:
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=32128,
        d_model=4096,
        d_ff=10240,
        d_kv=64,
        num_heads=64,
        num_layers=24,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
    )
    return T5EncoderModel(config)


def _vae(latent_channels: int = 4, **extra: Any) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=latent_channels,
        **extra,
    )


def _sd15() -> Any:
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    return StableDiffusionPipeline(
        unet=UNet2DConditionModel(sample_size=64, cross_attention_dim=768),  # the defaults are SD1.x's
        vae=_vae(sample_size=512),
        text_encoder=_clip_l(),
        tokenizer=_clip_tokenizer(),
        scheduler=_on_host(
            lambda: PNDMScheduler(
                beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1
            )
        ),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )


def _sdxl() -> Any:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=128,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )
    return StableDiffusionXLPipeline(
        unet=unet,
        vae=_vae(sample_size=1024, scaling_factor=0.13025, force_upcast=True),
        text_encoder=_clip_l(),
        text_encoder_2=_clip_g(),
        tokenizer=_clip_tokenizer(),
        tokenizer_2=_clip_tokenizer(),
        scheduler=_on_host(
            lambda: EulerDiscreteScheduler(
                beta_start=0.00085,
                beta_end=0.012,
                beta_schedule="scaled_linear",
                steps_offset=1,
                timestep_spacing="leading",
            )
        ),
        image_encoder=None,
        feature_extractor=None,
    )


def _flow_vae() -> Any:
    return _vae(16, shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False)


def _sd3() -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    transformer = SD3Transformer2DModel(
        sample_size=128,
        patch_size=2,
        in_channels=16,
        num_layers=24,
        attention_head_dim=64,
        num_attention_heads=24,
        joint_attention_dim=4096,
        caption_projection_dim=1536,
        pooled_projection_dim=2048,
        out_channels=16,
        pos_embed_max_size=192,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        vae=_flow_vae(),
        text_encoder=_clip_l(projection=True),
        text_encoder_2=_clip_g(),
        text_encoder_3=_t5_xxl(),
        tokenizer=_clip_tokenizer(),
        tokenizer_2=_clip_tokenizer(),
        tokenizer_3=_t5_tokenizer(256),
        scheduler=_on_host(lambda: FlowMatchEulerDiscreteScheduler(shift=3.0)),
    )


def _flux() -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=19,
        num_single_layers=38,
        attention_head_dim=128,
        num_attention_heads=24,
        joint_attention_dim=4096,
        pooled_projection_dim=768,
        guidance_embeds=True,
        axes_dims_rope=(16, 56, 56),
    )
    return FluxPipeline(
        transformer=transformer,
        vae=_vae(16, shift_factor=0.1159, scaling_factor=0.3611, use_quant_conv=False, use_post_quant_conv=False),
        text_encoder=_clip_l(),
        text_encoder_2=_t5_xxl(),
        tokenizer=_clip_tokenizer(),
        tokenizer_2=_t5_tokenizer(512),
        scheduler=_on_host(lambda: FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)),
    )


def _pixart() -> Any:
    from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel

    transformer = PixArtTransformer2DModel(
        sample_size=128,
        num_layers=28,
        patch_size=2,
        attention_head_dim=72,
        num_attention_heads=16,
        caption_channels=4096,
        in_channels=4,
        cross_attention_dim=1152,
        out_channels=8,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )
    return PixArtAlphaPipeline(
        transformer=transformer,
        vae=_vae(sample_size=1024),
        text_encoder=_t5_xxl(),
        tokenizer=_t5_tokenizer(120),
        scheduler=_on_host(lambda: DPMSolverMultistepScheduler()),
    )


_BUILDERS: dict[str, Callable[[], Any]] = {
    "sd15": _sd15,
    "sdxl": _sdxl,
    "sd3": _sd3,
    "flux": _flux,
    "pixart": _pixart,
}


def stand_in(class_name: str, source: str) -> Any | None:
    """A random-weight model of the published architecture behind a replacement model's ``source``
    (TAESD, TAESDXL, TAESD3, TAEF1, the SDXL fp16-fix VAE), or None for another source. ``--arch``
    benches use them when the real weights are not cached, so a tier is timed with the parts a user
    with a network gets; the model is marked ``_sdopt_stand_in`` and the report says so.

    Examples:
        >>> from sdopt.simulation.architectures import stand_in
        >>> stand_in("AutoencoderTiny", "madebyollin/taesd3").config.latent_channels
        16
    """
    import torch
    from diffusers import AutoencoderTiny

    makers: dict[tuple[str, str], Callable[[], Any]] = {
        ("AutoencoderTiny", "madebyollin/taesd"): lambda: AutoencoderTiny(latent_channels=4),
        ("AutoencoderTiny", "madebyollin/taesdxl"): lambda: AutoencoderTiny(latent_channels=4),
        ("AutoencoderTiny", "madebyollin/taesd3"): lambda: AutoencoderTiny(latent_channels=16),
        ("AutoencoderTiny", "madebyollin/taef1"): lambda: AutoencoderTiny(latent_channels=16),
        # The fp16-fix VAE is SDXL's architecture, fine-tuned so that it does not overflow in float16.
        ("AutoencoderKL", "madebyollin/sdxl-vae-fp16-fix"): lambda: _vae(
            sample_size=1024, scaling_factor=0.13025, force_upcast=False
        ),
    }
    make = makers.get((class_name, source))
    if make is None:
        return None
    torch.manual_seed(0)
    model = make().eval()
    model._sdopt_stand_in = True
    return model


def _on_host(make: Callable[[], Any]) -> Any:
    """Schedulers hold CPU tensors in float32 whatever the models' device and dtype."""
    import torch

    with torch.device("cpu"), _default_dtype(torch.float32):
        return make()


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def real_pipeline(
    arch: str, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None, seed: int = 0
) -> Any:
    """A real-size pipeline of ``arch`` with random weights, built directly on ``device`` in ``dtype``
    (default float32).

    Example (the meta device builds the structure without allocating weights):
        >>> from sdopt.simulation.architectures import real_pipeline
        >>> pipe = real_pipeline("sd15", device="meta")
        >>> round(sum(p.numel() for p in pipe.unet.parameters()) / 1e6)
        860
    """
    import torch

    if arch not in _BUILDERS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of: {', '.join(REAL_ARCHES)}")
    with torch.random.fork_rng(devices=[]), torch.device(device), _default_dtype(dtype or torch.float32):
        torch.manual_seed(seed)
        pipe = _BUILDERS[arch]()
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return pipe


def load_pipeline(source: str, device: str = "cpu") -> Any:
    """The pipeline ``source`` names on ``device``: a tiny test architecture (``tiny-sd``...), a real-size
    one (``sd15``...), both with random weights, a tiny trained one (``trained-sd``, ``trained-dit``: see
    `sdopt.simulation.trained`), or a local path / hub id loaded with ``from_pretrained``.

    Examples:
        >>> from sdopt.simulation.architectures import load_pipeline
        >>> type(load_pipeline("tiny-sd")).__name__
        'StableDiffusionPipeline'
    """
    if source in TINY_ARCHES:
        from sdopt.simulation.families import tiny_pipeline

        pipe = tiny_pipeline(TINY_ARCHES[source])
    elif source in TRAINED_ARCHES:
        from sdopt.simulation.trained import load

        pipe = load(TRAINED_ARCHES[source])
    elif source in REAL_ARCHES:
        if device in ("cpu", "cuda"):
            return real_pipeline(source, device=device)  # built in place, no host copy
        pipe = real_pipeline(source)
    else:
        from diffusers import DiffusionPipeline

        from sdopt._noise import hub_deprecations_silenced

        check_source(source)
        try:
            with hub_deprecations_silenced():
                pipe = DiffusionPipeline.from_pretrained(source)
        except (OSError, ValueError) as error:
            raise OSError(_load_failure(source, error)) from error
    return pipe.to(device) if device != "cpu" else pipe


def _looks_like_a_path(source: str) -> bool:
    return (
        source.startswith((".", "/", "~")) or os.sep in source.strip("/").replace("/", "", 1) or source.count("/") != 1
    )


def check_source(source: str) -> None:
    """A local path that is not a pipeline folder fails here, saying what was looked for."""
    path = Path(source).expanduser()
    if path.exists() and not (path / "model_index.json").is_file():
        raise OSError(f"{source} holds no model_index.json: pass the folder a pipeline was saved to (save_pretrained)")
    if not path.exists() and _looks_like_a_path(source):
        raise OSError(
            f"{source}: no such folder (looked for {path.resolve()}/model_index.json); a hub id has the form "
            "'owner/name'"
        )


def _load_failure(source: str, error: Exception) -> str:
    """Why ``source`` could not be loaded, in one line, with the next step."""
    text = str(error)
    if "cached" not in text and "connect" not in text.lower():  # found, but broken: say what broke
        first = (text.strip().splitlines() or [type(error).__name__])[0]
        return f"could not load {source!r}: {first}"
    return (
        f"could not load {source!r}: no local folder of that name, not in the local Hugging Face cache, and "
        f"not downloadable here; on a machine with network run `hf download {source}` (or from_pretrained "
        "once), or pass the folder that holds its model_index.json"
    )
