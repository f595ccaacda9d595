from __future__ import annotations

import numpy as np
import pytest
import torch

from sdopt import optimize, plan
from sdopt.testing import fake_capabilities, run_pipeline, tiny_autoencoder_tiny, tiny_pipeline
from tests.helpers import Snapshot

LATENTS = {"sd": 4, "sdxl": 4, "sd3": 4, "flux": 1, "pixart": 4}


@pytest.fixture
def saved_tiny_vae(tmp_path_factory):
    def save(latent_channels: int) -> str:
        path = tmp_path_factory.mktemp(f"taesd{latent_channels}")
        tiny_autoencoder_tiny(latent_channels).save_pretrained(path)
        return str(path)

    return save


def test_swaps_in_a_tiny_vae_loaded_from_disk_and_restores_the_original(pipe, family, saved_tiny_vae, cpu_caps) -> None:
    snapshot = Snapshot(pipe, family)
    original = pipe.vae
    source = saved_tiny_vae(LATENTS[family])
    report = optimize(pipe, tier=None, extra=[{"name": "tiny_vae", "source": source}], caps=cpu_caps)
    assert [d.name for d in report.applied] == ["tiny_vae"]
    assert type(pipe.vae).__name__ == "AutoencoderTiny" and pipe.config.vae[1] == "AutoencoderTiny"
    calls = []
    hook = pipe.vae.decoder.register_forward_hook(lambda *args: calls.append(1))
    image = run_pipeline(pipe, family)
    hook.remove()
    assert calls and image.shape == snapshot.output.shape and np.isfinite(image).all()
    report.undo()
    assert pipe.vae is original
    snapshot.assert_identical()


def test_runs_before_half_precision_so_the_tiny_vae_is_cast_too(saved_tiny_vae) -> None:
    pipe = tiny_pipeline("sdxl")
    source = saved_tiny_vae(4)
    extra = ["half_precision", {"name": "tiny_vae", "source": source}]
    report = optimize(pipe, tier=None, extra=extra, caps=fake_capabilities("t4-16gb"))
    assert [d.name for d in report.applied] == ["tiny_vae", "half_precision"]
    # AutoencoderTiny is fp16-safe (force_upcast=False), so it is cast along with the UNet.
    assert {p.dtype for p in pipe.vae.parameters()} == {torch.float16}
    assert np.isfinite(run_pipeline(pipe, "sdxl")).all()
    report.undo()
    assert type(pipe.vae).__name__ == "AutoencoderKL"


def test_unloadable_weights_are_skipped_with_the_reason(sd_pipe, cpu_caps) -> None:
    result = plan(sd_pipe, tier=None, extra=["tiny_vae"], caps=cpu_caps)
    reason = result.skipped[0].reason
    assert result.steps == []
    assert "cannot load the tiny VAE 'madebyollin/taesd'" in reason and "local directory" in reason


def test_wrong_family_weights_and_unknown_families_are_skipped(saved_tiny_vae, cpu_caps) -> None:
    wrong = plan(
        tiny_pipeline("flux"), tier=None, extra=[{"name": "tiny_vae", "source": saved_tiny_vae(4)}], caps=cpu_caps
    )
    assert "4 latent channels, this pipeline's VAE has 1" in wrong.skipped[0].reason
    unknown = plan(tiny_pipeline("pixart"), tier=None, extra=["tiny_vae"], caps=cpu_caps)
    assert "no tiny VAE is known for the pixart family" in unknown.skipped[0].reason


def test_already_tiny_is_skipped(sd_pipe, saved_tiny_vae, cpu_caps) -> None:
    extra = [{"name": "tiny_vae", "source": saved_tiny_vae(4)}]
    report = optimize(sd_pipe, tier=None, extra=extra, caps=cpu_caps)
    assert plan(sd_pipe, tier=None, extra=extra, caps=cpu_caps).skipped[0].reason == "already a tiny VAE"
    report.undo()


class _FakeModel:
    def __init__(self, repo_id: str) -> None:
        self.repo_id = repo_id

    def eval(self) -> _FakeModel:
        return self


