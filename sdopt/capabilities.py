"""What this machine can do: the facts optimizations are chosen by.

``detect()`` is cheap (no kernels are launched on a CPU-only machine) and cached per process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
from dataclasses import dataclass, field
from typing import Any

import torch

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
    "asimd",
    "bf16",
    "i8mm",
    "sve",
)
_OPTIONAL_PACKAGES = ("xformers", "bitsandbytes", "torchao", "triton", "flash_attn", "sageattention")


@dataclass(frozen=True)
class CpuInfo:
    """The host CPU: model, cores, the ISA flags that matter, and what they accelerate."""

    model: str
    physical_cores: int
    logical_cores: int
    flags: tuple[str, ...]
    bf16_accelerated: bool
    int8_accelerated: bool


@dataclass(frozen=True)
class CudaDevice:
    """One visible CUDA device and what it supports."""

    index: int
    name: str
    capability: tuple[int, int]
    total_memory_gb: float
    usable: bool = True
    reason: str = ""

    @classmethod
    def from_capability(cls, index: int, name: str, capability: tuple[int, int], total_memory_gb: float) -> CudaDevice:
        return cls(index=index, name=name, capability=tuple(capability), total_memory_gb=total_memory_gb)  # type: ignore[arg-type]

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

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "capability": list(self.capability),
            "arch": self.arch,
            "usable": self.usable,
            "reason": self.reason,
            "total_memory_gb": round(self.total_memory_gb, 2),
            "bf16": self.bf16,
            "fp16": self.fp16,
            "tf32": self.tf32,
            "fp8": self.fp8,
        }


@dataclass(frozen=True)
class Capabilities:
    """A snapshot of the machine: versions, the device to use, CPU/GPU features, packages.

    Build one with :func:`detect` (or :func:`sdopt.testing.fake_capabilities` in tests).
    """

    versions: dict[str, str | None]
    device: str
    device_reason: str
    cpu: CpuInfo
    cuda: tuple[CudaDevice, ...] = ()
    mps_available: bool = False
    ram_total_gb: float = 0.0
    ram_available_gb: float = 0.0
    packages: dict[str, dict[str, Any]] = field(default_factory=dict)
    cxx_compiler: str | None = None
    fake: bool = False

    # ---- derived facts used by requirements and checks
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
        return gpu.total_memory_gb if gpu is not None else self.ram_total_gb

    @property
    def compute_capability(self) -> tuple[int, int] | None:
        gpu = self.gpu
        return gpu.capability if gpu is not None else None

    def package_usable(self, name: str) -> bool:
        return bool(self.packages.get(name, {}).get("usable"))

    def package_version(self, name: str) -> str | None:
        return self.packages.get(name, {}).get("version")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict of everything detected, with the fingerprint."""
        return {
            "versions": dict(self.versions),
            "device": self.device,
            "device_reason": self.device_reason,
            "cpu": {**dataclasses.asdict(self.cpu), "flags": list(self.cpu.flags)},
            "cuda": [gpu.to_dict() for gpu in self.cuda],
            "mps": {"available": self.mps_available},
            "memory": {
                "ram_total_gb": round(self.ram_total_gb, 2),
                "ram_available_gb": round(self.ram_available_gb, 2),
            },
            "packages": {name: dict(info) for name, info in sorted(self.packages.items())},
            "cxx_compiler": self.cxx_compiler,
            "fake": self.fake,
            "fingerprint": self.fingerprint,
        }

    @property
    def fingerprint(self) -> str:
        """A short hash of the facts that change which optimizations apply.

        Free memory and patch versions are left out, so the fingerprint is stable across runs
        on the same machine and setup.
        """
        relevant = {
            "device": self.device,
            "cpu": [self.cpu.bf16_accelerated, self.cpu.int8_accelerated],
            "gpu": [[gpu.capability, round(gpu.total_memory_gb), gpu.usable] for gpu in self.cuda],
            "mps": self.mps_available,
            "packages": sorted(name for name in self.packages if self.package_usable(name)),
            "torch": _minor(self.versions.get("torch")),
            "diffusers": _minor(self.versions.get("diffusers")),
        }
        digest = hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()
        return digest[:12]


