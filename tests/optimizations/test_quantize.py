from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from sdopt import optimize, plan
from sdopt.optimizations.quantize_int8 import DynamicInt8Linear
from sdopt.testing import fake_capabilities, run_pipeline
from tests.helpers import Snapshot

# The tiny pipelines' Linear layers are small; quantize all of them.
INT8 = {"name": "quantize_int8", "min_features": 0}
FOUR_BIT = {"name": "quantize_4bit", "min_features": 0}
HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None
HAS_TORCHAO = importlib.util.find_spec("torchao") is not None


def _linears(module: torch.nn.Module) -> list[torch.nn.Linear]:
    return [m for m in module.modules() if type(m) is torch.nn.Linear]


def test_int8_replaces_every_linear_of_the_denoiser_and_undo_is_exact(pipe, family, cpu_caps) -> None:
    snapshot = Snapshot(pipe, family)
    denoiser = getattr(pipe, "unet", None) or pipe.transformer
    count = len(_linears(denoiser))
    report = optimize(pipe, tier=None, extra=[INT8], caps=cpu_caps)
    assert [d.name for d in report.applied] == ["quantize_int8"]
    assert f"{count} Linear layers" in report.applied[0].reason
    assert _linears(denoiser) == []
    quantized = [m for m in denoiser.modules() if isinstance(m, DynamicInt8Linear)]
    assert len(quantized) == count
    calls = []
    hook = quantized[0].register_forward_hook(lambda *args: calls.append(1))
    image = run_pipeline(pipe, family)
    hook.remove()
    assert calls, "the int8 layers are really used"
    # Random tiny weights: int8 drift only, the image stays close (uint8 scale).
    assert np.abs(image.astype(int) - snapshot.output.astype(int)).mean() < 8
    report.undo()
    snapshot.assert_identical()


def test_int8_layer_matches_float_linear_within_quantization_error() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 512)
    inputs = torch.randn(4, 16, 256)
    expected = linear(inputs)
    quantized = DynamicInt8Linear(linear)
    error = (quantized(inputs) - expected).abs().max() / expected.abs().max()
    assert error < 0.02
    bf16 = quantized(inputs.bfloat16())  # after half_precision, inputs arrive in bf16
    assert bf16.dtype == torch.bfloat16 and (bf16.float() - expected).abs().max() / expected.abs().max() < 0.03


def test_int8_keeps_small_layers_in_float(sd_pipe, cpu_caps) -> None:
    small = [m for m in _linears(sd_pipe.unet) if min(m.in_features, m.out_features) < 32]
    report = optimize(sd_pipe, tier=None, extra=[{"name": "quantize_int8", "min_features": 32}], caps=cpu_caps)
    assert small and _linears(sd_pipe.unet) == small
    report.undo()


def test_int8_skips_with_reasons(sd_pipe, cpu_caps) -> None:
    reasons = {
        "no layer": plan(sd_pipe, tier=None, extra=["quantize_int8"], caps=cpu_caps).skipped[0].reason,
        "torchao": plan(sd_pipe, tier=None, extra=[{"name": "quantize_int8", "backend": "torchao"}], caps=cpu_caps)
        .skipped[0]
        .reason,
        "pytorch on cuda": plan(
            sd_pipe, tier=None, extra=[{"name": "quantize_int8", "backend": "pytorch"}], caps=fake_capabilities("cuda")
        )
        .skipped[0]
        .reason,
    }
    assert reasons["no layer"] == "no Linear layer with at least 128 input and output features"
    assert "pip install sdopt[torchao]" in reasons["torchao"]
    assert "CPU only" in reasons["pytorch on cuda"]
    report = optimize(sd_pipe, tier=None, extra=[INT8], caps=cpu_caps)
    again = plan(sd_pipe, tier=None, extra=[INT8], caps=cpu_caps)
    assert again.skipped[0].reason == "the denoiser is already quantized"
    report.undo()


