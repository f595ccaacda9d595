"""static_int8: planned only where x86 int8 instructions exist, really runs oneDNN int8 kernels
(counted), refuses below its fidelity floor, hits its on-disk cache in a new process (no C++
compile), never fails a call, and undoes exactly. One real build of a minimal UNet runs in CI."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from sdopt import optimize, plan
from sdopt.optimizations._int8 import cache
from sdopt.optimizations._int8.runner import Int8Runner
from sdopt.testing import fake_capabilities, tiny_pipeline

pytest.importorskip("torchao")

VNNI = fake_capabilities("cpu-amx", packages={"torchao": True})
CALL = {"prompt": "a photo", "num_inference_steps": 3, "output_type": "np"}

# A process that builds the minimal pipeline, optimizes it with the cache in argv[1], calls it
# once, and prints what the runner did and how many C++ compiles inductor ran.
_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    torch.set_num_threads(1)
    import torch._inductor.cpp_builder as builder
    builds = []
    original = builder.CppBuilder.build
    def counting(self, *args, **kwargs):
        if not self.get_target_file_path().endswith(".i"):  # preprocessing a header for a cache key
            builds.append(self.get_target_file_path())
        return original(self, *args, **kwargs)
    builder.CppBuilder.build = counting
    import numpy as np
    from sdopt import optimize
    from tests.optimizations.test_static_int8 import minimal_pipeline, _image, _psnr
    pipe = minimal_pipeline()
    reference = _image(pipe)
    report = optimize(pipe, tier=None, extra=[{"name": "static_int8", "cache_dir": sys.argv[1]}])
    first = _image(pipe)
    runner = pipe.unet.__dict__["forward"]
    int8_calls = runner.int8_calls
    second = _image(pipe)
    print(json.dumps({"builds": runner.builds, "cache_hits": runner.cache_hits, "int8_calls": int8_calls,
                      "second_call_int8_calls": runner.int8_calls - int8_calls,
                      "second_call_psnr": _psnr(second, reference),
                      "cxx_compiles": len(builds), "cxx_paths": builds,
                      "first_is_float": bool(np.array_equal(first, reference)),
                      "after_calls": report.after_calls["static_int8"]}))
    """
)


def minimal_pipeline():
    """The tiny SD pipeline with a one-level UNet: the real int8 path at the smallest compile cost."""
    from diffusers import UNet2DConditionModel

    pipe = tiny_pipeline("sd")
    torch.manual_seed(0)
    pipe.unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",),
        block_out_channels=(32,),
        layers_per_block=1,
        cross_attention_dim=pipe.text_encoder.config.hidden_size,
        attention_head_dim=8,
        norm_num_groups=8,
    ).eval()
    return pipe


