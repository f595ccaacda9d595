"""openvino_runtime: planned only on CPUs with openvino installed (else skipped with the install hint),
runs the denoiser and the VAE decode in OpenVINO after their first call (counted), stays within float32
rounding of PyTorch, reads converted models from its disk cache instead of converting again, converts
again when the weights change, refuses below its fidelity floor, and undoes exactly."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sdopt import optimize, plan
from sdopt.optimizations._openvino import OpenVinoRunner
from sdopt.testing import fake_capabilities, tiny_pipeline
from tests.helpers import Snapshot

WITH_OPENVINO = fake_capabilities("cpu-avx2", packages={"openvino": True})
CALL = {"prompt": "a photo", "num_inference_steps": 3, "output_type": "np"}


def _image(pipe: Any) -> np.ndarray:
    return pipe(**CALL, generator=torch.Generator().manual_seed(0)).images


def _denoiser_calls(pipe: Any) -> list[int]:
    """A list that grows by one at each denoiser call (a forward pre-hook, left on: it changes nothing)."""
    calls: list[int] = []
    pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls


def _optimize(pipe: Any, cache: Path, **options: Any) -> Any:
    return optimize(pipe, tier=None, extra=[{"name": "openvino_runtime", "cache_dir": str(cache), **options}])


# ---- planning (no openvino needed)


def test_planned_on_a_cpu_with_openvino() -> None:
    result = plan(tiny_pipeline("sd"), tier=None, extra=["openvino_runtime"], caps=WITH_OPENVINO)
    assert [step.name for step in result.steps] == ["openvino_runtime"]
    assert result.steps[0].config.precision == "f32"
    assert result.steps[0].optimization.lossy_with(result.steps[0].config) is False


def test_skipped_with_the_install_hint_without_openvino() -> None:
    bare = fake_capabilities("cpu-avx2")
    result = plan(tiny_pipeline("sd"), tier=None, extra=["openvino_runtime"], caps=bare)
    (decision,) = [d for d in result.skipped if d.name == "openvino_runtime"]
    assert "needs openvino (not installed)" in decision.reason
    assert "pip install sdopt[openvino]" in decision.reason


def test_bf16_needs_bf16_instructions_and_is_lossy() -> None:
    extra = [{"name": "openvino_runtime", "precision": "bf16"}]
    avx2 = plan(tiny_pipeline("sd"), tier=None, extra=extra, caps=WITH_OPENVINO)
    (skipped,) = [d for d in avx2.skipped if d.name == "openvino_runtime"]
    assert "bf16 instructions" in skipped.reason and not avx2.steps
    bf16_cpu = fake_capabilities("cpu-vnni", packages={"openvino": True})
    (step,) = plan(tiny_pipeline("sd"), tier=None, extra=extra, caps=bf16_cpu).steps
    assert step.name == "openvino_runtime" and step.optimization.lossy_with(step.config) is True


def test_not_on_gpus_and_not_beside_half_precision() -> None:
    gpu = fake_capabilities("cuda", packages={"openvino": True})
    result = plan(tiny_pipeline("sd"), tier=None, extra=["openvino_runtime"], caps=gpu)
    assert "needs device cpu" in next(d.reason for d in result.skipped if d.name == "openvino_runtime")
    halved = tiny_pipeline("sd").to(torch.bfloat16)
    result = plan(halved, tier=None, extra=["openvino_runtime"], caps=WITH_OPENVINO)
    assert "torch.bfloat16" in next(d.reason for d in result.skipped if d.name == "openvino_runtime")


def test_footprint_counts_the_compiled_copy() -> None:
    pipe = tiny_pipeline("sd")
    bare = plan(pipe, tier=None, extra=[], caps=WITH_OPENVINO).footprint
    converted = plan(pipe, tier=None, extra=["openvino_runtime"], caps=WITH_OPENVINO).footprint
    assert converted.components_gb["unet"] == pytest.approx(2 * bare.components_gb["unet"])
    assert converted.components_gb["vae"] == pytest.approx(2 * bare.components_gb["vae"])


# ---- running (openvino installed)


@pytest.fixture
def openvino() -> Any:
    return pytest.importorskip("openvino")


def test_later_calls_run_openvino_within_float32_rounding(openvino: Any, tmp_path: Path) -> None:
    pipe = tiny_pipeline("sd")
    reference = _image(pipe)
    report = _optimize(pipe, tmp_path)
    calls = _denoiser_calls(pipe)
    first = _image(pipe)
    unet, decode = pipe.unet.__dict__["forward"], pipe.vae.__dict__["decode"]
    assert isinstance(unet, OpenVinoRunner) and isinstance(decode, OpenVinoRunner)
    assert (unet.conversions, decode.conversions) == (1, 1)
    assert unet.openvino_calls == len(calls) - 1 > 0  # the first denoiser call answered by PyTorch
    second = _image(pipe)
    assert unet.openvino_calls == len(calls) - 1
    assert decode.openvino_calls == 1  # the second call's decode; a new generator is not a new signature
    assert (unet.conversions, decode.conversions) == (1, 1)
    assert np.abs(first - reference).max() < 1e-4
    assert np.abs(second - reference).max() < 1e-4
    assert "dB SNR against PyTorch" in report.after_calls["openvino_runtime"]


def test_undo_is_exact(openvino: Any, sd_pipe: Any, tmp_path: Path) -> None:
    snapshot = Snapshot(sd_pipe, "sd")
    report = _optimize(sd_pipe, tmp_path)
    _image(sd_pipe)
    report.undo()
    assert "forward" not in sd_pipe.unet.__dict__ and "decode" not in sd_pipe.vae.__dict__
    snapshot.assert_identical()


def test_a_new_pipeline_reads_the_converted_models_from_disk(
    openvino: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = tiny_pipeline("sd")
    _optimize(first, tmp_path)
    expected = _image(first)
    assert any(tmp_path.iterdir())

    def no_conversion(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("converted again although the disk cache holds the model")

    monkeypatch.setattr(openvino, "convert_model", no_conversion)
    second = tiny_pipeline("sd")  # the same weights, another process's view of them
    _optimize(second, tmp_path)
    _image(second)
    runner = second.unet.__dict__["forward"]
    assert (runner.conversions, runner.cache_hits) == (0, 1)
    assert np.abs(_image(second) - expected).max() < 1e-5


def test_a_tampered_cache_entry_is_converted_again(openvino: Any, tmp_path: Path) -> None:
    pipe = tiny_pipeline("sd")
    report = _optimize(pipe, tmp_path)
    _image(pipe)
    report.undo()
    for weights in tmp_path.rglob("model.bin"):
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
    report = _optimize(pipe, tmp_path)
    with pytest.warns(UserWarning, match="not signed"):
        _image(pipe)
    assert pipe.unet.__dict__["forward"].conversions == 1
    report.undo()
    _optimize(pipe, tmp_path)  # the entry was replaced by this user's own conversion: read, not converted
    _image(pipe)
    assert (pipe.unet.__dict__["forward"].conversions, pipe.unet.__dict__["forward"].cache_hits) == (0, 1)


def test_changed_weights_are_converted_again(openvino: Any, tmp_path: Path) -> None:
    pipe = tiny_pipeline("sd")
    _optimize(pipe, tmp_path)
    _image(pipe)
    with torch.no_grad():
        pipe.unet.conv_out.bias.add_(0.5)  # in place, as a fused LoRA changes weights
    runner = pipe.unet.__dict__["forward"]
    runner_calls = runner.openvino_calls
    calls = _denoiser_calls(pipe)
    changed = _image(pipe)
    assert runner.conversions == 2
    assert runner.openvino_calls == runner_calls + len(calls) - 1
    plain = tiny_pipeline("sd")
    with torch.no_grad():
        plain.unet.conv_out.bias.add_(0.5)
    assert np.abs(changed - _image(plain)).max() < 1e-4


def test_below_the_floor_the_call_stays_in_pytorch(openvino: Any, tmp_path: Path) -> None:
    pipe = tiny_pipeline("sd")
    reference = _image(pipe)
    report = _optimize(pipe, tmp_path, min_snr_db=1000.0, vae=False)
    with pytest.warns(UserWarning, match="refused"):
        first = _image(pipe)
    second = _image(pipe)
    assert np.array_equal(first, reference) and np.array_equal(second, reference)
    assert pipe.unet.__dict__["forward"].openvino_calls == 0
    assert "decode" not in pipe.vae.__dict__
    assert "refused" in report.after_calls["openvino_runtime"]


def test_calls_with_gradients_run_pytorch_and_training_mode_survives_conversion(openvino: Any, tmp_path: Path) -> None:
    pipe = tiny_pipeline("sd")
    pipe.unet.train()  # convert_model switches what it traces to eval mode: the runner puts it back
    _optimize(pipe, tmp_path, vae=False)
    runner = pipe.unet.__dict__["forward"]
    sample = torch.randn(2, 4, 8, 8)
    text = torch.randn(2, 77, pipe.text_encoder.config.hidden_size)
    with torch.no_grad():
        runner(sample, torch.tensor(10), encoder_hidden_states=text, return_dict=False)  # converts this signature
        runner(sample, torch.tensor(10), encoder_hidden_states=text, return_dict=False)  # runs OpenVINO
    assert (runner.conversions, runner.openvino_calls) == (1, 1)
    assert all(module.training for module in pipe.unet.modules())
    leaf = sample.clone().requires_grad_()
    output = pipe.unet(leaf, torch.tensor(10), encoder_hidden_states=text, return_dict=False)[0]
    output.sum().backward()
    assert leaf.grad is not None and (runner.conversions, runner.openvino_calls) == (1, 1)


def test_a_failing_program_or_a_non_finite_output_falls_back_to_pytorch(openvino: Any, tmp_path: Path) -> None:
    from sdopt.optimizations._openvino import snr_db

    assert math.isnan(snr_db(torch.ones(3), torch.tensor([1.0, float("nan"), 1.0])))
    pipe = tiny_pipeline("sd")
    reference = _image(pipe)
    _optimize(pipe, tmp_path, vae=False)
    _image(pipe)
    runner = pipe.unet.__dict__["forward"]
    for program in runner.programs.values():
        program.compiled = None  # calling it raises TypeError, as a runtime failure would
    with pytest.warns(UserWarning, match="OpenVINO failed"):
        assert np.array_equal(_image(pipe), reference)
    assert not runner.programs and "OpenVINO failed" in runner.describe()


def test_switching_vae_tiling_on_later_is_another_signature(openvino: Any, tmp_path: Path) -> None:
    pipe = tiny_pipeline("sd")
    _optimize(pipe, tmp_path)
    _image(pipe)
    decode = pipe.vae.__dict__["decode"]
    pipe.vae.enable_tiling()
    _image(pipe)
    assert decode.conversions == 2  # the untiled program is not reused for a tiled decode
