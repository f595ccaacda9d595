"""What this machine can do: the facts optimizations are chosen by.

``detect()`` is cheap and cached per process. Without a GPU it reads ``/proc/cpuinfo`` and
package metadata and launches no kernel. Probes that run kernels (a CUDA device, an optional
package such as xformers) run in a subprocess with a time limit, so a driver or ABI crash
costs a reason in the report, never the process. Package probe results are cached on disk
per package version, torch version and device.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import shutil
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdopt.probes import accelerators, packages
from sdopt.probes import cpu as cpu_probe
from sdopt.probes.packages import OPTIONAL_PACKAGES as OPTIONAL_PACKAGES
from sdopt.probes.run import dist_version
from sdopt.requirements import CPU_CLASSES

_CPU_FLAGS_OF_INTEREST = (
    "avx2",
    "avx512f",
    "avx512_bf16",
    "avx512_fp16",
    "avx512_vnni",
    "avx_vnni",
    "amx_bf16",
    "amx_int8",
    "amx_tile",
    "fma",
    "f16c",
    "neon",
    "asimd",
    "asimdhp",
    "bf16",
    "i8mm",
    "sve",
    "sve2",
)


@dataclass(frozen=True)
class CpuInfo:
    """The host CPU: model, cores, the ISA flags that matter, and what they accelerate."""

    model: str
    physical_cores: int
    logical_cores: int
    flags: tuple[str, ...]
    bf16_accelerated: bool
    int8_accelerated: bool
    bf16_speedup: float | None = None
    """Measured fp32 time / bf16 time of a small convolution, where the flags alone do not decide."""
    isa_cap: str = ""
    """oneDNN's instruction-set cap for this process (``ONEDNN_MAX_CPU_ISA``, e.g. ``AVX2``): ``flags`` then
    lists only what the kernels may use, so the class is the capped one; ``""`` when uncapped."""

    @property
    def cpu_class(self) -> str:
        """The instruction-set class that decides which CPU kernels pay (tiers choose by it, as measured):
        ``amx``, ``avx512-bf16``, ``avx512-vnni``, ``avx512``, ``avx2-vnni``, ``avx2``, ``arm`` or ``other``.

        Examples:
            >>> from sdopt.testing import fake_capabilities
            >>> fake_capabilities("cpu-avx2").cpu.cpu_class, fake_capabilities("cpu-amx").cpu.cpu_class
            ('avx2', 'amx')
        """
        flags = set(self.flags)
        for cpu_class, flag in CPU_CLASSES:
            if flag in flags:
                return cpu_class
        return "other"


@dataclass(frozen=True)
class CudaDevice:
    """One visible CUDA device, whether this torch build can run on it, and what it supports."""

    index: int
    name: str
    capability: tuple[int, int]
    total_memory_gb: float
    free_memory_gb: float | None = None
    arch_in_build: bool = True
    usable: bool = True
    reason: str = ""

    @classmethod
    def from_capability(cls, index: int, name: str, capability: tuple[int, int], total_memory_gb: float) -> CudaDevice:
        major, minor = capability
        return cls(index=index, name=name, capability=(major, minor), total_memory_gb=total_memory_gb)

    @property
    def arch(self) -> str:
        return f"sm_{self.capability[0]}{self.capability[1]}"

    @property
    def bf16(self) -> bool:
        return self.capability >= (8, 0)

    @property
    def fp16(self) -> bool:
        return self.capability >= (5, 3)

    @property
    def tf32(self) -> bool:
        return self.capability >= (8, 0)

    @property
    def fp8(self) -> bool:
        return self.capability >= (8, 9)

    @property
    def flash_sdpa(self) -> bool:
        """PyTorch's flash-attention SDPA kernel (sm_80 and newer)."""
        return self.capability >= (8, 0)

    @property
    def mem_efficient_sdpa(self) -> bool:
        """PyTorch's memory-efficient SDPA kernel (sm_50 and newer)."""
        return self.capability >= (5, 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "capability": list(self.capability),
            "arch": self.arch,
            "arch_in_build": self.arch_in_build,
            "usable": self.usable,
            "reason": self.reason,
            "total_memory_gb": round(self.total_memory_gb, 2),
            "free_memory_gb": None if self.free_memory_gb is None else round(self.free_memory_gb, 2),
            "bf16": self.bf16,
            "fp16": self.fp16,
            "tf32": self.tf32,
            "fp8": self.fp8,
            "flash_sdpa": self.flash_sdpa,
            "mem_efficient_sdpa": self.mem_efficient_sdpa,
        }


