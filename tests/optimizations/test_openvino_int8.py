"""openvino_runtime's int8: the first pipeline call runs PyTorch exactly while each layer's input range is
observed (hooks removed after), the denoiser converts with FakeQuantize layers at the end of that call,
later calls run the int8 model within a stated tolerance, a fresh runner reads it from disk without
converting, a model below the floor is tried again with its most sensitive layers left float, then falls back to the
plain conversion, bad keep_float names are refused
with the children listed, and undo is exact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sdopt import optimize, plan
from sdopt.footprint import GB
from sdopt.optimizations._openvino import OpenVinoRunner
from sdopt.optimizations._openvino_int8 import (
    RangeObserver,
    fake_quantized,
    layer_snr_db,
    quantizable,
)
from sdopt.simulation.architectures import real_pipeline
from sdopt.testing import fake_capabilities, tiny_pipeline
from tests.helpers import counting_original_calls

WITH_OPENVINO = fake_capabilities("cpu-avx2", packages={"openvino": True})
CALL = {"prompt": "a photo", "num_inference_steps": 3, "output_type": "np"}


def _image(pipe: Any) -> np.ndarray:
    return pipe(**CALL, generator=torch.Generator().manual_seed(0)).images


def _int8(pipe: Any, cache: Path, **options: Any) -> Any:
    step = {"name": "openvino_runtime", "int8": True, "vae": False, "cache_dir": str(cache), **options}
    return optimize(pipe, tier=None, extra=[step])


def _runner(pipe: Any) -> OpenVinoRunner:
    runner = pipe.unet.__dict__["forward"]
    assert isinstance(runner, OpenVinoRunner)
    return runner


def _hooks(module: torch.nn.Module) -> int:
    return sum(len(layer._forward_pre_hooks) for layer in module.modules())


# ---- the pieces (no openvino needed)


def test_calibration_keeps_a_few_evenly_spaced_calls_and_checks_the_first_middle_and_last() -> None:
    from sdopt.optimizations._openvino_int8 import CalibrationCalls

    calls = CalibrationCalls()
    assert calls.checked() == []
    for index in range(3):
        calls.add(index)
    assert calls.checked() == [0, 1, 2]
    for index in range(3, 20):
        calls.add(index)
    assert calls.count == 20 and len(calls.spaced) <= CalibrationCalls.KEPT
    assert calls.spaced == [0, 4, 8, 12, 16]  # every 4th: the stride doubled twice
    assert calls.checked() == [0, 8, 19]


def test_the_observer_records_each_layers_input_range_and_leaves_no_hook() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    observer = RangeObserver(model, keep_float=())
    first, second = torch.randn(1, 3, 16, 16), 3 * torch.randn(1, 3, 16, 16)
    model(first)
    model(second)
    low, high = observer.ranges["0"]
    assert low == pytest.approx(min(first.min(), second.min()).item())
    assert high == pytest.approx(max(first.max(), second.max()).item())
    assert observer.ranges["2"][0] == 0.0  # after the ReLU
    observer.close()
    assert _hooks(model) == 0
    model(10 * first)
    assert observer.ranges["0"][1] == pytest.approx(high)  # closed: no longer observing


def test_small_products_and_kept_children_stay_float() -> None:
    pipe = tiny_pipeline("sd")
    names = [name for name, _ in quantizable(pipe.unet, keep_float=("conv_in", "time_embedding"))]
    assert names and not any(name.startswith(("conv_in", "time_embedding")) for name in names)
    assert "conv_out" in names
    observer = RangeObserver(pipe.unet, keep_float=("conv_in", "time_embedding"))
    _image(pipe)
    observer.close()
    # the resnets' timestep projections see one row per image: too small to pay for quantizing
    assert not any(name.endswith("time_emb_proj") for name in observer.ranges)
    # cross-attention keys see 77 text tokens per image; the 4x4 latents' queries (32 rows) are too few
    assert any(name.endswith("attn2.to_k") for name in observer.ranges)
    assert not any(name.endswith("to_q") for name in observer.ranges)
    assert "conv_out" in observer.ranges and "down_blocks.0.resnets.0.conv1" in observer.ranges


def test_fake_quantized_layers_round_and_are_put_back_even_on_error() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Linear(16, 16))
    sample = torch.randn(2, 3, 16, 16)
    exact = model(sample)
    with fake_quantized(model, {"0": (-4.0, 4.0), "1": (-4.0, 4.0)}) as count:
        rounded = model(sample)
    assert count == 2 and type(model[0]) is torch.nn.Conv2d and type(model[1]) is torch.nn.Linear
    error = (rounded - exact).pow(2).mean() / exact.pow(2).mean()
    assert 0 < error < 1e-3  # 256 activation levels, 255 weight levels: rounded, not broken
    with pytest.raises(RuntimeError), fake_quantized(model, {"0": (-1.0, 1.0)}):
        raise RuntimeError("the trace failed")
    assert type(model[0]) is torch.nn.Conv2d
    assert torch.equal(model(sample), exact)


@pytest.mark.parametrize("bits", [8, 7])
def test_weights_take_the_levels_their_width_allows(bits: int) -> None:
    # Without VNNI, oneDNN sums pairs of u8 x i8 products in a saturating int16: 255 x 127 x 2 overflows it,
    # 255 x 63 x 2 does not. So there the weights get 7 bits.
    torch.manual_seed(0)
    layer = torch.nn.Linear(1024, 2, bias=False)
    model = torch.nn.Sequential(layer)
    with fake_quantized(model, {"0": (0.0, 1.0)}, weight_bits=bits) as count:
        # One-hot rows (0 and 1 are exact in u8 over [0, 1]): the output is the weights as the kernel sees them.
        seen = model(torch.eye(1024)).T
        scales = model[0].weight_scales[:, None]
    levels = seen / scales
    top = 2 ** (bits - 1) - 1
    assert count == 1
    assert torch.allclose(levels, levels.round(), atol=1e-3)  # on the grid
    assert int(levels.round().abs().max()) == top  # each row's largest weight takes the top level
    assert min(len(row.round().unique()) for row in levels) > top  # finer than the next width down
    assert torch.allclose(seen, layer.weight, atol=float(scales.max()) / 2 + 1e-6)


def test_the_weight_width_follows_the_cpus_int8_units(openvino: Any, tmp_path: Path) -> None:
    widths = {}
    for profile in ("cpu-avx2", "cpu-vnni"):
        pipe = tiny_pipeline("sd")
        caps = fake_capabilities(profile, packages={"openvino": True})
        step = {"name": "openvino_runtime", "int8": True, "vae": False, "cache_dir": str(tmp_path)}
        optimize(pipe, tier=None, extra=[step], caps=caps)
        runner = _runner(pipe)
        widths[profile] = runner.int8_weight_bits, runner._int8_signature("s")
    assert widths["cpu-avx2"][0] == 7 and widths["cpu-vnni"][0] == 8
    assert "weight_bits=7" in widths["cpu-avx2"][1]  # a 7-bit model is never read back as an 8-bit one
    assert "weight_bits" not in widths["cpu-vnni"][1]  # 8-bit keys unchanged: cached models still found


def test_layers_called_with_input_as_a_keyword_are_observed_and_swapped() -> None:
    # diffusers' motion modules call proj_in(input=...): a hook that read args[0] broke AnimateDiff's call
    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(8, 8)

        def forward(self, tensor: torch.Tensor) -> torch.Tensor:
            return self.proj(input=tensor)

    torch.manual_seed(0)
    block, sample = Block(), torch.randn(128, 8)
    observer = RangeObserver(block, keep_float=())
    exact = block(sample)
    observer.close()
    assert "proj" in observer.ranges
    with fake_quantized(block, observer.ranges):
        rounded = block(sample)
    assert not torch.equal(rounded, exact) and torch.allclose(rounded, exact, atol=0.05)
    assert layer_snr_db(block, lambda: block(sample), observer.ranges)["proj"] > 30


def test_sdopts_own_verification_call_calibrates_nothing() -> None:
    from sdopt.verification import run_verification

    pipe = tiny_pipeline("sd")
    observer = RangeObserver(pipe.unet, keep_float=())
    run_verification(pipe)  # a placeholder prompt at a made-up size: not the app's activations
    assert observer.ranges == {}
    _image(pipe)
    observer.close()
    assert observer.ranges


def test_layer_snr_ranks_the_layer_int8_hurts_most_lowest() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 64))
    sample = torch.randn(128, 64)
    exact = model(sample)
    observer = RangeObserver(model, keep_float=())
    model(sample)
    observer.close()
    ranges = dict(observer.ranges)
    ranges["1"] = (-1000.0, 1000.0)  # a range far wider than its inputs: coarse steps, a poor int8 layer
    scores = layer_snr_db(model, lambda: model(sample), ranges)
    assert scores["1"] < scores["0"] - 20 and scores["0"] > 30
    assert torch.equal(model(sample), exact) and _hooks(model) == 0


def test_keep_float_must_name_children_of_the_denoiser() -> None:
    extra = [{"name": "openvino_runtime", "int8": True, "keep_float": ["conv_inn"]}]
    result = plan(tiny_pipeline("sd"), tier=None, extra=extra, caps=WITH_OPENVINO)
    (skipped,) = [d for d in result.skipped if d.name == "openvino_runtime"]
    assert "'conv_inn'" in skipped.reason and "conv_in" in skipped.reason.split("it has:")[1]
    (step,) = plan(
        tiny_pipeline("sd"), tier=None, extra=[{**extra[0], "keep_float": ["auto"]}], caps=WITH_OPENVINO
    ).steps
    assert step.config.keep_float == ("conv_in", "conv_out", "time_embedding")
    assert step.optimization.lossy_with(step.config) is True


def test_balanced_fast_and_ultra_take_int8_for_unets_up_to_sd15s_size_and_keep_bf16_above() -> None:
    epyc = fake_capabilities("cpu-epyc-bf16", packages={"openvino": True, "torchao": True})
    for arch, int8 in (("sd15", True), ("sdxl", False)):
        for tier in ("balanced@5", "fast@6", "ultra@6"):
            result = plan(real_pipeline(arch, device="meta"), tier=tier, caps=epyc)
            (step,) = [step for step in result.steps if step.name == "openvino_runtime"]
            assert (step.config.precision, step.config.int8) == ("bf16", int8), (arch, tier)
            assert "half_precision" in [step.name for step in result.steps]
    # not on the AVX2 class nor on AMX (unmeasured there)
    for profile in ("cpu-avx2", "cpu-amx"):
        caps = fake_capabilities(profile, packages={"openvino": True, "torchao": True})
        for tier in ("balanced@5", "fast@6"):
            steps = plan(real_pipeline("sd15", device="meta"), tier=tier, caps=caps).steps
            assert not any(step.name == "openvino_runtime" and step.config.int8 for step in steps), (profile, tier)
    # balanced@4 kept bf16 where balanced@5 takes int8
    steps = plan(real_pipeline("sd15", device="meta"), tier="balanced@4", caps=epyc).steps
    (step,) = [step for step in steps if step.name == "openvino_runtime"]
    assert (step.config.precision, step.config.int8) == ("bf16", False)


def test_the_footprint_counts_the_float32_weights_the_int8_trace_holds() -> None:
    epyc = fake_capabilities("cpu-epyc-bf16", packages={"openvino": True})
    pipe = real_pipeline("sd15", device="meta")
    extra = {"name": "openvino_runtime", "precision": "bf16"}
    plain = plan(pipe, tier=None, extra=[extra], caps=epyc).footprint
    int8 = plan(pipe, tier=None, extra=[{**extra, "int8": True}], caps=epyc).footprint
    unet_weights = sum(p.numel() for p in pipe.unet.parameters())
    assert plain.build_gb == 0
    assert int8.build_gb * GB == pytest.approx(4.0 * unet_weights, rel=0.01)  # measured +3.0 GB on SD1.5
    assert int8.peak_gb == pytest.approx(int8.total_gb + max(int8.activations_gb, int8.build_gb))


# ---- running it


def test_calibrates_on_the_first_call_then_runs_int8_and_undoes_exactly(openvino: Any, tmp_path: Path) -> None:
    pipe = tiny_pipeline("sd")
    untouched = _image(pipe)
    report = _int8(pipe, tmp_path)
    runner = _runner(pipe)
    assert runner.int8_keep_float == ("conv_in", "conv_out", "time_embedding")
    first = _image(pipe)  # PyTorch throughout, observed; converted at its end
    np.testing.assert_array_equal(first, untouched)
    assert runner.openvino_calls == 0 and runner.conversions == 1
    assert runner.observer is None and _hooks(pipe.unet) == 0
    (event,) = runner.events
    assert "with int8 layers" in event and "int8 in" in event and "3 of its calls, pooled" in event
    second = _image(pipe)
    assert runner.openvino_calls > 0
    assert np.abs(second - untouched).max() < 0.1  # int8 on random weights: visibly close, not identical
    assert "int8" in report.after_calls["openvino_runtime"]
    report.undo()
    assert "forward" not in pipe.unet.__dict__ and "_sdopt_call_layers" not in pipe.__dict__
    np.testing.assert_array_equal(_image(pipe), untouched)


def test_a_fresh_runner_reads_the_int8_model_from_disk_without_converting(openvino: Any, tmp_path: Path) -> None:
    first_pipe = tiny_pipeline("sd")
    _int8(first_pipe, tmp_path)
    _image(first_pipe)
    assert _runner(first_pipe).conversions == 1
    pipe = tiny_pipeline("sd")  # the same weights, as in a new process
    _int8(pipe, tmp_path)
    runner = _runner(pipe)
    pytorch_calls = counting_original_calls(runner)
    denoiser_calls: list[int] = []
    pipe.unet.register_forward_pre_hook(lambda module, args: denoiser_calls.append(1))
    _image(pipe)
    assert runner.conversions == 0 and runner.cache_hits == 1 and runner.observer is None
    # as compiled when it was built: imported, not compiled again
    assert "int8 compiled model read from the on-disk cache" in runner.events[0]
    # accepted on this machine when it was built: its first call is answered by it, not by PyTorch
    assert "without PyTorch" in runner.events[0] and (runner.trusted, len(pytorch_calls)) == (1, 0)
    assert runner.openvino_calls == len(denoiser_calls) > 0


def test_int8_below_the_floor_falls_back_to_the_plain_conversion(openvino: Any, tmp_path: Path) -> None:
    pipe = tiny_pipeline("sd")
    untouched = _image(pipe)
    _int8(pipe, tmp_path, min_snr_db=70)  # f32 keeps ~100 dB on the tiny UNet, int8 ~30
    _image(pipe)
    runner = _runner(pipe)
    retried, refused, kept = runner.events
    # first all layers, then again with the most sensitive 5% (at least one) left f32, then without int8
    assert "int8 in all" in retried and "the 1 layers with the lowest own SNR" in retried and "stay f32" in retried
    assert "int8 refused" in refused and "converting without int8" in refused
    assert kept.startswith("OpenVINO f32 for") and "int8" not in kept
    assert runner.conversions == 3
    np.testing.assert_allclose(_image(pipe), untouched, atol=1e-4)
    # a new process (the same weights) remembers the refusal instead of calibrating and converting again
    again = tiny_pipeline("sd")
    _int8(again, tmp_path, min_snr_db=70)
    _image(again)
    runner = _runner(again)
    assert runner.conversions == 0 and runner.observer is None and not runner.calibrating
    assert "refused at" in runner.events[0] and "in an earlier process" in runner.events[0]
    assert runner.events[1].startswith("OpenVINO f32 for") and "read from the on-disk cache" in runner.events[1]
    # a lower floor than the refused figure tries int8 again
    lower = tiny_pipeline("sd")
    _int8(lower, tmp_path, min_snr_db=10)
    _image(lower)
    assert _runner(lower).conversions == 1 and "with int8 layers" in _runner(lower).events[0]


def test_changed_weights_stop_the_calibration_and_start_again(openvino: Any, tmp_path: Path) -> None:
    pipe = tiny_pipeline("sd")
    _int8(pipe, tmp_path)
    runner = _runner(pipe)
    latents = torch.randn(2, 4, 8, 8)
    condition = torch.randn(2, 77, 32)
    with torch.no_grad():
        runner(latents, torch.tensor(10), encoder_hidden_states=condition)
        assert runner.observer is not None and len(runner.calibrating) == 1
        pipe.unet.conv_in.weight = torch.nn.Parameter(pipe.unet.conv_in.weight.clone())  # a new identity
        runner(latents, torch.tensor(10), encoder_hidden_states=condition)
    # the old calibration (other weights) was dropped; this call started a new one
    assert len(runner.calibrating) == 1 and next(iter(runner.calibrating.values())).count == 1
    runner.forget()
    assert runner.observer is None and _hooks(pipe.unet) == 0
