from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sdopt.cli import main
from sdopt.tiers import resolve_tier

FAST = resolve_tier("fast").label  # the current versions: these tests follow new ones
BALANCED = resolve_tier("balanced").label


def test_tiers_lists_every_tier(capsys) -> None:
    assert main(["tiers", "--all"]) == 0
    out = capsys.readouterr().out
    for tier in (
        "conservative@2",
        "balanced@1",
        "balanced@4",
        f"{BALANCED} (default)",
        "fast@6",
        "ultra@6",
        "low-memory@3",
    ):
        assert tier in out


def test_tiers_shows_the_current_versions_unless_asked_for_all(capsys) -> None:
    assert main(["tiers"]) == 0
    out = capsys.readouterr().out
    assert f"{BALANCED} (default)" in out and FAST in out
    assert "balanced@1" not in out and "(old)" not in out and "sdopt tiers --all" in out


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
    assert preset.name == "pinned" and preset.based_on == FAST and preset.fingerprint
    assert "scheduler" in preset.names()
    assert main(["freeze", "--arch", "tiny-sd", "-o", str(tmp_path / "p.yaml")]) == 2
    assert "must end in .toml or .json" in capsys.readouterr().err


def test_tiers_markdown(capsys) -> None:
    assert main(["tiers", "--markdown"]) == 0
    assert f"### `{BALANCED}` (the default)" in capsys.readouterr().out


def test_tune_writes_a_preset_and_the_record_then_hits_the_cache(tmp_path, capsys, monkeypatch) -> None:
    from sdopt import Preset

    monkeypatch.setenv("SDOPT_CACHE_DIR", str(tmp_path / "cache"))
    output, record = tmp_path / "tuned.toml", tmp_path / "tuned.json"
    argv = ["tune", "--arch", "tiny-sd", "--steps", "2", "--quality", "fast", "-o", str(output), "--json", str(record)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"sdopt tune: {FAST} at 64x64, 2 steps" in out and f"wrote {output}" in out
    preset = Preset.load(output)
    tuning = json.loads(record.read_text())
    assert preset.name == "tuned" and preset.based_on == f"auto:{FAST}" and preset.fingerprint
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


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["generate", "--arch", "tiny-sd", "--steps", "0"], "0 is not a positive whole number"),
        (["generate", "--arch", "tiny-sd", "--steps", "-3"], "-3 is not a positive whole number"),
        (["generate", "--arch", "tiny-sd", "--threads", "-1"], "-1 is not a positive whole number"),
        (["generate", "--arch", "tiny-sd", "--height", "100"], "not a multiple of 8 (the VAEs halve the image"),
        (["generate", "--arch", "tiny-sd", "--tier", "balancd"], "did you mean 'balanced'?"),
        (["generate", "--arch", "tiny-sd", "-o", "out.gif"], "must end in .png"),
        (["generate", "--model", "./no/such/folder"], "no such folder"),
        (["bench", "--arch", "tiny-sd", "--runs", "0"], "0 is not a positive whole number"),
    ],
)
def test_bad_arguments_are_refused_in_one_line_before_any_heavy_import(argv, message) -> None:
    code = (
        "import sys\nfrom sdopt.cli import main\n"
        f"code = main({argv!r})\n"
        "print(code, 'torch' in sys.modules, 'diffusers' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["2", "False", "False"]  # refused before torch or diffusers is imported
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("sdopt")  # one line, no usage block


def test_ctrl_c_prints_one_line_and_exits_130(monkeypatch, capsys) -> None:
    from sdopt import commands

    def interrupted(args):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "tiers_command", interrupted)
    assert main(["tiers"]) == 130
    assert capsys.readouterr().err == "sdopt: interrupted\n"


def test_version(capsys) -> None:
    from sdopt import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"sdopt {__version__}\n"


def test_real_size_architectures_are_planned_from_their_structure_alone(capsys) -> None:
    assert main(["plan", "--arch", "sdxl", "--tier", "low-memory", "--device", "cuda", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["pipeline"]["pipeline"] == "StableDiffusionXLPipeline"
    assert data["footprint"]["total_gb"] > 5  # SDXL's real size, though no weight was allocated


def test_running_on_a_device_this_machine_cannot_use_is_one_line(capsys) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a usable CUDA device")
    assert main(["generate", "--arch", "tiny-sd", "--device", "cuda", "-o", "unused.png"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sdopt: error: cannot run on cuda here") and "leave out --device" in err
