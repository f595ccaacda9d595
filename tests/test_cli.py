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


def test_tune_writes_a_preset_and_the_record_then_hits_the_cache(tmp_path, capsys, monkeypatch) -> None:
    from sdopt import Preset

    monkeypatch.setenv("SDOPT_CACHE_DIR", str(tmp_path / "cache"))
    output, record = tmp_path / "tuned.toml", tmp_path / "tuned.json"
    argv = ["tune", "--arch", "tiny-sd", "--steps", "2", "--quality", "fast", "-o", str(output), "--json", str(record)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "sdopt tune: fast@3 at 64x64, 2 steps" in out and f"wrote {output}" in out
    preset = Preset.load(output)
    tuning = json.loads(record.read_text())
    assert preset.name == "tuned" and preset.based_on == "auto:fast@3" and preset.fingerprint
    kept = [name for trial in tuning["trials"] if trial["kept"] for name in trial["names"]]
    assert sorted(preset.names()) == sorted(kept)
    assert all(trial["ratio"] is not None for trial in tuning["trials"])
    assert main(argv) == 0
    assert "(from the cache)" in capsys.readouterr().out
    assert main(["tune", "--clear-cache"]) == 0
    assert "removed 1 stored tuning(s)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["tune", "--arch", "tiny-sd"], "needs --arch or --model, and -o/--output"),
        (["tune", "--arch", "tiny-sd", "-o", "x.yaml"], "must end in .toml or .json"),
        (["tune", "--arch", "tiny-sd", "--quality", "auto", "-o", "x.toml"], "measured on the pipeline"),
    ],
)
def test_tune_errors(capsys, argv, message) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_plan_auto_shows_the_quality_tiers_candidates(capsys) -> None:
    assert main(["plan", "--arch", "tiny-sd", "--tier", "auto", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["source"].startswith("balanced@") and any(w.startswith("auto: these are") for w in data["warnings"])
