"""Make every attention layer use PyTorch's fused scaled-dot-product attention."""

from __future__ import annotations

from typing import Any

from sdopt.anatomy import Anatomy
from sdopt.capabilities import Capabilities
from sdopt.optimization import Optimization, Undo, register
from sdopt.optimizations._attention import attention_modules, restore_processors, save_processors

# Processors that compute attention by hand (or through xformers), and their SDPA equivalents.
_SDPA_EQUIVALENT = {
    "AttnProcessor": "AttnProcessor2_0",
    "AttnAddedKVProcessor": "AttnAddedKVProcessor2_0",
    "XFormersAttnProcessor": "AttnProcessor2_0",
    "XFormersAttnAddedKVProcessor": "AttnAddedKVProcessor2_0",
}


@register
class Sdpa(Optimization):
    """Replaces manual (baddbmm + softmax) and xformers attention processors with their
    ``torch.nn.functional.scaled_dot_product_attention`` versions. Current diffusers models use
    SDPA by default, so on a freshly loaded pipeline this is usually skipped as "already active";
    it matters after code (or an older checkpoint) set the classic processors.

    Examples:
        >>> from diffusers.models.attention_processor import AttnProcessor
        >>> from sdopt import optimize
        >>> from sdopt.testing import tiny_pipeline
        >>> pipe = tiny_pipeline("sd")
        >>> pipe.unet.set_attn_processor(AttnProcessor())
        >>> report = optimize(pipe, tier=None, extra=["sdpa"])
        >>> {type(m.processor).__name__ for m in pipe.unet.modules() if hasattr(m, "processor")}
        {'AttnProcessor2_0'}
    """

    name = "sdpa"
    kind = "attention"
    summary = "PyTorch scaled-dot-product attention in every attention layer"
    group = "attention"

    def check(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> str | None:
        if not any(_replaceable(model) for model in anatomy.modules().values()):
            return "already active"
        return None

    def describe(self, config: Any, anatomy: Anatomy) -> str:
        return "attention processors switched to scaled_dot_product_attention"

    def apply(self, pipe: Any, anatomy: Anatomy, caps: Capabilities, config: Any) -> Undo:
        from diffusers.models import attention_processor

        # Every model of the pipeline (denoiser, VAE, ControlNets, prior), as diffusers' own
        # pipeline-level attention methods do.
        models = list(anatomy.modules().values())
        saved = [entry for model in models for entry in save_processors(model)]
        try:
            for module in (module for model in models for module in _replaceable(model)):
                replacement = getattr(attention_processor, _SDPA_EQUIVALENT[type(module.processor).__name__])
                module.set_processor(replacement())
        except Exception:
            restore_processors(saved)
            raise
        return lambda: restore_processors(saved)


def _replaceable(model: Any) -> list[Any]:
    return [m for m in attention_modules(model) if type(m.processor).__name__ in _SDPA_EQUIVALENT]
