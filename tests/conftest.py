"""Shared fixtures: one CPU thread, no hub access, fresh tiny pipelines per test."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402

from sdopt import detect  # noqa: E402
from sdopt.testing import FAMILIES, fake_capabilities, run_pipeline, tiny_pipeline  # noqa: E402

# Two threads on a busy 2-core machine can be 10-100x slower than one.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread_after_each_test():
    """A test that leaves torch's thread count changed fails (and the count is reset): left at 2 in a test
    worker, every later test in it ran 10-15x slower while the other worker was busy (commands run in-process
    did that until they put their count back; a full run took 21 min instead of ~10)."""
    yield
    threads = torch.get_num_threads()
    if threads != 1:
        torch.set_num_threads(1)
        pytest.fail(f"the test left torch at {threads} threads (this suite runs at 1): put the count back")


@pytest.fixture(scope="session", autouse=True)
def _machine_detected_once() -> None:
    """Each test process detects this machine before its first test (as a serial run would early
    on): detect() is cached per process, and a test that patches its probes must not be the first."""
    detect()


@pytest.fixture(params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def pipe(family: str):
    """A fresh tiny pipeline of ``family``, called once so lazily created hooks already exist."""
    pipeline = tiny_pipeline(family)
    run_pipeline(pipeline, family)
    return pipeline


@pytest.fixture
def sd_pipe():
    pipeline = tiny_pipeline("sd")
    run_pipeline(pipeline, "sd")
    return pipeline


@pytest.fixture
def cpu_caps():
    return fake_capabilities("cpu")


@pytest.fixture
def cuda_caps():
    return fake_capabilities("cuda", cuda_capability=(8, 9), vram_gb=24)
