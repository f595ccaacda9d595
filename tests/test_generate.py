"""`sdopt generate` and sdopt.generate: load, optimize, render, time, compare."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdopt import Preset
from sdopt.cli import main
from sdopt.generate import RANDOM_WEIGHTS, generate
from sdopt.testing import pipeline_state, state_differences


@pytest.mark.slow
def test_the_readme_command_writes_a_png_and_compares(tmp_path) -> None:
    """Exactly the README's first command, through the installed console script."""
    out = tmp_path / "out.png"
    script = Path(sys.executable).with_name("sdopt")
    command = [str(script), "generate", "--arch", "tiny-sd", "-o", str(out), "--compare"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    with Image.open(out) as image:
        assert image.size == (64, 64) and image.mode == "RGB"
    with Image.open(tmp_path / "out.untouched.png") as untouched:
        assert untouched.size == (64, 64)
    assert "sdopt optimized StableDiffusionPipeline" in done.stdout
    assert "time per image:" in done.stdout and "untouched pipeline:" in done.stdout
    assert "fidelity vs untouched:" in done.stdout and "the image is noise" in done.stdout
    # Third-party import noise stays off the terminal.
    assert "Failed to load" not in done.stderr and "kernels-community" not in done.stderr


def test_compare_interleaves_warm_calls_of_both_sides_and_measures_the_drift() -> None:
    result = generate("tiny-sd", tier="balanced", steps=3, runs=2, compare=True)
    assert [d.name for d in result.report.applied]  # something was applied
    assert len(result.seconds) == len(result.untouched_seconds or []) == 2  # timed, after...
    assert len(result.warmup_seconds) == len(result.untouched_warmup_seconds) == 1  # ...a warm-up each
    assert result.per_image_s == statistics.median(result.seconds) and result.speedup == pytest.approx(
        statistics.median(result.untouched_seconds or []) / statistics.median(result.seconds)
    )
    assert result.comparison is not None and result.comparison.describe() in result.summary()
    optimized = np.asarray(result.images[0])
    untouched = np.asarray(result.untouched_images[0])  # type: ignore[index]
    expected = int(np.abs(optimized.astype(int) - untouched.astype(int)).max())
    assert result.max_abs_diff == expected and 30 < (result.psnr_db or 0) < float("inf")
    assert RANDOM_WEIGHTS in result.notes and "median of 2 warm call" in result.summary()
    assert any(note.startswith("threads: ") for note in result.notes)

    # The pipeline it returns is the optimized one; its report undoes it to the untouched image exactly.
    before = pipeline_state(result.pipe)
    result.report.undo()
    assert state_differences(before, pipeline_state(result.pipe)) != []
    with torch.inference_mode():
        undone = result.pipe(**result.call, generator=torch.Generator("cpu").manual_seed(0)).images[0]
    assert np.array_equal((np.clip(undone, 0, 1) * 255).round().astype(np.uint8), untouched)


def test_a_lossless_tier_is_identical_and_says_so(tmp_path) -> None:
    preset = tmp_path / "slicing.toml"
    Preset("app", ("vae_slicing",)).save(preset)
    result = generate("tiny-sd", preset=preset, steps=2, compare=True)
    assert [d.name for d in result.report.applied] == ["vae_slicing"]
    assert result.psnr_db == float("inf") and result.max_abs_diff == 0
    assert "fidelity vs untouched: identical" in result.summary()


def test_the_summary_of_images_of_different_sizes_has_no_fidelity_line() -> None:
    result = generate("tiny-sd", tier="conservative", steps=2, compare=True)
    result.psnr_db = result.max_abs_diff = None  # as when the optimized call returned another size
    assert "fidelity vs untouched" not in result.summary() and "untouched pipeline:" in result.summary()


def test_batches_are_saved_one_file_per_image(tmp_path) -> None:
    result = generate("tiny-sd", tier="conservative", steps=2, batch=2, seed=3)
    paths = result.save(tmp_path / "batch.png")
    assert [p.name for p in paths] == ["batch-1.png", "batch-2.png"]
    first, second = (np.asarray(Image.open(p)) for p in paths)
    assert not np.array_equal(first, second)  # two images, not one saved twice
    with pytest.raises(ValueError, match="must end in .png"):
        result.save(tmp_path / "batch.txt")


def test_a_saved_checkpoint_is_loaded_for_real_and_inpainting_takes_its_inputs(tmp_path) -> None:
    from sdopt.testing.zoo import zoo_pipeline

    zoo_pipeline("StableDiffusionInpaintPipeline").save_pretrained(tmp_path / "inpaint")
    image, mask = tmp_path / "in.png", tmp_path / "mask.png"
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(image)
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(mask)  # nothing to repaint
    result = generate(str(tmp_path / "inpaint"), tier="low-memory", steps=2, image=image, mask_image=mask)
    assert type(result.pipe).__name__ == "StableDiffusionInpaintPipeline"
    assert RANDOM_WEIGHTS not in result.notes  # a real checkpoint: no noise caveat
    assert result.images[0].size == (64, 64)
    with pytest.raises(ValueError, match="takes no mask_image"):
        generate("tiny-sd", steps=2, mask_image=mask)


def test_cli_generate_quiet_json_and_errors(tmp_path, capsys, monkeypatch) -> None:
    out, record = tmp_path / "q.png", tmp_path / "q.json"
    argv = ["generate", "--arch", "tiny-sd", "--steps", "2", "--tier", "conservative", "-o", str(out)]
    assert main([*argv, "--quiet", "--json", str(record)]) == 0
    printed = capsys.readouterr()
    assert "sdopt optimized" not in printed.out  # the report is left out with --quiet
    assert "time per image:" in printed.out and printed.err == ""  # no progress bars either
    from diffusers.utils import logging as diffusers_logging

    import sdopt.logging

    assert diffusers_logging.is_progress_bar_enabled() and sdopt.logging.is_progress_bar_enabled()  # put back
    data = json.loads(record.read_text())
    assert data["images"] == [str(out)] and data["call"]["num_inference_steps"] == 2
    assert data["report"]["source"] == "conservative@2"

    # A bad tier or preset fails before anything is loaded.
    import sdopt.generate

    monkeypatch.setattr(sdopt.generate, "load_pipeline", lambda *a, **k: pytest.fail("loaded"))
    assert main(["generate", "--arch", "tiny-sd", "-o", str(tmp_path / "out.gif")]) == 2
    assert "must end in .png" in capsys.readouterr().err
    assert main(["generate", "--arch", "tiny-sd", "--tier", "warp", "-o", str(out)]) == 2
    assert "valid tiers" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('[preset]\nname = "x"\nsteps = 3\n')
    assert main(["generate", "--arch", "tiny-sd", "--preset", str(bad), "-o", str(out)]) == 2
    assert "bad.toml" in capsys.readouterr().err
