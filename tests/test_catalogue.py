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


def test_the_registry_first_used_from_two_threads_is_whole_in_both() -> None:
    import json
    import subprocess
    import sys

    code = """
import json, threading
from sdopt import registry
barrier = threading.Barrier(4)
seen = []
def first_use():
    barrier.wait()
    seen.append(len(registry.names()))
threads = [threading.Thread(target=first_use) for _ in range(4)]
for thread in threads: thread.start()
for thread in threads: thread.join()
print(json.dumps(seen))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(counts) == 4 and len(set(counts)) == 1 and counts[0] >= 25
