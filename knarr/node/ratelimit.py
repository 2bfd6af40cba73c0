"""Per-source token buckets with bounded memory. Pure: callers pass the time."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable


class RateLimiter:
    """Allow ``rate`` events per second per key, in bursts of up to ``burst``.

    At most ``capacity`` keys are tracked; the least recently active is forgotten first
    (a forgotten key starts again with a full bucket, which only errs towards allowing).
    """

    def __init__(self, rate: float, burst: float, *, capacity: int = 65_536) -> None:
        self.rate = rate
        self.burst = burst
        self.capacity = capacity
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, key: Hashable, now: float, cost: float = 1.0) -> bool:
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= cost
        if allowed:
            tokens -= cost
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self.capacity:
            self._buckets.popitem(last=False)
        return allowed
