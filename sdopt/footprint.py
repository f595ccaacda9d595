"""How much device memory a plan will need, estimated before anything changes.

Planning settles the steps that change what weights weigh (``half_precision``, quantization,
``fuse_qkv``...: each says so through `Optimization.storage`), then estimates the footprint:
every component's weights in their planned storage dtype, plus the peak activations of one call at
the pipeline's default size, against the device memory free *now* (read again at planning time on a
real CUDA device, not taken from the first ``detect()``). Steps driven by the budget (offloads) are
decided from it, and win conflicts against steps that only buy speed.

Examples:
    >>> from sdopt import plan
    >>> from sdopt.simulation.architectures import real_pipeline
    >>> from sdopt.testing import fake_capabilities
    >>> p = plan(real_pipeline("sdxl", device="meta"), tier="balanced", caps=fake_capabilities("rtx3060ti-8gb"))
    >>> p.footprint.regime, round(p.footprint.total_gb, 1)
    ('model', 6.5)
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from sdopt.calls import call_default, default_height, latents_per_token, pixels_per_latent

if TYPE_CHECKING:
    from sdopt.anatomy import Anatomy
    from sdopt.capabilities import Capabilities
    from sdopt.planning import Step

GB = 2**30
# Room left for the CUDA context, the allocator's fragmentation and kernels' workspaces.
HEADROOM_SHARE, HEADROOM_MIN_GB = 0.15, 1.0
# Below this much usable memory even one block of a large denoiser may not fit: offload leaf by leaf.
SEQUENTIAL_BELOW_GB = 2.0
# Tensors alive at once at the widest point of a call, in units of its widest activation: the
# denoiser's (feed-forward expansion, residuals, attention inputs and outputs) and a VAE decoder's
# full-resolution level (input, GroupNorm output, conv output, residual).
_DENOISER_LIVE, _DECODER_LIVE = 20, 4


REGIMES = ("none", "model", "group", "sequential")
"""Offload regimes, weakest first: what a footprint needs (`Footprint.regime`) and what an
offload step provides (`sdopt.optimization.Optimization.offload_regime`)."""


def covers(provided: str | None, needed: str) -> bool:
    """Whether an offload of regime ``provided`` (``None``: not an offload) brings the peak down to what
    ``needed`` allows: a stronger offload also does.

    Examples:
        >>> from sdopt.footprint import covers
        >>> covers("sequential", "model"), covers("model", "group"), covers(None, "none")
        (True, False, True)
    """
    return REGIMES.index(provided or "none") >= REGIMES.index(needed)


@dataclass(frozen=True)
class Footprint:
    """Planned device memory: weights per component (GB), peak activations, and what is usable."""

    components_gb: dict[str, float]
    activations_gb: float
    available_gb: float
    largest_layer_gb: float = 0.0
    """The largest single layer's weights: what sequential offload keeps on the device at once."""
    build_gb: float = 0.0
    """The largest transient a step holds while it is applied or builds at its first call (a converted
    or exported copy of the denoiser: `sdopt.optimization.Optimization.build_bytes`), beside the weights."""

    @property
    def smallest_gb(self) -> float:
        """The least memory this pipeline can run in with these steps: one layer on the device at a
        time plus the activations (sequential offload), or everything on a CPU, which cannot offload."""
        return self.activations_gb + self.largest_layer_gb

    @property
    def total_gb(self) -> float:
        return sum(self.components_gb.values())

    @property
    def largest(self) -> str:
        return max(self.components_gb, key=lambda name: self.components_gb[name]) if self.components_gb else "-"

    @property
    def largest_gb(self) -> float:
        return self.components_gb.get(self.largest, 0.0)

    @property
    def peak_gb(self) -> float:
        """Everything resident, plus one call's activations or a step's build, whichever is larger (a
        build runs after the call that triggers it has returned its activations)."""
        return self.total_gb + max(self.activations_gb, self.build_gb)

    @property
    def regime(self) -> str:
        """ "none" (all fits), "model" (one component at a time fits), "group" or "sequential"."""
        if self.peak_gb <= self.available_gb:
            return "none"
        if self.largest_gb + self.activations_gb <= self.available_gb:
            return "model"
        return "group" if self.available_gb >= SEQUENTIAL_BELOW_GB else "sequential"

    def describe(self) -> str:
        transient = (
            f"a build's copies ~{self.build_gb:.1f} GB"
            if self.build_gb > self.activations_gb
            else f"activations ~{self.activations_gb:.1f} GB"
        )
        return (
            f"weights {self.total_gb:.1f} GB (largest: {self.largest} {self.largest_gb:.1f} GB) + "
            f"{transient} vs {self.available_gb:.1f} GB usable"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "components_gb": {name: round(size, 3) for name, size in self.components_gb.items()},
            "total_gb": round(self.total_gb, 3),
            "activations_gb": round(self.activations_gb, 3),
            "build_gb": round(self.build_gb, 3),
            "peak_gb": round(self.peak_gb, 3),
            "available_gb": round(self.available_gb, 3),
            "regime": self.regime,
        }


