"""Quality per tier on the trained tiny pipelines (``--arch trained-sd`` / ``trained-dit``).

Each row renders a fixed set of domain captions, one image per call as the timed calls do, with the
same seeds on every row; `sdopt.quality` then reads them: prompt accuracy (shape, colour and position
as asked), the domain FID (classifier features against fresh renders of the same captions), and
pairwise PSNR / SSIM against the baseline's images. The baseline also renders the captions at other
seeds: what it scores against itself there is the noise floor a tier's loss is read against.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sdopt.calls import needed_kwargs
from sdopt.quality import all_scenes, domain_fid, prompt_accuracy, psnr, ssim


def quality_prompts() -> list[str]:
    """48 captions of the scene domain: every shape x colour x position once, the backgrounds in turn.

    Examples:
        >>> from sdopt.bench.quality import quality_prompts
        >>> prompts = quality_prompts()
        >>> len(prompts), prompts[0]
        (48, 'a red circle at the top left on a black background')
    """
    scenes = all_scenes()  # shape x colour x position x background, background fastest
    return [scenes[index * 3 + index % 3].caption for index in range(len(scenes) // 3)]


TIMED_PROMPTS = (
    "a red circle at the top left on a white background",
    "a blue triangle at the bottom right on a black background",
    "a yellow square at the top right on a gray background",
)
"""What the timed calls render on a trained pipeline (the bench's default prompts are outside its domain)."""


@dataclass(frozen=True)
class QualityCalls:
    """How the quality images are rendered: the bench's steps, guidance and size, one prompt per call."""

    prompts: Sequence[str]
    steps: int
    guidance: float
    height: int
    width: int
    seed: int

    def render(self, pipe: Any, seed_offset: int = 0) -> list[np.ndarray]:
        """One image per prompt, prompt ``i`` seeded ``seed + seed_offset + i``."""
        extra = needed_kwargs(pipe)
        images = []
        for index, prompt in enumerate(self.prompts):
            generator = torch.Generator("cpu").manual_seed(self.seed + seed_offset + index)
            with torch.inference_mode():
                output = pipe(
                    prompt=prompt,
                    num_inference_steps=self.steps,
                    guidance_scale=self.guidance,
                    height=self.height,
                    width=self.width,
                    output_type="np",
                    generator=generator,
                    **extra,
                ).images
            images.append(np.asarray(output[0]))
        return images


@dataclass
class Quality:
    """One row's quality figures."""

    prompt_accuracy: float
    domain_fid: float
    psnr_db: float | None = None
    """Mean pairwise PSNR against the baseline's images (None on the baseline)."""
    ssim: float | None = None


def score(images: Sequence[np.ndarray], prompts: Sequence[str], reference: Sequence[np.ndarray] | None) -> Quality:
    """The figures of ``images`` rendered from ``prompts``, pairwise against ``reference`` when given."""
    found = Quality(prompt_accuracy(list(images), prompts), round(domain_fid(list(images), prompts), 3))
    if reference is not None:
        pairs = list(zip(reference, images, strict=True))
        found.psnr_db = round(float(np.mean([min(psnr(a, b), 99.0) for a, b in pairs])), 2)  # identical: 99
        found.ssim = round(float(np.mean([ssim(a, b) for a, b in pairs])), 4)
    return found


def noise_floor(calls: QualityCalls, pipe: Any, reference: Sequence[np.ndarray]) -> dict[str, float]:
    """The baseline against itself at other seeds: the pairwise PSNR / SSIM of a change that keeps
    nothing but the prompt (a floor no tier needs to beat), and how far accuracy and FID move by seed
    alone (a tier's loss within that spread is not a loss)."""
    other = calls.render(pipe, seed_offset=10_000)
    first, second = score(reference, calls.prompts, None), score(other, calls.prompts, reference)
    return {
        "psnr_db": second.psnr_db or 0.0,
        "ssim": second.ssim or 0.0,
        "accuracy_spread": round(abs(first.prompt_accuracy - second.prompt_accuracy), 4),
        "fid_spread": round(abs(first.domain_fid - second.domain_fid), 3),
    }


def measure(calls: QualityCalls, pipe: Any, reference: Sequence[np.ndarray] | None) -> tuple[Quality, list[np.ndarray]]:
    """Render the quality prompts on ``pipe`` and score them; also returns the images (the baseline's
    become the reference of the others)."""
    images = calls.render(pipe)
    return score(images, calls.prompts, reference), images
