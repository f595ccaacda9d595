"""What a pipeline is made of: its denoiser, VAE(s), text encoders, scheduler and model family.

Works on any ``DiffusionPipeline`` by looking at its registered components, so variants
(img2img, inpaint, ControlNet, adapters, AnimateDiff) and pipelines sdopt has never heard of are
understood too; the family comes from the denoiser's class and configuration (a ``torch.compile``d
denoiser is looked through). Those of unknown family get ``family == "other"`` and only generic
optimizations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

FAMILIES: tuple[str, ...] = (
    "sd1",
    "sd2",
    "sdxl",
    "sd3",
    "flux",
    "pixart",
    "sana",
    "kandinsky",
    "if",
    "svd",
    "stable_cascade",
    "wan",
    "cogvideox",
    "ltx",
    "latte",
    "hunyuandit",
    "hunyuanvideo",
    "auraflow",
    "lumina",
    "chroma",
    "allegro",
    "mochi",
    "qwenimage",
    "other",
)
"""Model families sdopt tells apart, by the denoiser's class and configuration; "other" for the rest."""

# Component names diffusers pipelines use for the denoising network, most common first.
_DENOISER_NAMES = ("unet", "transformer", "prior", "decoder")
_VAE_NAMES = ("vae", "vqvae", "movq", "audio_vae", "vqgan")

# Denoiser classes that identify a family on their own (UNet2DConditionModel and AnimateDiff's
# UNetMotionModel serve several families and are told apart by their configuration instead).
_DENOISER_CLASSES = {
    "SD3Transformer2DModel": "sd3",
    "FluxTransformer2DModel": "flux",
    "PixArtTransformer2DModel": "pixart",
    "SanaTransformer2DModel": "sana",
    "Kandinsky3UNet": "kandinsky",
    "UNetSpatioTemporalConditionModel": "svd",
    "StableCascadeUNet": "stable_cascade",
    "WanTransformer3DModel": "wan",
    "CogVideoXTransformer3DModel": "cogvideox",
    "LTXVideoTransformer3DModel": "ltx",
    "LatteTransformer3DModel": "latte",
    "HunyuanDiT2DModel": "hunyuandit",
    "HunyuanVideoTransformer3DModel": "hunyuanvideo",
    "AuraFlowTransformer2DModel": "auraflow",
    "LuminaNextDiT2DModel": "lumina",
    "Lumina2Transformer2DModel": "lumina",
    "ChromaTransformer2DModel": "chroma",
    "AllegroTransformer3DModel": "allegro",
    "MochiTransformer3DModel": "mochi",
    "QwenImageTransformer2DModel": "qwenimage",
}
# The block types of the Stable Diffusion UNet lineage (2-D, and with AnimateDiff's motion modules).
_SD_BLOCKS = {
    "DownBlock2D",
    "CrossAttnDownBlock2D",
    "UpBlock2D",
    "CrossAttnUpBlock2D",
    "DownBlockMotion",
    "CrossAttnDownBlockMotion",
    "UpBlockMotion",
    "CrossAttnUpBlockMotion",
}
# Latent channels in, as SD-lineage UNets take them: plain, depth (5), instruct-pix2pix (8), inpainting (9).
_SD_IN_CHANNELS = (4, 5, 8, 9)


# Names of models distilled to sample in 1-8 steps without classifier-free guidance.
_ADVERSARIAL_MARKERS = ("turbo", "lightning", "hyper-sd", "hypersd", "schnell", "lcm")


