"""CPU probes: whether bf16 beats float32 here (timed, cached), the instruction-set cap set through oneDNN's
environment, macOS's sysctl facts, and the RAM."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from typing import Any

from sdopt.probes.run import dist_version, read_cache, write_cache

BF16_MIN_SPEEDUP = 1.1

# oneDNN's dispatcher cap (https://uxlfoundation.github.io/oneDNN/dev_guide_cpu_dispatcher_control.html): the
# x86 flags each value leaves usable. PyTorch's oneDNN and OpenVINO's read it; a process capped to AVX2 on an
# AVX-512 CPU runs AVX2 kernels, so the class that decides what pays is AVX2's.
_AVX512_FLAGS = frozenset({"avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16"})
_AMX_FLAGS = frozenset({"amx_tile", "amx_bf16", "amx_int8"})
_CAP_REMOVES: dict[str, frozenset[str]] = {
    "SSE41": frozenset({"avx2", "fma", "f16c", "avx_vnni"}) | _AVX512_FLAGS | _AMX_FLAGS,
    "AVX": frozenset({"avx2", "fma", "avx_vnni"}) | _AVX512_FLAGS | _AMX_FLAGS,
    "AVX2": frozenset({"avx_vnni"}) | _AVX512_FLAGS | _AMX_FLAGS,
    "AVX2_VNNI": _AVX512_FLAGS | _AMX_FLAGS,
    "AVX2_VNNI_2": _AVX512_FLAGS | _AMX_FLAGS,
    "AVX512_CORE": frozenset({"avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni"}) | _AMX_FLAGS,
    "AVX512_CORE_VNNI": frozenset({"avx512_bf16", "avx512_fp16"}) | _AMX_FLAGS,
    "AVX512_CORE_BF16": frozenset({"avx512_fp16"}) | _AMX_FLAGS,
    "AVX512_CORE_FP16": _AMX_FLAGS,
}


def isa_cap(environ: dict[str, str] | None = None) -> str:
    """The instruction-set cap this process runs oneDNN under (``ONEDNN_MAX_CPU_ISA``, or its older name
    ``DNNL_MAX_CPU_ISA``), upper case; ``""`` when none is set or the value caps nothing sdopt knows.

    Examples:
        >>> isa_cap({"ONEDNN_MAX_CPU_ISA": "avx2"}), isa_cap({}), isa_cap({"DNNL_MAX_CPU_ISA": "ALL"})
        ('AVX2', '', '')
    """
    environ = dict(os.environ) if environ is None else environ
    value = (environ.get("ONEDNN_MAX_CPU_ISA") or environ.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
    return value if value in _CAP_REMOVES else ""


def capped_flags(flags: set[str], cap: str) -> set[str]:
    """``flags`` less those the oneDNN cap ``cap`` (see `isa_cap`) puts out of reach.

    Examples:
        >>> sorted(capped_flags({"avx2", "fma", "avx512f", "avx512_bf16", "avx_vnni"}, "AVX2"))
        ['avx2', 'fma']
        >>> sorted(capped_flags({"avx2", "avx512f"}, ""))
        ['avx2', 'avx512f']
    """
    return flags - _CAP_REMOVES.get(cap, frozenset())


# The bf16 decision is the median of several timings taken in different processes (one per
# process, so a busy moment does not decide for good): up to _BF16_SAMPLES while the median is
# within _BF16_MARGIN of the threshold, and taken again after _BF16_MAX_AGE_S.
_BF16_SAMPLES, _BF16_MARGIN, _BF16_MAX_AGE_S = 5, 0.15, 30 * 24 * 3600


def bf16_speedup(model: str, flags: tuple[str, ...] = ()) -> float:
    """fp32 time / bf16 time of a 3x3 convolution on this CPU (cached on disk per CPU, its flags,
    torch and the thread count; see the sampling rule above)."""
    import time

    flags_digest = hashlib.sha256(" ".join(sorted(flags)).encode()).hexdigest()[:8]
    key = f"bf16-speedup|{model}|flags={flags_digest}|torch=={dist_version('torch')}|threads={os.cpu_count()}"
    cache = read_cache()
    entry = cache.get(key)
    fresh = isinstance(entry, dict) and isinstance(entry.get("measured"), (int, float))
    if not isinstance(entry, dict) or not fresh or time.time() - entry["measured"] > _BF16_MAX_AGE_S:
        entry = {"samples": [], "measured": time.time()}
    stored = entry.get("samples", [])
    well_formed = isinstance(stored, list) and all(isinstance(x, (int, float)) and x == x and x > 0 for x in stored)
    samples = [float(x) for x in stored] if well_formed else []  # a damaged entry is measured again
    median = sorted(samples)[len(samples) // 2] if samples else None
    borderline = median is not None and abs(median - BF16_MIN_SPEEDUP) <= _BF16_MARGIN * BF16_MIN_SPEEDUP
    if median is None or (borderline and len(samples) < _BF16_SAMPLES):
        samples.append(round(time_bf16_against_fp32(), 3))
        cache[key] = {"samples": samples, "measured": entry.get("measured", time.time())}
        write_cache(cache)
        median = sorted(samples)[len(samples) // 2]
    return float(median)


def time_bf16_against_fp32() -> float:
    import time

    import torch

    def median_ms(dtype: torch.dtype) -> float:
        conv: Any = torch.nn.Conv2d(256, 256, 3, padding=1).to(dtype)
        conv = conv.to(memory_format=torch.channels_last)
        x = torch.randn(1, 256, 32, 32, dtype=dtype).contiguous(memory_format=torch.channels_last)
        times = []
        with torch.inference_mode():
            for index in range(8):
                started = time.perf_counter()
                conv(x)
                if index >= 2:  # the first calls pick and compile oneDNN kernels
                    times.append(time.perf_counter() - started)
        return sorted(times)[len(times) // 2]

    return median_ms(torch.float32) / median_ms(torch.bfloat16)


def sysctl_cpu() -> tuple[str, set[str], int]:
    """On macOS (no /proc): the CPU's model, its Arm flags (FEAT_BF16, FEAT_I8MM) and physical cores."""
    machine = platform.machine()
    keys = ["machdep.cpu.brand_string", "hw.physicalcpu", "hw.optional.arm.FEAT_BF16", "hw.optional.arm.FEAT_I8MM"]
    values = {}
    for key in keys:
        try:
            values[key] = subprocess.run(
                ["sysctl", "-n", key], capture_output=True, text=True, timeout=2, check=False
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            values[key] = ""
    flags = {"asimd", "neon"} if machine == "arm64" else set()
    flags |= {"bf16"} if values["hw.optional.arm.FEAT_BF16"] == "1" else set()
    flags |= {"i8mm"} if values["hw.optional.arm.FEAT_I8MM"] == "1" else set()
    physical = int(values["hw.physicalcpu"]) if values["hw.physicalcpu"].isdigit() else os.cpu_count() or 1
    return values["machdep.cpu.brand_string"] or machine, flags, physical


def ram_gb() -> tuple[float, float]:
    """Total and available RAM in GB (0 when neither /proc/meminfo nor sysconf says)."""
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            info = {line.split(":")[0]: line.split()[1] for line in handle}
        return int(info["MemTotal"]) / 2**20, int(info.get("MemAvailable", info["MemTotal"])) / 2**20
    except (OSError, KeyError, IndexError, ValueError):
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
            return total, total
        except (ValueError, OSError, AttributeError):
            return 0.0, 0.0
