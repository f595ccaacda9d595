from __future__ import annotations

import numpy as np
import pytest

from sdopt import optimize, plan
from sdopt.testing import run_pipeline
from tests.helpers import Snapshot


def _fused(module) -> int:
    return sum(1 for m in module.modules() if getattr(m, "fused_projections", False))


def test_fuses_every_family_with_identical_output_and_exact_undo(pipe, family: str, cpu_caps) -> None:
    snapshot = Snapshot(pipe, family)
    denoiser = pipe.unet if family in ("sd", "sdxl") else pipe.transformer
    report = optimize(pipe, tier=None, extra=["fuse_qkv"], caps=cpu_caps)
    assert [d.name for d in report.applied] == ["fuse_qkv"]
    assert _fused(denoiser) > 0 and _fused(pipe.vae) > 0
    assert any(name.endswith(("to_qkv", "to_kv")) for name, _ in denoiser.named_modules())
    np.testing.assert_allclose(run_pipeline(pipe, family), snapshot.output, atol=1e-4)
    report.undo()
    # diffusers' own unfuse leaves the fused layers behind; ours must not.
    assert not any(name.endswith(("to_qkv", "to_kv", "to_added_qkv")) for name, _ in denoiser.named_modules())
    snapshot.assert_identical()


def test_already_fused_is_skipped(sd_pipe, cpu_caps) -> None:
    report = optimize(sd_pipe, tier=None, extra=["fuse_qkv"], caps=cpu_caps)
    again = plan(sd_pipe, tier=None, extra=["fuse_qkv"], caps=cpu_caps)
    assert again.steps == []
    assert "no unfused attention layers" in again.skipped[0].reason
    report.undo()


@pytest.mark.parametrize("targets", [["denoiser"], ["vae"]])
def test_targets_limit_what_is_fused(sd_pipe, cpu_caps, targets) -> None:
    report = optimize(sd_pipe, tier=None, extra=[{"name": "fuse_qkv", "targets": targets}], caps=cpu_caps)
    assert (_fused(sd_pipe.unet) > 0) == ("denoiser" in targets)
    assert (_fused(sd_pipe.vae) > 0) == ("vae" in targets)
    report.undo()


def test_added_kv_processors_are_skipped_with_the_reason(sd_pipe, cpu_caps) -> None:
    from diffusers.models.attention_processor import AttnAddedKVProcessor

    for module in sd_pipe.unet.modules():
        if hasattr(module, "set_processor"):
            module.set_processor(AttnAddedKVProcessor())
    result = plan(sd_pipe, tier=None, extra=[{"name": "fuse_qkv", "targets": ["denoiser"]}], caps=cpu_caps)
    assert "added KV projections" in result.skipped[0].reason


def test_a_failure_on_the_second_model_unfuses_the_first(sd_pipe, cpu_caps, monkeypatch) -> None:
    from sdopt.errors import OptimizationFailed

    snapshot = Snapshot(sd_pipe, "sd")

    def broken(self) -> None:
        raise RuntimeError("vae cannot fuse")

    monkeypatch.setattr(type(sd_pipe.vae), "fuse_qkv_projections", broken)
    with pytest.raises(OptimizationFailed, match="vae cannot fuse"):
        optimize(sd_pipe, tier=None, extra=["fuse_qkv"], caps=cpu_caps, strict=True)
    assert _fused(sd_pipe.unet) == 0
    monkeypatch.undo()
    snapshot.assert_identical()


def test_attention_without_separate_projections_is_skipped(cpu_caps) -> None:
    from sdopt.optimizations._attention import attention_modules
    from sdopt.testing import tiny_pipeline

    pipe = tiny_pipeline("flux")
    for module in attention_modules(pipe.transformer):
        del module.to_q  # an attention class built without to_q (PRX's) still has fuse_projections
    result = plan(pipe, tier=None, extra=[{"name": "fuse_qkv", "targets": ["denoiser"]}], caps=cpu_caps)
    assert "with separate to_q/to_k/to_v Linear projections" in result.skipped[0].reason
