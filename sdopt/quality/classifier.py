"""The scene classifier: reads shape, colour, position and background from a 64x64 image.

Trained here on rendered scenes (``tools/train_quality_models.py``, deterministic, about a minute on
2 CPU cores) and shipped with sdopt (``classifier.safetensors``, ~0.6 MB); its penultimate layer is the
feature space of the domain FID (`sdopt.quality.metrics`). A test checks the shipped weights against
the hash the training script recorded, so they cannot drift silently.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdopt.quality.scenes import BACKGROUNDS, COLORS, POSITIONS, SHAPES

WEIGHTS = Path(__file__).with_name("classifier.safetensors")
RECORD = Path(__file__).with_name("classifier.json")
FEATURES = 64
HEADS = {"shape": len(SHAPES), "color": len(COLORS), "position": len(POSITIONS), "background": len(BACKGROUNDS)}


class SceneClassifier(torch.nn.Module):
    """Three strided convolutions, a 64-feature layer, one head per field."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, stride=2, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(16, 32, 3, stride=2, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(32, 32, 3, stride=2, padding=1),
            torch.nn.ReLU(),
            torch.nn.Flatten(),
            torch.nn.Linear(32 * 8 * 8, FEATURES),
            torch.nn.ReLU(),
        )
        self.heads = torch.nn.ModuleDict({name: torch.nn.Linear(FEATURES, count) for name, count in HEADS.items()})

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The penultimate features of (N, 3, 64, 64) images in [0, 1]."""
        return self.body(images * 2 - 1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = self.features(images)
        return {name: head(hidden) for name, head in self.heads.items()}


def as_batch(images: Any) -> torch.Tensor:
    """Images (uint8 or float arrays HxWx3 / NxHxWx3, PIL images, or a list of them) as a float
    (N, 3, 64, 64) tensor in [0, 1], resized to 64x64 where needed."""
    items = images if isinstance(images, (list, tuple)) else [images]
    arrays = []
    for item in items:
        array = np.asarray(item)
        if array.ndim == 4:
            arrays += [_float(a) for a in array]
        else:
            arrays.append(_float(array))
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    if batch.shape[-2:] != (64, 64):
        batch = torch.nn.functional.interpolate(batch, size=(64, 64), mode="bilinear", antialias=True)
    return batch


def _float(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    return np.clip(array.astype(np.float32), 0.0, 1.0)


@functools.cache
def load() -> SceneClassifier:
    """The shipped classifier, in eval mode (CPU, float32).

    Examples:
        >>> from sdopt.quality.classifier import load
        >>> load().heads["color"].out_features
        4
    """
    from safetensors.torch import load_file

    model = SceneClassifier()
    model.load_state_dict(load_file(WEIGHTS))
    return model.eval()


def weights_sha256(path: Path = WEIGHTS) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def recorded() -> dict[str, Any]:
    """What the training script recorded: the weights' hash, its settings, accuracy and time."""
    return dict(json.loads(RECORD.read_text()))