def estimate(
    anatomy: Anatomy, caps: Capabilities, steps: Iterable[Step] = (), budget_gb: float | None = None
) -> Footprint:
    """The footprint of ``anatomy``'s pipeline once ``steps`` are applied, on ``caps``' device, with
    at most ``budget_gb`` usable when the caller sets a budget. Pure."""
    stored = component_bytes(anatomy)
    sizes = dict(stored)
    build = 0.0
    for step in steps:
        build = max(build, step.optimization.build_bytes(anatomy, step.config, dict(sizes)))
        sizes = step.optimization.storage(anatomy, step.config, dict(sizes))
    tiled = any(step.optimization.tiles_decode for step in steps)
    activations = _activation_bytes(anatomy, _compute_bytes(anatomy, steps), tiled)
    resident = sum(
        t.numel() * t.element_size()
        for module in anatomy.modules().values()
        for t in [*module.parameters(), *module.buffers()]
        if caps.device != "cpu" and t.device.type == caps.device
    )
    available = usable_memory_gb(caps, resident / GB)
    if budget_gb is not None:
        available = min(available, budget_gb)
    largest_layer = 0.0
    for name, module in anatomy.modules().items():
        scale = sizes.get(name, 0.0) / stored[name] if stored.get(name) else 1.0  # as planned steps store it
        largest_layer = max(largest_layer, _largest_layer(module) * scale)
    return Footprint(
        {name: size / GB for name, size in sizes.items()}, activations / GB, available, largest_layer / GB, build / GB
    )


def _largest_layer(module: torch.nn.Module) -> float:
    """Bytes of the largest leaf module's own parameters and buffers."""
    largest = 0
    for layer in module.modules():
        tensors = [t for t in [*layer._parameters.values(), *layer._buffers.values()] if t is not None]
        largest = max(largest, sum(t.numel() * t.element_size() for t in tensors))
    return float(largest)


_UNITS = {"": 1.0, "g": 1.0, "gb": 1.0, "gib": 1.0, "m": 1 / 1024, "mb": 1 / 1024, "mib": 1 / 1024, "t": 1024.0}
_UNITS.update({"tb": 1024.0, "tib": 1024.0})