@dataclass(frozen=True)
class Anatomy:
    """The parts of one pipeline, by component name, plus its family.

    Built by `inspect_pipeline`; optimizations read modules through it
    (``anatomy.denoiser``, ``anatomy.vae``) so they never guess component names.
    """

    pipeline: Any
    pipeline_class: str
    family: str
    denoiser_name: str | None
    denoiser_kind: str  # "unet", "transformer", "other" or "none"
    vae_names: tuple[str, ...]
    text_encoder_names: tuple[str, ...]
    controlnet_names: tuple[str, ...]
    scheduler_name: str | None

    # Diffusers models carry many dynamic attributes; these are typed Any (None when absent).
    @property
    def denoiser(self) -> Any:
        return getattr(self.pipeline, self.denoiser_name) if self.denoiser_name else None

    @property
    def vae(self) -> Any:
        """The main VAE (the first of `vae_names`), if any."""
        return getattr(self.pipeline, self.vae_names[0]) if self.vae_names else None

    @property
    def text_encoders(self) -> dict[str, torch.nn.Module]:
        return {name: getattr(self.pipeline, name) for name in self.text_encoder_names}

    @property
    def scheduler(self) -> Any:
        return getattr(self.pipeline, self.scheduler_name) if self.scheduler_name else None

    @property
    def distillation(self) -> str | None:
        """How the model was distilled to run without classifier-free guidance, if it was:
        "lcm" (a UNet with a guidance embedding, ``time_cond_proj_dim``), "guidance-embedded"
        (a transformer taking the guidance scale as input, e.g. FLUX.1-dev) or "adversarial"
        (SD-Turbo, SDXL-Turbo/Lightning, Hyper-SD, FLUX.1-schnell: recognised by the model's name)."""
        denoiser_config = getattr(self.denoiser, "config", None)
        if getattr(denoiser_config, "time_cond_proj_dim", None) is not None:
            return "lcm"
        if getattr(denoiser_config, "guidance_embeds", False):
            return "guidance-embedded"
        names = [getattr(self.pipeline, "name_or_path", None), getattr(denoiser_config, "_name_or_path", None)]
        text = " ".join(str(name).lower() for name in names if name)
        if any(marker in text for marker in _ADVERSARIAL_MARKERS):
            return "adversarial"
        return None

    def modules(self) -> dict[str, torch.nn.Module]:
        """Every ``torch.nn.Module`` component of the pipeline, by component name."""
        return {
            name: component
            for name, component in self.pipeline.components.items()
            if isinstance(component, torch.nn.Module)
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline_class,
            "family": self.family,
            "denoiser": self.denoiser_name,
            "denoiser_class": type(self.denoiser).__name__ if self.denoiser is not None else None,
            "denoiser_kind": self.denoiser_kind,
            "vaes": list(self.vae_names),
            "text_encoders": list(self.text_encoder_names),
            "controlnets": list(self.controlnet_names),
            "scheduler": type(self.scheduler).__name__ if self.scheduler is not None else None,
            "distillation": self.distillation,
        }


def inspect_pipeline(pipe: Any) -> Anatomy:
    """Find the parts and the family of a diffusers pipeline, without changing it.

    Raises ``TypeError`` for anything that is not a ``DiffusionPipeline``.

    Examples:
        >>> from sdopt.anatomy import inspect_pipeline
        >>> from sdopt.testing import tiny_pipeline
        >>> anatomy = inspect_pipeline(tiny_pipeline("sdxl"))
        >>> anatomy.family, anatomy.denoiser_name, anatomy.text_encoder_names
        ('sdxl', 'unet', ('text_encoder', 'text_encoder_2'))
    """
    from diffusers import DiffusionPipeline

    if not isinstance(pipe, DiffusionPipeline):
        raise TypeError(
            f"sdopt expects a diffusers DiffusionPipeline (for example "
            f"StableDiffusionPipeline.from_pretrained(...)), got {type(pipe).__module__}."
            f"{type(pipe).__qualname__}. To optimize a single model, wrap it in its pipeline."
        )
    components = pipe.components  # type: ignore[attr-defined]  # set by register_modules
    modules = {name: c for name, c in components.items() if isinstance(c, torch.nn.Module)}

    vae_names = tuple(name for name, module in modules.items() if name in _VAE_NAMES or _looks_like_vae(module))
    controlnet_names = tuple(name for name in modules if "controlnet" in name or "adapter" in name)
    text_encoder_names = tuple(name for name in modules if name.startswith("text_encoder"))
    denoiser_name = _find_denoiser(modules, set(vae_names) | set(controlnet_names) | set(text_encoder_names))
    scheduler_name = "scheduler" if components.get("scheduler") is not None else None
    denoiser = modules.get(denoiser_name) if denoiser_name else None
    return Anatomy(
        pipeline=pipe,
        pipeline_class=type(pipe).__name__,
        family=_family(denoiser),
        denoiser_name=denoiser_name,
        denoiser_kind=_denoiser_kind(denoiser),
        vae_names=vae_names,
        text_encoder_names=text_encoder_names,
        controlnet_names=controlnet_names,
        scheduler_name=scheduler_name,
    )


