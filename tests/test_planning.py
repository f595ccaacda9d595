"""Planning is pure, accounts for every candidate, resolves conflicts and orders steps."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from sdopt import Preset, plan
from sdopt.errors import ConfigError, PlanningError, UnknownOptimizationError, UnknownTierError
from sdopt.optimization import Optimization
from sdopt.presets import Entry
from sdopt.registry import register, unregister
from sdopt.requirements import Requirements
from sdopt.testing import pipeline_state, state_differences
from sdopt.tiers import list_tiers, resolve_tier


def _noop(name: str, kind: str = "layout", **attributes: Any) -> type[Optimization]:
    def apply(self, pipe, anatomy, caps, config):
        return lambda: None

    return type(
        name.title().replace("_", ""),
        (Optimization,),
        {"name": name, "kind": kind, "apply": apply, **attributes},
    )


@pytest.fixture
def registered() -> Iterator[Any]:
    names: list[str] = []

    def add(cls: type[Optimization]) -> type[Optimization]:
        register(cls)
        names.append(cls.name)
        return cls

    yield add
    for name in names:
        unregister(name)


def test_plan_is_pure_on_every_family_and_tier(pipe, family: str, cuda_caps) -> None:
    before = pipeline_state(pipe)
    for tier in ("conservative", "balanced", "fast", "ultra", "low-memory"):
        plan(pipe, tier=tier, caps=cuda_caps, extra=["fuse_qkv", "vae_slicing"])
    assert state_differences(before, pipeline_state(pipe)) == []


def test_every_tier_candidate_is_planned_or_skipped(pipe, cpu_caps) -> None:
    for row in list_tiers():
        result = plan(pipe, tier=row["label"], caps=cpu_caps)
        accounted = [s.name for s in result.steps] + [d.name for d in result.skipped]
        assert sorted(accounted) == sorted({step["name"] for step in row["steps"]})
        assert all(d.reason for d in result.skipped)


def test_tier_conditions_use_the_capabilities(sd_pipe, cpu_caps, cuda_caps) -> None:
    on_cpu = plan(sd_pipe, tier="balanced", caps=cpu_caps)
    on_gpu = plan(sd_pipe, tier="balanced", caps=cuda_caps)
    assert "fuse_qkv" not in [s.name for s in on_cpu.steps]
    assert "needs device cuda" in next(d.reason for d in on_cpu.skipped if d.name == "fuse_qkv")
    assert "fuse_qkv" in [s.name for s in on_gpu.steps]


def test_exclude_is_reported_and_extra_is_added(sd_pipe, cpu_caps) -> None:
    result = plan(sd_pipe, tier="balanced", caps=cpu_caps, exclude=["channels_last"], extra=["vae_slicing"])
    names = [s.name for s in result.steps]
    assert "vae_slicing" in names and "channels_last" not in names
    assert next(d for d in result.skipped if d.name == "channels_last").reason == "excluded by the caller"
    assert result.requested == ("vae_slicing",)


def test_extra_options_win_over_the_tier_entry(sd_pipe, cpu_caps) -> None:
    result = plan(sd_pipe, tier="low-memory", caps=cpu_caps, extra=[{"name": "attention_slicing", "slice_size": "max"}])
    step = next(s for s in result.steps if s.name == "attention_slicing")
    assert (step.config.slice_size, step.source) == ("max", "extra")
    assert [s.name for s in result.steps].count("attention_slicing") == 1


def test_extra_accepts_config_instances_and_entries(sd_pipe, cpu_caps) -> None:
    from sdopt.optimizations.vae_tiling import VaeTilingConfig

    result = plan(sd_pipe, tier=None, caps=cpu_caps, extra=[VaeTilingConfig(tile_size=32), Entry("vae_slicing")])
    assert {s.name: s.config for s in result.steps}["vae_tiling"].tile_size == 32


def test_tier_none_plans_only_extra(sd_pipe, cpu_caps) -> None:
    result = plan(sd_pipe, tier=None, caps=cpu_caps)
    assert result.steps == [] and result.skipped == []
    assert "no candidate" in str(result)


def test_unknown_tier_lists_the_valid_ones(sd_pipe) -> None:
    with pytest.raises(UnknownTierError, match="conservative, balanced, fast, ultra, low-memory"):
        plan(sd_pipe, tier="balnced")
    with pytest.raises(UnknownTierError, match="balanced@1"):
        plan(sd_pipe, tier="balanced@999")
    assert resolve_tier("balanced").label == "balanced@5"


def test_unknown_optimization_names_the_closest(sd_pipe) -> None:
    with pytest.raises(UnknownOptimizationError, match="did you mean 'channels_last'"):
        plan(sd_pipe, extra=["channel_last"])
    with pytest.raises(UnknownOptimizationError, match="fuse_qkv"):
        plan(sd_pipe, exclude=["fuse_qvk"])
    with pytest.raises(TypeError, match="list of optimization names"):
        plan(sd_pipe, exclude="channels_last")


def test_bad_options_name_the_option_and_the_allowed_ones(sd_pipe) -> None:
    with pytest.raises(ConfigError, match="tile_sise.*allowed options: overlap, tile_size"):
        plan(sd_pipe, extra=[{"name": "vae_tiling", "tile_sise": 3}])
    with pytest.raises(ConfigError, match="tile_size expects int"):
        plan(sd_pipe, extra=[{"name": "vae_tiling", "tile_size": "big"}])


def test_conflicts_are_derived_both_ways_and_the_first_candidate_wins(sd_pipe, cpu_caps, registered) -> None:
    registered(_noop("alpha", conflicts=("beta",)))
    registered(_noop("beta"))
    first = plan(sd_pipe, tier=None, caps=cpu_caps, extra=["beta", "alpha"])
    assert [s.name for s in first.steps] == ["beta"]
    assert "conflicts with beta" in first.skipped[0].reason
    second = plan(sd_pipe, tier=None, caps=cpu_caps, extra=["alpha", "beta"])
    assert [s.name for s in second.steps] == ["alpha"]


def test_exclusive_groups_keep_one_member(sd_pipe, cpu_caps, registered) -> None:
    registered(_noop("attn_a", group="attention"))
    result = plan(sd_pipe, tier=None, caps=cpu_caps, extra=["attention_slicing", "attn_a"])
    assert [s.name for s in result.steps] == ["attention_slicing"]
    assert "same group 'attention'" in result.skipped[0].reason


def test_order_follows_kinds_then_declared_relations(sd_pipe, cpu_caps, registered) -> None:
    registered(_noop("compile_like", kind="compile"))
    registered(_noop("precision_like", kind="precision"))
    registered(_noop("late_precision", kind="precision", after=("compile_like",)))
    result = plan(sd_pipe, tier=None, caps=cpu_caps, extra=["compile_like", "late_precision", "precision_like"])
    assert [s.name for s in result.steps] == ["precision_like", "compile_like", "late_precision"]


def test_ordering_cycles_are_reported(sd_pipe, cpu_caps, registered) -> None:
    registered(_noop("cyc_a", before=("cyc_b",)))
    registered(_noop("cyc_b", before=("cyc_a",)))
    with pytest.raises(PlanningError, match="cycle"):
        plan(sd_pipe, tier=None, caps=cpu_caps, extra=["cyc_a", "cyc_b"])


def test_requirements_and_checks_give_reasons(sd_pipe, cpu_caps, registered) -> None:
    registered(_noop("needs_gpu", requires=Requirements(devices=("cuda",), min_compute_capability=(9, 0))))
    registered(_noop("needs_pkg", requires=Requirements(packages=("bitsandbytes",))))
    result = plan(sd_pipe, tier=None, caps=cpu_caps, extra=["needs_gpu", "needs_pkg"])
    reasons = {d.name: d.reason for d in result.skipped}
    assert reasons["needs_gpu"] == "needs device cuda (this machine: cpu)"
    assert reasons["needs_pkg"].endswith("pip install sdopt[bnb]")


def test_preset_entries_with_conditions(sd_pipe, cpu_caps, cuda_caps) -> None:
    preset = Preset(
        "mine",
        (
            Entry("vae_tiling", {"tile_size": 32}, Requirements(devices=("cuda",))),
            Entry("vae_tiling", {"tile_size": 48}),
        ),
    )
    assert plan(sd_pipe, preset=preset, caps=cuda_caps).steps[0].config.tile_size == 32
    assert plan(sd_pipe, preset=preset, caps=cpu_caps).steps[0].config.tile_size == 48


def test_plan_prints_a_table_and_serializes(sd_pipe, cpu_caps) -> None:
    import json

    result = plan(sd_pipe, tier="fast", caps=cpu_caps)
    text = str(result)
    assert resolve_tier("fast").label in text and "scheduler" in text and "skipped" in text
    data = json.loads(json.dumps(result.to_dict()))
    assert "scheduler" in [step["name"] for step in data["steps"]]


def test_every_published_tier_names_registered_optimizations_with_valid_options() -> None:
    from sdopt import registry

    for row in list_tiers():
        for step in row["steps"]:
            registry.get(step["name"]).make_config(step.get("config", {}))


@dataclass(frozen=True)
class _Mutable:
    value: int = 0


def test_registry_rejects_malformed_optimizations() -> None:
    with pytest.raises(PlanningError, match="kind"):
        register(_noop("bad_kind", kind="speedy"))
    with pytest.raises(PlanningError, match="frozen dataclass"):
        register(_noop("bad_config", Config=type("C", (), {})))
    with pytest.raises(PlanningError, match="names the optimization itself"):
        register(_noop("selfish", conflicts=("selfish",)))
    with pytest.raises(ValueError, match="already registered"):
        register(_noop("channels_last"))
