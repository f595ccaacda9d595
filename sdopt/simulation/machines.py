"""Capabilities of imaginary machines, to test hardware-dependent choices anywhere."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from sdopt.capabilities import OPTIONAL_PACKAGES, Capabilities, CudaDevice, detect

_X86_AVX2 = ("avx2", "fma", "f16c")
_X86_VNNI = (*_X86_AVX2, "avx512f", "avx512_bf16", "avx512_vnni")
_X86_AMX = (*_X86_AVX2, "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile")

# name: (device, cpu model, cpu flags, ram GB, GPU (name, capability, VRAM GB) or None, GPU in the torch build)
_PROFILES: dict[str, tuple[str, str, tuple[str, ...], float, tuple[str, tuple[int, int], float] | None, bool]] = {
    "cpu-avx2": ("cpu", "AMD Ryzen 7 3700X (AVX2, no bf16 units)", _X86_AVX2, 32, None, True),
    "cpu-amx": ("cpu", "Intel Xeon (Sapphire Rapids, AMX)", _X86_AMX, 64, None, True),
    "cpu-vnni": ("cpu", "Intel Xeon (AVX-512 VNNI and BF16, AMX not exposed)", _X86_VNNI, 32, None, True),
    "cpu-epyc-bf16": ("cpu", "AMD EPYC (AVX-512 VNNI and BF16, no AMX)", (*_X86_VNNI, "avx_vnni"), 24, None, True),
    "apple-m2-16gb": ("mps", "Apple M2", ("asimd", "neon", "asimdhp", "bf16", "i8mm"), 16, None, True),
    "t4-16gb": ("cuda", "Intel Xeon", _X86_AVX2, 32, ("Tesla T4", (7, 5), 15.6), True),
    "gtx1060-6gb": ("cuda", "Intel Core i7", _X86_AVX2, 16, ("NVIDIA GeForce GTX 1060 6GB", (6, 1), 6.0), True),
    "rtx3060ti-8gb": ("cuda", "AMD Ryzen 5", _X86_AVX2, 32, ("NVIDIA GeForce RTX 3060 Ti", (8, 6), 8.0), True),
    "rtx4090-24gb": ("cuda", "AMD Ryzen 9", _X86_AVX2, 64, ("NVIDIA GeForce RTX 4090", (8, 9), 24.0), True),
    "a100-80gb": ("cuda", "AMD EPYC", _X86_AVX2, 256, ("NVIDIA A100-SXM4-80GB", (8, 0), 80.0), True),
    "h100-80gb": ("cuda", "Intel Xeon (AMX)", _X86_AMX, 512, ("NVIDIA H100 80GB HBM3", (9, 0), 80.0), True),
    "h200-141gb": ("cuda", "Intel Xeon (AMX)", _X86_AMX, 128, ("NVIDIA H200", (9, 0), 139.8), True),
    "rtx5090-no-kernels": ("cuda", "AMD Ryzen 9", _X86_AVX2, 64, ("NVIDIA GeForce RTX 5090", (12, 0), 32.0), False),
}
PROFILES: tuple[str, ...] = tuple(_PROFILES)
"""Named machines for `fake_capabilities`."""

# Profiles whose bf16 the detector measured faster than float32 without AMX (fp32 time / bf16 time):
# the 2-core EPYC of benchmarks/RESULTS.md, "OpenVINO's runtime inside the pipeline" (SD1.5's UNet call
# 6.49 s float32, 3.37 s bf16 autocast).
_MEASURED_BF16_SPEEDUP = {"cpu-epyc-bf16": 1.9}


def fake_capabilities(
    profile: str = "cpu-avx2",
    *,
    bf16_accelerated: bool | None = None,
    cuda_capability: tuple[int, int] | None = None,
    vram_gb: float | None = None,
    packages: Mapping[str, bool] | None = None,
    kernels: bool | None = None,
    **overrides: Any,
) -> Capabilities:
    """Capabilities of an imaginary machine, to test hardware-dependent choices anywhere.

    ``profile`` is one of `PROFILES` (``cpu-avx2``, ``cpu-amx``, ``cpu-vnni`` (AVX512-BF16 whose bf16 does
    not pay), ``cpu-epyc-bf16`` (AVX512-BF16 whose bf16 measured 1.9x float32), ``apple-m2-16gb``,
    ``t4-16gb``, ``gtx1060-6gb``, ``rtx3060ti-8gb``, ``rtx4090-24gb``, ``a100-80gb``,
    ``h100-80gb``, ``h200-141gb`` (the GPU lent for this project's measurements),
    ``rtx5090-no-kernels``: an sm_120 GPU visible to a torch build made for sm_50..sm_90, so
    unusable, and the plan falls back to the CPU), or a bare device type
    ("cpu", "cuda" = an RTX 4090, "mps") to be adjusted with the keywords: whether the CPU
    accelerates bf16, the GPU's compute capability and memory, which optional packages count
    as installed and usable, and whether the installed torch has kernels for the GPU (``kernels``:
    default the profile's; ``fake_capabilities("rtx5090-no-kernels", kernels=True)`` is that card once
    torch supports it). Any other `Capabilities` field can be
    overridden by name. Versions are this machine's.

    Examples:
        >>> from sdopt.testing import fake_capabilities
        >>> caps = fake_capabilities("t4-16gb")
        >>> caps.device, caps.half_dtype, caps.gpu.arch
        ('cuda', 'float16', 'sm_75')
        >>> fake_capabilities("rtx5090-no-kernels").device
        'cpu'
    """
    from sdopt.capabilities import MpsInfo, choose_device, cpu_info, no_kernel_fix

    base = {"cpu": "cpu-avx2", "cuda": "rtx4090-24gb", "mps": "apple-m2-16gb"}.get(profile, profile)
    if base not in _PROFILES:
        raise ValueError(f"unknown capabilities profile {profile!r}; choose one of: {', '.join(PROFILES)}")
    device, cpu_model, flags, ram, gpu_spec, in_build = _PROFILES[base]
    flag_set = set(flags)
    if bf16_accelerated is not None:
        flag_set = set(_X86_AMX if bf16_accelerated else _X86_AVX2)
    machine = "arm64" if device == "mps" else "x86_64"
    cpu = cpu_info(cpu_model, flag_set, 8, machine)
    cpu = dataclasses.replace(cpu, logical_cores=16)
    if bf16_accelerated is None and base in _MEASURED_BF16_SPEEDUP:
        speedup = _MEASURED_BF16_SPEEDUP[base]
        cpu = dataclasses.replace(cpu, bf16_accelerated=True, bf16_speedup=speedup)
    cuda: tuple[CudaDevice, ...] = ()
    if gpu_spec is not None:
        name, capability, memory = gpu_spec
        gpu = CudaDevice.from_capability(0, name, cuda_capability or capability, vram_gb or memory)
        gpu = dataclasses.replace(gpu, free_memory_gb=gpu.total_memory_gb * 0.9)
        if not (in_build if kernels is None else kernels):
            fix = no_kernel_fix(gpu.capability)
            reason = f"{gpu.arch} has no kernels in this torch build (built for sm_50..sm_90); {fix}"
            gpu = dataclasses.replace(gpu, arch_in_build=False, usable=False, reason=reason, free_memory_gb=None)
        cuda = (gpu,)
    mps = MpsInfo(True, True, "", ram) if device == "mps" else MpsInfo()
    chosen, reason, notes = choose_device(cuda, mps, False)
    package_map = {
        name: {"installed": False, "version": None, "usable": False, "reason": "not installed"}
        for name in OPTIONAL_PACKAGES
    }
    for name, usable in (packages or {}).items():
        package_map[name] = {"installed": True, "version": "0.0", "usable": usable, "reason": "" if usable else "fake"}
    caps = Capabilities(
        versions=dict(detect().versions),
        device=chosen,
        device_reason=reason,
        cpu=cpu,
        cuda=cuda,
        mps=mps,
        ram_total_gb=float(ram),
        ram_available_gb=float(ram) * 0.8,
        packages=package_map,
        cxx_compiler="/usr/bin/g++",
        warnings=notes,
        profile=profile,
    )
    return dataclasses.replace(caps, **overrides) if overrides else caps
