from __future__ import annotations

import re

import pytest

from sdopt import Preset, optimize, registry
from sdopt.presets import Entry, PresetError
from sdopt.requirements import Requirements
from sdopt.tiers import resolve_tier


def _preset() -> Preset:
    return Preset(
        "app",
        (
            Entry("vae_tiling", {"tile_size": 32, "overlap": 0.5}, Requirements(devices=("cuda",))),
            Entry("channels_last", {"components": ("vae",)}),
        ),
        version=2,
        description="pinned",
    )


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_save_and_load_round_trip(tmp_path, suffix: str) -> None:
    path = tmp_path / f"app{suffix}"
    _preset().save(path)
    assert Preset.load(path) == _preset()


def test_optimize_replays_a_preset_instead_of_the_default_tier(sd_pipe, cpu_caps) -> None:
    report = optimize(sd_pipe, preset=_preset(), caps=cpu_caps)
    assert report.source == "app@2"
    assert [d.name for d in report.applied] == ["channels_last"]
    assert [d.name for d in report.skipped] == ["vae_tiling"]
    report.undo()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (
            'name = "x"\n[[steps]]\nname = "vae_tilin"\n',
            r"steps\[0\] \(vae_tilin\).*did you mean .vae_tiling.",
        ),
        (
            'name = "x"\n[[steps]]\nname = "vae_tiling"\nconfig = { tile = 3 }\n',
            r"steps\[0\] \(vae_tiling\).*tile",
        ),
        (
            'name = "x"\n[[steps]]\nname = "vae_tiling"\nwhen = { gpu = "big" }\n',
            r"unknown condition\(s\) gpu",
        ),
        ('name = "x"\nmodule = "os"\n', r"unknown preset key\(s\) 'module'"),
        ('name = "x"\n[[steps]]\nname = "vae_tiling"\nrun = "rm"\n', r"unknown step key\(s\) 'run'"),
        ("name = \n", "not valid TOML"),
    ],
)
def test_malformed_files_name_the_file_entry_and_field(tmp_path, text: str, match: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(PresetError, match=match) as error:
        Preset.load(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('name = "x"\n[[steps]]\nname = "vae_tiling"\nconfig = { tile_size = "big" }\n', r"tile_size expects int"),
        ('format = 2\nname = "x"\n', r"format 2 is not supported \(this sdopt reads 1\)"),
        ('name = "x"\nversion = "one"\n', r"'version' must be a positive integer"),
        ('name = "x"\nversion = true\n', r"'version' must be a positive integer"),
        ('name = !!python/object/apply:os.system ["echo"]\n', "not valid TOML"),
        ('name = "x"\nmade_on = "elsewhere"\n', r"'made_on' must be a table"),
    ],
)
def test_wrong_types_versions_and_code_injection_are_refused(tmp_path, text: str, match: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(PresetError, match=match):
        Preset.load(path)


def test_errors_in_a_step_give_its_line(tmp_path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        'name = "x"\n\n[[steps]]\nname = "scheduler"\n\n[[steps]]\nname = "vae_tiling"\nconfig = { x = 1 }\n'
    )
    with pytest.raises(PresetError, match=rf"{path}:6: steps\[1\] \(vae_tiling\): .*unknown option\(s\) x"):
        Preset.load(path)


def test_pickled_and_json_object_payloads_are_refused(tmp_path) -> None:
    import pickle

    pickled = tmp_path / "evil.toml"
    pickled.write_bytes(pickle.dumps(Preset("x")))
    with pytest.raises(PresetError, match="never unpickles"):
        Preset.load(pickled)
    hooked = tmp_path / "evil.json"
    hooked.write_text('{"name": "x", "__class__": "os.system"}')
    with pytest.raises(PresetError, match=r"unknown preset key\(s\) '__class__'"):
        Preset.load(hooked)
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(PresetError, match="top level must be a table"):
        Preset.load(listed)


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_every_optimization_config_round_trips(tmp_path, suffix: str) -> None:
    from sdopt import registry

    entries = tuple(
        Entry(name, registry.get(name).config_to_dict(registry.get(name).make_config({}))) for name in registry.names()
    )
    preset = Preset("all", entries)
    path = tmp_path / f"all{suffix}"
    preset.save(path)
    loaded = Preset.load(path)
    assert loaded == preset
    for entry in loaded.entries:
        optimization = registry.get(entry.name)
        assert optimization.make_config(entry.config) == optimization.make_config({})


def test_a_frozen_preset_replays_identically_on_a_fresh_pipeline(tmp_path) -> None:
    from sdopt.testing import fake_capabilities, run_pipeline, tiny_pipeline

    caps = fake_capabilities("cpu-amx")
    first = tiny_pipeline("sd")
    report = optimize(first, tier="balanced", caps=caps)
    preset = report.to_preset("app")
    assert preset.based_on == resolve_tier("balanced").label and preset.fingerprint == caps.fingerprint
    assert {e.name: e.config for e in preset.entries}["half_precision"]["dtype"] == "bfloat16"  # resolved
    path = tmp_path / "app.toml"
    preset.save(path)

    second = tiny_pipeline("sd")
    replay = optimize(second, preset=Preset.load(path), caps=caps, strict=True)
    assert [d.name for d in replay.applied] == [d.name for d in report.applied]
    assert [d.config for d in replay.applied] == [d.config for d in report.applied]
    assert replay.warnings == ()
    assert (run_pipeline(first, "sd") == run_pipeline(second, "sd")).all()


def test_strict_replay_on_another_machine_refuses_with_the_differences(sd_pipe) -> None:
    from sdopt.errors import PresetMismatchError
    from sdopt.testing import fake_capabilities, tiny_pipeline
    from tests.helpers import Snapshot

    gpu = fake_capabilities("h100-80gb", packages={"triton": True})
    preset = optimize(tiny_pipeline("sd"), tier="balanced", caps=gpu, dry_run=True).to_preset("gpu")
    assert "torch_compile" in preset.names()
    snapshot = Snapshot(sd_pipe, "sd")
    with pytest.raises(PresetMismatchError) as error:
        optimize(sd_pipe, preset=preset, caps=fake_capabilities("cpu"), strict=True)
    message = str(error.value)
    assert "device: 'cuda' -> 'cpu'" in message and "gpus: ['sm_90 80 GB'] -> []" in message
    assert "torch_compile: on CPU torch.compile pays only" in message  # a step that cannot apply here
    snapshot.assert_identical()

    lenient = optimize(sd_pipe, preset=preset, caps=fake_capabilities("cpu"))
    assert any("frozen on a machine with other capabilities" in warning for warning in lenient.warnings)
    assert "fuse_qkv" in [d.name for d in lenient.applied]
    assert "torch_compile" in [d.name for d in lenient.skipped]
    lenient.undo()


def test_pinned_and_unknown_tier_versions(sd_pipe, cpu_caps) -> None:
    from sdopt.errors import UnknownTierError

    assert optimize(sd_pipe, tier="balanced@1", caps=cpu_caps, dry_run=True).source == "balanced@1"
    with pytest.raises(UnknownTierError, match=r"versions that exist: balanced@1"):
        optimize(sd_pipe, tier="balanced@999", caps=cpu_caps)


def test_the_docs_hold_the_current_tier_tables() -> None:
    from pathlib import Path

    from sdopt.tiers import tiers_markdown

    docs = (Path(__file__).parent.parent / "docs" / "tiers.md").read_text()
    assert tiers_markdown() in docs, "docs/tiers.md is stale: paste the output of `sdopt tiers --markdown`"


def test_a_preset_file_cannot_name_the_directory_code_is_loaded_from(tmp_path) -> None:
    from sdopt.presets import PresetError

    path = tmp_path / "planted.toml"
    path.write_text('name = "x"\n\n[[steps]]\nname = "static_int8"\n\n[steps.config]\ncache_dir = "/tmp/evil"\n')
    with pytest.raises(PresetError, match=r"steps\[0\] \(static_int8\): cache_dir cannot come from a preset file"):
        Preset.load(path)


def test_frozen_presets_leave_out_local_only_options_and_record_their_version() -> None:
    from sdopt import optimize
    from sdopt.testing import fake_capabilities, tiny_pipeline

    extra = [{"name": "torch_compile", "accept_cpu_first_call": True, "cache_dir": "/somewhere/mine"}]
    report = optimize(tiny_pipeline("sd"), tier=None, extra=extra, caps=fake_capabilities("cpu-amx"), dry_run=True)
    assert report.planned[0].config["cache_dir"] == "/somewhere/mine"  # used here...
    (entry,) = report.to_preset("app").entries
    assert "cache_dir" not in entry.config and entry.config_version == 1  # ...never written into the preset
    again = Preset.from_dict(report.to_preset("app").to_dict())
    assert again.entries[0].config == entry.config


def test_a_step_written_for_another_version_of_its_options_is_refused() -> None:
    from sdopt.presets import PresetError

    data = {"name": "old", "steps": [{"name": "vae_tiling", "config": {"tile_size": 64}, "config_version": 7}]}
    with pytest.raises(PresetError, match="written for version 7 of vae_tiling's options"):
        Preset.from_dict(data)


def test_saving_writes_back_exactly_what_was_read_whatever_the_keys_and_characters(tmp_path) -> None:
    # A key that reads like TOML syntax must stay one key; emoji and DEL must survive the round trip.
    made_on = {'x = 1, steps = [{name = "resolution"}], y': "z", "device": "cpu \U0001f600\x7f"}
    preset = Preset("app", (Entry("vae_slicing"),), made_on=made_on, description="caf\u00e9 \U0001f680")
    path = tmp_path / "app.toml"
    preset.save(path)
    again = Preset.load(path)
    assert again == preset and [entry.name for entry in again.entries] == ["vae_slicing"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"name": "static_int8", "min_snr_db": float("nan")}, "min_snr_db must be a finite number"),
        ({"name": "feature_cache", "threshold": float("inf")}, "threshold must be a finite number"),
    ],
)
def test_non_finite_options_are_refused_naming_the_option(extra, message) -> None:
    from sdopt.errors import ConfigError
    from sdopt.testing import tiny_pipeline

    with pytest.raises(ConfigError, match=message):
        optimize(tiny_pipeline("sd"), tier=None, extra=[extra])


