"""The examples run as documented."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_quickstart_example_runs_and_undo_is_exact(monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["quickstart.py"])
    runpy.run_path(str(EXAMPLES / "quickstart.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "applied" in out and "identical after undo: True" in out


def test_pin_preset_example_freezes_then_replays_exactly(tmp_path, monkeypatch, capsys) -> None:
    path = tmp_path / "pinned.toml"
    monkeypatch.setattr(sys, "argv", ["pin_preset.py", str(path)])
    runpy.run_path(str(EXAMPLES / "pin_preset.py"), run_name="__main__")
    first = capsys.readouterr().out
    assert "froze balanced@2" in first and "replayed my-app@1 exactly" in first
    runpy.run_path(str(EXAMPLES / "pin_preset.py"), run_name="__main__")
    second = capsys.readouterr().out
    assert "froze" not in second and "replayed my-app@1 exactly" in second