def _minor(version: str | None) -> str | None:
    if version is None:
        return None
    return ".".join(version.split("+")[0].split(".")[:2])


# --------------------------------------------------------------------------- probes


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_info() -> CpuInfo:
    flags: set[str] = set()
    model = platform.processor() or platform.machine()
    physical: set[tuple[str, str]] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            physical_id = core_id = ""
            for line in handle:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key in ("flags", "Features") and not flags:
                    flags = set(value.split())
                elif key == "model name" and value:
                    model = value
                elif key == "physical id":
                    physical_id = value
                elif key == "core id":
                    core_id = value
                    physical.add((physical_id, core_id))
    except OSError:
        pass  # not Linux: flags stay unknown, bf16 counts as not accelerated
    logical = os.cpu_count() or 1
    relevant = tuple(flag for flag in _CPU_FLAGS_OF_INTEREST if flag in flags)
    x86_bf16 = "amx_bf16" in flags or "avx512_bf16" in flags
    arm_bf16 = platform.machine() in ("arm64", "aarch64") and "bf16" in flags
    int8 = "amx_int8" in flags or "avx512_vnni" in flags or "avx_vnni" in flags or "i8mm" in flags
    return CpuInfo(
        model=model,
        physical_cores=len(physical) or logical,
        logical_cores=logical,
        flags=relevant,
        bf16_accelerated=x86_bf16 or arm_bf16,
        int8_accelerated=int8,
    )


def _ram_gb() -> tuple[float, float]:
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


def _cuda_devices() -> tuple[CudaDevice, ...]:
    if not torch.cuda.is_available():
        return ()
    devices = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        devices.append(
            CudaDevice(
                index=index,
                name=props.name,
                capability=(props.major, props.minor),
                total_memory_gb=props.total_memory / 2**30,
            )
        )
    return tuple(devices)


def _packages() -> dict[str, dict[str, Any]]:
    packages = {}
    for name in _OPTIONAL_PACKAGES:
        version = _dist_version(name.replace("_", "-")) or _dist_version(name)
        # Installed is not usable: a functional probe per package comes with its optimization.
        packages[name] = {"installed": version is not None, "version": version, "usable": version is not None}
    return packages


def _choose_device(cuda: tuple[CudaDevice, ...], mps: bool, requested: str | None) -> tuple[str, str]:
    if requested is not None:
        return requested, f"requested by the caller ({requested})"
    usable = [gpu for gpu in cuda if gpu.usable]
    if usable:
        gpu = usable[0]
        return "cuda", f"cuda:{gpu.index} {gpu.name} {gpu.arch}"
    if mps:
        return "mps", "Apple MPS"
    return "cpu", "no usable accelerator found"


_cached: Capabilities | None = None


def detect(device: str | None = None, *, refresh: bool = False) -> Capabilities:
    """Detect this machine's capabilities (cached per process; ``refresh=True`` re-probes).

    ``device`` forces the target device type ("cpu", "cuda", "mps") instead of the best usable one.

    Example:
        >>> from sdopt import detect
        >>> caps = detect()
        >>> caps.device in ("cpu", "cuda", "mps")
        True
    """
    global _cached
    if _cached is None or refresh:
        cuda = _cuda_devices()
        mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
        total, available = _ram_gb()
        chosen, reason = _choose_device(cuda, mps, None)
        _cached = Capabilities(
            versions={
                "sdopt": _dist_version("sdopt"),
                "torch": torch.__version__,
                "diffusers": _dist_version("diffusers"),
                "transformers": _dist_version("transformers"),
                "accelerate": _dist_version("accelerate"),
                "python": platform.python_version(),
                "cuda_runtime": torch.version.cuda,
            },
            device=chosen,
            device_reason=reason,
            cpu=_cpu_info(),
            cuda=cuda,
            mps_available=mps,
            ram_total_gb=total,
            ram_available_gb=available,
            packages=_packages(),
            cxx_compiler=shutil.which("g++") or shutil.which("c++") or shutil.which("clang++"),
        )
    if device is not None and device != _cached.device:
        chosen, reason = _choose_device(_cached.cuda, _cached.mps_available, device)
        return dataclasses.replace(_cached, device=chosen, device_reason=reason)
    return _cached