def test_a_nan_memory_budget_is_refused() -> None:
    from sdopt import plan
    from sdopt.testing import tiny_pipeline

    with pytest.raises(ValueError, match="positive, finite amount"):
        plan(tiny_pipeline("sd"), memory_budget=float("nan"))


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ({"name": "attention_slicing", "config": {"slice_size": 0}}, "slice_size=0 is out of range; allowed: >= 1"),
        ({"name": "guidance", "config": {"stop_at": 1.0}}, "stop_at=1.0 is out of range; allowed: > 0 and < 1"),
        ({"name": "feature_cache", "config": {"threshold": -0.5}}, "threshold=-0.5 is out of range; allowed: > 0"),
        ({"name": "vae_tiling", "config": {"tile_size": -8}}, "tile_size=-8 is out of range; allowed: >= 0"),
        ({"name": "resolution", "config": {"scale": 3.0}}, "scale=3.0 is out of range; allowed: >= 0.25 and < 1"),
        ({"name": "feature_cache", "config": {"threshold": "0.1"}}, "option threshold expects float, got str"),
        ({"name": "static_int8", "config": {"min_snr_db": float("nan")}}, "min_snr_db must be a finite number"),
        ({"name": "vae_slicing", "when": "always"}, "a condition must be a table of conditions"),
        ({"name": "vae_slicing", "when": {"min_torch": "abc"}}, "condition min_torch: 'abc' is not a version"),
        ({"name": "vae_slicing", "when": {"min_torch": 2.10}}, "condition min_torch: a version in quotes"),
        ({"name": "vae_slicing", "when": {"devices": [None]}}, "condition devices: a list of names is expected"),
        ({"name": "vae_slicing", "when": {"min_memory_gb": -1}}, "condition min_memory_gb: a number >= 0"),
    ],
)
def test_a_preset_with_a_value_out_of_range_names_the_field_and_the_range(step, message) -> None:

    with pytest.raises(PresetError, match=re.escape(message)):
        Preset.from_dict({"name": "bad", "steps": [step]})


