"""Timing that can be trusted: a no-op is never reported faster, whatever noise the machine adds."""

from __future__ import annotations

import itertools
import random

import pytest

from sdopt.timing import Speedup, choose_threads, interleave, speedup


class FakeMachine:
    """A clock, and calls that take a given time times a random slow-down of up to ``load`` (other work)."""

    def __init__(self, seed: int, load: float) -> None:
        self.now = 0.0
        self.noise = random.Random(seed)
        self.load = load

    def clock(self) -> float:
        return self.now

    def call(self, seconds: float):  # type: ignore[no-untyped-def]
        def run() -> None:
            self.now += seconds * (1 + self.noise.random() * self.load)

        return run


def _no_op_verdicts(load: float, runs: int, seeds: int) -> list[Speedup]:
    verdicts = []
    for seed in range(seeds):
        machine = FakeMachine(seed, load)
        lanes = [machine.call(1.0), machine.call(1.0)]  # the same call on both sides: a plan that changes nothing
        (_, untouched, _), (_, optimized, _) = interleave(lanes, warmup=1, runs=runs, clock=machine.clock)
        verdicts.append(speedup(untouched, optimized))
    return verdicts


def test_a_no_op_is_almost_never_reported_faster_on_a_randomly_busy_machine() -> None:
    # Each call independently slowed by up to 80%. Three calls a side cannot rule out every fluke (all
    # three untouched calls unlucky, no optimized one): 5 of 3000 simulated runs, so under 0.5% here;
    # with five calls a side, none.
    three = _no_op_verdicts(load=0.8, runs=3, seeds=1000)
    assert sum(verdict.faster or verdict.slower for verdict in three) <= 5
    assert not any(verdict.faster or verdict.slower for verdict in _no_op_verdicts(load=0.8, runs=5, seeds=300))
    assert all(verdict.describe().startswith("no measurable difference") for verdict in three[:40])


@pytest.mark.parametrize("growth", [0.05, 0.1, 0.3, 1.0])
def test_a_no_op_is_never_reported_faster_while_the_machine_gets_busier(growth: float) -> None:
    now = [0.0]
    slowdown = [1.0]

    def call() -> None:  # every call slower than the one before: load building up
        now[0] += slowdown[0]
        slowdown[0] *= 1 + growth

    (_, untouched, _), (_, optimized, _) = interleave([call, call], warmup=1, runs=3, clock=lambda: now[0])
    verdict = speedup(untouched, optimized)
    assert not verdict.faster and not verdict.slower


def test_a_real_speed_up_shows_through_moderate_noise() -> None:
    machine = FakeMachine(0, load=0.1)
    lanes = [machine.call(2.0), machine.call(1.0)]  # untouched 2 s, optimized 1 s
    (_, untouched, _), (_, optimized, _) = interleave(lanes, warmup=1, runs=3, clock=machine.clock)
    verdict = speedup(untouched, optimized)
    assert verdict.faster and 1.6 < verdict.ratio < 2.4 and verdict.describe().endswith(")")


def test_fewer_than_three_samples_each_is_no_measurement() -> None:
    for baseline, candidate in (([2.0], [1.0]), ([2.0, 2.0], [1.0, 1.0])):
        verdict = speedup(baseline, candidate)
        assert verdict.ratio == 2.0 and not verdict.faster
        assert "too few to tell from the noise" in verdict.describe()


def test_interleaving_alternates_the_order_and_keeps_warm_ups_apart() -> None:
    calls: list[str] = []
    ticks = itertools.count()
    results = interleave(
        [lambda: calls.append("a") or "A", lambda: calls.append("b") or "B"],
        warmup=1,
        runs=2,
        clock=lambda: float(next(ticks)),
    )
    assert "".join(calls) == "abbaab"
    (outputs_a, seconds_a, warm_a), (outputs_b, seconds_b, warm_b) = results
    assert outputs_a == ["A", "A"] and len(seconds_a) == 2 and len(warm_a) == 1
    assert outputs_b == ["B", "B"] and len(seconds_b) == 2 and len(warm_b) == 1


def test_threads_follow_the_load() -> None:
    assert choose_threads(load=0.1, cores=8)[0] == 8
    threads, why = choose_threads(load=6.0, cores=8)
    assert threads == 2 and "busy" in why
    assert choose_threads(load=40.0, cores=8)[0] == 1
    with pytest.raises(ValueError, match="threads must be >= 1"):
        choose_threads(0)
