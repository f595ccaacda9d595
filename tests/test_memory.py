"""Lean by default: undo's originals never double the memory an optimization saves (docs/memory.md)."""

from __future__ import annotations

import gc
import importlib.util
import os
import warnings

import pytest
import torch
from diffusers import StableDiffusionPipeline

from sdopt import Preset, optimize, plan
from sdopt.errors import MemoryBudgetError, RollbackError, UndoError
from sdopt.testing import fake_capabilities, pipeline_state, resident_tensor_bytes, state_differences, tiny_pipeline
from tests.helpers import Snapshot

_SCHEDULER_TABLES = 64 * 1024


def _packed_int8_bytes(pipe) -> int:
    """PyTorch's dynamic int8 layers keep their weights packed outside any Python tensor (invisible to
    resident_tensor_bytes); the state dict unpacks them."""
    return sum(
        tensor.numel() * tensor.element_size()
        for value in pipe.unet.state_dict().values()
        for tensor in (value if isinstance(value, tuple) else (value,))
        if isinstance(tensor, torch.Tensor) and tensor.is_quantized
    )


def _warm(pipe, caps, tier="balanced") -> None:
    """One optimize/undo first, so what sdopt creates once per process (caches) is not counted."""
    optimize(pipe, tier=tier, caps=caps).undo()


@pytest.mark.parametrize("profile", ["cpu-amx", "cpu", "t4-16gb"])
@pytest.mark.parametrize("tier", ["balanced", "fast", "low-memory"])
@pytest.mark.parametrize("family", ["sdxl", "flux"])
def test_default_optimize_never_raises_resident_memory(family: str, tier: str, profile: str) -> None:
    pipe, caps = tiny_pipeline(family), fake_capabilities(profile)
    _warm(pipe, caps, tier)
    before = resident_tensor_bytes()
    report = optimize(pipe, tier=tier, caps=caps)
    after = resident_tensor_bytes()
    # Tolerance: a swapped scheduler is kept whole for an exact undo, with its 1000-step tables (32 KB).
    assert after <= before + _SCHEDULER_TABLES, f"{after - before} bytes more with {[d.name for d in report.applied]}"
    report.undo()


@pytest.mark.parametrize(
    ("step", "profile"),
    [
        ("half_precision", "cpu-amx"),
        ("weight_storage", "cpu"),
        ({"name": "quantize_int8", "min_features": 0}, "cpu"),
        pytest.param(
            {"name": "quantize_4bit", "min_features": 0},
            "cpu",
            marks=pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes"),
        ),
    ],
)
def test_each_step_whose_effect_is_memory_lowers_it(step, profile: str) -> None:
    pipe, caps = tiny_pipeline("sd"), fake_capabilities(profile, packages={"bitsandbytes": True})
    optimize(pipe, tier=None, extra=[step], caps=caps).undo()  # bitsandbytes makes its tables once
    before = resident_tensor_bytes()
    report = optimize(pipe, tier=None, extra=[step], caps=caps)
    assert report.applied, report.skipped + report.failed
    assert resident_tensor_bytes() + _packed_int8_bytes(pipe) < before
    report.undo()
    assert resident_tensor_bytes() == before


def test_fused_projections_share_the_fused_weights_memory() -> None:
    pipe = tiny_pipeline("sd")
    snapshot = Snapshot(pipe, "sd")
    before = resident_tensor_bytes()
    report = optimize(pipe, tier=None, extra=["fuse_qkv"], caps=fake_capabilities("cpu"))
    attention = next(module for module in pipe.unet.modules() if hasattr(module, "to_qkv"))
    assert attention.to_q.weight.untyped_storage().data_ptr() == attention.to_qkv.weight.untyped_storage().data_ptr()
    assert resident_tensor_bytes() == before
    report.undo()
    snapshot.assert_identical()


def test_originals_are_spilled_to_a_temp_dir_removed_with_the_report() -> None:
    pipe = tiny_pipeline("sd")
    snapshot = Snapshot(pipe, "sd")
    report = optimize(pipe, tier=None, extra=["half_precision"], caps=fake_capabilities("cpu-amx"))
    assert report.originals.startswith("spilled to ")
    directory = report._originals.directory
    assert directory is not None and os.listdir(directory)
    assert "originals:" in str(report) and report.to_dict()["originals"] == report.originals
    report.undo()
    assert not os.path.exists(directory)
    snapshot.assert_identical()

    report = optimize(pipe, tier=None, extra=["half_precision"], caps=fake_capabilities("cpu-amx"))
    directory = report._originals.directory
    del report  # the pipeline stays optimized; its originals go with the report
    gc.collect()
    assert directory is not None and not os.path.exists(directory)


