"""Jittered exponential back-off: the one retry rhythm of every background loop.

Replicas that fail together (a database restart, a broker outage) must not
retry together, so every delay is spread at random around its nominal value.
"""

from __future__ import annotations

import random


def jittered(seconds: float, spread: float = 0.2) -> float:
    """`seconds`, moved at random by up to `spread` (a fraction) either way."""
    return seconds * random.uniform(1 - spread, 1 + spread)


def exponential(attempt: int, *, first: float, maximum: float, spread: float = 0.2) -> float:
    """The delay before retry number `attempt` (0 for the first retry): `first` doubling up to `maximum`, jittered."""
    return jittered(min(first * 2 ** min(attempt, 30), maximum), spread)


class Backoff:
    """Counts consecutive failures; `next()` is the delay before the next try, `reset()` after a success."""

    def __init__(self, first: float = 0.5, maximum: float = 10.0, *, spread: float = 0.5) -> None:
        self.first = first
        self.maximum = maximum
        self.spread = spread
        self.failures = 0

    def next(self) -> float:
        delay = exponential(self.failures, first=self.first, maximum=self.maximum, spread=self.spread)
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0
