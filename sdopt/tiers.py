"""The built-in tiers: versioned presets chosen by name (``"balanced"``) or pinned (``"balanced@1"``).

Each tier is data: an ordered list of entries, each naming an optimization, its options
and the hardware or model condition under which the tier wants it. Whether an optimization
can run at all is its own business (its ``requires`` and ``check``); a tier only says when
it is *worth* it. A published version is never edited: a change is a new version.
"""

from __future__ import annotations

from typing import Any

from sdopt.errors import UnknownTierError
from sdopt.presets import Entry, Preset
from sdopt.requirements import Requirements

DEFAULT_TIER = "balanced"

_CUDA = Requirements(devices=("cuda",))
_SHORT_MEMORY = Requirements(max_memory_gb=8)
_DISTILLED = Requirements(distillations=("lcm", "adversarial"))

_CONSERVATIVE_1 = (
    # bf16 on CUDA >= 8.0 and CPUs where bf16 is faster (AMX), fp16 on older CUDA and MPS, else skipped.
    Entry("vae_fp16_fix"),  # SDXL in float16 only; lets half_precision cast its VAE too
    Entry("half_precision"),
    Entry("attention_backend", when=_CUDA),  # transformer denoisers using diffusers' dispatcher
    Entry("sdpa"),  # only acts where classic (non-SDPA) processors are set
    # Channels-last feeds tensor cores and oneDNN's bf16 kernels; in float32 on a CPU it made the
    # SD1.5 UNet 1.3x slower here (8.3 s -> 10.8 s per step), so not there.
    Entry("channels_last", when=Requirements(devices=("cuda", "mps"))),
    Entry("channels_last", when=Requirements(devices=("cpu",), bf16_accelerated=True)),
    # Fusing adds a fused copy of the attention projections; it pays on GPUs (fewer, larger GEMMs).
    Entry("fuse_qkv", when=_CUDA),
)

_BALANCED_1 = (
    # diffusers' advice for MPS; listed first so it wins the attention group there.
    Entry("attention_slicing", when=Requirements(devices=("mps",))),
    *_CONSERVATIVE_1,
    # DPM-Solver++ reaches the quality of the usual step counts in fewer steps (flow models keep theirs).
    Entry("scheduler"),
    # Turbo/Lightning/LCM models are distilled for ~4 steps without guidance; their pipelines default
    # to 50 steps with guidance, which is 25x the work for a worse image.
    Entry("step_budget", when=_DISTILLED),
    Entry("guidance", {"mode": "off"}, when=Requirements(distillations=("adversarial",))),
    # Dynamic int8 Linear layers: 1.8x per SD1.5 UNet step over float32 on a CPU without bf16 units
    # (measured here); on CUDA through torchao, planned only together with torch.compile.
    Entry("quantize_int8", when=Requirements(devices=("cpu",), bf16_accelerated=False)),
    Entry("quantize_int8", when=_CUDA),
    Entry("torch_compile", when=_CUDA),  # regional where the model declares repeated blocks
    Entry("vae_tiling", when=_SHORT_MEMORY),
    Entry("vae_slicing", when=_SHORT_MEMORY),
)

_FAST_1 = (
    *_BALANCED_1,
    Entry("tiny_vae"),  # loads the family's TAESD weights; skipped with the reason when unavailable
    # With DPM-Solver++ 20 (CPU) or 25 steps are close to 50; distilled models get 4.
    Entry("step_budget"),
    Entry("guidance", {"stop_at": 0.6}),  # off for Turbo-like models; else the last 40% of steps run one batch
    Entry("feature_cache"),  # DeepCache every 3rd step on UNets, first-block cache on DiTs
)

_ULTRA_1 = (
    *_FAST_1,
    Entry("resolution", {"scale": 0.75}),  # ~56% of the denoising work, upscaled back; clearly lossy
    # Throughput tier: on CPU too, accepting the long first call (1.35x per step afterwards, measured).
    Entry("torch_compile", {"accept_cpu_first_call": True}),
)

_LOW_MEMORY_1 = (
    # Each offload applies only in its own budget regime (weights vs free device memory).
    Entry("model_offload"),
    Entry("group_offload"),
    Entry("sequential_offload"),
    Entry("quantize_4bit", when=_CUDA),  # NF4 denoiser weights; on CPU RAM is rarely the limit and it is slow
    Entry("attention_slicing"),
    Entry("vae_slicing"),
    Entry("vae_tiling"),
)

_TIERS: dict[str, dict[int, Preset]] = {
    "conservative": {
        1: Preset(
            "conservative",
            _CONSERVATIVE_1,
            1,
            "output visually identical to the original (numerical drift only)",
        )
    },
    "balanced": {1: Preset("balanced", _BALANCED_1, 1, "best speed with no visible quality loss on this hardware")},
    "fast": {1: Preset("fast", _FAST_1, 1, "small visible cost accepted for more speed")},
    "ultra": {1: Preset("ultra", _ULTRA_1, 1, "maximum speed, clear quality cost")},
    "low-memory": {1: Preset("low-memory", _LOW_MEMORY_1, 1, "smallest footprint that still runs")},
}


def tier_names() -> list[str]:
    return list(_TIERS)


def resolve_tier(spec: str) -> Preset:
    """The preset for ``"name"`` (latest version) or ``"name@version"``.

    Example:
        >>> from sdopt.tiers import resolve_tier
        >>> resolve_tier("balanced@1").label
        'balanced@1'
    """
    if not isinstance(spec, str):
        raise TypeError(f"tier must be a string such as 'balanced' or 'balanced@1', got {spec!r}")
    name, _, version_text = spec.partition("@")
    if name not in _TIERS:
        raise UnknownTierError(spec, f"unknown tier {spec!r}; valid tiers: {', '.join(_TIERS)}")
    versions = _TIERS[name]
    if not version_text:
        return versions[max(versions)]
    if not version_text.isdigit() or int(version_text) not in versions:
        listed = ", ".join(f"{name}@{v}" for v in sorted(versions))
        raise UnknownTierError(spec, f"tier {name!r} has no version {version_text!r}; versions that exist: {listed}")
    return versions[int(version_text)]


def list_tiers() -> list[dict[str, Any]]:
    """One row per published tier version: name, version, latest, description and entries.

    Example:
        >>> from sdopt import list_tiers
        >>> [row["name"] for row in list_tiers() if row["latest"]]
        ['conservative', 'balanced', 'fast', 'ultra', 'low-memory']
    """
    rows = []
    for name, versions in _TIERS.items():
        latest = max(versions)
        for version, preset in sorted(versions.items()):
            rows.append(
                {
                    "name": name,
                    "version": version,
                    "label": preset.label,
                    "latest": version == latest,
                    "default": name == DEFAULT_TIER and version == latest,
                    "description": preset.description,
                    "steps": [entry.to_dict() for entry in preset.entries],
                }
            )
    return rows
