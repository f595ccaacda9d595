"""sdopt.logging (the sdopt logger, verbosity, progress bars) and the capture of third-party import noise."""

from __future__ import annotations

import logging
import os
import sys
import warnings

import pytest
from diffusers.utils import logging as diffusers_logging

import sdopt.logging
from sdopt import _noise, optimize
from sdopt.cli import main
from sdopt.testing import fake_capabilities, tiny_pipeline


@pytest.fixture(autouse=True)
def _restore_switches():
    yield
    sdopt.logging.set_verbosity_warning()
    sdopt.logging.enable_progress_bar()
    sdopt.logging.disable_propagation()
    diffusers_logging.enable_progress_bar()


def test_verbosity_controls_what_optimize_says(capsys) -> None:
    amx = fake_capabilities("cpu-amx")  # what balanced applies depends on the CPU: not this host's
    optimize(tiny_pipeline("sd"), tier="balanced", caps=amx)
    assert "applied" not in capsys.readouterr().err  # warnings only by default

    sdopt.logging.set_verbosity_info()
    optimize(tiny_pipeline("sd"), tier="balanced", caps=amx)
    err = capsys.readouterr().err
    assert "sdopt: applied half_precision in" in err and "skipped" not in err

    sdopt.logging.set_verbosity_debug()
    optimize(tiny_pipeline("sd"), tier="balanced", caps=amx)
    assert "sdopt: skipped step_budget: not wanted here" in capsys.readouterr().err

    with pytest.raises(ValueError, match="use one of debug, info"):
        sdopt.logging.set_verbosity("loud")


def test_records_reach_the_callers_own_logging_when_propagated(caplog) -> None:
    sdopt.logging.set_verbosity_info()
    sdopt.logging.enable_propagation()
    with caplog.at_level(logging.INFO, logger="sdopt"):
        optimize(tiny_pipeline("sd"), tier="balanced")
    assert any(r.name == "sdopt.api" and r.getMessage().startswith("applied ") for r in caplog.records)
    assert sdopt.logging.get_logger("tuning").name == "sdopt.tuning"


def test_progress_bars_follow_sdopts_diffusers_and_the_pipelines_switches() -> None:
    pipe = tiny_pipeline("sd")
    pipe.set_progress_bar_config()  # sdopt.testing turns them off; back to diffusers' default
    assert sdopt.logging.is_progress_bar_enabled(pipe)
    assert not sdopt.logging.progress_bar(total=1, desc="x", pipe=pipe).disable
    diffusers_logging.disable_progress_bar()
    assert not sdopt.logging.is_progress_bar_enabled(pipe)
    assert sdopt.logging.progress_bar(total=1, desc="x").disable
    diffusers_logging.enable_progress_bar()
    sdopt.logging.disable_progress_bar()
    assert not sdopt.logging.is_progress_bar_enabled()
    sdopt.logging.enable_progress_bar()
    pipe.set_progress_bar_config(disable=True)
    assert not sdopt.logging.is_progress_bar_enabled(pipe)


def test_captured_holds_python_native_and_warning_output(capfd) -> None:
    with _noise.captured() as lines:
        print("printed by python")
        sys.stderr.write("written to stderr\n")
        os.write(2, b"written by native code\n")
        warnings.warn("a user warning", UserWarning, stacklevel=1)
    assert capfd.readouterr() == ("", "")  # nothing reached the terminal
    assert set(lines) == {
        "printed by python",
        "written to stderr",
        "written by native code",
        "UserWarning: a user warning",
    }


def test_quiet_imports_keep_each_packages_noise_for_doctor(tmp_path, monkeypatch, capfd) -> None:
    (tmp_path / "noisy_pkg.py").write_text("import os\nos.write(2, b'Failed to load _C_fake.so\\n')\nprint('hello')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(_noise, "_heard", {})
    heard = _noise.quiet_imports([("noisy_pkg", "noisy_pkg"), ("not_installed_pkg", "not_installed_pkg")])
    assert capfd.readouterr() == ("", "")
    assert heard == {"noisy_pkg": ["Failed to load _C_fake.so", "hello"]}
    assert _noise.summary(heard["noisy_pkg"]) == "2 message(s) on import, hidden: Failed to load _C_fake.so (+1 more)"

    # doctor: one line per package; -v prints the lines themselves too.
    monkeypatch.setattr(_noise, "quiet_imports", lambda imports=(): _noise.heard())
    assert main(["doctor"]) == 0
    out = capfd.readouterr().out
    assert "noisy_pkg: 2 message(s) on import, hidden: Failed to load _C_fake.so (+1 more)" in out
    assert main(["doctor", "-v"]) == 0
    assert "[noisy_pkg on import]\n  Failed to load _C_fake.so\n  hello" in capfd.readouterr().err
    monkeypatch.delitem(sys.modules, "noisy_pkg", raising=False)


def test_a_logging_handler_made_during_the_capture_writes_to_the_real_stderr_afterwards() -> None:
    """diffusers and transformers make their default handlers on first import, inside the capture."""
    stderr = sys.stderr
    logger = logging.getLogger("a_library_imported_quietly")
    with _noise.captured():
        handler = logging.StreamHandler()  # binds to sys.stderr as it is now: the capture's buffer
        logger.addHandler(handler)
    try:
        assert handler.stream is stderr
    finally:
        logger.removeHandler(handler)
