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


def test_a_plugin_still_declaring_budgeted_is_told_to_use_offload_regime() -> None:
    from sdopt.errors import PlanningError
    from sdopt.optimization import Optimization, register

    class OldStyleOffload(Optimization):
        name = "old_style_offload"
        kind = "memory"
        budgeted = True  # sdopt 0.1's flag, replaced by offload_regime

        def apply(self, pipe, anatomy, caps, config):  # type: ignore[no-untyped-def]
            return lambda: None

    with pytest.raises(PlanningError, match="replaced by `offload_regime`"):
        register(OldStyleOffload)


def test_a_failing_undo_inside_a_nested_stack_is_named_once() -> None:
    from sdopt.errors import RollbackError
    from sdopt.undo import UndoStack

    def broken() -> None:
        raise OSError("spill file gone")

    inner = UndoStack()
    inner.push(broken, "restore weights")
    outer = UndoStack()
    outer.push(inner, "half_precision")
    with pytest.raises(RollbackError) as raised:
        outer()
    assert raised.value.failures == ("half_precision: restore weights: OSError: spill file gone",)
    assert str(raised.value).count("undoing some optimizations raised") == 1