def test_int8_on_cuda_is_planned_only_together_with_torch_compile(sd_pipe) -> None:
    caps = fake_capabilities("h100-80gb", packages={"torchao": True, "triton": True})
    alone = plan(sd_pipe, tier=None, extra=[INT8], caps=caps)
    assert alone.steps == []
    assert alone.skipped[0].reason.startswith("needs torch_compile in the same plan: torch_compile is not planned")
    together = plan(sd_pipe, tier=None, extra=[INT8, "torch_compile"], caps=caps)
    assert [step.name for step in together.steps] == ["quantize_int8", "torch_compile"]
    assert together.steps[0].config.backend == "torchao"


@pytest.mark.skipif(not HAS_TORCHAO, reason="torchao is not installed")
def test_torchao_backend_quantizes_weights_in_place_and_undo_restores_them(sd_pipe) -> None:
    caps = fake_capabilities("cpu", packages={"torchao": True})
    snapshot = Snapshot(sd_pipe, "sd")
    layer = _linears(sd_pipe.unet)[0]
    original = layer.weight
    report = optimize(sd_pipe, tier=None, extra=[{**INT8, "backend": "torchao"}], caps=caps)
    assert [d.name for d in report.applied] == ["quantize_int8"]
    assert type(layer.weight) not in (torch.Tensor, torch.nn.Parameter)  # a torchao quantized tensor
    report.undo()
    assert layer.weight is original
    snapshot.assert_identical()


def test_4bit_without_bitsandbytes_names_the_extra(sd_pipe, cpu_caps) -> None:
    reason = plan(sd_pipe, tier=None, extra=[FOUR_BIT], caps=cpu_caps).skipped[0].reason
    assert reason == "needs bitsandbytes (not installed); pip install sdopt[bnb]"
    assert (
        "MPS"
        in plan(sd_pipe, tier=None, extra=[FOUR_BIT], caps=fake_capabilities("mps", packages={"bitsandbytes": True}))
        .skipped[0]
        .reason
    )


@pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes is not installed")
def test_4bit_swaps_linears_for_nf4_layers_on_cpu_and_undo_is_exact(sd_pipe) -> None:
    caps = fake_capabilities("cpu", packages={"bitsandbytes": True})
    snapshot = Snapshot(sd_pipe, "sd")
    count = len(_linears(sd_pipe.unet))
    report = optimize(sd_pipe, tier=None, extra=[FOUR_BIT], caps=caps)
    assert [d.name for d in report.applied] == ["quantize_4bit"]
    four_bit = [m for m in sd_pipe.unet.modules() if type(m).__name__ == "Linear4bit"]
    assert len(four_bit) == count and _linears(sd_pipe.unet) == []
    assert four_bit[0].weight.dtype == torch.uint8  # packed 4-bit values
    image = run_pipeline(sd_pipe, "sd")
    assert np.isfinite(image).all() and image.shape == snapshot.output.shape
    report.undo()
    snapshot.assert_identical()


def test_the_int8_layer_takes_the_input_keyword_like_nn_linear() -> None:
    import torch

    from sdopt.optimizations.quantize_int8 import DynamicInt8Linear

    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 8)
    layer = DynamicInt8Linear(linear)
    x = torch.randn(2, 16)
    assert torch.equal(layer(input=x), layer(x))  # AnimateDiff's motion modules call proj_in(input=...)


def test_lora_base_layers_are_left_to_their_wrapper(cpu_caps) -> None:
    import torch

    from sdopt.optimizations._linear_layers import plain_linears

    class LoraLinear(torch.nn.Module):  # the shape of peft's lora.Linear
        def __init__(self, base: torch.nn.Linear) -> None:
            super().__init__()
            self.base_layer = base
            self.lora_A = torch.nn.ModuleDict({"default": torch.nn.Linear(base.in_features, 4, bias=False)})
            self.lora_B = torch.nn.ModuleDict({"default": torch.nn.Linear(4, base.out_features, bias=False)})

    model = torch.nn.Sequential(torch.nn.Linear(256, 256), LoraLinear(torch.nn.Linear(256, 256)))
    found = [(type(parent).__name__, attribute) for parent, attribute, _ in plain_linears(model, 128)]
    assert found == [("Sequential", "0")]


