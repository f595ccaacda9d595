"""``sdopt.bench``: what each tier buys on this machine, measured side by side in one run.

Every tier gets its own fresh copy of the pipeline; runs are interleaved (baseline, tier A,
tier B, baseline, ...) so machine drift hits all tiers alike; every tier renders the same prompts
with the same seeds, so fidelity is measured against the baseline image by image.

- `sdopt.bench.runner`: `bench` itself (loading, optimizing, the interleaved loop);
- `sdopt.bench.results`: a row per tier (`TierResult`) and the run (`BenchResult`:
  table, markdown, JSON, plot), and the `Peer` protocol for other runtimes;
- `sdopt.bench.instruments`: per-part timers, peak memory, pipeline copies that share weights.
"""

from sdopt.bench.results import (
    BASELINE,
    DEFAULT_PROMPTS,
    RANDOM_WEIGHTS_NOTE,
    BenchResult,
    Peer,
    PeerImage,
    TierResult,
    summarize,
)
from sdopt.bench.runner import bench
from sdopt.fidelity import max_abs_difference, psnr, to_uint8

__all__ = [
    "BASELINE",
    "DEFAULT_PROMPTS",
    "RANDOM_WEIGHTS_NOTE",
    "BenchResult",
    "Peer",
    "PeerImage",
    "TierResult",
    "bench",
    "max_abs_difference",
    "psnr",
    "summarize",
    "to_uint8",
]
