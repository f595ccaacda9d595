"""Every tier's plan for every real-size architecture on every GPU profile fits, or says it does not
and names the tier that would; docs/fit.md shows the same table."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdopt.fit import FitRow, fit_markdown, fit_rows


@pytest.fixture(scope="module")
def rows() -> list[FitRow]:
    return fit_rows()


@pytest.mark.slow
def test_every_plan_fits_or_names_the_tier_that_would(rows) -> None:
    assert len(rows) == 5 * 7 * 5
    for row in rows:
        where = f"{row.arch} {row.tier} on {row.profile}"
        assert row.fits or "tier 'low-memory' would fit" in row.note, where
        if row.tier == "low-memory":
            assert row.fits, where


def test_big_models_on_small_gpus_get_the_offload_their_footprint_needs(rows) -> None:
    by_key = {(row.arch, row.profile, row.tier): row for row in rows}
    sdxl_8gb = by_key["sdxl", "rtx3060ti-8gb", "balanced"]
    assert sdxl_8gb.regime == "model" and sdxl_8gb.offload == "model_offload" and sdxl_8gb.fits
    flux_6gb = by_key["flux", "gtx1060-6gb", "low-memory"]
    assert flux_6gb.offload in ("group_offload", "sequential_offload") and flux_6gb.fits
    assert by_key["sd15", "a100-80gb", "balanced"].offload == "-"


def test_docs_fit_page_is_current(rows) -> None:
    docs = (Path(__file__).parent.parent / "docs" / "fit.md").read_text()
    assert fit_markdown(rows) in docs, "docs/fit.md is stale: paste the output of `sdopt tiers --fit`"
