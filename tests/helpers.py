"""Assertions shared by the tests."""

from __future__ import annotations

from typing import Any

import numpy as np

from sdopt.testing import pipeline_state, run_pipeline, state_differences


class Snapshot:
    """The output and full state of a pipeline at one moment, to compare with later."""

    def __init__(self, pipe: Any, family: str) -> None:
        self.pipe = pipe
        self.family = family
        self.output = run_pipeline(pipe, family)
        self.state = pipeline_state(pipe)

    def assert_identical(self) -> None:
        differences = state_differences(self.state, pipeline_state(self.pipe))
        assert differences == [], differences[:10]
        output = run_pipeline(self.pipe, self.family)
        assert np.array_equal(output, self.output), f"max abs diff {np.abs(output - self.output).max()}"

    def assert_state_changed(self) -> None:
        assert state_differences(self.state, pipeline_state(self.pipe)) != []


def ddpm_pipeline() -> Any:
    """A pipeline of a family sdopt knows nothing about: an unconditional DDPM UNet, no VAE."""
    from sdopt.testing import zoo_pipeline

    return zoo_pipeline("DDPMPipeline")


def counting_original_calls(runner: Any) -> list[int]:
    """A list that grows by one each time a stand-in ``runner`` (OpenVINO's, int8's) calls the PyTorch
    method it stands in for (its ``original``)."""
    calls: list[int] = []
    original = runner.original

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    runner.original = counted
    return calls
