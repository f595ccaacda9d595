"""The quality domain: scenes rendered from captions, with no download.

A scene is one shape (circle, square, triangle) of one colour (red, green, blue, yellow) in one corner
(top left, top right, bottom left, bottom right) on one background (black, white, gray), captioned
"a red circle at the top left on a white background". Prompts therefore decide what a correct image
holds, and a classifier (`sdopt.quality.classifier`) can check it: prompt adherence and a domain FID
measurable offline, in seconds.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SIZE = 64
SHAPES = ("circle", "square", "triangle")
COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 200, 40)}
POSITIONS = {"top left": (16, 16), "top right": (16, 48), "bottom left": (48, 16), "bottom right": (48, 48)}
BACKGROUNDS = {"black": (15, 15, 15), "white": (240, 240, 240), "gray": (128, 128, 128)}
FIELDS = ("shape", "color", "position", "background")

_CAPTION = re.compile(
    r"an? (?P<color>\w+) (?P<shape>\w+) at the (?P<position>(?:top|bottom) (?:left|right))"
    r" on an? (?P<background>\w+) background"
)


@dataclass(frozen=True)
class Scene:
    """What a caption asks for.

    Examples:
        >>> from sdopt.quality.scenes import Scene
        >>> Scene.parse("a red circle at the top left on a white background").caption
        'a red circle at the top left on a white background'
    """

    shape: str
    color: str
    position: str
    background: str

    @property
    def caption(self) -> str:
        return f"a {self.color} {self.shape} at the {self.position} on a {self.background} background"

    @classmethod
    def parse(cls, caption: str) -> Scene:
        """The scene a caption describes; ValueError naming the caption when it is not one of this domain's."""
        found = _CAPTION.fullmatch(caption.strip().lower())
        if found is None:
            raise ValueError(f"not a caption of the scene domain: {caption!r} (e.g. {all_scenes()[0].caption!r})")
        scene = cls(**found.groupdict())
        choices: tuple[Sequence[str], ...] = (SHAPES, list(COLORS), list(POSITIONS), list(BACKGROUNDS))
        for field, allowed in zip(FIELDS, choices, strict=True):
            if getattr(scene, field) not in allowed:
                raise ValueError(f"{caption!r}: unknown {field} {getattr(scene, field)!r}; one of {', '.join(allowed)}")
        return scene

    def labels(self) -> tuple[int, int, int, int]:
        """Class indices of (shape, colour, position, background)."""
        return (
            SHAPES.index(self.shape),
            list(COLORS).index(self.color),
            list(POSITIONS).index(self.position),
            list(BACKGROUNDS).index(self.background),
        )


def all_scenes() -> list[Scene]:
    """Every scene of the domain (144), in a fixed order."""
    return [Scene(*combo) for combo in itertools.product(SHAPES, COLORS, POSITIONS, BACKGROUNDS)]


def render(scene: Scene, rng: np.random.Generator | None = None) -> np.ndarray:
    """``scene`` as a uint8 (64, 64, 3) image; ``rng`` jitters size, place and colours a little (None: exact).

    Examples:
        >>> from sdopt.quality.scenes import Scene, render
        >>> image = render(Scene("circle", "red", "top left", "white"))
        >>> image.shape, image[16, 16].tolist(), image[48, 48].tolist()
        ((64, 64, 3), [220, 40, 40], [240, 240, 240])
    """
    jitter = (lambda low, high: float(rng.uniform(low, high))) if rng is not None else (lambda low, high: 0.0)
    image = np.empty((SIZE, SIZE, 3), dtype=np.float32)
    image[:] = np.array(BACKGROUNDS[scene.background], dtype=np.float32) + jitter(-12, 12)
    center_row, center_col = POSITIONS[scene.position]
    row, col = center_row + jitter(-3, 3), center_col + jitter(-3, 3)
    radius = 10 + jitter(-2, 2)
    ys, xs = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    if scene.shape == "circle":
        inside = (ys - row) ** 2 + (xs - col) ** 2 <= radius**2
    elif scene.shape == "square":
        half = radius * 0.85
        inside = (np.abs(ys - row) <= half) & (np.abs(xs - col) <= half)
    else:  # an upward triangle: apex above the centre, base below it
        top, bottom = row - radius, row + radius * 0.8
        width = (ys - top) / (bottom - top) * radius
        inside = (ys >= top) & (ys <= bottom) & (np.abs(xs - col) <= width)
    color = np.array(COLORS[scene.color], dtype=np.float32) + np.array([jitter(-15, 15) for _ in range(3)])
    image[inside] = color
    return np.clip(image, 0, 255).round().astype(np.uint8)


def dataset(count: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``count`` jittered renders of scenes drawn at random: images (N, 64, 64, 3) uint8, labels (N, 4)
    and captions; the same ``seed`` gives the same data."""
    rng = np.random.default_rng(seed)
    scenes = all_scenes()
    picks = rng.integers(0, len(scenes), size=count)
    images = np.stack([render(scenes[i], rng) for i in picks])
    labels = np.array([scenes[i].labels() for i in picks], dtype=np.int64)
    return images, labels, [scenes[i].caption for i in picks]
