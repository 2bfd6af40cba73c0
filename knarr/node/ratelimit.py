"""Per-source token buckets with bounded memory. Pure: callers pass the time."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable


class RateLimiter:
    """Allow ``rate`` events per second per key, in bursts of up to ``burst``.

    Only keys active lately take memory: a key idle for ``burst / rate`` seconds has a
    full bucket again, the same as a key never seen, so it is forgotten. At most
    ``capacity`` keys are tracked; beyond that the least recently active is forgotten
    first (a forgotten key starts again with a full bucket, which only errs towards
    allowing).
    """

    def __init__(self, rate: float, burst: float, *, capacity: int = 65_536) -> None:
        self.rate = rate
        self.burst = burst
        self.capacity = capacity
        self._refill = burst / rate if rate > 0 else math.inf  # empty to full, seconds
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, key: Hashable, now: float, cost: float = 1.0) -> bool:
        buckets = self._buckets
        tokens, last = buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= cost
        if allowed:
            tokens -= cost
        buckets[key] = (tokens, now)
        if len(buckets) > self.capacity:
            buckets.popitem(last=False)
        # Least recently active first, so the loop stops at the first key still refilling
        # (each key leaves once per arrival: constant time per call, amortised).
        while buckets and now - next(iter(buckets.values()))[1] >= self._refill:
            buckets.popitem(last=False)
        return allowed
