"""Every registered optimization, alone, on every family: applied with a real change, or skipped with a reason."""

from __future__ import annotations

import pytest

from sdopt import optimize, registry
from sdopt.testing import fake_capabilities, tiny_pipeline
from tests.helpers import Snapshot

NAMES = registry.names()


@pytest.mark.parametrize("profile", ["cpu-amx", "t4-16gb"])
@pytest.mark.parametrize("name", NAMES)
def test_alone_it_applies_for_real_or_says_why_not(family: str, name: str, profile: str) -> None:
    pipe = tiny_pipeline(family)
    snapshot = Snapshot(pipe, family)
    report = optimize(pipe, tier=None, extra=[name], caps=fake_capabilities(profile))
    assert report.failed == [], report.failed
    decisions = report.applied + report.skipped
    assert [d.name for d in decisions] == [name]
    if report.applied:
        snapshot.assert_state_changed()
        report.undo()
    else:
        assert report.skipped[0].reason
    snapshot.assert_identical()
