"""Optimized pipelines can be deep-copied and pickled: the copy carries its own wrappers and state."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import torch

from sdopt import calls, optimize
from sdopt.testing import fake_capabilities, run_pipeline, tiny_pipeline

STEPS = ["half_precision", {"name": "step_budget", "steps": 3}, "guidance", {"name": "resolution", "scale": 0.5}]


def _optimized():
    pipe = tiny_pipeline("sd")
    report = optimize(pipe, tier=None, extra=STEPS, caps=fake_capabilities("cpu-amx"))
    assert len(report.applied) == 4, report
    return pipe


def test_a_deep_copy_runs_its_own_vae_and_keeps_its_own_call_layers() -> None:
    pipe = _optimized()
    expected = run_pipeline(pipe, "sd")
    clone = copy.deepcopy(pipe)
    assert clone.vae.decode.vae is clone.vae and pipe.vae.decode.vae is pipe.vae
    assert clone.unet._forward_pre_hooks and clone.unet._forward_hooks  # the dtype boundary came along
    layers = clone.__dict__["_sdopt_call_layers"]
    assert [layer.name for layer in layers] == ["step_budget", "guidance", "resolution"]
    assert all(a is not b for a, b in zip(layers, pipe.__dict__["_sdopt_call_layers"], strict=True))
    assert np.array_equal(run_pipeline(clone, "sd"), expected)
    with torch.no_grad():
        for parameter in clone.vae.parameters():
            parameter.zero_()  # the original's decode must not see this
    assert np.array_equal(run_pipeline(pipe, "sd"), expected)
    assert not np.array_equal(run_pipeline(clone, "sd"), expected)


def test_pickle_round_trip_even_in_a_process_that_never_wrapped_the_class() -> None:
    pipe = _optimized()
    expected = run_pipeline(pipe, "sd")
    data = pickle.dumps(pipe)
    # Forget the wrapper class, as a fresh process would not have it: pickle rebuilds it by name.
    name = type(pipe).__qualname__
    delattr(calls, name)
    calls._wrapper_class.cache_clear()
    loaded = pickle.loads(data)
    assert type(loaded).__name__ == "StableDiffusionPipeline" and type(loaded).__qualname__ == name
    assert np.array_equal(run_pipeline(loaded, "sd"), expected)


def test_wrapper_names_round_trip_and_unknown_classes_say_so() -> None:
    import pytest

    assert calls._unescape(calls._escape("my_pkg.sub__mod")) == "my_pkg.sub__mod"
    with pytest.raises(AttributeError, match="cannot be imported"):
        calls.__getattr__("Wrapped____umain___SMyPipeline")
