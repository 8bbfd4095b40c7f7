"""Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And
Jitter"): the n-th delay is uniform in ``[0, min(cap, base * 2**n)]``, so that clients
cut off together by one server restart do not come back together."""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    def __init__(
        self, base: float = 0.5, cap: float = 30.0, rng: Callable[[], float] = random.random
    ) -> None:
        self.base = base
        self.cap = cap
        self.attempt = 0
        self._rng = rng

    def ceiling(self) -> float:
        return min(self.cap, self.base * float(2 ** min(self.attempt, 62)))

    def next_delay(self) -> float:
        delay = self._rng() * self.ceiling()
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
