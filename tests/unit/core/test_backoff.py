"""The retry rhythm of every background loop: doubling, capped, jittered, reset by a success."""

from __future__ import annotations

import random

from tpx.core.backoff import Backoff, exponential, jittered


def test_exponential_doubles_up_to_the_maximum_within_the_spread():
    random.seed(7)
    for attempt, nominal in enumerate([1, 2, 4, 8, 10, 10, 10]):
        for _ in range(50):
            delay = exponential(attempt, first=1, maximum=10, spread=0.2)
            assert nominal * 0.8 <= delay <= nominal * 1.2


def test_huge_attempt_numbers_stay_at_the_maximum():
    assert 8 <= exponential(10_000, first=1, maximum=10, spread=0.2) <= 12


def test_jitter_spreads_both_ways():
    random.seed(1)
    values = [jittered(10, 0.5) for _ in range(500)]
    assert min(values) < 7 and max(values) > 13 and all(5 <= v <= 15 for v in values)


def test_backoff_counts_failures_until_reset():
    backoff = Backoff(first=1, maximum=4, spread=0)
    assert [backoff.next() for _ in range(4)] == [1, 2, 4, 4]
    assert backoff.failures == 4
    backoff.reset()
    assert backoff.failures == 0 and backoff.next() == 1
