from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdopt.bench import BASELINE, DEFAULT_PROMPTS, PeerImage, TierResult, bench, psnr, summarize
from sdopt.cli import main
from sdopt.errors import UnknownTierError
from sdopt.presets import Entry, Preset
from sdopt.testing import tiny_pipeline
from sdopt.tiers import resolve_tier


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["tiny-sd", "tiny-flux"])
def test_bench_runs_every_tier_and_writes_every_output(arch, tmp_path) -> None:
    messages: list[str] = []
    # On CPU (also on a machine with a GPU): the tiers render interleaved.
    result = bench(
        arch, [BASELINE, "balanced", "fast"], steps=3, runs=2, warmup=1, progress=messages.append, device="cpu"
    )
    assert [t.tier for t in result.tiers] == [BASELINE, "balanced", "fast"]
    assert messages[-1] == "[9/9] run 2/2: fast"  # warmup + runs, interleaved
    for tier in result.tiers:
        assert len(tier.latencies_s) == 2 and tier.min_s <= tier.median_s <= tier.max_s
        assert tier.first_call_s > 0 and tier.denoiser_step_s and tier.decode_s
        assert tier.host_peak_gb > 0 and tier.device_peak_gb is None  # no device column off CUDA
        assert tier.psnr_db is not None and tier.max_abs_diff is not None
    baseline = result.tiers[0]
    assert baseline.speedup == 1.0 and baseline.psnr_db == float("inf") and baseline.applied == []
    assert "scheduler" in result.tiers[2].applied or arch == "tiny-flux"  # fast swaps the solver
    assert result.tiers[2].report["applied"], "each tier carries its report"

    result.save_json(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["tiers"][0]["psnr_db"] == "inf"
    assert set(data) == {
        *("source", "pipeline", "device", "settings", "machine", "tiers", "memory_kind", "notes"),
        "speedup_reference",
        "quality",
    }
    assert data["speedup_reference"] == "baseline" and data["quality"] is None  # images of noise: not judged
    assert set(data["tiers"][0]) == set(TierResult.__dataclass_fields__)
    assert any("random weights" in note for note in data["notes"])
    markdown = result.to_markdown()
    assert markdown.count("\n| ") == 4 and "PSNR dB" in markdown
    result.plot(tmp_path / "r.png")
    with Image.open(tmp_path / "r.png") as image:
        assert image.format == "PNG" and image.size[0] > 100


def test_timing_uses_the_given_clock() -> None:
    ticks = itertools.count()  # every reading is one "second" later: deterministic, no real timing
    result = bench("tiny-sd", [BASELINE, "conservative"], steps=2, runs=3, warmup=0, clock=lambda: float(next(ticks)))
    for tier in result.tiers:
        assert all(value == int(value) and value > 0 for value in tier.latencies_s)
        assert tier.denoiser_step_s == 1.0  # pre-hook reading, then the post-hook reading
    assert result.tiers[0].speedup == 1.0


def test_summary_statistics_and_speedup_are_ratios_of_medians() -> None:
    results = [TierResult(BASELINE, latencies_s=[10.0, 12.0, 11.0]), TierResult("fast", latencies_s=[4.0, 5.0, 6.0])]
    summarize(results)
    assert (results[0].median_s, results[0].min_s, results[0].max_s) == (11.0, 10.0, 12.0)
    assert results[1].speedup == pytest.approx(11.0 / 5.0)
    alone = [TierResult("fast", latencies_s=[1.0])]
    summarize(alone)
    assert alone[0].speedup is None  # no baseline, no ratio


def test_psnr() -> None:
    image = np.zeros((4, 4, 3), np.uint8)
    assert psnr(image, image) == float("inf")
    other = image.copy()
    other[0, 0, 0] = 255
    assert psnr(image, other) == pytest.approx(10 * np.log10(48))


def test_bad_input_fails_before_loading() -> None:
    with pytest.raises(UnknownTierError, match="valid tiers"):
        bench("sd15", [BASELINE, "turbo"])
    with pytest.raises(ValueError, match="runs and batch must be >= 1"):
        bench("tiny-sd", [BASELINE], runs=0)


def test_cli_bench_writes_json_markdown_and_plot(tmp_path, capsys) -> None:
    out = tmp_path / "r"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n\na dog\n")
    argv = ["bench", "--arch", "tiny-sd", "--tiers", "baseline,balanced", "--steps", "2", "--runs", "1"]
    argv += ["--prompts", str(prompts), "--json", f"{out}.json", "--markdown", f"{out}.md", "--plot", f"{out}.png"]
    assert main(argv) == 0
    assert "s/call median" in capsys.readouterr().out
    assert json.loads(out.with_suffix(".json").read_text())["settings"]["prompts"] == ["a cat", "a dog"]
    assert out.with_suffix(".md").read_text().startswith("**sdopt bench: tiny-sd")
    assert out.with_suffix(".png").stat().st_size > 1000


class _SamePipelinePeer:
    """A peer rendering with its own copy of the tiny SD pipeline: same prompts and seeds must give
    the baseline's images exactly, which checks the plumbing end to end."""

    def __init__(self, name: str = "peer", fail_on_load: bool = False) -> None:
        self.name = name
        self.fail_on_load = fail_on_load
        self.calls: list[tuple[str, int]] = []
        self.closed = False
        self.pipe = None

    def load(self) -> dict:
        if self.fail_on_load:
            raise RuntimeError("peer could not load")
        self.pipe = tiny_pipeline("sd")
        return {"runtime": "same pipeline"}

    def render(self, prompt: str, *, seed: int, steps: int, guidance: float, height: int, width: int) -> PeerImage:
        import torch

        self.calls.append((prompt, seed))
        images = self.pipe(
            prompt,
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=height,
            width=width,
            output_type="np",
            generator=torch.Generator("cpu").manual_seed(seed),
        ).images
        image = (np.clip(images[0], 0, 1) * 255).round().astype(np.uint8)
        return PeerImage(image, decode_calls_s=[0.5], peak_memory_gb=1.25)

    def close(self) -> None:
        self.closed = True


def test_peers_render_the_same_prompts_and_seeds_in_the_interleaved_loop() -> None:
    peer = _SamePipelinePeer()
    messages: list[str] = []
    result = bench(
        "tiny-sd",
        [BASELINE, "balanced"],
        steps=2,
        runs=2,
        warmup=1,
        peers=[peer],
        progress=messages.append,
        device="cpu",
    )
    assert [t.tier for t in result.tiers] == [BASELINE, "balanced", "peer"]
    assert [m.split(": ")[-1] for m in messages if m.startswith("[")] == [BASELINE, "balanced", "peer"] * 3
    assert peer.calls == [(DEFAULT_PROMPTS[i], i) for i in range(3)]  # warmup image 0, then 1 and 2
    row = result.tiers[2]
    assert row.psnr_db == float("inf") and row.max_abs_diff == 0  # same pipeline, same latents
    assert row.report == {"peer": {"runtime": "same pipeline"}} and row.applied == []
    assert row.decode_s == 0.5 and row.host_peak_gb == 1.25 and row.denoiser_step_s is None
    assert len(row.latencies_s) == 2 and row.speedup is not None
    assert peer.closed and any("peers (peer)" in note for note in result.notes)


def test_a_peer_that_fails_to_load_releases_the_peers_loaded_before_it() -> None:
    first, second = _SamePipelinePeer("first"), _SamePipelinePeer("second", fail_on_load=True)
    with pytest.raises(RuntimeError, match="peer could not load"):
        bench("tiny-sd", [BASELINE], steps=2, runs=1, warmup=0, peers=[first, second])
    assert first.closed and not second.closed


def test_peer_names_must_not_collide_with_tiers() -> None:
    with pytest.raises(ValueError, match="its own name"):
        bench("tiny-sd", [BASELINE], runs=1, peers=[_SamePipelinePeer(BASELINE)])


def test_a_preset_file_is_benchmarked_as_a_tier(tmp_path) -> None:
    path = tmp_path / "solver-only.toml"
    Preset("solver-only", (Entry("scheduler"),)).save(path)
    result = bench("tiny-sd", [BASELINE, str(path)], steps=2, runs=1, warmup=0)
    assert [t.tier for t in result.tiers] == [BASELINE, "solver-only.toml"]
    assert result.tiers[1].applied == ["scheduler"]
    with pytest.raises(FileNotFoundError):
        bench("tiny-sd", [BASELINE, str(tmp_path / "missing.toml")], runs=1)


def test_tiers_are_optimized_with_the_defaults_users_get_unless_no_undo() -> None:
    default = bench("tiny-sd", [BASELINE, "balanced"], steps=2, runs=1, warmup=0, memory_budget="6GB")
    report = default.tiers[1].report
    assert report["undoable"] and report["memory_budget_gb"] == 6.0
    assert default.settings["undoable"] and any("originals kept" in note for note in default.notes)
    lean = bench("tiny-sd", [BASELINE, "balanced"], steps=2, runs=1, warmup=0, undoable=False)
    assert not lean.tiers[1].report["undoable"] and lean.tiers[1].report["originals"].startswith("not kept")


def test_tier_copies_share_the_loaded_pipelines_unchanged_weights() -> None:
    from sdopt import optimize
    from sdopt.bench.instruments import light_copy as _light_copy
    from sdopt.testing import fake_capabilities, resident_tensor_bytes, tiny_pipeline

    base = tiny_pipeline("sd")
    weight = base.unet.conv_in.weight
    before = resident_tensor_bytes()
    copy = _light_copy(base)
    assert resident_tensor_bytes() - before < 64 * 1024  # the schedulers' tables, not the weights
    assert copy.unet.conv_in.weight is not weight
    assert copy.unet.conv_in.weight.data_ptr() == weight.data_ptr()
    optimize(copy, tier=None, extra=["half_precision"], caps=fake_capabilities("cpu-amx"), undoable=False)
    assert copy.unet.conv_in.weight.dtype == torch.bfloat16 and weight.dtype == torch.float32


def test_tiers_run_one_after_another_when_they_would_not_fit_together(monkeypatch) -> None:
    from sdopt.bench import runner as bench_module

    monkeypatch.setattr(bench_module, "_why_not_interleaved", lambda *args: "pretend RAM is short")
    messages: list[str] = []
    result = bench("tiny-sd", ["balanced", BASELINE], steps=2, runs=1, warmup=0, progress=messages.append, device="cpu")
    assert [t.tier for t in result.tiers] == ["balanced", BASELINE]
    assert messages.index("[1/1] run 1/1: baseline") < messages.index("[1/1] run 1/1: balanced")
    assert "building tiny-sd for balanced" in messages  # its own pipeline, the loaded one is gone
    assert result.tiers[0].psnr_db is not None and result.tiers[1].psnr_db == float("inf")
    assert any("one after another" in note and "pretend RAM is short" in note for note in result.notes)


def test_arch_benches_time_replacement_models_offline_with_their_published_architecture() -> None:
    from sdopt import optimize
    from sdopt.simulation.architectures import real_pipeline
    from sdopt.testing import fake_capabilities, tiny_pipeline
    from sdopt.weights import stand_ins

    caps = fake_capabilities("cpu")
    outside = optimize(tiny_pipeline("sd"), tier=None, extra=["tiny_vae"], caps=caps)
    assert not outside.applied and "cannot load" in outside.skipped[0].reason  # nothing made up outside
    with stand_ins():
        pipe = real_pipeline("sd15", device="meta")
        planned = optimize(pipe, tier=None, extra=["tiny_vae"], caps=caps, dry_run=True)  # never-loaded weights
        assert [d.name for d in planned.planned] == ["tiny_vae"]
        pipe = tiny_pipeline("sd")
        report = optimize(pipe, tier=None, extra=["tiny_vae"], caps=caps)
    assert type(pipe.vae).__name__ == "AutoencoderTiny" and pipe.vae.config.latent_channels == 4
    assert "random weights of its published architecture" in report.applied[0].reason
    result = bench("tiny-sd", [BASELINE, "fast"], steps=2, runs=1, warmup=0)  # bench --arch uses them
    assert "tiny_vae" in result.tiers[1].applied
    assert any("ran with random weights" in note for note in result.notes)


def test_auto_is_benchmarked_with_its_tuning_time_apart(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("SDOPT_CACHE_DIR", str(tmp_path))
    result = bench("tiny-sd", ["baseline", "auto:fast"], steps=2, runs=1, warmup=0)
    auto = result.tiers[1]
    assert auto.tier == "auto:fast" and auto.tuning_s is not None and auto.tuning_s > 0
    assert auto.report["source"] == f"auto:{resolve_tier('fast').label}"
    assert auto.report["tuning"]["shape"] == {"height": 64, "width": 64, "steps": 2, "guidance": 7.5, "batch": 1}
    assert "tune s" in result.table()
    again = bench("tiny-sd", ["auto:fast"], steps=2, runs=1, warmup=0)
    assert again.tiers[0].report["tuning"]["from_cache"] and again.tiers[0].tuning_s < auto.tuning_s


def test_batch_renders_several_images_per_call_and_reports_images_per_second() -> None:
    result = bench("tiny-sd", ["baseline", "balanced"], steps=2, runs=1, warmup=0, batch=3)
    assert result.settings["batch"] == 3 and "batch 3 (images per call)" in result.table()
    baseline = result.tiers[0]
    row = dict(zip(result.HEADERS, result.rows()[0], strict=True))
    assert float(row["images/s"]) == pytest.approx(3 / baseline.median_s, rel=1e-2)
    with pytest.raises(ValueError, match="batch must be >= 1"):
        bench("tiny-sd", ["baseline"], batch=0)


def test_reference_rows_render_the_untouched_half_pipeline_and_the_hand_recipe() -> None:
    result = bench(
        "tiny-sd",
        ["baseline", "untouched-half", "recipe", "balanced"],
        steps=2,
        runs=1,
        warmup=0,
        recipe_compile="none",
    )
    rows = {t.tier: t for t in result.tiers}
    assert rows["untouched-half"].applied == [
        "the pipeline as loaded with torch_dtype=float16 (SDPA, diffusers' default)"
    ]
    assert rows["recipe"].applied[:3] == [
        "bfloat16 weights",
        "fused QKV projections (unet, vae)",
        "channels-last (unet, vae)",
    ]
    assert rows["recipe"].applied[-1] == "not compiled (compile='none')"
    assert 0 < rows["untouched-half"].psnr_db < float("inf")  # its own arithmetic: drift against float32
    assert result.speedup_reference == "baseline"  # on a CPU the reference stays the pipeline as loaded
    with pytest.raises(ValueError, match="recipe compile mode 'fastest'"):
        bench("tiny-sd", ["recipe"], steps=2, runs=1, warmup=0, recipe_compile="fastest")


def test_on_gpus_speedups_are_against_the_untouched_half_pipeline() -> None:
    from sdopt.bench.results import TierResult, summarize
    from sdopt.bench.runner import rows_for

    assert rows_for(["baseline", "balanced", "fast"], "cuda") == [
        "baseline",
        "untouched-half",
        "recipe",
        "balanced",
        "fast",
    ]
    assert rows_for(["balanced"], "mps", gpu_references=False) == ["balanced"]
    rows = [TierResult("baseline"), TierResult("untouched-half"), TierResult("balanced")]
    for row, seconds in zip(rows, ([8.0, 8.1, 8.2], [2.0, 2.0, 2.1], [1.5, 1.55, 1.6]), strict=True):
        row.latencies_s = seconds
    summarize(rows, "untouched-half")
    assert rows[1].speedup == 1.0 and rows[2].speedup == pytest.approx(2.0 / 1.55)
    assert rows[0].speedup == pytest.approx(2.0 / 8.1) and rows[0].verdict == "slower"


def test_the_record_says_what_call_time_steps_did_during_the_calls(tmp_path, monkeypatch) -> None:
    pytest.importorskip("openvino")
    monkeypatch.setenv("SDOPT_CACHE_DIR", str(tmp_path))
    preset = Path(__file__).parents[1] / "benchmarks" / "presets" / "openvino-f32.toml"
    result = bench("tiny-sd", [BASELINE, str(preset)], steps=2, runs=1, warmup=1)
    (row,) = [tier for tier in result.tiers if tier.applied == ["openvino_runtime"]]
    assert "dB SNR against PyTorch" in row.report["after_calls"]["openvino_runtime"]  # not "waiting for"