def test_undoable_false_keeps_nothing() -> None:
    pipe, caps = tiny_pipeline("sd"), fake_capabilities("cpu-amx")
    _warm(pipe, caps)
    before = resident_tensor_bytes()
    report = optimize(pipe, tier=None, extra=["half_precision"], caps=caps, undoable=False)
    assert report.originals.startswith("not kept")
    assert report._originals.directory is None  # nothing written
    assert resident_tensor_bytes() < before
    with pytest.raises(UndoError, match="undoable=False"):
        report.undo()


def test_an_unwritable_temp_dir_keeps_originals_in_memory_with_a_warning(tmp_path, monkeypatch) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    monkeypatch.setattr("tempfile.tempdir", str(not_a_dir))
    pipe = tiny_pipeline("sd")
    snapshot = Snapshot(pipe, "sd")
    with pytest.warns(UserWarning, match="could not be written"):
        report = optimize(pipe, tier=None, extra=["half_precision"], caps=fake_capabilities("cpu-amx"))
    assert report.applied and report.originals.startswith("in memory")
    report.undo()
    snapshot.assert_identical()


def test_a_disk_that_fills_up_midway_leaves_nothing_half_applied(monkeypatch) -> None:
    import safetensors.torch

    from sdopt import originals

    real_save, calls = safetensors.torch.save_file, []

    def fill_up(tensors, path, *args, **kwargs):
        calls.append(path)
        if len(calls) > 2:
            raise OSError(28, "No space left on device")
        return real_save(tensors, path, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", fill_up)
    monkeypatch.setattr(originals, "_CHUNK_BYTES", 4096)
    pipe = tiny_pipeline("sd")
    snapshot = Snapshot(pipe, "sd")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = optimize(pipe, tier=None, extra=["half_precision"], caps=fake_capabilities("cpu-amx"))
    assert any("No space left" in str(w.message) for w in caught)
    assert report.applied and "spilled to" in report.originals and "in memory" in report.originals
    report.undo()
    snapshot.assert_identical()


def test_originals_of_a_loaded_pipeline_are_reread_from_its_checkpoint(tmp_path) -> None:
    tiny_pipeline("sd").save_pretrained(tmp_path)
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path)
    snapshot = Snapshot(pipe, "sd")
    report = optimize(pipe, tier=None, extra=["half_precision"], caps=fake_capabilities("cpu-amx"))
    assert report.originals.startswith("re-read from the checkpoint"), report.originals
    assert report._originals.directory is None  # nothing spilled: every cast tensor is in the files
    report.undo()
    snapshot.assert_identical()


def test_undo_refuses_when_the_checkpoint_changed_even_with_its_size_and_time_kept(tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    tiny_pipeline("sd").save_pretrained(tmp_path)
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path)
    report = optimize(pipe, tier=None, extra=["half_precision"], caps=fake_capabilities("cpu-amx"))
    weights = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    before = os.stat(weights)
    # Other weights written over it, then its size and modification time put back (cp -p, rsync -t).
    tensors = load_file(weights)
    name = next(key for key, value in tensors.items() if value.numel() > 8)
    tensors[name] = tensors[name] + 1
    save_file(tensors, weights, metadata={"format": "pt"})
    assert os.stat(weights).st_size == before.st_size
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(UndoError, match=f"changed since optimize.*{name} holds other values"):
        report.undo()  # checked before anything is undone
    assert pipe.unet.dtype == torch.bfloat16  # the UNet's originals were not half put back


def test_a_checkpoint_only_touched_still_undoes(tmp_path) -> None:
    tiny_pipeline("sd").save_pretrained(tmp_path)
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path)
    snapshot = Snapshot(pipe, "sd")
    report = optimize(pipe, tier=None, extra=["half_precision"], caps=fake_capabilities("cpu-amx"))
    os.utime(tmp_path / "unet" / "diffusion_pytorch_model.safetensors", ns=(0, 0))  # same values, other time
    report.undo()
    snapshot.assert_identical()


def test_a_budget_below_any_plan_names_the_smallest_that_works() -> None:
    pipe = tiny_pipeline("sd")
    tiny_budget = 0.0001  # GB: the tiny pipeline needs ~0.25 MB of activations and 32 KB for its largest layer
    with pytest.raises(MemoryBudgetError, match="smallest budget that would work is about 0.1GB") as raised:
        plan(pipe, tier="low-memory", caps=fake_capabilities("t4-16gb"), memory_budget=tiny_budget)
    assert "sequential offload" in str(raised.value)
    assert plan(pipe, tier="low-memory", caps=fake_capabilities("t4-16gb"), memory_budget=raised.value.smallest_gb).fits
    with pytest.raises(MemoryBudgetError, match="on CPU the low-memory plan keeps everything resident"):
        plan(pipe, tier="balanced", caps=fake_capabilities("cpu"), memory_budget=tiny_budget)


