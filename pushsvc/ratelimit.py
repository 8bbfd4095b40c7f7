"""Per-instance rate limits: a token bucket per credential.

Buckets are kept per process (like Centrifugo's per-node limits): a client spreading its
publishes over N instances gets N times the rate. Idle buckets are forgotten, so memory
stays bounded by the number of recently active credentials.
"""

from __future__ import annotations

import time

from pushsvc.exceptions import TooManyRequests


class RateLimiter:
    def __init__(self, rate: float, burst: float, name: str = "publish") -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.name = name
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last time)
        self._last_sweep = time.monotonic()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, key: str, cost: float = 1.0) -> None:
        """Spend ``cost`` tokens of ``key``'s bucket or raise ``TooManyRequests``."""
        if self.rate <= 0:
            return
        now = time.monotonic()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < cost:
            self._buckets[key] = (tokens, now)
            retry_after = (cost - tokens) / self.rate
            raise TooManyRequests(
                f"{self.name} rate over {self.rate:g}/s (burst {self.burst:g})",
                retry_after=retry_after,
                limit=f"{self.name}_rate",
            )
        self._buckets[key] = (tokens - cost, now)
        if now - self._last_sweep > 60:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        self._last_sweep = now
        full_after = self.burst / self.rate
        for key in [k for k, (_, t) in self._buckets.items() if now - t > full_after]:
            del self._buckets[key]
