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


def test_distributed_example_runs_on_two_cpu_processes_with_the_same_preset(tmp_path) -> None:
    import json
    import os
    import subprocess

    from sdopt import Preset

    preset = tmp_path / "pinned.toml"
    Preset("app", ("vae_slicing",)).save(preset)
    out = tmp_path / "out"
    command = [
        *LAUNCH,
        str(EXAMPLES / "distributed_generate.py"),
        "--arch",
        "tiny-sd",
        "--preset",
        str(preset),
        "-o",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["applied"] == ["vae_slicing"]
    assert sorted(set(summary["images"].values())) == [0, 1]  # both processes rendered
    assert len(list(out.glob("*.png"))) == 5


# Two processes through accelerate's multi-process launcher; with no GPU, each runs on the CPU and
# they talk over gloo. On GPUs the same command puts one process on each.
LAUNCH = [
    sys.executable,
    "-m",
    "accelerate.commands.launch",
    "--multi_gpu",
    "--num_processes",
    "2",
    "--num_machines",
    "1",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
]


def test_processes_that_apply_different_steps_all_stop_naming_them(tmp_path) -> None:
    import os
    import subprocess

    script = tmp_path / "disagree.py"
    script.write_text(
        "import torch\n"
        "from accelerate import PartialState\n"
        "from sdopt import Preset\n"
        "from sdopt.distributed import ReplicasDisagree, optimize_everywhere\n"
        "from sdopt.testing import tiny_pipeline\n"
        "state = PartialState(cpu=True)\n"
        "name = 'vae_slicing' if state.process_index == 0 else 'vae_tiling'\n"
        "try:\n"
        "    optimize_everywhere(tiny_pipeline('sd'), Preset('app', (name,)), state=state)\n"
        "except ReplicasDisagree as error:\n"
        "    print(f'rank {state.process_index}: {error}')\n"
    )
    done = subprocess.run(
        [*LAUNCH, str(script)], capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        assert f"rank {rank}: the processes applied different steps from app@1" in done.stdout
    assert 'process(es) [0]: [["vae_slicing"' in done.stdout and 'process(es) [1]: [["vae_tiling"' in done.stdout
