"""How close an optimized pipeline's images are to the untouched pipeline's: the figures bench, tuning
and generate report (pairwise, on uint8 images of the same prompt and seed).

On random weights these measure numerical drift, which random weights amplify chaotically: they say
nothing of quality as a user sees it.

Examples:
    >>> import numpy as np
    >>> from sdopt.fidelity import max_abs_difference, psnr, to_uint8
    >>> a = to_uint8(np.full((2, 2, 3), 0.5)); b = a.copy(); b[0, 0, 0] += 1
    >>> round(psnr(a, b), 1), max_abs_difference(a, b), psnr(a, a)
    (58.9, 1, inf)
"""

from __future__ import annotations

from typing import Any

import numpy as np


def psnr(reference: np.ndarray, image: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 images, in dB (``inf`` when identical)."""
    error = np.mean((reference.astype(np.float64) - image.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(255.0**2 / error))


def max_abs_difference(reference: np.ndarray, image: np.ndarray) -> int:
    """The largest per-pixel difference of two uint8 images (0-255)."""
    return int(np.abs(reference.astype(int) - image.astype(int)).max())


def to_uint8(image: Any) -> np.ndarray:
    """A float image in [0, 1] (``output_type="np"``) as uint8, as the fidelity columns compare them."""
    return (np.clip(np.asarray(image, dtype=np.float32), 0, 1) * 255).round().astype(np.uint8)
