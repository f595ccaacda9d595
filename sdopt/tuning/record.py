"""What a tuning measured and decided: one `Trial` per candidate, and the preset it made."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from sdopt.calls import CallShape
from sdopt.presets import Preset

NOT_MEASURED = "not measured"
"""How the reason of a candidate the time budget left out begins."""


@dataclass(frozen=True)
class Trial:
    """One candidate (or a group of steps that only pay together) and what its measurement decided.

    ``ratio`` is the estimated whole-call time of the best configuration so far divided by that
    configuration with this candidate added (above 1: faster), ``spread`` its measured noise
    (half the range of the samples, relative), ``denoiser_ratio`` the same for one denoiser call,
    ``psnr_db`` the fidelity of a whole image against the untouched pipeline's.
    """

    names: tuple[str, ...]
    kept: bool
    why: str
    ratio: float | None = None
    spread: float | None = None
    denoiser_ratio: float | None = None
    psnr_db: float | None = None
    samples: int = 0
    call_s: float | None = None
    """The estimated whole call with this candidate added (median of its samples)."""
    best_s: float | None = None
    """The estimated whole call of the best configuration it was measured against."""

    @property
    def reason(self) -> str:
        """The sentence the report quotes ("kept: ..." or "dropped: ...")."""
        return f"{'kept' if self.kept else 'dropped'}: {self.why}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["names"] = list(self.names)
        if self.psnr_db == float("inf"):
            data["psnr_db"] = "inf"
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Trial:
        values = dict(data)
        values["names"] = tuple(values["names"])
        if values.get("psnr_db") == "inf":
            values["psnr_db"] = float("inf")
        return cls(**values)


@dataclass
class Tuning:
    """The outcome of `sdopt.tune`: the frozen preset and, per candidate, why it was kept or dropped.

    Examples:
        >>> from sdopt import tune
        >>> from sdopt.testing import tiny_pipeline, fake_capabilities
        >>> tuning = tune(tiny_pipeline("sd"), "conservative", call={"steps": 2}, caps=fake_capabilities("cpu"),
        ...               cache=False, progress=False)
        >>> tuning.preset.based_on
        'auto:conservative@2'
        >>> [name for name in tuning.kept if name not in tuning.preset.names()]
        []
        >>> print(tuning)  # doctest: +ELLIPSIS
        sdopt tune: conservative@2 at 64x64, 2 steps, guidance 7.5, batch 1; fidelity floor 45 dB; took ...
    """

    quality: str
    shape: CallShape
    preset: Preset
    trials: list[Trial] = field(default_factory=list)
    fixed: list[Trial] = field(default_factory=list)
    """Steps kept without timing: what the memory budget or this machine's memory calls for."""
    skipped: list[dict[str, Any]] = field(default_factory=list)
    """The quality tier's candidates that could not apply here (as report decisions)."""
    min_psnr_db: float | None = None
    budget_s: float | None = None
    seconds: float = 0.0
    """What this tuning took: the measuring, or only the cache lookup when `from_cache`."""
    baseline_s: float | None = None
    """The untouched pipeline's whole first call at the call shape (the fidelity reference)."""
    start_call_s: float | None = None
    """The estimated whole call before any candidate (the untouched pipeline, with the memory steps)."""
    best_call_s: float | None = None
    """The estimated whole call of the tuned configuration."""
    from_cache: bool = False
    interrupted: bool = False
    key: str = ""

    @property
    def candidates(self) -> list[str]:
        """Every step the tuning timed, in the order it tried them."""
        return [name for trial in self.trials for name in trial.names]

    @property
    def kept(self) -> list[str]:
        return [name for trial in (*self.fixed, *self.trials) if trial.kept for name in trial.names]

    @property
    def unmeasured(self) -> list[str]:
        """Candidates the time budget left unmeasured (left out; such a tuning is not cached)."""
        return [name for trial in self.trials if trial.why.startswith(NOT_MEASURED) for name in trial.names]

    def trial_for(self, name: str) -> Trial | None:
        """The last trial of ``name``: where a gentler config was tried after the first, the decisive one."""
        return next((t for t in reversed((*self.fixed, *self.trials)) if name in t.names), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "quality": self.quality,
            "shape": self.shape.to_dict(),
            "preset": self.preset.to_dict(),
            "trials": [trial.to_dict() for trial in self.trials],
            "fixed": [trial.to_dict() for trial in self.fixed],
            "skipped": list(self.skipped),
            "min_psnr_db": self.min_psnr_db,
            "budget_s": self.budget_s,
            "seconds": self.seconds,
            "baseline_s": self.baseline_s,
            "start_call_s": self.start_call_s,
            "best_call_s": self.best_call_s,
            "from_cache": self.from_cache,
            "interrupted": self.interrupted,
            "key": self.key,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Tuning:
        return cls(
            quality=data["quality"],
            shape=CallShape(**data["shape"]),
            preset=Preset.from_dict(data["preset"], source="the tuning cache"),
            trials=[Trial.from_dict(item) for item in data["trials"]],
            fixed=[Trial.from_dict(item) for item in data["fixed"]],
            skipped=list(data.get("skipped", [])),
            min_psnr_db=data.get("min_psnr_db"),
            budget_s=data.get("budget_s"),
            seconds=data.get("seconds", 0.0),
            baseline_s=data.get("baseline_s"),
            start_call_s=data.get("start_call_s"),
            best_call_s=data.get("best_call_s"),
            from_cache=data.get("from_cache", False),
            interrupted=data.get("interrupted", False),
            key=data.get("key", ""),
        )

    def __str__(self) -> str:
        where = " (from the cache)" if self.from_cache else ""
        stopped = " (interrupted: the decisions so far)" if self.interrupted else ""
        floor = f"{self.min_psnr_db:g} dB" if self.min_psnr_db is not None else "none"
        lines = [
            f"sdopt tune: {self.quality} at {self.shape}{where}{stopped}; fidelity floor {floor}; "
            f"took {self.seconds:.1f} s",
        ]
        if self.start_call_s and self.best_call_s:
            lines.append(
                f"estimated call: {self.start_call_s:.2f} s before, {self.best_call_s:.2f} s tuned "
                f"({self.start_call_s / self.best_call_s:.2f}x)"
            )
        for trial in (*self.fixed, *self.trials):
            lines.append(f"  {'+'.join(trial.names):<28} {trial.reason}")
        return "\n".join(lines)