def test_extra_options_are_range_checked_before_anything_is_planned(sd_pipe) -> None:
    from sdopt.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape("slice_size=0 is out of range; allowed: >= 1")):
        optimize(sd_pipe, tier=None, extra=[{"name": "attention_slicing", "slice_size": 0}], strict=True)
    optimization = registry.get("guidance")
    with pytest.raises(ConfigError, match="stop_at=2.0 is out of range"):
        optimization.make_config(optimization.Config(stop_at=2.0))  # a config instance too


@pytest.mark.parametrize("value", ["/etc/models/taesd", "../taesd", "~/taesd", "a/b/c", "C:\\taesd", "."])
def test_a_preset_file_names_weights_by_hub_id_never_by_path(value: str) -> None:
    with pytest.raises(PresetError, match="must be a hub id such as 'org/model' in a preset file"):
        Preset.from_dict({"name": "x", "steps": [{"name": "tiny_vae", "config": {"source": value}}]})


def test_a_hub_id_that_is_a_local_folder_here_is_a_path(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "madebyollin" / "taesd").mkdir(parents=True)
    with pytest.raises(PresetError, match="must be a hub id"):
        Preset.from_dict({"name": "x", "steps": [{"name": "tiny_vae", "config": {"source": "madebyollin/taesd"}}]})
    monkeypatch.chdir(tmp_path / "madebyollin")
    loaded = Preset.from_dict({"name": "x", "steps": [{"name": "tiny_vae", "config": {"source": "madebyollin/taesd"}}]})
    assert loaded.entries[0].config["source"] == "madebyollin/taesd"
