from __future__ import annotations

import pytest

from sdopt import Preset, optimize
from sdopt.presets import Entry, PresetError
from sdopt.requirements import Requirements


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
