"""Which module components a step acts on when the caller may name them (``components`` options)."""

from __future__ import annotations

from collections.abc import Sequence

from sdopt.anatomy import Anatomy


def chosen_components(anatomy: Anatomy, names: Sequence[str]) -> list[str]:
    """``names``, or by default the components that hold a pipeline's weights: the denoiser, text
    encoders, VAEs and ControlNets."""
    return list(names) or [
        name
        for name in anatomy.modules()
        if name == anatomy.denoiser_name
        or name in anatomy.text_encoder_names
        or name in anatomy.vae_names
        or name in anatomy.controlnet_names
    ]


def unknown_components(anatomy: Anatomy, names: Sequence[str]) -> str | None:
    """A skip reason when ``names`` has one that is not a module component of the pipeline."""
    modules = anatomy.modules()
    unknown = [name for name in names if name not in modules]
    if unknown:
        return f"no module component named {', '.join(unknown)} (components: {', '.join(modules)})"
    return None