def _fake_hub(monkeypatch, cached: set[str], reachable: bool) -> list[tuple[str, bool]]:
    """A fake model class whose from_pretrained only finds ``cached`` repos locally, and a Hub that
    answers TCP connects or not; returns the from_pretrained calls as (repo, local_files_only)."""
    import socket

    import diffusers
    from huggingface_hub import constants

    from sdopt import weights as _pretrained

    calls: list[tuple[str, bool]] = []

    class FakeTinyVae:
        @classmethod
        def from_pretrained(cls, repo_id: str, local_files_only: bool = False) -> _FakeModel:
            calls.append((repo_id, local_files_only))
            if local_files_only and repo_id not in cached:
                raise OSError(f"{repo_id} not in the cache")
            return _FakeModel(repo_id)

    def connect(address, timeout=None):
        if not reachable:
            raise OSError("[Errno -2] Name or service not known")
        return socket.socket()

    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setattr(diffusers, "FakeTinyVae", FakeTinyVae, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "create_connection", connect)
    monkeypatch.setattr(_pretrained, "_cache", {})
    return calls


def test_a_hub_model_in_the_local_cache_loads_without_touching_the_network(monkeypatch) -> None:
    from sdopt.weights import load_pretrained

    calls = _fake_hub(monkeypatch, cached={"someone/taesd"}, reachable=False)
    assert load_pretrained("FakeTinyVae", "someone/taesd").repo_id == "someone/taesd"
    assert calls == [("someone/taesd", True)]


def test_an_unreachable_hub_fails_at_once_with_the_reason(monkeypatch) -> None:
    from sdopt.weights import load_pretrained

    calls = _fake_hub(monkeypatch, cached=set(), reachable=False)
    with pytest.raises(OSError, match="not in the local Hugging Face cache and .* cannot be reached"):
        load_pretrained("FakeTinyVae", "someone/taesd")
    assert calls == [("someone/taesd", True)]  # no online attempt: no minute of retries
    with pytest.raises(OSError):  # the failure is remembered for the process
        load_pretrained("FakeTinyVae", "someone/taesd")
    assert len(calls) == 1


def test_behind_a_proxy_the_download_is_left_to_huggingface_hub(monkeypatch) -> None:
    from sdopt.weights import load_pretrained

    calls = _fake_hub(monkeypatch, cached=set(), reachable=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert load_pretrained("FakeTinyVae", "someone/taesd").repo_id == "someone/taesd"
    assert calls == [("someone/taesd", True), ("someone/taesd", False)]


def test_a_reachable_hub_is_used_for_a_model_not_cached_yet(monkeypatch) -> None:
    from sdopt.weights import load_pretrained

    calls = _fake_hub(monkeypatch, cached=set(), reachable=True)
    assert load_pretrained("FakeTinyVae", "someone/taesd").repo_id == "someone/taesd"
    assert calls == [("someone/taesd", True), ("someone/taesd", False)]


def test_plans_and_dry_runs_never_touch_the_network(monkeypatch, sd_pipe, cpu_caps) -> None:
    import socket

    from huggingface_hub import constants

    from sdopt import optimize, plan
    from sdopt import weights as _pretrained

    def no_network(*args, **kwargs):
        raise AssertionError("a plan tried the network")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(_pretrained, "_cache", {})
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    # Not on disk: planned (optimize downloads it and checks it then), nothing fetched now.
    assert [s.name for s in plan(sd_pipe, tier=None, extra=["tiny_vae"], caps=cpu_caps).steps] == ["tiny_vae"]
    dry = optimize(sd_pipe, tier=None, extra=["tiny_vae"], caps=cpu_caps, dry_run=True)
    assert [d.name for d in dry.planned] == ["tiny_vae"]
    # With HF_HUB_OFFLINE set, optimize could not fetch it either: the plan says so.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    offline = plan(sd_pipe, tier=None, extra=["tiny_vae"], caps=cpu_caps)
    assert "HF_HUB_OFFLINE is set" in offline.skipped[0].reason


def test_a_remembered_load_failure_keeps_no_callers_frames_alive(tmp_path) -> None:
    # The failure is kept for the process's life; its traceback's frames held the caller's pipeline (a bench
    # kept every lane's UNet and compiled OpenVINO model alive, and was OOM-killed at its fourth lane).
    import contextlib
    import gc
    import logging
    import weakref

    from sdopt.weights import load_pretrained

    class Pipeline:  # what the caller's frame holds
        pass

    def caller(source: str) -> weakref.ref:
        pipeline = Pipeline()
        with contextlib.suppress(OSError):
            load_pretrained("AutoencoderTiny", source)
        return weakref.ref(pipeline)

    missing = str(tmp_path / "no-such-vae")
    (tmp_path / "no-such-vae").mkdir()  # a local path: loading fails without the network
    logging.disable(logging.CRITICAL)  # pytest's log capture would keep records of the failure, frames and all
    try:
        refs = [caller(missing), caller(missing)]  # the first fails and is remembered, the second re-raises it
    finally:
        logging.disable(logging.NOTSET)
    gc.collect()
    assert [ref() for ref in refs] == [None, None]
