from __future__ import annotations

import json

import pytest

from sdopt.cli import main


def test_tiers_lists_every_tier(capsys) -> None:
    assert main(["tiers"]) == 0
    out = capsys.readouterr().out
    for tier in ("conservative@1", "balanced@1", "balanced@2 (default)", "fast@3", "ultra@3", "low-memory@3"):
        assert tier in out


def test_plan_on_a_tiny_arch_as_json(capsys) -> None:
    assert main(["plan", "--arch", "tiny-sd", "--tier", "low-memory@1", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["source"] == "low-memory@1"
    assert {s["name"] for s in data["steps"]} == {"attention_slicing", "vae_slicing", "vae_tiling"}


def test_plan_a_saved_model_directory(tmp_path, capsys) -> None:
    from sdopt.testing import tiny_pipeline

    tiny_pipeline("pixart").save_pretrained(tmp_path)
    assert main(["plan", "--model", str(tmp_path), "--tier", "balanced"]) == 0
    assert "PixArtAlphaPipeline (family pixart)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["plan", "--arch", "tiny-sd", "--tier", "warp"], "valid tiers"),
        (["plan", "--arch", "tiny-sd", "--extra", "fuse_qk"], "did you mean 'fuse_qkv'"),
    ],
)
def test_errors_exit_2_with_the_reason(capsys, argv, message) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_doctor_and_optimizations(capsys) -> None:
    assert main(["doctor", "--json"]) == 0
    assert "fingerprint" in json.loads(capsys.readouterr().out)
    assert main(["optimizations"]) == 0
    assert "channels_last" in capsys.readouterr().out


def test_freeze_writes_a_preset_that_replays(tmp_path, capsys) -> None:
    from sdopt import Preset

    output = tmp_path / "pinned.toml"
    assert main(["freeze", "--tier", "fast", "--arch", "tiny-sd", "--device", "cpu", "-o", str(output)]) == 0
    assert f"wrote {output}" in capsys.readouterr().out
    preset = Preset.load(output)
    assert preset.name == "pinned" and preset.based_on == "fast@3" and preset.fingerprint
    assert "scheduler" in preset.names()
    assert main(["freeze", "--arch", "tiny-sd", "-o", str(tmp_path / "p.yaml")]) == 2
    assert "must end in .toml or .json" in capsys.readouterr().err


def test_tiers_markdown(capsys) -> None:
    assert main(["tiers", "--markdown"]) == 0
    assert "### `balanced@2` (the default)" in capsys.readouterr().out
