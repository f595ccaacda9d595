"""Quality measured offline on a rendered domain (issue 28): scenes, a shipped classifier, metrics.

Examples:
    >>> from sdopt.quality import Scene, prompt_accuracy, render
    >>> scene = Scene.parse("a yellow triangle at the bottom left on a gray background")
    >>> prompt_accuracy([render(scene)], [scene.caption])
    1.0
"""

from __future__ import annotations

from sdopt.quality.metrics import domain_fid, field_accuracy, noise_floor, prompt_accuracy, psnr, ssim
from sdopt.quality.scenes import Scene, all_scenes, dataset, render

__all__ = [
    "Scene",
    "all_scenes",
    "dataset",
    "domain_fid",
    "field_accuracy",
    "noise_floor",
    "prompt_accuracy",
    "psnr",
    "render",
    "ssim",
]
