"""Quality figures on the scene domain: prompt adherence, a domain FID, and pairwise PSNR / SSIM.

- `prompt_accuracy`: the share of images whose shape, colour and position (the classifier's reading)
  match their prompt; background is reported apart (`field_accuracy`).
- `domain_fid`: the Fréchet distance between the classifier's penultimate features of the images and
  of freshly rendered scenes of the same prompts (lower is closer to the real domain).
- `psnr` / `ssim`: pairwise, against the untouched pipeline's images (for steps that keep the
  arithmetic: offload, slicing, tiling); `noise_floor` states what the same pipeline scores against
  itself at another seed, so a tier's loss is read against it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from sdopt.fidelity import psnr as _psnr_uint8
from sdopt.quality import classifier
from sdopt.quality.scenes import FIELDS, Scene, render

PROMPT_FIELDS = ("shape", "color", "position")


def read(images: Any) -> list[dict[str, int]]:
    """The classifier's reading of each image: a class index per field."""
    model = classifier.load()
    with torch.no_grad():
        outputs = model(classifier.as_batch(images))
    picks = {field: outputs[field].argmax(1).tolist() for field in FIELDS}
    return [{field: picks[field][i] for field in FIELDS} for i in range(len(picks[FIELDS[0]]))]


def field_accuracy(images: Any, prompts: Sequence[str]) -> dict[str, float]:
    """Per field, the share of images the classifier reads as their prompt asks."""
    readings = read(images)
    _same_length(readings, prompts)
    wanted = [dict(zip(FIELDS, Scene.parse(p).labels(), strict=True)) for p in prompts]
    return {f: float(np.mean([r[f] == w[f] for r, w in zip(readings, wanted, strict=True)])) for f in FIELDS}


def prompt_accuracy(images: Any, prompts: Sequence[str]) -> float:
    """The share of images whose shape, colour and position all match their prompt.

    Examples:
        >>> from sdopt.quality.metrics import prompt_accuracy
        >>> from sdopt.quality.scenes import Scene, render
        >>> scenes = [Scene("circle", "red", "top left", "white"), Scene("square", "blue", "bottom right", "black")]
        >>> prompt_accuracy([render(s) for s in scenes], [s.caption for s in scenes])
        1.0
    """
    readings = read(images)
    _same_length(readings, prompts)
    scores = []
    for reading, prompt in zip(readings, prompts, strict=True):
        wanted = dict(zip(FIELDS, Scene.parse(prompt).labels(), strict=True))
        scores.append(all(reading[f] == wanted[f] for f in PROMPT_FIELDS))
    return float(np.mean(scores))


def features(images: Any) -> np.ndarray:
    """The classifier's penultimate features, (N, 64)."""
    with torch.no_grad():
        return classifier.load().features(classifier.as_batch(images)).numpy().astype(np.float64)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The Fréchet distance between Gaussians fitted to two feature sets (rows are samples)."""
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # trace(sqrt(A B)) from the eigenvalues of A B (real and >= 0 up to rounding for covariances)
    eigenvalues = np.linalg.eigvals(cov_a @ cov_b)
    cross = float(np.sum(np.sqrt(np.clip(eigenvalues.real, 0, None))))
    return float(np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)


def domain_fid(images: Any, prompts: Sequence[str], *, seed: int = 0) -> float:
    """The Fréchet distance of ``images``' features to freshly rendered scenes of the same ``prompts``
    (jittered renders drawn with ``seed``); near 0 for renders, larger the further from the domain.

    Examples:
        >>> from sdopt.quality.metrics import domain_fid
        >>> from sdopt.quality.scenes import all_scenes, render
        >>> import numpy as np
        >>> scenes = all_scenes()
        >>> rng = np.random.default_rng(5)
        >>> fid = domain_fid([render(s, rng) for s in scenes], [s.caption for s in scenes])
        >>> fid < domain_fid([np.zeros((64, 64, 3), np.uint8)] * len(scenes), [s.caption for s in scenes])
        True
    """
    rng = np.random.default_rng(seed)
    real = [render(Scene.parse(prompt), rng) for prompt in prompts]
    return frechet_distance(features(images), features(real))


def psnr(reference: Any, image: Any) -> float:
    """PSNR in dB of two images (uint8 or float in [0, 1]); ``inf`` when identical."""
    return _psnr_uint8(_uint8(reference), _uint8(image))


def ssim(reference: Any, image: Any) -> float:
    """Structural similarity of two images (mean over channels, 7x7 uniform windows), 1.0 when identical.

    Examples:
        >>> import numpy as np
        >>> from sdopt.quality.metrics import ssim
        >>> image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        >>> ssim(image, image)
        1.0
    """
    a = torch.from_numpy(_uint8(reference).astype(np.float64)).permute(2, 0, 1)[:, None]
    b = torch.from_numpy(_uint8(image).astype(np.float64)).permute(2, 0, 1)[:, None]
    pool = torch.nn.functional.avg_pool2d
    mu_a, mu_b = pool(a, 7, 1), pool(b, 7, 1)
    var_a = pool(a * a, 7, 1) - mu_a**2
    var_b = pool(b * b, 7, 1) - mu_b**2
    cov = pool(a * b, 7, 1) - mu_a * mu_b
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return round(float(index.mean()), 6)


def noise_floor(
    generate: Callable[[Sequence[str], int], Any], prompts: Sequence[str], seeds: tuple[int, int] = (0, 1)
) -> dict[str, float]:
    """What an untouched pipeline scores against itself: ``generate(prompts, seed)`` at two seeds gives
    the pairwise PSNR / SSIM floor (another seed: the most a change of arithmetic can be asked to keep),
    and the spread of accuracy and FID between the two (what a tier's loss must exceed to count)."""
    first, second = generate(prompts, seeds[0]), generate(prompts, seeds[1])
    pairs = list(zip(_images(first), _images(second), strict=True))
    accuracy = (prompt_accuracy(first, prompts), prompt_accuracy(second, prompts))
    fid = (domain_fid(first, prompts), domain_fid(second, prompts))
    return {
        "psnr_db": float(np.mean([psnr(a, b) for a, b in pairs])),
        "ssim": float(np.mean([ssim(a, b) for a, b in pairs])),
        "accuracy_spread": abs(accuracy[0] - accuracy[1]),
        "fid_spread": abs(fid[0] - fid[1]),
    }


def _images(images: Any) -> list[Any]:
    array = images if isinstance(images, (list, tuple)) else list(np.asarray(images))
    return list(array)


def _uint8(image: Any) -> np.ndarray:
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = (np.clip(array.astype(np.float32), 0, 1) * 255).round().astype(np.uint8)
    return array


def _same_length(readings: Sequence[Any], prompts: Sequence[str]) -> None:
    if len(readings) != len(prompts):
        raise ValueError(f"{len(readings)} images but {len(prompts)} prompts: one prompt per image")
