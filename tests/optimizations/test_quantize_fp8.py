from __future__ import annotations

import pytest
import torch

from sdopt import plan
from sdopt.optimizations._torchao import quantize_weights
from sdopt.testing import fake_capabilities, tiny_pipeline
from tests.helpers import Snapshot

FP8 = {"name": "quantize_fp8", "min_features": 0}
GPU_PACKAGES = {"torchao": True, "triton": True}


def _steps(result) -> list[str]:
    return [step.name for step in result.steps]


def test_planned_on_sm89_and_newer_with_compile_after_fusion() -> None:
    pipe = tiny_pipeline("flux")
    h200 = fake_capabilities("h200-141gb", packages=GPU_PACKAGES)
    result = plan(pipe, tier=None, extra=[FP8, "torch_compile", "fuse_qkv"], caps=h200)
    assert _steps(result) == ["fuse_qkv", "quantize_fp8", "torch_compile"]
    alone = plan(pipe, tier=None, extra=[FP8], caps=h200)
    assert alone.steps == [] and "needs torch_compile in the same plan" in alone.skipped[0].reason


@pytest.mark.parametrize(
    ("caps", "reason"),
    [
        (fake_capabilities("a100-80gb", packages=GPU_PACKAGES), "compute capability 8.9 or newer (this GPU: sm_80)"),
        (fake_capabilities("h200-141gb", packages={"triton": True}), "torchao"),
        (fake_capabilities("cpu-amx", packages=GPU_PACKAGES), "cuda"),
    ],
)
def test_skipped_with_the_reason_elsewhere(caps, reason: str) -> None:
    result = plan(tiny_pipeline("flux"), tier=None, extra=[FP8, "torch_compile"], caps=caps)
    assert "quantize_fp8" not in _steps(result)
    assert reason in next(d.reason for d in result.skipped if d.name == "quantize_fp8")


def test_no_tier_plans_it_without_a_gpu_measurement() -> None:
    h200 = fake_capabilities("h200-141gb", packages=GPU_PACKAGES)
    for tier in ("conservative", "balanced", "fast", "ultra", "low-memory"):
        assert "quantize_fp8" not in _steps(plan(tiny_pipeline("flux"), tier=tier, caps=h200))


class _FakeFloat8(torch.Tensor):
    """Stands in for torchao's float8 tensor (no float8 GEMMs on this CPU)."""


def _fake_quantize(model, config, filter_fn):
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and filter_fn(module, name):
            module._parameters["weight"] = torch.Tensor._make_subclass(_FakeFloat8, module.weight.detach().clone())


def test_weights_are_replaced_in_place_and_undo_puts_the_same_parameters_back() -> None:
    pipe = tiny_pipeline("flux")
    snapshot = Snapshot(pipe, "flux")
    linears = [m for m in pipe.transformer.modules() if type(m) is torch.nn.Linear]
    originals = [layer.weight for layer in linears]
    undo = quantize_weights(pipe.transformer, 0, config=None, quantize=_fake_quantize)
    assert all(type(layer.weight) is _FakeFloat8 for layer in linears)
    undo()
    assert all(layer.weight is weight for layer, weight in zip(linears, originals, strict=True))
    snapshot.assert_identical()


def test_a_quantizer_that_raises_leaves_every_weight_as_it_was() -> None:
    pipe = tiny_pipeline("flux")
    linears = [m for m in pipe.transformer.modules() if type(m) is torch.nn.Linear]
    originals = [layer.weight for layer in linears]

    def half_done(model, config, filter_fn):
        _fake_quantize(model, config, lambda module, name: module is linears[0])
        raise RuntimeError("no float8 kernel")

    with pytest.raises(RuntimeError, match="no float8 kernel"):
        quantize_weights(pipe.transformer, 0, config=None, quantize=half_done)
    assert all(layer.weight is weight for layer, weight in zip(linears, originals, strict=True))