def _looks_like_vae(module: torch.nn.Module) -> bool:
    name = type(module).__name__
    return name.startswith(("Autoencoder", "VQModel", "ConsistencyDecoderVAE"))


def _find_denoiser(modules: dict[str, torch.nn.Module], taken: set[str]) -> str | None:
    for name in _DENOISER_NAMES:
        if name in modules and name not in taken:
            return name
    # Unknown layout: the largest remaining diffusers model is the denoiser.
    candidates = [
        (sum(p.numel() for p in module.parameters()), name)
        for name, module in modules.items()
        if name not in taken and type(module).__module__.startswith("diffusers.")
    ]
    return max(candidates)[1] if candidates else None


def _denoiser_kind(denoiser: torch.nn.Module | None) -> str:
    if denoiser is None:
        return "none"
    name = type(unwrap(denoiser)).__name__
    if "UNet" in name:
        return "unet"
    if "Transformer" in name or "DiT" in name:
        return "transformer"
    return "other"


def unwrap(module: Any) -> Any:
    """The module behind a ``torch.compile`` wrapper (``OptimizedModule``), or ``module`` itself."""
    return getattr(module, "_orig_mod", module) if isinstance(module, torch.nn.Module) else module


def is_compiled(module: torch.nn.Module) -> bool:
    """Whether ``module`` or any of its submodules is compiled: wrapped by ``torch.compile`` or
    compiled in place (``module.compile()``, diffusers' ``compile_repeated_blocks``)."""
    return hasattr(module, "_orig_mod") or any(
        getattr(submodule, "_compiled_call_impl", None) is not None for submodule in module.modules()
    )


def _family(denoiser: torch.nn.Module | None) -> str:
    """The model family, from the denoiser's class and configuration (not the pipeline's name, so
    img2img, inpainting, ControlNet, adapter and user-built variants are recognised alike)."""
    if denoiser is None:
        return "other"
    denoiser = unwrap(denoiser)
    name = type(denoiser).__name__
    if name in _DENOISER_CLASSES:
        return _DENOISER_CLASSES[name]
    if name not in ("UNet2DConditionModel", "UNetMotionModel"):
        return "other"
    config = getattr(denoiser, "config", {})
    addition = config.get("addition_embed_type")
    if addition == "text_time":
        return "sdxl"
    if addition in ("image", "image_hint") or config.get("encoder_hid_dim_type") == "image_proj":
        return "kandinsky"  # Kandinsky 2.2's decoder UNet, conditioned on image embeddings
    if addition == "text":
        return "if"  # DeepFloyd IF: pixel-space UNet conditioned on T5 through an added text embedding
    blocks = {*config.get("down_block_types", ()), *config.get("up_block_types", ())}
    if blocks <= _SD_BLOCKS and config.get("in_channels") in _SD_IN_CHANNELS and config.get("out_channels") == 4:
        return "sd2" if config.get("cross_attention_dim") == 1024 else "sd1"
    return "other"  # e.g. the SD latent upscaler (K-diffusion blocks), AudioLDM (8 channels)
