"""sdopt: make any diffusers pipeline as fast and lean as the machine allows, and say what was done.

Example:
    >>> from sdopt import optimize
    >>> from sdopt.testing import tiny_pipeline
    >>> pipe = tiny_pipeline("sd")
    >>> report = optimize(pipe, tier="balanced")
    >>> report.undo()
"""

from sdopt.api import optimize, plan
from sdopt.capabilities import Capabilities, detect
from sdopt.planning import Plan
from sdopt.presets import Preset
from sdopt.registry import list_optimizations
from sdopt.report import Decision, Report
from sdopt.tiers import list_tiers

__version__ = "0.1.0"

__all__ = [
    "Capabilities",
    "Decision",
    "Plan",
    "Preset",
    "Report",
    "detect",
    "list_optimizations",
    "list_tiers",
    "optimize",
    "plan",
]
