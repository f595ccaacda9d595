"""The zoo's entries and the inputs they share (text prompts, init images, masks, videos)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

Kwargs = Callable[[int], dict[str, Any]]


@dataclass(frozen=True)
class ZooEntry:
    """One buildable pipeline class: its builder, its quick call and where its result is.

    ``family`` is what `sdopt.anatomy.inspect_pipeline` should call it.
    """

    name: str
    build: Callable[[], Any]
    call_kwargs: Kwargs
    output: str = "images"
    family: str = "other"


ZOO: dict[str, ZooEntry] = {}


def register(name: str, call_kwargs: Kwargs, *, output: str = "images", family: str = "other") -> Callable:
    """Decorator: ``@register("FooPipeline", kwargs)`` on a function building a ``FooPipeline``."""

    def decorate(build: Callable[[], Any]) -> Callable[[], Any]:
        if name in ZOO:
            raise ValueError(f"the zoo already has {name}")
        ZOO[name] = ZooEntry(name, build, call_kwargs, output, family)
        return build

    return decorate


def text_call(seed: int, *, steps: int = 2, size: int | None = 64, **extra: Any) -> dict[str, Any]:
    """A prompt, a step count, a seeded generator, numpy output and (if ``size``) height and width."""
    kwargs: dict[str, Any] = {
        "prompt": "a tiny red fox",
        "num_inference_steps": steps,
        "generator": torch.Generator("cpu").manual_seed(seed),
        "output_type": "np",
    }
    if size is not None:
        kwargs["height"] = kwargs["width"] = size
    kwargs.update(extra)
    return kwargs


def image(size: int = 64, *, seed: int = 0) -> Any:
    """A deterministic RGB PIL image of ``size`` x ``size`` pixels."""
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def mask(size: int = 64) -> Any:
    """A PIL mask whose right half is to be repainted."""
    from PIL import Image

    pixels = np.zeros((size, size), dtype=np.uint8)
    pixels[:, size // 2 :] = 255
    return Image.fromarray(pixels)


def video(frames: int, size: int) -> list[Any]:
    """A short video as a list of PIL frames."""
    return [image(size, seed=index) for index in range(frames)]