@dataclass(frozen=True)
class MpsInfo:
    """Apple's Metal device: present, working, and the unified memory it shares with the CPU."""

    available: bool = False
    usable: bool = False
    reason: str = ""
    unified_memory_gb: float = 0.0


@dataclass(frozen=True)
class Capabilities:
    """A snapshot of the machine: versions, the device to use, CPU/GPU features, packages.

    Build one with `detect` (or `sdopt.testing.fake_capabilities` in tests).
    """

    versions: dict[str, str | None]
    device: str
    device_reason: str
    cpu: CpuInfo
    cuda: tuple[CudaDevice, ...] = ()
    mps: MpsInfo = MpsInfo()
    xpu_available: bool = False
    ram_total_gb: float = 0.0
    ram_available_gb: float = 0.0
    packages: dict[str, dict[str, Any]] = field(default_factory=dict)
    cxx_compiler: str | None = None
    warnings: tuple[str, ...] = ()
    profile: str | None = None
    """The `sdopt.testing.fake_capabilities` profile these were made from; ``None`` when detected."""

    # ---- derived facts used by requirements, checks and resolution
    @property
    def gpu(self) -> CudaDevice | None:
        """The CUDA device sdopt targets (the first usable one), if the device is cuda."""
        if self.device != "cuda":
            return None
        return next((gpu for gpu in self.cuda if gpu.usable), None)

    @property
    def device_memory_gb(self) -> float:
        """Memory available to models on the target device: VRAM on CUDA, RAM otherwise."""
        gpu = self.gpu
        if gpu is not None:
            return gpu.total_memory_gb
        if self.device == "mps" and self.mps.unified_memory_gb:
            return self.mps.unified_memory_gb
        return self.ram_total_gb

    @property
    def compute_capability(self) -> tuple[int, int] | None:
        gpu = self.gpu
        return gpu.capability if gpu is not None else None

    @property
    def device_usable(self) -> bool:
        """Whether the target device can run a pipeline here (a ``device`` forced on a machine without a
        usable one can be planned for, not run on).

        Examples:
            >>> from sdopt.testing import fake_capabilities
            >>> fake_capabilities("t4-16gb").device_usable, fake_capabilities("cpu").device_usable
            (True, True)
        """
        if self.device == "cuda":
            return any(gpu.usable for gpu in self.cuda)
        if self.device == "mps":
            return self.mps.usable
        if self.device == "xpu":
            return self.xpu_available
        return True

    def require_usable_device(self) -> None:
        """Raise, naming the next step, when the target device cannot run a pipeline here."""
        if not self.device_usable:
            why = "; ".join(self.warnings) or f"no {self.device} device was found"
            raise ValueError(
                f"cannot run on {self.device} here ({why}); leave out --device to run on the device detect() "
                f"chooses ({choose_device(self.cuda, self.mps, self.xpu_available)[0]})"
            )

    @property
    def half_dtype(self) -> str:
        """The fastest accurate reduced-precision dtype on the target device, or "float32".

        bfloat16 on CUDA >= 8.0 (and XPU), float16 on older CUDA and on MPS; on CPU bfloat16 only
        where AMX-BF16 (or Arm BF16, or a measured speedup) accelerates it, since elsewhere it is slower
        than float32.
        """
        if self.device == "cuda":
            gpu = self.gpu
            if gpu is None:
                return "float32"
            return "bfloat16" if gpu.bf16 else "float16" if gpu.fp16 else "float32"
        if self.device == "mps":
            return "float16"
        if self.device == "xpu":
            return "bfloat16"
        return "bfloat16" if self.cpu.bf16_accelerated else "float32"

    def package_usable(self, name: str) -> bool:
        return bool(self.packages.get(name, {}).get("usable"))

    def package_version(self, name: str) -> str | None:
        return self.packages.get(name, {}).get("version")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict of everything detected, with the fingerprint."""
        return {
            **self.versions,
            "device": self.device,
            "device_reason": self.device_reason,
            "half_dtype": self.half_dtype,
            "cpu": {**dataclasses.asdict(self.cpu), "flags": list(self.cpu.flags)},
            "cuda": [gpu.to_dict() for gpu in self.cuda],
            "mps": dataclasses.asdict(self.mps),
            "xpu": {"available": self.xpu_available},
            "memory": {
                "ram_total_gb": round(self.ram_total_gb, 2),
                "ram_available_gb": round(self.ram_available_gb, 2),
            },
            "packages": {name: dict(info) for name, info in sorted(self.packages.items())},
            "cxx_compiler": self.cxx_compiler,
            "warnings": list(self.warnings),
            "profile": self.profile,
            "fingerprint": self.fingerprint,
        }

    def fingerprint_facts(self) -> dict[str, Any]:
        """The facts that change which optimizations apply, readable (what `fingerprint` hashes).

        Free memory and patch versions are left out, so they are stable across runs on the same
        machine and setup.
        """
        return {
            "device": self.device,
            "cpu_bf16_accelerated": self.cpu.bf16_accelerated,
            "cpu_int8_accelerated": self.cpu.int8_accelerated,
            "cpu_class": self.cpu.cpu_class,
            "gpus": [
                f"{gpu.arch} {round(gpu.total_memory_gb)} GB{'' if gpu.usable else ' (unusable)'}" for gpu in self.cuda
            ],
            "mps": self.mps.usable,
            "packages": sorted(name for name in self.packages if self.package_usable(name)),
            "cxx_compiler": self.cxx_compiler is not None,
            "torch": _minor(self.versions.get("torch")),
            "diffusers": _minor(self.versions.get("diffusers")),
        }

    @property
    def fingerprint(self) -> str:
        """A short hash of `fingerprint_facts`."""
        digest = hashlib.sha256(json.dumps(self.fingerprint_facts(), sort_keys=True).encode()).hexdigest()
        return digest[:12]


def fact_differences(before: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """Readable differences between two `Capabilities.fingerprint_facts`, e.g. ``device: cuda -> cpu``."""
    return [
        f"{key}: {before.get(key)!r} -> {now.get(key)!r}"
        for key in sorted(set(before) | set(now))
        if before.get(key) != now.get(key)
    ]


def _minor(version: str | None) -> str | None:
    if version is None:
        return None
    return ".".join(version.split("+")[0].split(".")[:2])


# --------------------------------------------------------------------------- CPU


def parse_cpuinfo(text: str, machine: str | None = None) -> CpuInfo:
    """Read model, cores and ISA flags from ``/proc/cpuinfo`` text (x86 ``flags`` or Arm ``Features``)."""
    machine = machine or platform.machine()
    flags: set[str] = set()
    model = ""
    cores: set[tuple[str, str]] = set()
    processors = 0
    physical_id = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "processor":
            processors += 1
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
        elif key in ("model name", "Model", "Hardware") and value and not model:
            model = value
        elif key == "physical id":
            physical_id = value
        elif key == "core id":
            cores.add((physical_id, value))
    if "asimd" in flags:
        flags.add("neon")  # Arm's Advanced SIMD is what most people call NEON
    return cpu_info(model or machine, flags, len(cores) or processors or (os.cpu_count() or 1), machine)


def cpu_info(model: str, flags: set[str], physical: int, machine: str) -> CpuInfo:
    arm = machine.lower() in ("arm64", "aarch64")
    # AMX-BF16 makes bf16 ~4x faster than fp32 (SD1.5 UNet, diffusers-notes). AVX-512-BF16 alone
    # does not decide it: on a Sapphire Rapids VM with AMX hidden, bf16 convolutions and matmuls
    # ran ~1.5x SLOWER than fp32. detect() measures that case (see sdopt.probes.cpu.bf16_speedup).
    x86_bf16 = "amx_bf16" in flags
    arm_bf16 = arm and "bf16" in flags
    int8 = bool({"amx_int8", "avx512_vnni", "avx_vnni"} & flags) or (arm and "i8mm" in flags)
    return CpuInfo(
        model=model,
        physical_cores=physical,
        logical_cores=os.cpu_count() or physical,
        flags=tuple(flag for flag in _CPU_FLAGS_OF_INTEREST if flag in flags),
        bf16_accelerated=x86_bf16 or arm_bf16,
        int8_accelerated=int8,
    )


def _detect_cpu() -> CpuInfo:
    try:
        cpu = parse_cpuinfo(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace"))
        cap = cpu_probe.isa_cap()
        if cap:  # the kernels this process runs stop at the cap: so does the class that picks them
            capped = cpu_probe.capped_flags(set(cpu.flags), cap)
            cpu = dataclasses.replace(
                cpu_info(cpu.model, capped, cpu.physical_cores, platform.machine()),
                logical_cores=cpu.logical_cores,
                isa_cap=cap,
            )
    except OSError:
        if sys.platform == "darwin":  # no /proc: ask sysctl (Apple Silicon reports FEAT_BF16 / FEAT_I8MM)
            model, flags, physical = cpu_probe.sysctl_cpu()
            return cpu_info(model, flags, physical, platform.machine())
        machine = platform.machine()
        return cpu_info(platform.processor() or machine, set(), os.cpu_count() or 1, machine)
    if "avx512_bf16" in cpu.flags and "amx_bf16" not in cpu.flags:
        speedup = cpu_probe.bf16_speedup(cpu.model, cpu.flags)
        cpu = dataclasses.replace(cpu, bf16_accelerated=speedup >= cpu_probe.BF16_MIN_SPEEDUP, bf16_speedup=speedup)
    return cpu


# --------------------------------------------------------------------------- CUDA


def arch_in_build(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """Whether a torch build compiled for ``arch_list`` has kernels a device of ``capability`` can run.

    SASS (``sm_XY``) runs on devices of the same major version and an equal or newer minor;
    PTX (``compute_XY``) is JIT-compiled for any device at least that new.

    Examples:
        >>> from sdopt.capabilities import arch_in_build
        >>> arch_in_build((12, 0), ["sm_80", "sm_86", "sm_90"])
        False
        >>> arch_in_build((8, 9), ["sm_80", "sm_86", "sm_90"]), arch_in_build((12, 0), ["compute_90"])
        (True, True)
    """
    if not arch_list:
        return True  # an unknown build: let the live probe decide
    for arch in arch_list:
        kind, _, number = arch.partition("_")
        digits = "".join(ch for ch in number if ch.isdigit())
        if len(digits) < 2:
            continue
        built = (int(digits[:-1]), int(digits[-1]))
        if kind == "sm" and built[0] == capability[0] and built[1] <= capability[1]:
            return True
        if kind == "compute" and built <= tuple(capability):
            return True
    return False


def _build_range(arch_list: list[str]) -> str:
    sms = [a for a in arch_list if a.startswith("sm_")]
    return f"{sms[0]}..{sms[-1]}" if sms else ", ".join(arch_list) or "unknown archs"


def no_kernel_fix(capability: tuple[int, int]) -> str:
    """How to get a torch build with kernels for a device of ``capability``."""
    arch = f"sm_{capability[0]}{capability[1]}"
    if capability >= (10, 0):
        return (
            f"install a PyTorch build that includes {arch} (CUDA 12.8 or newer): "
            "pip install --upgrade torch --index-url https://download.pytorch.org/whl/cu128"
        )
    return (
        f"install a PyTorch build that still includes {arch}, e.g. an older CUDA variant: "
        "pip install torch --index-url https://download.pytorch.org/whl/cu126"
    )


def _cuda_devices() -> tuple[CudaDevice, ...]:
    torch = accelerators.accelerator_torch()
    if torch is None or not torch.cuda.is_available():
        return ()
    arch_list = list(torch.cuda.get_arch_list())
    devices = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        capability = (props.major, props.minor)
        device = CudaDevice(
            index=index,
            name=props.name,
            capability=capability,
            total_memory_gb=props.total_memory / 2**30,
            arch_in_build=arch_in_build(capability, arch_list),
        )
        if not device.arch_in_build:
            reason = (
                f"{device.arch} has no kernels in this torch build (built for {_build_range(arch_list)}); "
                f"{no_kernel_fix(capability)}"
            )
            device = dataclasses.replace(device, usable=False, reason=reason)
        devices.append(device)
    if any(device.arch_in_build for device in devices):
        probed = accelerators.probe_cuda_devices()
        for position, (device, result) in enumerate(zip(devices, probed, strict=False)):
            if not device.arch_in_build:
                continue
            if result.get("usable"):
                devices[position] = dataclasses.replace(device, free_memory_gb=result.get("free_gb"))
            else:
                reason = result.get("reason", "probe failed")
                if "no kernel image" in reason:
                    reason = f"{reason}; {no_kernel_fix(device.capability)}"
                devices[position] = dataclasses.replace(device, usable=False, reason=reason)
    return tuple(devices)


# --------------------------------------------------------------------------- MPS / XPU


# --------------------------------------------------------------------------- optional packages


def _packages(device: str, cuda: tuple[CudaDevice, ...] = ()) -> dict[str, dict[str, Any]]:
    """Optional packages and whether they work here; on CUDA the GPUs (name, compute capability) and
    the driver key the probe cache, so a new card or driver is probed again."""
    hardware = device
    if device == "cuda":
        hardware += "|" + ",".join(f"{gpu.name}:sm_{gpu.capability[0]}{gpu.capability[1]}" for gpu in cuda)
        hardware += f"|driver={accelerators.cuda_driver()}"
    return packages.package_states(device, hardware)


# --------------------------------------------------------------------------- choosing the device


def choose_device(
    cuda: tuple[CudaDevice, ...], mps: MpsInfo, xpu: bool, requested: str | None = None
) -> tuple[str, str, tuple[str, ...]]:
    """The best usable device type, why, and warnings about accelerators that cannot be used."""
    notes = tuple(f"cuda:{gpu.index} {gpu.name} {gpu.reason}" for gpu in cuda if not gpu.usable)
    if requested is not None:
        present = {"cuda": any(gpu.usable for gpu in cuda), "mps": mps.usable, "xpu": xpu}.get(requested, True)
        if not present:
            notes += (
                f"no usable {requested} device here: planning for {requested} without its facts (memory, "
                "dtype support), so the choices that depend on them are skipped",
            )
        return requested, f"requested by the caller ({requested})", notes
    usable = [gpu for gpu in cuda if gpu.usable]
    if usable:
        gpu = usable[0]
        return "cuda", f"cuda:{gpu.index} {gpu.name} {gpu.arch}, {gpu.total_memory_gb:.0f} GB", notes
    if xpu:
        return "xpu", "Intel XPU available", notes
    if mps.usable:
        return "mps", "Apple MPS", notes
    if mps.available:
        notes += (f"MPS is present but not usable: {mps.reason}",)
    if notes:
        return "cpu", "; ".join(notes) + "; using cpu", notes
    return "cpu", "no accelerator found", notes


_cached: Capabilities | None = None


def detect(device: str | None = None, *, refresh: bool = False) -> Capabilities:
    """Detect this machine's capabilities (cached per process; ``refresh=True`` re-probes).

    ``device`` forces the target device type ("cpu", "cuda", "mps") instead of the best usable one.
    An accelerator that is present but cannot be used (for example a GPU this torch build has no
    kernels for) is reported in ``device_reason`` and ``warnings`` with the fix.

    Examples:
        >>> from sdopt import detect
        >>> caps = detect()
        >>> caps.device in ("cpu", "cuda", "mps", "xpu")
        True
    """
    global _cached
    if _cached is None or refresh:
        cuda = _cuda_devices()
        total, available = cpu_probe.ram_gb()
        present, usable, why = accelerators.mps_state()
        mps = MpsInfo(available=present, usable=usable, reason=why, unified_memory_gb=total if usable else 0.0)
        xpu = accelerators.xpu_available()
        chosen, reason, notes = choose_device(cuda, mps, xpu)
        torch = accelerators.accelerator_torch()
        for note in notes:
            warnings.warn(f"sdopt: {note}", RuntimeWarning, stacklevel=2)
        _cached = Capabilities(
            versions={
                "sdopt": dist_version("sdopt"),
                "torch": dist_version("torch"),
                "diffusers": dist_version("diffusers"),
                "transformers": dist_version("transformers"),
                "accelerate": dist_version("accelerate"),
                "python": platform.python_version(),
                "cuda_runtime": torch.version.cuda if torch is not None else None,
            },
            device=chosen,
            device_reason=reason,
            cpu=_detect_cpu(),
            cuda=cuda,
            mps=mps,
            xpu_available=xpu,
            ram_total_gb=total,
            ram_available_gb=available,
            packages=_packages(chosen, cuda),
            cxx_compiler=shutil.which("g++") or shutil.which("c++") or shutil.which("clang++"),
            warnings=notes,
        )
    if device is not None and device != _cached.device:
        chosen, reason, notes = choose_device(_cached.cuda, _cached.mps, _cached.xpu_available, device)
        return dataclasses.replace(
            _cached, device=chosen, device_reason=reason, packages=_packages(chosen, _cached.cuda), warnings=notes
        )
    return _cached
