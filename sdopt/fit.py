"""Whether each tier's plan fits each GPU, for the real-size architectures: the table of docs/fit.md.

Every architecture is built on the ``meta`` device (its structure, no weights allocated) and planned
for each named machine of `sdopt.testing.fake_capabilities`; the planned peak is the weights in
their planned storage dtype plus one call's activations at the default size (`sdopt.footprint`).

Examples:
    >>> from sdopt.fit import fit_rows
    >>> row = fit_rows(["sd15"], ["t4-16gb"], ["balanced"])[0]
    >>> row.fits, row.regime
    (True, 'none')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

ARCHES: tuple[str, ...] = ("sd15", "sdxl", "sd3", "flux", "pixart")
GPU_PROFILES: tuple[str, ...] = (
    "gtx1060-6gb",
    "rtx3060ti-8gb",
    "t4-16gb",
    "rtx4090-24gb",
    "a100-80gb",
    "h100-80gb",
    "apple-m2-16gb",
)
TIERS: tuple[str, ...] = ("conservative", "balanced", "fast", "ultra", "low-memory")


@dataclass(frozen=True)
class FitRow:
    """One architecture planned with one tier on one machine."""

    arch: str
    profile: str
    tier: str
    weights_gb: float
    activations_gb: float
    available_gb: float
    regime: str
    offload: str
    fits: bool
    note: str


def fit_rows(
    arches: Sequence[str] = ARCHES, profiles: Sequence[str] = GPU_PROFILES, tiers: Sequence[str] = TIERS
) -> list[FitRow]:
    """Plan every architecture x profile x tier (pure: nothing is allocated or changed)."""
    from sdopt.api import plan
    from sdopt.simulation.architectures import real_pipeline
    from sdopt.simulation.machines import fake_capabilities

    rows = []
    for arch in arches:
        pipe = real_pipeline(arch, device="meta")
        for profile in profiles:
            caps = fake_capabilities(profile, packages={"triton": True})
            for tier in tiers:
                result = plan(pipe, tier=tier, caps=caps)
                footprint = result.footprint
                assert footprint is not None
                offload = next((step.name for step in result.steps if step.name.endswith("_offload")), "-")
                note = next((note for note in result.notes if "does not fit" in note), "")
                rows.append(
                    FitRow(
                        arch,
                        profile,
                        tier,
                        footprint.total_gb,
                        footprint.activations_gb,
                        footprint.available_gb,
                        footprint.regime,
                        offload,
                        result.fits,
                        note.split("; ")[-1] if note else "",
                    )
                )
    return rows


def fit_markdown(rows: Sequence[FitRow] | None = None) -> str:
    """The table of docs/fit.md: one section per architecture, a row per machine and tier."""
    rows = list(rows) if rows is not None else fit_rows()
    sections = []
    for arch in dict.fromkeys(row.arch for row in rows):
        lines = [
            f"### `{arch}`",
            "",
            "| machine | tier | weights (GB) | activations (GB) | usable (GB) | needs | planned offload | fits |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in (r for r in rows if r.arch == arch):
            needs = "nothing" if row.regime == "none" else f"{row.regime} offload"
            fits = "yes" if row.fits else f"no: {row.note}" if row.note else "no"
            lines.append(
                f"| {row.profile} | {row.tier} | {row.weights_gb:.1f} | {row.activations_gb:.1f} | "
                f"{row.available_gb:.1f} | {needs} | {row.offload} | {fits} |"
            )
        sections.append("\n".join(lines))
    return "\n\n".join(sections) + "\n"
