"""Declarative conditions on the machine and the pipeline.

One class serves two purposes: what an optimization *needs* to work (its ``requires``) and
when a tier *wants* it (an entry's ``when``). Both are checked the same way, purely, and
answer with a readable reason when they do not hold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from packaging.version import InvalidVersion, Version

if TYPE_CHECKING:
    from sdopt.anatomy import Anatomy
    from sdopt.capabilities import Capabilities

# The `pip install sdopt[extra]` that brings each optional package.
PACKAGE_EXTRAS: dict[str, str] = {
    "xformers": "xformers",
    "bitsandbytes": "bnb",
    "torchao": "torchao",
    "matplotlib": "bench",
    "openvino": "openvino",
}

# The CPU classes a condition can name (`CpuInfo.cpu_class`), each with the flag that marks it, the most
# capable first: a CPU is in the first class whose flag it has, else "other".
CPU_CLASSES: tuple[tuple[str, str], ...] = (
    ("amx", "amx_tile"),
    ("amx", "amx_bf16"),
    ("amx", "amx_int8"),
    ("avx512-bf16", "avx512_bf16"),
    ("avx512-vnni", "avx512_vnni"),
    ("avx512", "avx512f"),
    ("avx2-vnni", "avx_vnni"),
    ("avx2", "avx2"),
    ("arm", "asimd"),
    ("arm", "neon"),
)


@dataclass(frozen=True)
class Requirements:
    """Conditions that must all hold; an empty field means "any".

    Examples:
        >>> from sdopt.requirements import Requirements
        >>> from sdopt.testing import fake_capabilities, tiny_pipeline
        >>> from sdopt.anatomy import inspect_pipeline
        >>> needs = Requirements(devices=("cuda",), min_compute_capability=(8, 0))
        >>> needs.unmet(inspect_pipeline(tiny_pipeline("sd")), fake_capabilities("cpu"))
        'needs device cuda (this machine: cpu)'
    """

    devices: tuple[str, ...] = ()
    families: tuple[str, ...] = ()
    denoiser_kinds: tuple[str, ...] = ()
    packages: tuple[str, ...] = ()
    min_compute_capability: tuple[int, int] | None = None
    min_memory_gb: float | None = None
    max_memory_gb: float | None = None
    bf16_accelerated: bool | None = None
    cpu_amx: bool | None = None
    cpu_classes: tuple[str, ...] = ()
    min_denoiser_mparams: float | None = None
    max_denoiser_mparams: float | None = None
    min_torch: str | None = None
    min_diffusers: str | None = None
    needs_vae: bool = False
    distillations: tuple[str, ...] = ()

    def unmet(self, anatomy: Anatomy, caps: Capabilities) -> str | None:
        """The first condition that does not hold, as a reason; ``None`` when all hold."""
        if self.devices and caps.device not in self.devices:
            return f"needs device {' or '.join(self.devices)} (this machine: {caps.device})"
        if self.families and anatomy.family not in self.families:
            return f"for model families {', '.join(self.families)} only (this pipeline: {anatomy.family})"
        if self.denoiser_kinds and anatomy.denoiser_kind not in self.denoiser_kinds:
            denoiser = type(anatomy.denoiser).__name__ if anatomy.denoiser is not None else "none"
            return f"for {' or '.join(self.denoiser_kinds)} denoisers only (this pipeline: {denoiser})"
        if self.distillations and anatomy.distillation not in self.distillations:
            found = f"{anatomy.distillation}-distilled" if anatomy.distillation else "not distilled"
            return f"for {' or '.join(self.distillations)}-distilled models only (this model: {found})"
        if self.needs_vae and anatomy.vae is None:
            return "the pipeline has no VAE"
        for package in self.packages:
            if not caps.package_usable(package):
                info = caps.packages.get(package, {})
                hint = f"; pip install sdopt[{PACKAGE_EXTRAS[package]}]" if package in PACKAGE_EXTRAS else ""
                if not info.get("installed"):
                    return f"needs {package} (not installed){hint}"
                why = f": {info['reason']}" if info.get("reason") else ""
                return f"needs {package} (installed but not usable here{why}){hint}"
        if self.min_compute_capability is not None:
            have = caps.compute_capability
            need = ".".join(map(str, self.min_compute_capability))
            if have is None or tuple(have) < tuple(self.min_compute_capability):
                found = ".".join(map(str, have)) if have else "no CUDA device"
                return f"needs CUDA compute capability >= {need} (this machine: {found})"
        memory = caps.device_memory_gb
        if self.min_memory_gb is not None and memory < self.min_memory_gb:
            return f"needs at least {self.min_memory_gb:g} GB of {caps.device} memory (have {memory:.1f} GB)"
        if self.max_memory_gb is not None and memory > self.max_memory_gb:
            return f"only when {caps.device} memory is at most {self.max_memory_gb:g} GB (have {memory:.1f} GB)"
        if self.bf16_accelerated is not None and caps.cpu.bf16_accelerated != self.bf16_accelerated:
            wanted = "with" if self.bf16_accelerated else "without"
            return f"only on CPUs {wanted} bf16 acceleration (AMX-BF16, or a measured bf16 speedup)"
        if self.cpu_amx is not None and any(flag.startswith("amx") for flag in caps.cpu.flags) != self.cpu_amx:
            return f"only on CPUs {'with' if self.cpu_amx else 'without'} AMX"
        if self.cpu_classes and (caps.device != "cpu" or caps.cpu.cpu_class not in self.cpu_classes):
            found = caps.cpu.cpu_class if caps.device == "cpu" else f"device {caps.device}"
            return f"only on {' or '.join(self.cpu_classes)} CPUs, where it was measured (this machine: {found})"
        if self.min_denoiser_mparams is not None or self.max_denoiser_mparams is not None:
            size = sum(p.numel() for p in anatomy.denoiser.parameters()) / 1e6 if anatomy.denoiser is not None else 0
            if self.min_denoiser_mparams is not None and size < self.min_denoiser_mparams:
                return (
                    f"only for denoisers of at least {self.min_denoiser_mparams:g}M parameters (this one: {size:.1f}M)"
                )
            if self.max_denoiser_mparams is not None and size > self.max_denoiser_mparams:
                return (
                    f"only for denoisers of at most {self.max_denoiser_mparams:g}M parameters (this one: {size:.1f}M)"
                )
        for package, minimum in (("torch", self.min_torch), ("diffusers", self.min_diffusers)):
            installed = caps.versions.get(package)
            if minimum and installed and Version(installed.split("+")[0]) < Version(minimum):
                return f"needs {package} >= {minimum} (installed: {installed})"
        return None

    def to_dict(self) -> dict[str, Any]:
        """The fields that differ from the defaults, JSON-safe."""
        data = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if value != item.default:
                data[item.name] = list(value) if isinstance(value, tuple) else value
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Requirements:
        """Conditions from data (a preset's ``when``), each checked for its type; errors name the condition.

        Examples:
            >>> from sdopt.requirements import Requirements
            >>> Requirements.from_dict({"devices": ["cuda"], "min_memory_gb": 8}).describe()
            'devices=cuda, min_memory_gb=8'
            >>> Requirements.from_dict({"min_torch": "two"})
            Traceback (most recent call last):
            ...
            ValueError: condition min_torch: 'two' is not a version such as '2.4'
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a condition must be a table of conditions such as {{devices = ['cuda']}}, got {data!r}")
        known = {item.name for item in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown condition(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(known))}")
        values: dict[str, Any] = {}
        for name, value in data.items():
            values[name] = _condition(name, value)
        return cls(**values)

    def describe(self) -> str:
        """A short human description, e.g. ``device=cuda, families=sdxl``."""
        parts = []
        for key, value in self.to_dict().items():
            shown = "|".join(map(str, value)) if isinstance(value, list) else value
            parts.append(f"{key}={shown}")
        return ", ".join(parts) or "always"


_LISTS = ("devices", "families", "denoiser_kinds", "packages", "distillations", "cpu_classes")
_FLAGS = ("bf16_accelerated", "cpu_amx", "needs_vae")
_AMOUNTS = ("min_memory_gb", "max_memory_gb", "min_denoiser_mparams", "max_denoiser_mparams")
_VERSIONS = ("min_torch", "min_diffusers")


def _condition(name: str, value: Any) -> Any:
    """``value`` as condition ``name`` holds it, or a ValueError naming the condition and what it takes."""
    if name in _LISTS:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(item, str) and item for item in items):
            raise ValueError(f"condition {name}: a list of names is expected, got {value!r}")
        if name == "cpu_classes":  # a misspelt class would never match, silently
            known = sorted({cpu_class for cpu_class, _ in CPU_CLASSES} | {"other"})
            unknown = [item for item in items if item not in known]
            if unknown:
                raise ValueError(f"condition cpu_classes: unknown class(es) {unknown}; known: {', '.join(known)}")
        return tuple(items)
    if name in _FLAGS:
        if not isinstance(value, bool):
            raise ValueError(f"condition {name}: true or false is expected, got {value!r}")
        return value
    if name in _AMOUNTS:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
            raise ValueError(f"condition {name}: a number >= 0 is expected, got {value!r}")
        return value
    if name in _VERSIONS:
        if not isinstance(value, str):  # TOML reads 2.10 as the number 2.1
            raise ValueError(f"condition {name}: a version in quotes is expected, such as '2.10', got {value!r}")
        try:
            Version(value)
        except InvalidVersion:
            raise ValueError(f"condition {name}: {value!r} is not a version such as '2.4'") from None
        return value
    if name == "min_compute_capability":
        pair = tuple(value) if isinstance(value, (list, tuple)) else ()
        if len(pair) != 2 or not all(isinstance(part, int) and not isinstance(part, bool) for part in pair):
            raise ValueError(f"condition {name}: [major, minor] is expected, such as [8, 9], got {value!r}")
        return pair
    return value
