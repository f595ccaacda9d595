"""Tiny pipelines with trained weights, shipped with sdopt: quality measurable offline, in seconds.

``trained-sd`` (a `StableDiffusionPipeline`, UNet) and ``trained-dit`` (a `PixArtAlphaPipeline`, DiT)
were trained by ``tools/train_tiny_pipelines.py`` on the scene domain of `sdopt.quality` ("a red
circle at the top left on a white background", 64x64) and share one small VAE. Their text encoders are
random and frozen (seeded); a word-level tokenizer gives each word of the domain one token, and the
denoisers learned to read them, so prompt accuracy and a domain FID say what a user would see. They
load with diffusers' own ``from_pretrained`` from the package folder: nothing is downloaded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).with_name("trained_models")
"""Where the trained weights live: ``vae/``, ``sd/``, ``dit/`` and ``record.json``."""

KINDS: dict[str, str] = {"sd": "StableDiffusionPipeline", "dit": "PixArtAlphaPipeline"}
TRAINED_ARCHES: dict[str, str] = {f"trained-{kind}": kind for kind in KINDS}
"""``--arch`` names of the trained pipelines, and the kind each loads."""

SIZE = 64
"""The size the pipelines were trained at (their default)."""

GUIDANCE = 4.5
"""The guidance scale they read their prompts best at (the training script scores them with it);
`generate`, ``sdopt generate`` and ``sdopt bench`` use it unless told otherwise."""


def guidance_for(source: str, guidance: float | None) -> float | None:
    """``guidance`` as given; when it is None and ``source`` names a trained pipeline, `GUIDANCE`.

    Examples:
        >>> from sdopt.simulation.trained import guidance_for
        >>> guidance_for("trained-sd", None), guidance_for("trained-sd", 7.5), guidance_for("tiny-sd", None)
        (4.5, 7.5, None)
    """
    return GUIDANCE if guidance is None and source in TRAINED_ARCHES else guidance


def load(kind: str, root: Path | None = None) -> Any:
    """The trained pipeline ``kind`` (``"sd"`` or ``"dit"``), float32 on the CPU, in eval mode.

    Examples:
        >>> from sdopt.simulation.trained import load
        >>> pipe = load("sd")
        >>> type(pipe).__name__, pipe.vae_scale_factor
        ('StableDiffusionPipeline', 4)
    """
    if kind not in KINDS:
        raise ValueError(f"unknown trained pipeline {kind!r}; choose one of: {', '.join(KINDS)}")
    folder = root or ROOT
    if not (folder / kind / "model_index.json").is_file():
        raise FileNotFoundError(
            f"{folder / kind} holds no trained pipeline: reinstall sdopt, or run tools/train_tiny_pipelines.py"
        )
    from diffusers import AutoencoderKL, DiffusionPipeline

    from sdopt._noise import hub_deprecations_silenced

    with hub_deprecations_silenced():
        vae = AutoencoderKL.from_pretrained(folder / "vae")
        pipe = DiffusionPipeline.from_pretrained(folder / kind, vae=vae)
    pipe.set_progress_bar_config(disable=True)
    for component in pipe.components.values():
        if hasattr(component, "eval"):
            component.eval()
    return pipe


def call_kwargs(pipe: Any) -> dict[str, Any]:
    """The call settings a trained pipeline needs besides prompt and steps (PixArt: no resolution
    binning, which knows only its published sizes, and 16 text tokens)."""
    if type(pipe).__name__.startswith("PixArt"):
        return {"use_resolution_binning": False, "max_sequence_length": 16, "clean_caption": False}
    return {}


def generate(pipe: Any, prompts: Sequence[str], *, steps: int = 20, guidance: float = GUIDANCE, seed: int = 0) -> Any:
    """Images (N, 64, 64, 3) float in [0, 1] for ``prompts``, one each, from one seeded generator.

    Examples:
        >>> from sdopt.simulation.trained import generate, load
        >>> generate(load("dit"), ["a red circle at the top left on a white background"], steps=4).shape
        (1, 64, 64, 3)
    """
    import torch

    return pipe(
        list(prompts),
        num_inference_steps=steps,
        guidance_scale=guidance,
        height=SIZE,
        width=SIZE,
        output_type="np",
        generator=torch.Generator("cpu").manual_seed(seed),
        **call_kwargs(pipe),
    ).images


def hashes(root: Path, part: str) -> dict[str, str]:
    """SHA-256 of each weights file of ``part`` (``vae``, ``sd``, ``dit``), keyed by its path under ``root``."""
    found = {}
    for path in sorted((root / part).rglob("*.safetensors")):
        found[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found
