"""Quality per tier on the trained tiny pipelines (``--arch trained-sd`` / ``trained-dit``).

Each row renders a fixed set of domain captions, one image per call as the timed calls do, with the
same seeds on every row; `sdopt.quality` then reads them: prompt accuracy (shape, colour and position
as asked), the domain FID (classifier features against fresh renders of the same captions), and
pairwise PSNR / SSIM against the baseline's images. The baseline also renders the captions at other
seeds: what it scores against itself there is the noise floor a tier's loss is read against.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sdopt.bench.results import BASELINE, TierResult
from sdopt.calls import needed_kwargs
from sdopt.quality import all_scenes, domain_fid, prompt_accuracy, psnr, ssim
from sdopt.quality import noise_floor as metrics_noise_floor
from sdopt.simulation import trained


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
        extra = {**needed_kwargs(pipe), **trained.call_kwargs(pipe)}
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
        scores = [psnr(a, b) for a, b in pairs]
        # Identical images everywhere: inf, as the baseline's own row; a few identical pairs count 99 dB
        # in the mean, so one of them does not make the whole row infinite.
        every = all(np.isinf(scores))
        found.psnr_db = float("inf") if every else round(float(np.mean([min(v, 99.0) for v in scores])), 2)
        found.ssim = round(float(np.mean([ssim(a, b) for a, b in pairs])), 4)
    return found


def noise_floor(calls: QualityCalls, pipe: Any, reference: Sequence[np.ndarray]) -> dict[str, float]:
    """`sdopt.quality.noise_floor` of the baseline, its first seed's images being ``reference`` (already
    rendered): the pairwise PSNR / SSIM of a change that keeps nothing but the prompt (a floor no tier
    needs to beat), and how far accuracy and FID move by seed alone (a tier's loss within that spread
    is not a loss)."""

    def generate(prompts: Sequence[str], seed_offset: int) -> list[np.ndarray]:
        return list(reference) if seed_offset == 0 else calls.render(pipe, seed_offset=seed_offset)

    floor = metrics_noise_floor(generate, calls.prompts, seeds=(0, 10_000))
    return {
        "psnr_db": round(floor["psnr_db"], 2),
        "ssim": round(floor["ssim"], 4),
        "accuracy_spread": round(floor["accuracy_spread"], 4),
        "fid_spread": round(floor["fid_spread"], 3),
    }


def measure(calls: QualityCalls, pipe: Any, reference: Sequence[np.ndarray] | None) -> tuple[Quality, list[np.ndarray]]:
    """Render the quality prompts on ``pipe`` and score them; also returns the images (the baseline's
    become the reference of the others)."""
    images = calls.render(pipe)
    return score(images, calls.prompts, reference), images


class BenchQuality:
    """Quality per bench row, once its timing is done: the baseline first (its images become the
    reference of the others, and its noise floor is measured), then each row against it."""

    def __init__(self, calls: QualityCalls, say: Callable[[str], None]) -> None:
        self.calls, self.say = calls, say
        self.reference: list[np.ndarray] = []
        self.floor: dict[str, float] = {}
        self._pipes: dict[str, tuple[Any, Callable[[], Any]]] = {}

    def watch(self, tier: str, pipe: Any, context: Callable[[], Any] = contextlib.nullcontext) -> None:
        """Judge ``pipe`` as row ``tier`` later, rendering under ``context`` as its timed calls did."""
        self._pipes[tier] = (pipe, context)

    def judge(self, tier: str, result: TierResult) -> None:
        """Fill ``result``'s quality figures (and let go of the row's pipeline)."""
        if tier not in self._pipes:
            return
        pipe, context = self._pipes.pop(tier)
        self.say(f"quality: {len(self.calls.prompts)} images on {tier}")
        with context():
            found, images = measure(self.calls, pipe, self.reference or None)
        result.prompt_accuracy, result.domain_fid = found.prompt_accuracy, found.domain_fid
        result.quality_psnr_db, result.quality_ssim = found.psnr_db, found.ssim
        if tier == BASELINE:
            self.reference[:] = images
            result.quality_psnr_db, result.quality_ssim = float("inf"), 1.0
            self.floor.update(noise_floor(self.calls, pipe, images))

    def notes(self) -> list[str]:
        """What the quality columns mean, and the noise floor when the baseline was judged."""
        notes = [
            f"quality: {len(self.calls.prompts)} domain captions per row, one image per call, the same seeds on "
            "every row; accuracy = shape, colour and position read as asked; domain FID = classifier features vs "
            "fresh renders (lower is closer); quality PSNR / SSIM = mean against the baseline's images"
        ]
        if self.floor:
            floor = self.floor
            notes.append(
                "noise floor (the baseline against itself at other seeds): accuracy moves "
                f"{floor['accuracy_spread']:.3f} and FID {floor['fid_spread']:.2f} by seed alone; "
                f"PSNR {floor['psnr_db']:.1f} dB, SSIM {floor['ssim']:.3f} between seeds"
            )
        return notes

    def summary(self) -> dict[str, Any]:
        """What `BenchResult.quality` holds."""
        return {"prompts": list(self.calls.prompts), "noise_floor": self.floor or None}