def parse_memory(value: float | str) -> float:
    """A memory amount in GB (GiB) from ``6``, ``6.5``, ``"6GB"``, ``"6 GiB"`` or ``"512MB"``.

    Examples:
        >>> from sdopt.footprint import parse_memory
        >>> parse_memory("6GB"), parse_memory("512 MB"), parse_memory(8)
        (6.0, 0.5, 8.0)
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"memory_budget must be a number of GB or a string such as '6GB', got {value!r}")
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", value)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise ValueError(f"memory_budget {value!r} is not an amount of memory; write e.g. '6GB', '6GiB' or '512MB'")
        amount = float(match.group(1)) * _UNITS[unit]
    else:
        amount = float(value)
    if not math.isfinite(amount) or amount <= 0:
        raise ValueError(f"memory_budget must be a positive, finite amount, got {value!r}")
    return amount


def usable_memory_gb(caps: Capabilities, resident_gb: float = 0.0) -> float:
    """Device memory free for the pipeline now, less headroom (detected devices are asked again);
    ``resident_gb`` of the pipeline already on the device counts as available to it."""
    gpu = caps.gpu
    memory = caps.device_memory_gb
    if gpu is not None:
        memory = gpu.free_memory_gb if gpu.free_memory_gb is not None else gpu.total_memory_gb
        if caps.profile is None and torch.cuda.is_available():
            # A driver that refuses the query leaves the detected figure standing.
            with contextlib.suppress(Exception):
                memory = torch.cuda.mem_get_info(gpu.index)[0] / GB
        memory = min(memory + resident_gb, gpu.total_memory_gb)
    return max(0.0, memory - max(HEADROOM_MIN_GB, HEADROOM_SHARE * memory))


def planned_element_size(tensor: torch.Tensor, component_now: float, component_planned: float) -> float:
    """Bytes per element ``tensor`` will have once the steps planned before are applied, assuming
    they scaled its component uniformly (``half_precision`` halves every float weight)."""
    scale = component_planned / component_now if component_now else 1.0
    return tensor.element_size() * scale


def component_bytes(anatomy: Anatomy) -> dict[str, float]:
    """The bytes of weights and buffers of each module component, as stored now (memory shared by
    several tensors, such as fused projections' views, once)."""
    return {name: float(module_bytes(module)) for name, module in anatomy.modules().items()}


def module_bytes(module: torch.nn.Module) -> int:
    """The bytes of ``module``'s weights and buffers as stored now, memory shared by several tensors once.

    Example:
        >>> import torch
        >>> module_bytes(torch.nn.Linear(4, 4))  # 16 weights and 4 biases in float32
        80
    """
    storages: dict[tuple[int, str], int] = {}
    unshared = 0
    for tensor in [*module.parameters(), *module.buffers()]:
        plain = type(tensor.data) is torch.Tensor and tensor.device.type != "meta"
        if plain and tensor.untyped_storage().data_ptr():
            storage = tensor.untyped_storage()
            storages[(storage.data_ptr(), str(tensor.device))] = storage.nbytes()
        else:  # planned on the meta device, or a tensor subclass: its own elements
            unshared += tensor.numel() * tensor.element_size()
    return unshared + sum(storages.values())


def _compute_bytes(anatomy: Anatomy, steps: Iterable[Step]) -> int:
    dtype = getattr(anatomy.denoiser, "dtype", torch.float32)
    for step in steps:
        itemsize = step.optimization.compute_itemsize(step.config)
        if itemsize is not None:
            return itemsize
    return torch.finfo(dtype).bits // 8 if isinstance(dtype, torch.dtype) and dtype.is_floating_point else 4


def _activation_bytes(anatomy: Anatomy, element: int, tiled: bool) -> float:
    side = default_height(anatomy)
    if side is None:
        return 0.0
    frames = call_default(anatomy.pipeline, "num_frames")
    temporal = getattr(anatomy.pipeline, "vae_scale_factor_temporal", 1) or 1
    latent_frames = (frames - 1) // temporal + 1 if isinstance(frames, int) and frames > 1 else 1
    config = getattr(anatomy.denoiser, "config", None)
    latent = side // pixels_per_latent(anatomy)
    # The widest point of the denoiser: UNets halve the resolution at each level as channels grow;
    # transformers keep one token count and one hidden width.
    levels = getattr(config, "block_out_channels", None)
    if levels:
        widest = max((latent // 2**level) ** 2 * channels for level, channels in enumerate(levels))
    else:
        heads, head_dim = (getattr(config, key, None) for key in ("num_attention_heads", "attention_head_dim"))
        width = heads * head_dim if isinstance(heads, int) and isinstance(head_dim, int) else 0
        width = max(width, getattr(config, "hidden_size", 0) or 0)
        widest = (latent // latents_per_token(anatomy)) ** 2 * width
    denoiser = 2 * widest * latent_frames * element * _DENOISER_LIVE  # batch 2: classifier-free guidance
    decoder = 0.0
    vae_config = getattr(anatomy.vae, "config", None)
    channels = getattr(vae_config, "block_out_channels", None)
    if channels:  # a decoder's widest point is its full-resolution level
        pixels = min(side, int(getattr(vae_config, "sample_size", side) or side)) if tiled else side
        decoder = channels[0] * pixels * pixels * element * _DECODER_LIVE * (frames if isinstance(frames, int) else 1)
    return float(max(denoiser, decoder))
