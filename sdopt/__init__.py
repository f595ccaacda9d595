"""sdopt: make any diffusers pipeline as fast and lean as the machine allows, and say what was done.

Examples:
    >>> from sdopt import optimize
    >>> from sdopt.testing import tiny_pipeline
    >>> pipe = tiny_pipeline("sd")
    >>> report = optimize(pipe, tier="balanced")
    >>> report.undo()
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sdopt.api import optimize, plan
    from sdopt.capabilities import Capabilities, detect
    from sdopt.loading import load
    from sdopt.planning import Plan
    from sdopt.presets import Preset
    from sdopt.registry import list_optimizations
    from sdopt.report import Decision, Report
    from sdopt.tiers import list_tiers
    from sdopt.tuning import tune

from sdopt._version import __version__

# Names are imported on first use, so `import sdopt` (and `sdopt doctor`) does not pay for torch.
_EXPORTS = {
    "optimize": "sdopt.api",
    "plan": "sdopt.api",
    "Capabilities": "sdopt.capabilities",
    "detect": "sdopt.capabilities",
    "load": "sdopt.loading",
    "Plan": "sdopt.planning",
    "Preset": "sdopt.presets",
    "list_optimizations": "sdopt.registry",
    "Decision": "sdopt.report",
    "Report": "sdopt.report",
    "list_tiers": "sdopt.tiers",
    "tune": "sdopt.tuning",
}

__all__ = [
    "__version__",
    "Capabilities",
    "Decision",
    "Plan",
    "Preset",
    "Report",
    "detect",
    "list_optimizations",
    "list_tiers",
    "load",
    "optimize",
    "plan",
    "tune",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sdopt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
