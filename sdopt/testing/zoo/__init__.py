"""The pipeline zoo: tiny offline builds of many diffusers pipeline classes beyond the five families.

Each entry builds one pipeline class with random weights (no download) and knows the keyword
arguments of a quick deterministic call (2 steps, the smallest sizes the model accepts, inputs
such as init images, masks, control images or image embeddings generated in memory) and where the
result lives in the output (``images``, ``frames`` or ``audios``). Tests use it to check that every
tier runs on every pipeline, keeps the output's type and shape, and undoes exactly.

Examples:
    >>> from sdopt.testing import zoo_pipeline, zoo_call_kwargs, zoo_names
    >>> "StableDiffusionControlNetPipeline" in zoo_names()
    True
    >>> pipe = zoo_pipeline("StableDiffusionImg2ImgPipeline")
    >>> pipe(**zoo_call_kwargs("StableDiffusionImg2ImgPipeline")).images.shape
    (1, 64, 64, 3)
"""

from __future__ import annotations

from typing import Any

import torch

from sdopt.testing.zoo import dit, unet, video  # noqa: F401  # each module registers its entries
from sdopt.testing.zoo._registry import ZOO, ZooEntry

__all__ = ["ZooEntry", "run_zoo_pipeline", "zoo_call_kwargs", "zoo_entry", "zoo_names", "zoo_pipeline"]


def zoo_names() -> list[str]:
    """The pipeline classes the zoo can build, sorted."""
    return sorted(ZOO)


def zoo_entry(name: str) -> ZooEntry:
    """The zoo's entry for pipeline class ``name``; the error lists the ones it has."""
    try:
        return ZOO[name]
    except KeyError:
        raise ValueError(f"the zoo has no {name!r}; it builds: {', '.join(zoo_names())}") from None


def zoo_pipeline(name: str, *, seed: int = 0) -> Any:
    """Build a tiny random-weight ``name`` pipeline offline, in eval mode, on the CPU.

    Examples:
        >>> from sdopt.testing import zoo_pipeline
        >>> type(zoo_pipeline("WanPipeline")).__name__
        'WanPipeline'
    """
    entry = zoo_entry(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipe = entry.build()
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()  # constructors leave modules in train mode; dropout would make outputs random
    pipe.set_progress_bar_config(disable=True)
    return pipe


def zoo_call_kwargs(name: str, *, seed: int = 0) -> dict[str, Any]:
    """Fresh keyword arguments (with a fresh seeded generator) for a quick call of `zoo_pipeline`."""
    return zoo_entry(name).call_kwargs(seed)


def run_zoo_pipeline(pipe: Any, name: str, **overrides: Any) -> Any:
    """Call a zoo pipeline with its kwargs (plus ``overrides``) and return its result (images, frames or audio)."""
    kwargs = {**zoo_call_kwargs(name), **overrides}
    with torch.inference_mode():
        output = pipe(**kwargs)
    return getattr(output, zoo_entry(name).output)
