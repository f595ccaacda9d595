from __future__ import annotations

import json

from sdopt import detect
from sdopt.capabilities import CudaDevice
from sdopt.testing import fake_capabilities


def test_detect_is_cached_json_safe_and_fingerprinted() -> None:
    caps = detect()
    assert detect() is caps
    data = json.loads(json.dumps(caps.to_dict()))
    assert data["device"] in ("cpu", "cuda", "mps")
    assert data["versions"]["torch"] and data["versions"]["diffusers"]
    assert len(caps.fingerprint) == 12
    assert detect(refresh=True).fingerprint == caps.fingerprint


def test_this_cpu_reports_its_bf16_units_truthfully() -> None:
    caps = detect()
    flags = set(caps.cpu.flags)
    assert caps.cpu.bf16_accelerated == bool({"amx_bf16", "avx512_bf16"} & flags) or "bf16" in flags


def test_forcing_a_device_keeps_the_rest() -> None:
    caps = detect(device="cpu")
    assert caps.device == "cpu" and caps.cpu == detect().cpu


def test_fake_capabilities_describe_other_machines() -> None:
    old_gpu = fake_capabilities("cuda", cuda_capability=(7, 5), vram_gb=6)
    assert old_gpu.device == "cuda" and old_gpu.device_memory_gb == 6
    assert (old_gpu.gpu.arch, old_gpu.gpu.bf16, old_gpu.gpu.fp16, old_gpu.gpu.fp8) == (
        "sm_75",
        False,
        True,
        False,
    )
    plain_cpu = fake_capabilities("cpu", bf16_accelerated=False)
    amx_cpu = fake_capabilities("cpu", bf16_accelerated=True, packages={"xformers": True})
    assert not plain_cpu.cpu.bf16_accelerated and amx_cpu.cpu.bf16_accelerated
    assert amx_cpu.package_usable("xformers") and not plain_cpu.package_usable("xformers")
    assert len({old_gpu.fingerprint, plain_cpu.fingerprint, amx_cpu.fingerprint}) == 3


def test_cuda_device_facts_follow_the_compute_capability() -> None:
    hopper = CudaDevice.from_capability(0, "H100", (9, 0), 80)
    assert hopper.to_dict()["arch"] == "sm_90" and hopper.bf16 and hopper.fp8 and hopper.tf32