def test_int8_report_counts_the_layers_it_quantized(sd_pipe, cpu_caps) -> None:
    planned = plan(sd_pipe, tier=None, extra=[INT8], caps=cpu_caps).steps[0]
    count = len(_linears(sd_pipe.unet))
    report = optimize(sd_pipe, tier=None, extra=[INT8], caps=cpu_caps)
    swapped = sum(isinstance(m, DynamicInt8Linear) for m in sd_pipe.unet.modules())
    assert swapped == count > 0
    assert report.applied[0].reason.startswith(f"{swapped} Linear layers of the denoiser in int8")
    assert planned.config.min_features == 0
    report.undo()


class _FakeQuantizedWeight(torch.Tensor):
    """Stands in for torchao's tensor subclass (not installed here)."""


def test_torchao_count_includes_the_weights_it_replaced(sd_pipe, monkeypatch) -> None:
    # Before the fix the report said "0 Linear layers ... (torchao)": it counted what was left to swap.
    from sdopt.optimizations import quantize_int8

    def fake_torchao(denoiser, min_features):
        layers = [layer for _, _, layer in quantize_int8.plain_linears(denoiser, min_features)]
        originals = [layer.weight for layer in layers]
        for layer in layers:
            layer._parameters["weight"] = torch.Tensor._make_subclass(_FakeQuantizedWeight, layer.weight.detach())

        def undo():
            for layer, weight in zip(layers, originals, strict=True):
                layer._parameters["weight"] = weight

        return undo

    monkeypatch.setattr(quantize_int8, "_torchao_int8", fake_torchao)
    caps = fake_capabilities("cpu", packages={"torchao": True})
    count = len(_linears(sd_pipe.unet))
    report = optimize(sd_pipe, tier=None, extra=[{**INT8, "backend": "torchao"}], caps=caps)
    assert report.applied[0].reason == f"{count} Linear layers of the denoiser in int8 (torchao)"
    report.undo()


def test_fusion_comes_before_a_quantizer_and_leaves_the_unused_projections_alone(sd_pipe, cpu_caps) -> None:
    snapshot = Snapshot(sd_pipe, "sd")
    report = optimize(sd_pipe, tier=None, extra=[INT8, {"name": "fuse_qkv", "targets": ["denoiser"]}], caps=cpu_caps)
    assert [d.name for d in report.applied] == ["fuse_qkv", "quantize_int8"]
    fused = [m for m in sd_pipe.unet.modules() if getattr(m, "fused_projections", False)]
    assert fused
    for module in fused:
        if hasattr(module, "to_qkv"):  # self-attention: q, k and v fused
            assert isinstance(module.to_qkv, DynamicInt8Linear)
            unused, used = ("to_q", "to_k", "to_v"), ()
        else:  # cross-attention: k and v fused, q still called on its own
            assert isinstance(module.to_kv, DynamicInt8Linear)
            unused, used = ("to_k", "to_v"), ("to_q",)
        # The separate projections are never called once fused: they stay float views, not int8 copies.
        assert all(type(getattr(module, name)) is torch.nn.Linear for name in unused)
        assert all(isinstance(getattr(module, name), DynamicInt8Linear) for name in used)
    count = sum(isinstance(m, DynamicInt8Linear) for m in sd_pipe.unet.modules())
    assert report.applied[1].reason.startswith(f"{count} Linear layers")
    report.undo()
    snapshot.assert_identical()


def test_fusion_after_a_quantizer_is_refused_with_the_reason(sd_pipe, cpu_caps) -> None:
    first = optimize(sd_pipe, tier=None, extra=[INT8], caps=cpu_caps)
    second = plan(sd_pipe, tier=None, extra=[{"name": "fuse_qkv", "targets": ["denoiser"]}], caps=cpu_caps)
    assert second.steps == []
    assert "already quantized (DynamicInt8Linear)" in second.skipped[0].reason
    assert "before quantization" in second.skipped[0].reason
    first.undo()
