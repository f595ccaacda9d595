"""The trained tiny pipelines shipped with sdopt: what ships is what the script recorded, they load
offline through diffusers' own loaders, read their prompts, and bench measures quality on them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from sdopt.bench import bench
from sdopt.bench.quality import quality_prompts
from sdopt.quality import prompt_accuracy
from sdopt.simulation import trained
from sdopt.simulation.architectures import load_pipeline
from sdopt.testing import trained_pipeline

ROOT = Path(__file__).resolve().parents[1]


def test_the_shipped_weights_are_the_ones_the_training_script_recorded() -> None:
    record = json.loads((trained.ROOT / "record.json").read_text())
    shipped = {}
    for part in ("vae", *trained.KINDS):
        shipped.update(trained.hashes(trained.ROOT, part))
    assert shipped == record["sha256"], "retrain with tools/train_tiny_pipelines.py (or restore the files)"
    total = sum(path.stat().st_size for path in trained.ROOT.rglob("*.safetensors"))
    assert total < 15e6, f"{total / 1e6:.1f} MB of weights in the package"
    for kind in trained.KINDS:
        assert record[kind]["prompt_accuracy"] >= 0.9, (kind, record[kind])


@pytest.mark.parametrize("kind", sorted(trained.KINDS))
def test_a_trained_pipeline_loads_offline_and_draws_what_it_is_asked(kind: str) -> None:
    pipe = trained_pipeline(kind)
    assert type(pipe).__name__ == trained.KINDS[kind]
    assert pipe.vae_scale_factor == 4
    prompts = [
        "a red circle at the top left on a white background",
        "a blue square at the bottom right on a black background",
        "a green triangle at the top right on a gray background",
        "a yellow circle at the bottom left on a black background",
    ]
    images = trained.generate(pipe, prompts, steps=20)
    assert images.shape == (4, 64, 64, 3)
    assert prompt_accuracy(images, prompts) >= 0.75  # the whole fixed set is checked in the slow test


def test_both_trained_pipelines_share_one_vae_and_arch_names_load_them() -> None:
    sd, dit = load_pipeline("trained-sd"), load_pipeline("trained-dit")
    for name, value in sd.vae.state_dict().items():
        assert np.array_equal(value.numpy(), dit.vae.state_dict()[name].numpy()), name
    assert not (trained.ROOT / "sd" / "vae").exists() and not (trained.ROOT / "dit" / "vae").exists()


def test_an_unknown_kind_or_a_missing_folder_says_what_to_do(tmp_path) -> None:
    with pytest.raises(ValueError, match="sd, dit"):
        trained.load("flux")
    with pytest.raises(FileNotFoundError, match="train_tiny_pipelines"):
        trained.load("sd", tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(trained.KINDS))
def test_untouched_prompt_accuracy_on_the_fixed_prompt_set(kind: str) -> None:
    prompts = quality_prompts()
    images = trained.generate(trained_pipeline(kind), prompts, steps=20)
    assert prompt_accuracy(images, prompts) >= 0.9


def test_bench_reports_quality_on_a_trained_pipeline(tmp_path) -> None:
    result = bench("trained-dit", ["baseline", "conservative"], steps=4, runs=1, warmup=0)
    baseline, conservative = result.tiers
    assert result.quality is not None and len(result.quality["prompts"]) == 48
    assert set(result.quality["noise_floor"]) == {"psnr_db", "ssim", "accuracy_spread", "fid_spread"}
    assert baseline.prompt_accuracy is not None and baseline.domain_fid is not None
    assert baseline.quality_psnr_db == float("inf") and baseline.quality_ssim == 1.0
    assert conservative.prompt_accuracy is not None and conservative.quality_psnr_db is not None
    assert "accuracy" in result.headers() and "domain FID" in result.headers()
    assert all(len(row) == len(result.headers()) for row in result.rows())
    path = tmp_path / "q.json"
    result.save_json(path)
    row = json.loads(path.read_text())["tiers"][1]
    assert 0.0 <= row["prompt_accuracy"] <= 1.0 and row["domain_fid"] > 0 and row["quality_psnr_db"] > 0
    assert result.settings["prompts"][0].endswith("on a white background")  # timed on domain captions
    result.plot(tmp_path / "q.png")  # with a third panel: prompt accuracy
    assert (tmp_path / "q.png").stat().st_size > 0


def test_a_bench_without_the_baseline_row_reports_quality_without_a_reference(tmp_path) -> None:
    result = bench("trained-dit", ["balanced"], steps=2, runs=1, warmup=0)
    (row,) = result.tiers
    assert row.prompt_accuracy is not None and row.quality_psnr_db is None  # nothing to compare with
    assert result.quality is not None and result.quality["noise_floor"] is None
    result.plot(tmp_path / "q.png")
    assert (tmp_path / "q.png").stat().st_size > 0


def test_quality_is_refused_where_images_cannot_be_read() -> None:
    with pytest.raises(ValueError, match="trained pipelines only"):
        bench("tiny-sd", ["baseline"], steps=1, runs=1, warmup=0, quality=True)
    result = bench("tiny-sd", ["baseline"], steps=1, runs=1, warmup=0)
    assert result.quality is None and "accuracy" not in result.headers()


def test_the_quality_page_shows_the_committed_runs() -> None:
    spec = importlib.util.spec_from_file_location("quality_docs", ROOT / "tools" / "quality_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    page = module.PAGE.read_text()
    assert module.updated(page) == page, "run python tools/quality_docs.py"
