"""openvino_runtime: planned only on CPUs with openvino installed (else skipped with the install hint),
runs the denoiser and the VAE decode in OpenVINO after their first call (counted), stays within float32
rounding of PyTorch, reads converted models from its disk cache instead of converting again, converts
again when the weights change, refuses below its fidelity floor, and undoes exactly."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sdopt import detect, optimize, plan
from sdopt.optimizations._openvino import OpenVinoRunner
from sdopt.optimizations._openvino_program import shareable
from sdopt.optimizations._vae_guard import GuardedDecode
from sdopt.testing import fake_capabilities, tiny_pipeline
from sdopt.timing import torch_threads
from tests.helpers import Snapshot, counting_original_calls

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


def test_not_on_gpus_and_over_half_precision_only_at_bf16() -> None:
    gpu = fake_capabilities("cuda", packages={"openvino": True})
    result = plan(tiny_pipeline("sd"), tier=None, extra=["openvino_runtime"], caps=gpu)
    assert "needs device cpu" in next(d.reason for d in result.skipped if d.name == "openvino_runtime")
    bf16_cpu = fake_capabilities("cpu-epyc-bf16", packages={"openvino": True})
    halved = tiny_pipeline("sd").to(torch.bfloat16)
    result = plan(halved, tier=None, extra=["openvino_runtime"], caps=bf16_cpu)
    assert "precision 'bf16'" in next(d.reason for d in result.skipped if d.name == "openvino_runtime")
    extra = [{"name": "openvino_runtime", "precision": "bf16"}]
    assert [s.name for s in plan(halved, tier=None, extra=extra, caps=bf16_cpu).steps] == ["openvino_runtime"]
    result = plan(tiny_pipeline("sd").to(torch.float16), tier=None, extra=extra, caps=bf16_cpu)
    assert "torch.float16" in next(d.reason for d in result.skipped if d.name == "openvino_runtime")


def test_planned_after_half_precision_which_it_no_longer_displaces() -> None:
    bf16_cpu = fake_capabilities("cpu-epyc-bf16", packages={"openvino": True})
    extra = [{"name": "openvino_runtime", "precision": "bf16"}, "half_precision"]
    result = plan(tiny_pipeline("sd"), tier=None, extra=extra, caps=bf16_cpu)
    assert [step.name for step in result.steps] == ["half_precision", "openvino_runtime"]


def _elements(module: torch.nn.Module) -> int:
    return sum(t.numel() for t in [*module.parameters(), *module.buffers()] if t.is_floating_point())


def test_footprint_counts_the_compiled_copy_of_the_unet_and_the_decoder_only() -> None:
    pipe = tiny_pipeline("sd")
    bf16_cpu = fake_capabilities("cpu-epyc-bf16", packages={"openvino": True})
    bare = plan(pipe, tier=None, extra=[], caps=bf16_cpu).footprint
    f32 = plan(pipe, tier=None, extra=["openvino_runtime"], caps=bf16_cpu).footprint
    per_weight = 4.8 / 2**30  # measured on SD1.5's UNet (RESULTS.md)
    assert f32.components_gb["unet"] == pytest.approx(bare.components_gb["unet"] + _elements(pipe.unet) * per_weight)
    decoder = _elements(pipe.vae.decoder) + _elements(pipe.vae.post_quant_conv)  # the encoder is not converted
    assert f32.components_gb["vae"] == pytest.approx(bare.components_gb["vae"] + decoder * per_weight)
    # Over half precision: PyTorch's weights in bfloat16, the compiled copy as measured.
    extra = [{"name": "openvino_runtime", "precision": "bf16"}, "half_precision"]
    halved = plan(pipe, tier=None, extra=extra, caps=bf16_cpu).footprint
    expected = bare.components_gb["unet"] / 2 + _elements(pipe.unet) * per_weight
    assert halved.components_gb["unet"] == pytest.approx(expected)


def test_where_ram_cannot_hold_the_compiled_copy_half_precision_stays_alone() -> None:
    pipe = tiny_pipeline("sd")
    extra = [{"name": "openvino_runtime", "precision": "bf16"}, "half_precision"]
    roomy = fake_capabilities("cpu-epyc-bf16", packages={"openvino": True})
    footprint = plan(pipe, tier=None, extra=["half_precision"], caps=roomy).footprint
    # Room (after the 1 GB headroom) for the half-precision pipeline and its activations, not the copy.
    tight_gb = 1.0 + footprint.peak_gb + 0.1 * footprint.components_gb["unet"]
    tight = fake_capabilities("cpu-epyc-bf16", packages={"openvino": True}, ram_total_gb=tight_gb)
    result = plan(pipe, tier=None, extra=extra, caps=tight)
    assert [step.name for step in result.steps] == ["half_precision"]
    (skipped,) = [d for d in result.skipped if d.name == "openvino_runtime"]
    assert "memory budget cannot spare" in skipped.reason


# ---- running (openvino installed)


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


def test_a_new_process_answers_its_first_call_with_a_model_this_machine_accepted(openvino: Any, tmp_path: Path) -> None:
    first = tiny_pipeline("sd")
    reference = _image(first)
    _optimize(first, tmp_path)
    _image(first)  # converted, checked against PyTorch, accepted: noted on the cache entries
    assert len(list(tmp_path.glob("*/accepted.json"))) == 2  # the UNet's and the decoder's
    second = tiny_pipeline("sd")  # the same weights in another process
    report = _optimize(second, tmp_path)
    unet, decode = second.unet.__dict__["forward"], second.vae.__dict__["decode"]
    pytorch_unet, pytorch_decode = counting_original_calls(unet), counting_original_calls(decode)
    calls = _denoiser_calls(second)
    image = _image(second)
    assert (len(pytorch_unet), len(pytorch_decode)) == (0, 0)
    assert (unet.trusted, unet.openvino_calls, decode.trusted) == (1, len(calls), 1)
    assert (unet.conversions, unet.cache_hits) == (0, 1)
    assert np.abs(image - reference).max() < 1e-4
    assert "answered its first call without PyTorch" in report.after_calls["openvino_runtime"]


def test_a_new_process_imports_the_model_as_compiled_instead_of_compiling_it(
    openvino: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = tiny_pipeline("sd")
    _optimize(first, tmp_path)
    _image(first)  # converted, checked against PyTorch (which answered this call), kept compiled
    expected = _image(first)  # OpenVINO's answers only
    assert len(list(tmp_path.glob("*/compiled-*.blob"))) == 2  # the UNet's and the decoder's, signed
    compiles, reads = (
        _counting(monkeypatch, openvino.Core, "compile_model"),
        _counting(monkeypatch, openvino.Core, "read_model"),
    )
    second = tiny_pipeline("sd")  # the same weights in another process
    report = _optimize(second, tmp_path)
    image = _image(second)
    assert (len(compiles), len(reads)) == (0, 0)
    unet = second.unet.__dict__["forward"]
    assert (unet.trusted, unet.conversions, unet.cache_hits) == (1, 0, 1)
    assert "compiled model read from the on-disk cache" in report.after_calls["openvino_runtime"]
    np.testing.assert_array_equal(image, expected)
    # OpenVINO reads the imported weights from the mapped blob from now on: another process storing its blob
    # under the same name, then the cache's cap evicting the entry, leave the running models as they are
    for blob in tmp_path.glob("*/compiled-*.blob"):
        blob.with_suffix(".new").write_bytes(b"another process's blob")
        blob.with_suffix(".new").replace(blob)
    np.testing.assert_array_equal(_image(second), expected)
    for entry in tmp_path.iterdir():
        shutil.rmtree(entry)
    np.testing.assert_array_equal(_image(second), expected)


def test_a_compiled_model_for_another_setting_or_tampered_with_is_compiled_again(
    openvino: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = tiny_pipeline("sd")
    _optimize(first, tmp_path, vae=False)
    _image(first)
    expected = _image(first)
    (blob,) = tmp_path.glob("*/compiled-*.blob")
    compiles = _counting(monkeypatch, openvino.Core, "compile_model")
    with torch_threads(2):  # another thread count: another compiled model, kept beside the first
        second = tiny_pipeline("sd")
        _optimize(second, tmp_path, vae=False)
        _image(second)
    assert len(compiles) == 1 and len(list(tmp_path.glob("*/compiled-*.blob"))) == 2
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    third = tiny_pipeline("sd")
    _optimize(third, tmp_path, vae=False)
    with pytest.warns(UserWarning, match="compiled model .*not signed"):
        image = _image(third)
    runner = third.unet.__dict__["forward"]
    assert len(compiles) == 2 and runner.trusted == 1  # compiled from the signed converted model, still trusted
    assert "compiled model" not in runner.events[0]
    fourth = tiny_pipeline("sd")  # the damaged blob was replaced by the one compiled here, signed
    _optimize(fourth, tmp_path, vae=False)
    _image(fourth)
    assert len(compiles) == 2 and "compiled model read" in fourth.unet.__dict__["forward"].events[0]
    np.testing.assert_array_equal(image, expected)


def test_where_ram_would_not_hold_its_export_no_compiled_model_is_kept(
    openvino: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sdopt.optimizations._openvino as runner_module

    monkeypatch.setattr(runner_module, "ram_gb", lambda: (16.0, 1.5))  # under COMPILED_HEADROOM_GB free
    pipe = tiny_pipeline("sd")
    _optimize(pipe, tmp_path, vae=False)
    _image(pipe)
    assert pipe.unet.__dict__["forward"].openvino_calls > 0
    assert list(tmp_path.glob("*/accepted.json")) and not list(tmp_path.glob("*/compiled-*"))


def _counting(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[int]:
    """A list that grows by one at each call of ``owner.name`` (which still runs)."""
    calls: list[int] = []
    original = getattr(owner, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


def test_an_acceptance_note_tampered_with_or_for_another_precision_is_checked_again(
    openvino: Any, tmp_path: Path
) -> None:
    first = tiny_pipeline("sd")
    _optimize(first, tmp_path, vae=False)
    _image(first)
    (note,) = tmp_path.glob("*/accepted.json")
    signed = json.loads(note.read_text())
    body = json.loads(signed["body"])
    for check in body["checks"].values():
        check["snr_db"] += 50.0  # a raised figure under the old MAC
    note.write_text(json.dumps({"body": json.dumps(body, sort_keys=True), "mac": signed["mac"]}))
    second = tiny_pipeline("sd")
    _optimize(second, tmp_path, vae=False)
    runner = second.unet.__dict__["forward"]
    pytorch = counting_original_calls(runner)
    _image(second)
    assert (runner.trusted, len(pytorch), runner.cache_hits) == (0, 1, 1)  # checked against PyTorch, as before
    assert runner.openvino_calls > 0  # and accepted, which signs a new note
    third = tiny_pipeline("sd")
    _optimize(third, tmp_path, vae=False)
    runner = third.unet.__dict__["forward"]
    runner.trust_tag = runner.trust_tag.replace("f32", "bf16")  # as a bf16 compile of the same entry would be
    pytorch = counting_original_calls(runner)
    _image(third)
    assert (runner.trusted, len(pytorch)) == (0, 1)


def test_an_acceptance_note_holds_for_its_entry_and_tag_only(tmp_path: Path) -> None:
    from sdopt.optimizations._openvino_cache import accepted, remember_acceptance

    folder = tmp_path / "entry"
    folder.mkdir()
    (folder / "mac").write_text("signature of the stored model")
    layout = {"spec": "[1, {}]", "dtypes": ["float32"]}
    remember_acceptance(tmp_path, "entry", "f32 on avx2", 31.5, layout)
    remember_acceptance(tmp_path, "entry", "bf16 on avx512-bf16", 28.25, layout)
    assert accepted(tmp_path, "entry", "f32 on avx2") == (31.5, layout)
    assert accepted(tmp_path, "entry", "bf16 on avx512-bf16") == (28.25, layout)
    assert accepted(tmp_path, "entry", "f32 on avx512-bf16") is None
    assert accepted(tmp_path, "other", "f32 on avx2") is None
    (folder / "mac").write_text("signature of a model stored since")
    assert accepted(tmp_path, "entry", "f32 on avx2") is None


def test_a_tampered_cache_entry_is_converted_again(openvino: Any, tmp_path: Path) -> None:
    pipe = tiny_pipeline("sd")
    report = _optimize(pipe, tmp_path)
    _image(pipe)
    report.undo()
    for weights in [*tmp_path.rglob("model.bin"), *tmp_path.rglob("compiled-*.blob")]:
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


def test_a_bfloat16_module_runs_openvino_with_float32_at_its_boundary(openvino: Any, tmp_path: Path) -> None:
    # Over half precision the denoiser is bfloat16: numpy has no bfloat16, so inputs cross into OpenVINO in
    # float32 and outputs come back in the dtype PyTorch returns. Layers every CPU runs at f32 precision
    # (OpenVINO's CPU plugin runs a bf16 GroupNorm only at bf16 precision, on CPUs with bf16 instructions).
    module = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8)).bfloat16()
    inputs = torch.randn(4, 16, generator=torch.Generator().manual_seed(0)).bfloat16()
    with torch.no_grad():
        reference = module(inputs)
        runner = OpenVinoRunner(
            module, "forward", module.forward, precision="f32", min_snr_db=20.0, root=tmp_path, label="mlp"
        )
        module.__dict__["forward"] = runner
        first = module(inputs)  # PyTorch's answer while it converts
        second = module(inputs)
    assert (runner.conversions, runner.openvino_calls) == (1, 1), runner.describe()
    assert torch.equal(first, reference)
    assert second.dtype == torch.bfloat16 and second.shape == reference.shape
    assert 30.0 < _snr(reference, second) < math.inf  # computed by OpenVINO, within bfloat16's rounding


needs_bf16 = pytest.mark.skipif(
    not {"avx512_bf16", "amx_bf16"} & set(detect().cpu.flags),
    reason="OpenVINO's bf16 precision needs a CPU with bf16 instructions (AVX512-BF16 or AMX)",
)


@needs_bf16
def test_a_bfloat16_unet_runs_openvino_bf16(openvino: Any, tmp_path: Path) -> None:
    pipe = tiny_pipeline("sd")
    alone = tiny_pipeline("sd")
    caps = fake_capabilities("cpu-epyc-bf16", packages={"openvino": True})
    optimize(alone, tier=None, extra=["half_precision"], caps=caps)
    expected = _image(alone)
    # Random tiny weights: two bf16 runtimes agree to ~18 dB (trained SD1.5: ~50 dB each against float32).
    ov = {"name": "openvino_runtime", "precision": "bf16", "cache_dir": str(tmp_path), "min_snr_db": 10.0}
    optimize(pipe, tier=None, extra=["half_precision", ov], caps=caps)
    _image(pipe)
    image = _image(pipe)
    runner = pipe.unet.__dict__["forward"]
    assert runner.openvino_calls > 0 and runner.conversions == 1, runner.describe()
    assert np.abs(image - expected).max() < 0.05  # bf16 against bf16: the two runtimes round differently


def test_over_half_precision_a_failed_conversion_leaves_bfloat16_pytorch(
    openvino: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Never slower than half precision alone: what OpenVINO cannot run stays in PyTorch's bfloat16.
    caps = fake_capabilities("cpu-epyc-bf16", packages={"openvino": True})
    alone = tiny_pipeline("sd")
    optimize(alone, tier=None, extra=["half_precision"], caps=caps)
    expected = _image(alone)
    pipe = tiny_pipeline("sd")
    extra = ["half_precision", {"name": "openvino_runtime", "precision": "bf16", "cache_dir": str(tmp_path)}]
    report = optimize(pipe, tier=None, extra=extra, caps=caps)
    assert [d.name for d in report.applied] == ["half_precision", "openvino_runtime"]

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no conversion today")

    monkeypatch.setattr(openvino, "convert_model", failing)
    with pytest.warns(UserWarning, match="conversion failed"):
        first = _image(pipe)
    second = _image(pipe)
    assert pipe.unet.dtype == torch.bfloat16 and pipe.unet.__dict__["forward"].openvino_calls == 0
    np.testing.assert_array_equal(first, expected)
    np.testing.assert_array_equal(second, expected)


def _snr(reference: torch.Tensor, output: torch.Tensor) -> float:
    noise = (output.double() - reference.double()).pow(2).sum()
    return float(10 * torch.log10(reference.double().pow(2).sum() / noise))


@needs_bf16
def test_under_half_precision_the_vae_guard_still_decodes_a_nan_again_in_float32(openvino: Any, tmp_path: Path) -> None:
    caps = fake_capabilities("cpu-epyc-bf16", packages={"openvino": True})
    pipe = tiny_pipeline("sd")
    snapshot = Snapshot(pipe, "sd")
    ov = {"name": "openvino_runtime", "precision": "bf16", "cache_dir": str(tmp_path), "min_snr_db": 10.0}
    report = optimize(pipe, tier=None, extra=["half_precision", ov], caps=caps)
    guard = pipe.vae.__dict__["decode"]
    assert isinstance(guard, GuardedDecode) and isinstance(guard.original, OpenVinoRunner)
    _image(pipe)
    runner = guard.original
    (signature,) = runner.programs
    program = runner.programs[signature]

    def nan_images(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        (image, *rest) = program(args, kwargs)  # the pipeline asks for a tuple (return_dict=False)
        return (torch.full_like(image, math.nan), *rest)

    runner.programs[signature] = nan_images  # what a bf16 overflow inside OpenVINO would give
    with pytest.warns(RuntimeWarning, match="decoding them again in float32"):
        image = _image(pipe)
    assert np.isfinite(image).all() and image.std() > 0
    assert runner.conversions == 1  # PyTorch decoded in float32, nothing was converted for it
    report.undo()
    assert "decode" not in pipe.vae.__dict__
    snapshot.assert_identical()


def test_bfloat16_weights_stored_channels_last_are_copied_not_shared_when_converting() -> None:
    # OpenVINO 2026.4 crashed the process saving SD1.5's bfloat16 UNet after channels_last (SIGSEGV) when the
    # converted model shared the weights' memory; those weights are copied instead.
    conv = torch.nn.Conv2d(4, 8, 3)
    assert shareable(conv) and shareable(conv.to(memory_format=torch.channels_last))  # float32 was fine
    assert shareable(torch.nn.Conv2d(4, 8, 3).bfloat16())
    assert not shareable(torch.nn.Conv2d(4, 8, 3).bfloat16().to(memory_format=torch.channels_last))


def _mlp_runner(tmp_path: Path) -> tuple[torch.nn.Module, OpenVinoRunner]:
    module = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8))
    runner = OpenVinoRunner(
        module, "forward", module.forward, precision="f32", min_snr_db=20.0, root=tmp_path, label="mlp"
    )
    module.__dict__["forward"] = runner
    return module, runner


def _entries(root: Path) -> list[Path]:
    return [folder for folder in root.iterdir() if folder.is_dir() and not folder.name.startswith(".")]


def test_the_disk_cache_keeps_to_its_cap_dropping_the_least_recently_used(
    openvino: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module, runner = _mlp_runner(tmp_path)
    with torch.no_grad():
        module(torch.randn(2, 16))
    (first,) = _entries(tmp_path)
    entry_bytes = sum(path.stat().st_size for path in first.iterdir())
    monkeypatch.setenv("SDOPT_OPENVINO_CACHE_GB", str(1.5 * entry_bytes / 2**30))  # room for one entry
    with torch.no_grad():
        module(torch.randn(3, 16))  # a second shape: its entry replaces the first
    (second,) = _entries(tmp_path)
    assert second.name != first.name and runner.conversions == 2
    _, fresh = _mlp_runner(tmp_path)  # another process's runner over the same weights
    fresh.module.load_state_dict(module.state_dict())
    with torch.no_grad():
        fresh.module(torch.randn(3, 16))
        fresh.module(torch.randn(2, 16))
    assert (fresh.cache_hits, fresh.conversions) == (1, 1)  # the evicted shape was converted again


def test_a_nearly_full_disk_keeps_no_converted_model(
    openvino: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from sdopt.optimizations import _openvino_cache

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(_openvino_cache.shutil, "disk_usage", lambda path: usage._replace(free=2**30))
    module, runner = _mlp_runner(tmp_path)
    with torch.no_grad():
        module(torch.randn(2, 16))
        module(torch.randn(2, 16))
    assert runner.openvino_calls == 1 and not _entries(tmp_path)  # it runs; nothing is written
    assert "not kept on disk: 1.0 GB free there" in runner.describe()