def _image(pipe) -> np.ndarray:
    return pipe(**CALL, generator=torch.Generator().manual_seed(0)).images


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One real build of the minimal pipeline, cold, in a fresh process: every kernel it compiles
    reaches the on-disk cache (in this process, kernels an earlier test compiled could be reused from
    inductor's memory and never reach it). This process then optimizes the same pipeline with that
    cache: its first call already runs the int8 program."""
    root = tmp_path_factory.mktemp("int8-cache")
    cold = _in_a_new_process(root, tmp_path_factory.mktemp("cold"))
    pipe = minimal_pipeline()
    reference = _image(pipe)
    report = optimize(pipe, tier=None, extra=[{"name": "static_int8", "cache_dir": str(root)}])
    loaded = _image(pipe)
    return pipe, report, root, reference, loaded, cold


def test_planned_only_with_x86_int8_instructions_torchao_and_float32() -> None:
    pipe = tiny_pipeline("sd")
    avx2 = plan(pipe, tier=None, extra=["static_int8"], caps=fake_capabilities("cpu", packages={"torchao": True}))
    assert "no x86 int8 dot-product instructions" in avx2.skipped[0].reason
    no_torchao = plan(pipe, tier=None, extra=["static_int8"], caps=fake_capabilities("cpu-amx"))
    assert "pip install sdopt[torchao]" in no_torchao.skipped[0].reason
    cuda = plan(pipe, tier=None, extra=["static_int8"], caps=fake_capabilities("h100-80gb", packages={"torchao": True}))
    assert "needs device cpu" in cuda.skipped[0].reason
    ok = plan(pipe, tier=None, extra=["static_int8"], caps=VNNI)
    assert [step.name for step in ok.steps] == ["static_int8"]
    assert ok.steps[0].config.keep_float == ("conv_in", "conv_out", "time_embedding")
    pipe.unet.to(torch.bfloat16)
    half = plan(pipe, tier=None, extra=["static_int8"], caps=VNNI)
    assert "calibrated from float32" in half.skipped[0].reason


def test_not_planned_where_the_build_cannot_fit_in_ram_so_half_precision_takes_its_place() -> None:
    import dataclasses

    pipe = tiny_pipeline("sd")
    small = dataclasses.replace(VNNI, ram_total_gb=0.001)  # SDXL on a 24 GB VM, in miniature
    result = plan(pipe, tier=None, extra=["static_int8", "half_precision"], caps=small)
    assert [step.name for step in result.steps] == ["half_precision"]
    reason = next(d.reason for d in result.skipped if d.name == "static_int8")
    assert reason.startswith("building the int8 program needs about") and "this machine has 0.0 GB" in reason
    roomy = plan(pipe, tier=None, extra=["static_int8", "half_precision"], caps=VNNI)
    assert [step.name for step in roomy.steps] == ["static_int8"]  # it wins the conflict where it fits


def test_conflicts_with_other_quantizers_and_compile() -> None:
    result = plan(
        tiny_pipeline("sd"),
        tier=None,
        extra=["static_int8", {"name": "torch_compile", "accept_cpu_first_call": True}, "quantize_int8"],
        caps=VNNI,
    )
    assert [step.name for step in result.steps] == ["static_int8"]
    assert {d.name for d in result.skipped} == {"torch_compile", "quantize_int8"}


@pytest.mark.slow
def test_first_call_runs_float32_then_int8_kernels_run(built) -> None:
    *_, cold = built
    assert cold["first_is_float"]  # the calibration call itself is float32
    assert cold["counts"]["builds"] == 1 and cold["counts"]["cache_hits"] == 0
    assert cold["counts"]["int8_calls"] == 0 and cold["counts"]["cxx_compiles"] > 10
    # The program it just built runs the next call: PNDM's 4 denoiser calls for 3 steps, all int8.
    assert cold["second_call_int8_calls"] == 4 and cold["second_call_psnr"] > 30
    assert "built cold" in cold["after_calls"] and "dB SNR" in cold["after_calls"]


@pytest.mark.slow
def test_the_cached_program_runs_int8_from_the_first_call(built) -> None:
    pipe, report, _, reference, loaded, _ = built
    runner = pipe.unet.__dict__["forward"]
    assert isinstance(runner, Int8Runner)
    assert runner.builds == 0 and runner.cache_hits == 1
    assert runner.int8_calls == 4  # PNDM: 4 denoiser calls for 3 steps, all int8
    assert not np.array_equal(loaded, reference)
    assert _psnr(loaded, reference) > 30
    assert "from the on-disk cache" in report.after_calls["static_int8"]
    assert "after calls, static_int8: int8 (" in str(report)


@pytest.mark.slow
def test_the_converted_program_has_int8_weights_except_the_sensitive_layers(built) -> None:
    _, _, root, *_ = built
    (entry,) = [folder for folder in root.iterdir() if folder.name != "inductor"]
    program, meta = cache.load(root, entry.name)
    dequantize = torch.ops.quantized_decomposed.dequantize_per_channel.default
    quantized = [node for node in program.graph.nodes if node.target == dequantize]
    assert meta["quantized_layers"] == len(quantized) > 10
    int8 = [tensor for tensor in program.state_dict.values() if tensor.dtype == torch.int8]
    assert len(int8) == len(quantized)
    floats = {name for name, tensor in program.state_dict.items() if tensor.is_floating_point()}
    # The sensitive layers keep their float weights; quantized layers' float weights are not kept beside the int8 ones.
    assert {"conv_in.weight", "conv_out.weight", "time_embedding.linear_1.weight"} <= floats
    assert "down_blocks.0.attentions.0.proj_in.weight" not in floats
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight" not in floats


def _in_a_new_process(root: Path, tmp_path: Path) -> dict:
    script = tmp_path / "process.py"
    script.write_text(_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), str(root)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[2],
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["counts"] = {name: result[name] for name in ("builds", "cache_hits", "int8_calls", "cxx_compiles")}
    return result


@pytest.mark.slow
def test_a_new_process_loads_the_cache_without_compiling_cxx(built, tmp_path) -> None:
    _, _, root, *_ = built
    warm = _in_a_new_process(root, tmp_path)
    # No export or calibration, the first call already runs int8, and inductor compiles no C++.
    assert warm["counts"] == {"builds": 0, "cache_hits": 1, "int8_calls": 4, "cxx_compiles": 0}, warm["cxx_paths"]
    assert "from the on-disk cache" in warm["after_calls"] and not warm["first_is_float"]


@pytest.mark.slow
def test_undo_removes_the_runner_and_restores_float32_exactly(built) -> None:
    pipe, report, _, reference, *_ = built
    report.undo()
    assert "forward" not in pipe.unet.__dict__
    assert report.after_calls == {}
    np.testing.assert_array_equal(_image(pipe), reference)


def _optimized_tiny(cache_dir: Path):
    """The tiny SD pipeline, its float32 image, and the report of static_int8 applied to it."""
    pipe = tiny_pipeline("sd")
    reference = _image(pipe)
    report = optimize(pipe, tier=None, extra=[{"name": "static_int8", "cache_dir": str(cache_dir)}], caps=VNNI)
    return pipe, reference, report


def _fake_build(monkeypatch, lowered: int, snr_ok: bool) -> None:
    """Stand-ins for quantize and compile (the "program" is the float module itself, perturbed when
    ``snr_ok`` is False), so the runner's decisions are tested without a compile."""
    import sdopt.optimizations._int8.runner as runner_module

    def compile_frozen(module):
        def run(*args, **kwargs):
            output = type(module).forward(module, *args, **kwargs)
            return output if snr_ok else tuple(tensor + 1.0 for tensor in output)

        return run

    calls = itertools.count()
    monkeypatch.setattr(runner_module, "quantize", lambda module, samples, exclude: module)
    monkeypatch.setattr(runner_module, "compile_frozen", compile_frozen)
    monkeypatch.setattr(runner_module, "quantized_node_count", lambda program: 7)
    # (int8 lowerings, FX graph cache hits): 0 before each compile, ``lowered`` after it
    monkeypatch.setattr(runner_module, "_inductor_counts", lambda: (lowered * (next(calls) % 2), 0))
    monkeypatch.setattr(runner_module.cache, "store", lambda *args: None)


@pytest.mark.parametrize(("lowered", "snr_ok", "why"), [(0, True, "lowered no int8"), (5, False, "refused")])
def test_no_int8_kernels_or_fidelity_below_the_floor_keeps_float32(monkeypatch, tmp_path, lowered, snr_ok, why) -> None:
    _fake_build(monkeypatch, lowered, snr_ok)
    pipe, reference, report = _optimized_tiny(tmp_path)
    with pytest.warns(UserWarning, match="that shape runs float32"):
        _image(pipe)
    np.testing.assert_array_equal(_image(pipe), reference)
    runner = pipe.unet.__dict__["forward"]
    assert runner.int8_calls == 0 and len(runner.refused) == 1
    assert why in report.after_calls["static_int8"]
    if not snr_ok:
        assert "dB SNR" in report.after_calls["static_int8"]
    report.undo()


def test_a_failing_build_never_fails_the_call(monkeypatch, tmp_path) -> None:
    import sdopt.optimizations._int8.runner as runner_module

    def broken(module, samples, exclude):
        raise RuntimeError("export failed on data-dependent control flow")

    monkeypatch.setattr(runner_module, "quantize", broken)
    pipe, reference, report = _optimized_tiny(tmp_path)
    with pytest.warns(UserWarning, match="data-dependent"):
        first = _image(pipe)
    np.testing.assert_array_equal(first, reference)
    np.testing.assert_array_equal(_image(pipe), reference)
    assert "int8 build failed (RuntimeError: export failed" in report.after_calls["static_int8"]
    report.undo()


def test_the_cache_key_follows_weights_signature_and_float_layers() -> None:
    unet = tiny_pipeline("sd").unet
    weights = cache.weights_hash(unet)
    args = (torch.zeros(2, 4, 8, 8), torch.tensor(1))
    signature = cache.signature(args, {"return_dict": False})
    base = cache.key(weights, signature, ("conv_in",))
    assert base == cache.key(cache.weights_hash(unet), signature, ("conv_in",))
    with torch.no_grad():
        unet.conv_in.weight[0, 0, 0, 0] += 1
    assert cache.key(cache.weights_hash(unet), signature, ("conv_in",)) != base
    other_shape = cache.signature((torch.zeros(2, 4, 16, 16), torch.tensor(1)), {"return_dict": False})
    assert cache.key(weights, other_shape, ("conv_in",)) != base
    assert cache.key(weights, signature, ()) != base
    assert cache.signature(args, {"return_dict": True}) != signature


def test_tiers_plan_it_for_real_size_unets_on_cpus_without_amx_only() -> None:
    from sdopt.anatomy import inspect_pipeline
    from sdopt.requirements import Requirements
    from sdopt.tiers import resolve_tier

    (entry,) = [entry for entry in resolve_tier("fast@3").entries if entry.name == "static_int8"]
    anatomy = inspect_pipeline(tiny_pipeline("sd"))
    vnni = fake_capabilities("cpu-vnni", packages={"torchao": True})
    assert "only for denoisers of at least 300M parameters" in entry.when.unmet(anatomy, vnni)
    small_enough = Requirements(devices=("cpu",), cpu_amx=False, denoiser_kinds=("unet",), min_denoiser_mparams=0.01)
    assert small_enough.unmet(anatomy, vnni) is None
    too_large = Requirements(max_denoiser_mparams=0.01)
    assert "only for denoisers of at most 0.01M parameters (this one:" in too_large.unmet(anatomy, vnni)
    assert Requirements(max_denoiser_mparams=1000).unmet(anatomy, vnni) is None
    assert small_enough.unmet(anatomy, VNNI) == "only on CPUs without AMX"
    assert "unet denoisers only" in small_enough.unmet(inspect_pipeline(tiny_pipeline("flux")), vnni)
    # On the tiny pipeline the tier leaves it out (with the reason) and keeps half_precision's plan.
    result = plan(tiny_pipeline("sd"), tier="fast@3", caps=vnni)
    assert "static_int8" not in [step.name for step in result.steps]
    assert any(d.name == "static_int8" and "300M" in d.reason for d in result.skipped)


def test_sdopts_own_verification_call_neither_calibrates_nor_builds(monkeypatch, tmp_path) -> None:
    _fake_build(monkeypatch, lowered=5, snr_ok=True)
    pipe = tiny_pipeline("sd")
    extra = [{"name": "static_int8", "cache_dir": str(tmp_path)}]
    report = optimize(pipe, tier=None, extra=extra, caps=VNNI, verify=True)
    runner = pipe.unet.__dict__["forward"]
    assert runner.builds == 0 and not runner.recording and not runner.events
    _image(pipe)  # the caller's first call calibrates and builds
    assert runner.builds == 1 and runner.int8_calls == 0
    _image(pipe)
    assert runner.int8_calls == 4
    report.undo()


def test_too_little_free_memory_for_a_build_keeps_float32(monkeypatch, tmp_path) -> None:
    import sdopt.probes.cpu

    _fake_build(monkeypatch, lowered=5, snr_ok=True)
    monkeypatch.setattr(sdopt.probes.cpu, "ram_gb", lambda: (24.0, 0.000001))
    pipe, reference, report = _optimized_tiny(tmp_path)
    with pytest.warns(UserWarning, match="not enough free memory to build int8"):
        _image(pipe)
    np.testing.assert_array_equal(_image(pipe), reference)
    assert pipe.unet.__dict__["forward"].builds == 0
    report.undo()


def test_only_entries_this_users_sdopt_signed_are_ever_deserialised(tmp_path, monkeypatch) -> None:
    from sdopt.cache_dir import UntrustedCacheError

    monkeypatch.setenv("SDOPT_CACHE_DIR", str(tmp_path / "home"))  # this user's secret lives here
    root = tmp_path / "int8"
    program = torch.export.export(torch.nn.Linear(4, 4).eval(), (torch.randn(1, 4),))
    cache.store(root, "entry", program, {"snr_db": 50.0})
    loaded, meta = cache.load(root, "entry")  # signed by this user's sdopt: loaded
    assert meta == {"snr_db": 50.0} and loaded.graph_module is not None

    (root / "entry" / "meta.json").write_text('{"snr_db": 99.0}')  # a changed measurement...
    with pytest.raises(UntrustedCacheError, match="not signed by this user's sdopt"):
        cache.load(root, "entry")
    planted = root / "planted"  # ...or a program someone put there: never unpickled
    planted.mkdir()
    (planted / "program.pt2").write_bytes(b"PK\x03\x04 whatever would run on load")
    (planted / "meta.json").write_text("{}")
    loads = []
    monkeypatch.setattr(torch.export, "load", lambda *args, **kwargs: loads.append(args))
    with pytest.raises(UntrustedCacheError):
        cache.load(root, "planted")
    assert loads == []


def test_a_cache_folder_others_can_write_to_is_refused(tmp_path) -> None:
    from sdopt.testing import tiny_pipeline

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    pipe = tiny_pipeline("sd")
    report = optimize(pipe, tier=None, extra=[{"name": "static_int8", "cache_dir": str(shared)}], caps=VNNI)
    assert report.applied == [] and "can be written by other users" in report.failed[0].reason


def test_the_cache_key_follows_what_decides_the_computation_besides_the_weights(monkeypatch) -> None:
    import diffusers

    unet = tiny_pipeline("sd").unet
    weights, args = cache.weights_hash(unet), (torch.zeros(2, 4, 8, 8), torch.tensor(1))

    def key(**options) -> str:
        return cache.key(weights, f"{cache.behaviour(unet)}|{cache.signature(args, {})}", ("conv_in",), **options)

    base = key(calibration_calls=8)
    assert key(calibration_calls=8) == base
    assert key(calibration_calls=2) != base
    unet.conv_in.scaling = {"default": 0.0}  # a LoRA scale: same weights, another output
    scaled = key(calibration_calls=8)
    assert scaled != base
    unet.conv_in.scaling = {"default": 1.0}
    assert key(calibration_calls=8) not in (base, scaled)
    del unet.conv_in.scaling
    attention = next(m for m in unet.modules() if hasattr(m, "processor"))
    processor = attention.processor
    from diffusers.models.attention_processor import AttnProcessor

    attention.set_processor(AttnProcessor())
    assert key(calibration_calls=8) != base
    attention.set_processor(processor)
    assert key(calibration_calls=8) == base
    monkeypatch.setattr(diffusers, "__version__", "9.9.9")  # the exported graph is diffusers' forward code
    assert key(calibration_calls=8) != base


def test_a_changed_lora_scale_never_runs_the_program_built_before_it(monkeypatch, tmp_path) -> None:
    _fake_build(monkeypatch, lowered=5, snr_ok=True)
    pipe, _, report = _optimized_tiny(tmp_path)
    _image(pipe)  # float32, recorded, built
    runner = pipe.unet.__dict__["forward"]
    _image(pipe)
    assert runner.int8_calls > 0
    calls = runner.int8_calls
    pipe.unet.conv_in.scaling = {"default": 0.5}
    _image(pipe)  # another computation: float32 and recorded again, not the stale program
    assert runner.int8_calls == calls and len(runner.compiled) == 2
    del pipe.unet.conv_in.scaling
    _image(pipe)
    calls = runner.int8_calls
    with torch.no_grad():
        pipe.unet.conv_in.weight.add_(0.01)  # weights changed in place (a LoRA loaded under the same name)
    _image(pipe)
    assert runner.int8_calls == calls and len(runner.compiled) == 1  # the older programs are gone
    report.undo()


def test_a_cached_programs_fidelity_is_measured_again_not_trusted(monkeypatch, tmp_path) -> None:
    _fake_build(monkeypatch, lowered=5, snr_ok=False)  # the program really is far off float32
    import sdopt.optimizations._int8.runner as runner_module

    signed_but_wrong = {"snr_db": 99.0, "quantized_layers": 7, "build_s": 1, "compile_s": 1}
    monkeypatch.setattr(runner_module.cache, "load", lambda root, entry: (pipe.unet, dict(signed_but_wrong)))
    pipe, reference, report = _optimized_tiny(tmp_path)
    with pytest.warns(UserWarning, match="that shape runs float32"):
        _image(pipe)
    np.testing.assert_array_equal(_image(pipe), reference)
    assert "int8 refused" in report.after_calls["static_int8"] and "99.0 dB" not in report.after_calls["static_int8"]
    report.undo()
