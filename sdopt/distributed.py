"""Data-parallel generation with accelerate: every process applies the same pinned preset strictly.

Under ``accelerate launch`` (or ``torchrun``), each process holds a full pipeline on its device and
renders its share of the prompts. `optimize_everywhere` applies one preset on every process
with ``strict=True`` (a process on a machine with other capabilities raises instead of serving
different images) and then checks that every process applied exactly the same steps with the same
options, naming the processes that differ. ``examples/distributed_generate.py`` is a complete run.
"""

from __future__ import annotations

import json
from typing import Any

from sdopt.presets import Preset
from sdopt.report import Report


class ReplicasDisagree(RuntimeError):
    """Processes applied different steps from the same preset (the error names them)."""


def optimize_everywhere(pipe: Any, preset: Preset | str, *, state: Any = None, **optimize_kwargs: Any) -> Report:
    """``optimize(pipe, preset=preset, strict=True)`` on this process, then the same check on all of them.

    Every process must call it (it gathers each process's applied steps); raises
    `ReplicasDisagree` on every process when any applied something else.

    Example (one process: nothing to disagree with):
        >>> from sdopt import Preset
        >>> from sdopt.distributed import optimize_everywhere
        >>> from sdopt.testing import tiny_pipeline
        >>> report = optimize_everywhere(tiny_pipeline("sd"), Preset("app", ("vae_slicing",)))
        >>> [d.name for d in report.applied]
        ['vae_slicing']
    """
    from accelerate import PartialState
    from accelerate.utils import gather_object

    from sdopt.api import optimize

    state = state if state is not None else PartialState()
    pinned = Preset.load(preset) if isinstance(preset, str) else preset
    report = optimize(pipe, tier=None, preset=pinned, strict=True, **optimize_kwargs)
    mine = json.dumps([[d.name, d.config] for d in report.applied], sort_keys=True)
    everyone = gather_object([mine]) if state.num_processes > 1 else [mine]
    if len(set(everyone)) > 1:
        groups: dict[str, list[int]] = {}
        for rank, applied in enumerate(everyone):
            groups.setdefault(applied, []).append(rank)
        described = "; ".join(f"process(es) {ranks}: {applied}" for applied, ranks in groups.items())
        report.undo()
        raise ReplicasDisagree(f"the processes applied different steps from {pinned.label}: {described}")
    return report