def test_presets_record_the_budget_and_replay_under_it(tmp_path) -> None:
    pipe = tiny_pipeline("sd")
    caps = fake_capabilities("t4-16gb")
    report = optimize(pipe, tier="low-memory", caps=caps, memory_budget="6GB", dry_run=True)
    preset = report.to_preset("service")
    assert preset.memory_budget_gb == 6.0
    path = tmp_path / "service.toml"
    preset.save(path)
    replayed = plan(pipe, preset=Preset.load(path), caps=caps)
    assert replayed.memory_budget_gb == 6.0 and replayed.footprint.available_gb == 6.0
    assert plan(pipe, preset=Preset.load(path), caps=caps, memory_budget="4GB").memory_budget_gb == 4.0


def test_the_cli_freezes_and_benches_under_a_budget(tmp_path, capsys) -> None:
    import json

    from sdopt.cli import main

    preset_path = tmp_path / "service.toml"
    assert (
        main(["freeze", "--arch", "tiny-sd", "--tier", "low-memory", "--memory-budget", "6GB", "-o", str(preset_path)])
        == 0
    )
    assert Preset.load(preset_path).memory_budget_gb == 6.0
    out = tmp_path / "bench.json"
    arguments = ["bench", "--arch", "tiny-sd", "--tiers", "baseline,low-memory", "--steps", "2", "--runs", "1"]
    assert main([*arguments, "--warmup", "0", "--no-undo", "--memory-budget", "6GB", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["settings"]["undoable"] is False and result["settings"]["memory_budget"] == "6GB"
    assert "host peak GB" in capsys.readouterr().out


def test_originals_of_views_are_kept_as_their_shared_storage() -> None:
    # A second optimize() after fuse_qkv casts the fused weights and their views: they are spilled as
    # the storage they share (safetensors refuses overlapping tensors) and come back sharing it.
    pipe, caps = tiny_pipeline("sd"), fake_capabilities("cpu-amx")
    snapshot = Snapshot(pipe, "sd")
    fused = optimize(pipe, tier=None, extra=["fuse_qkv"], caps=caps)
    attention = next(module for module in pipe.unet.modules() if hasattr(module, "to_qkv"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback to memory
        cast = optimize(pipe, tier=None, extra=["half_precision"], caps=caps)
    assert cast.originals.startswith("spilled to") and attention.to_q.weight.dtype == torch.bfloat16
    cast.undo()
    shared = attention.to_qkv.weight.untyped_storage().data_ptr()
    assert attention.to_q.weight.untyped_storage().data_ptr() == shared
    assert attention.to_v.weight.untyped_storage().data_ptr() == shared
    fused.undo()
    snapshot.assert_identical()


def test_an_older_report_refuses_while_a_later_change_it_cannot_see_is_live() -> None:
    pipe, caps = tiny_pipeline("sd"), fake_capabilities("cpu")
    first = optimize(pipe, tier=None, extra=["channels_last"], caps=caps)
    optimize(pipe, tier=None, extra=["vae_slicing"], caps=caps)  # its report is dropped at once
    gc.collect()
    with pytest.raises(UndoError, match="its report was discarded"):
        first.undo()
    second = optimize(tiny_pipeline("sd"), tier=None, extra=["channels_last"], caps=caps)
    optimize(second._pipeline, tier=None, extra=["vae_slicing"], caps=caps, undoable=False)
    with pytest.raises(UndoError, match="undoable=False"):
        second.undo()


def test_an_undo_whose_originals_are_gone_refuses_before_touching_anything(tmp_path) -> None:
    pipe = tiny_pipeline("sd")
    report = optimize(pipe, tier=None, extra=["half_precision", "channels_last"], caps=fake_capabilities("cpu-amx"))
    optimized = pipeline_state(pipe)
    directory = report._originals.directory
    for name in os.listdir(directory):
        os.remove(os.path.join(directory, name))
    for _ in range(2):  # refused, and still refused: never half undone (channels_last is not undone alone)
        with pytest.raises(UndoError, match="is gone"):
            report.undo()
        assert state_differences(optimized, pipeline_state(pipe)) == []


def test_a_failed_undo_is_not_reported_as_done_the_second_time(monkeypatch) -> None:
    pipe = tiny_pipeline("sd")
    report = optimize(pipe, tier=None, extra=["half_precision"], caps=fake_capabilities("cpu-amx"))
    _, undo = report._undo_stack._entries[0]

    def broken() -> None:
        raise OSError("disk error")

    report._undo_stack._entries[0] = ("half_precision", broken)
    with pytest.raises(RollbackError, match="disk error"):
        report.undo()
    with pytest.raises(UndoError, match="an earlier undo of this report failed"):
        report.undo()


def test_spill_files_belong_to_the_process_that_wrote_them(tmp_path) -> None:
    from sdopt.originals import _remove_if_owner

    _remove_if_owner(str(tmp_path), os.getpid() + 1)  # a forked worker exiting
    assert tmp_path.exists()
    _remove_if_owner(str(tmp_path), os.getpid())
    assert not tmp_path.exists()
