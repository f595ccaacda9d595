"""The built-in tiers: versioned presets chosen by name (``"balanced"``) or pinned (``"balanced@1"``).

Each tier is data (`sdopt.tier_versions`): an ordered list of entries, each naming an optimization,
its options and the hardware or model condition under which the tier wants it. Whether an optimization
can run at all is its own business (its ``requires`` and ``check``); a tier only says when it is
*worth* it. A published version is never edited: a change is a new version. This module looks them
up, lists them and renders them.
"""

from __future__ import annotations

import difflib
from typing import Any

from sdopt.errors import UnknownTierError
from sdopt.presets import Preset
from sdopt.requirements import Requirements
from sdopt.tier_versions import TIERS as _TIERS

DEFAULT_TIER = "balanced"
AUTO = "auto"
"""Not a list of steps: the steps of a quality tier that measure faster here (see `sdopt.tuning`)."""
LOW_MEMORY = "low-memory"
"""The tier planning measures a plan that does not fit in memory against."""


def is_auto(tier: str | None) -> bool:
    """Whether ``tier`` names the measured tier (``"auto"``, pinned or not)."""
    return isinstance(tier, str) and tier.partition("@")[0] == AUTO


def tier_names() -> list[str]:
    return list(_TIERS)


def resolve_tier(spec: str) -> Preset:
    """The preset for ``"name"`` (latest version) or ``"name@version"``.

    Examples:
        >>> from sdopt.tiers import resolve_tier
        >>> resolve_tier("balanced@1").label
        'balanced@1'
    """
    if not isinstance(spec, str):
        raise TypeError(f"tier must be a string such as 'balanced' or 'balanced@1', got {spec!r}")
    name, _, version_text = spec.partition("@")
    if name == AUTO:
        raise UnknownTierError(
            spec,
            "tier 'auto' is measured on the pipeline, not a list of steps: use optimize(pipe, tier='auto'), "
            "sdopt.tune(pipe) or `sdopt tune`; to see its candidates, plan the quality tier (e.g. 'balanced')",
        )
    if name not in _TIERS:
        close = difflib.get_close_matches(name, [*_TIERS, AUTO], n=2, cutoff=0.5)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        raise UnknownTierError(spec, f"unknown tier {spec!r}; {hint}valid tiers: {', '.join([*_TIERS, AUTO])}")
    versions = _TIERS[name]
    if not version_text:
        return versions[max(versions)]
    if not version_text.isdigit() or int(version_text) not in versions:
        listed = ", ".join(f"{name}@{v}" for v in sorted(versions))
        raise UnknownTierError(spec, f"tier {name!r} has no version {version_text!r}; versions that exist: {listed}")
    return versions[int(version_text)]


def list_tiers() -> list[dict[str, Any]]:
    """One row per published tier version: name, version, latest, description and entries.

    Examples:
        >>> from sdopt import list_tiers
        >>> [row["name"] for row in list_tiers() if row["latest"]]
        ['conservative', 'balanced', 'fast', 'ultra', 'low-memory']
    """
    rows = []
    for name, versions in _TIERS.items():
        latest = max(versions)
        for version, preset in sorted(versions.items()):
            rows.append(
                {
                    "name": name,
                    "version": version,
                    "label": preset.label,
                    "latest": version == latest,
                    "default": name == DEFAULT_TIER and version == latest,
                    "description": preset.description,
                    "steps": [entry.to_dict() for entry in preset.entries],
                }
            )
    return rows


def tiers_markdown() -> str:
    """The latest version of every tier as Markdown tables: optimization, options, condition,
    quality, effect and the rationale. ``docs/tiers.md`` embeds this (a test keeps it current).

    Examples:
        >>> from sdopt.tiers import tiers_markdown
        >>> tiers_markdown().splitlines()[0]
        '### `conservative@2`: output visually identical to the original (numerical drift only)'
    """
    from sdopt import registry

    sections = []
    for row in list_tiers():
        if not row["latest"]:
            continue
        default = " (the default)" if row["default"] else ""
        lines = [
            f"### `{row['label']}`{default}: {row['description']}",
            "",
            "| optimization | options | wanted when | quality | effect | why |",
            "|---|---|---|---|---|---|",
        ]
        for step in row["steps"]:
            optimization = registry.get(step["name"])
            options = ", ".join(f"{k}={v}" for k, v in step.get("config", {}).items()) or "defaults"
            when = Requirements.from_dict(step.get("when", {})).describe().replace("|", " or ")
            config = optimization.make_config(step.get("config", {}))
            quality = "lossy" if optimization.lossy_with(config) else "lossless"
            why = step.get("why", "").replace("|", "/")
            lines.append(f"| `{step['name']}` | {options} | {when} | {quality} | {optimization.effect} | {why} |")
        sections.append("\n".join(lines))
    return "\n\n".join(sections) + "\n"
