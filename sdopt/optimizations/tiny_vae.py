"""Swap the VAE for a tiny distilled autoencoder (TAESD family): much faster decode, small quality cost."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sdopt.anatomy import Anatomy
from sdopt.capabilities import Capabilities
from sdopt.optimization import HUB_ID_IN_PRESETS, Optimization, Undo, register
from sdopt.requirements import Requirements
from sdopt.weights import NotDownloaded, is_stand_in, load_failure, load_pretrained, swap_vae

DEFAULT_SOURCES = {
    "sd1": "madebyollin/taesd",
    "sd2": "madebyollin/taesd",
    "sdxl": "madebyollin/taesdxl",
    "sd3": "madebyollin/taesd3",
    "flux": "madebyollin/taef1",
}


@dataclass(frozen=True)
class TinyVaeConfig:
    """``source``: a hub id or local directory of an ``AutoencoderTiny``; empty picks by family."""

    source: str = field(default="", metadata=HUB_ID_IN_PRESETS)


@register
class TinyVae(Optimization):
    """The VAE decode dominates CPU time at small step counts (11.3 s of a 43 s SD1.5 image in fp32
    here); a TAESD-architecture decoder took 3.1 s vs 20.0 s in the same fp32 probe. Images get
    slightly softer: lossy, so only in ``fast`` and above. Undo puts the original VAE object back.

    Examples:
        >>> import tempfile
        >>> from diffusers import AutoencoderTiny
        >>> from sdopt import optimize
        >>> from sdopt.testing import tiny_pipeline, tiny_autoencoder_tiny
        >>> path = tempfile.mkdtemp()
        >>> tiny_autoencoder_tiny(latent_channels=4).save_pretrained(path)
        >>> pipe = tiny_pipeline("sd")
        >>> report = optimize(pipe, tier=None, extra=[{"name": "tiny_vae", "source": path}])
        >>> type(pipe.vae).__name__
        'AutoencoderTiny'
        >>> report.undo()
        >>> type(pipe.vae).__name__
        'AutoencoderKL'
    """

    name = "tiny_vae"
    kind = "vae"
    summary = "swap the VAE for a tiny distilled one (TAESD family): much faster decode, slightly softer images"
    Config = TinyVaeConfig
    requires = Requirements(needs_vae=True)
    before = ("half_precision", "channels_last", "fuse_qkv", "vae_slicing", "vae_tiling")
    conflicts = ("vae_fp16_fix",)
    lossy = True
    effect = "speed+memory"

    def resolve(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> Any:
        return TinyVaeConfig(source=config.source or DEFAULT_SOURCES.get(anatomy.family, ""))

    def check(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> str | None:
        if type(anatomy.vae).__name__ == "AutoencoderTiny":
            return "already a tiny VAE"
        source = self.resolve(anatomy, caps, config).source
        if not source:
            return (
                f"no tiny VAE is known for the {anatomy.family} family; pass one with "
                "{'name': 'tiny_vae', 'source': REPO_OR_PATH}"
            )
        try:
            tiny = load_pretrained("AutoencoderTiny", source)
        except NotDownloaded:
            return None  # a plan stays offline: optimize downloads it, then checks it (apply)
        except Exception as error:
            return load_failure("the tiny VAE", source, error)
        return _incompatibility(anatomy, tiny)

    def describe(self, config: Any, anatomy: Anatomy) -> str:
        random = " (random weights of its published architecture: not cached here)" if is_stand_in(anatomy.vae) else ""
        return f"VAE replaced by the tiny autoencoder {config.source}{random}"

    def apply(self, pipe: Any, anatomy: Anatomy, caps: Capabilities, config: Any) -> Undo:
        wrong = _incompatibility(anatomy, load_pretrained("AutoencoderTiny", config.source))
        if wrong:  # only reachable when the plan was made before the weights were downloaded
            raise ValueError(wrong)
        return swap_vae(pipe, anatomy.vae_names[0], "AutoencoderTiny", config.source)


def _incompatibility(anatomy: Anatomy, tiny: Any) -> str | None:
    vae = anatomy.vae
    want, have = getattr(vae.config, "latent_channels", None), tiny.config.latent_channels
    if want is not None and want != have:
        return f"the tiny VAE has {have} latent channels, this pipeline's VAE has {want}: it belongs to another family"
    scale = getattr(anatomy.pipeline, "vae_scale_factor", None)
    tiny_scale = 2 ** (len(tiny.config.encoder_block_out_channels) - 1)
    if scale is not None and scale != tiny_scale:
        # The pipeline computed vae_scale_factor once, from the original VAE; a swap must keep it.
        return f"the tiny VAE downscales by {tiny_scale}, the pipeline expects {scale}"
    return None
