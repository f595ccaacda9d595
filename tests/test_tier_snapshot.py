"""Published tier versions are frozen: this compares each one with its committed snapshot.

A change to a tier is a new version (``balanced@2``), never an edit of a published one. To record a
NEW version: ``python -m tests.test_tier_snapshot --add``; it refuses to rewrite existing ones.
(The ``why`` texts are documentation, not behaviour, and are left out of the comparison.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from sdopt.tiers import list_tiers

SNAPSHOT = Path(__file__).parent / "snapshots" / "tiers.json"


def published() -> dict[str, Any]:
    return {
        row["label"]: {
            "description": row["description"],
            "steps": [{k: v for k, v in step.items() if k != "why"} for step in row["steps"]],
        }
        for row in list_tiers()
    }


def test_published_tier_versions_match_their_snapshot() -> None:
    frozen = json.loads(SNAPSHOT.read_text())
    current = published()
    edited = sorted(label for label in frozen if label in current and current[label] != frozen[label])
    removed = sorted(set(frozen) - set(current))
    unrecorded = sorted(set(current) - set(frozen))
    assert not edited, f"published tier versions were edited: {edited}; add a new version instead"
    assert not removed, f"published tier versions were removed: {removed}"
    assert not unrecorded, f"new tier versions {unrecorded}: record them with python -m tests.test_tier_snapshot --add"


def _add_new_versions() -> None:
    frozen = json.loads(SNAPSHOT.read_text()) if SNAPSHOT.exists() else {}
    current = published()
    edited = [label for label in frozen if label in current and current[label] != frozen[label]]
    if edited:
        sys.exit(f"refusing: published versions {edited} differ from their snapshot; add new versions instead")
    frozen.update({label: data for label, data in current.items() if label not in frozen})
    SNAPSHOT.write_text(json.dumps(frozen, indent=2) + "\n")
    print(f"{SNAPSHOT}: {len(frozen)} tier versions")


if __name__ == "__main__" and sys.argv[1:] == ["--add"]:
    _add_new_versions()
