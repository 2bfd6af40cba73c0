"""When to restart a node that exited, and when to stop trying: pure arithmetic, no clock.

The caller says how long the node had been healthy when it exited; the budget answers
with the next restart (its attempt number and backoff) or with giving up.
"""

from __future__ import annotations

from dataclasses import dataclass

from knarr.watchman.config import RecoveryConfig


@dataclass(frozen=True)
class Restart:
    """Restart after ``backoff`` seconds; ``attempt`` counts restarts since the last reset."""

    attempt: int
    backoff: float


@dataclass(frozen=True)
class GiveUp:
    """``max_restarts`` restarts did not keep the node up."""

    restarts: int


def backoff_for(attempt: int, config: RecoveryConfig) -> float:
    """``initial_backoff`` doubled for each attempt after the first, capped at ``max_backoff``."""
    if attempt <= 1:
        return min(config.initial_backoff, config.max_backoff)
    # 2 ** 64 is far past any max_backoff; the cap keeps the float finite.
    return min(config.max_backoff, config.initial_backoff * 2.0 ** min(attempt - 1, 64))


class RestartBudget:
    """Consecutive restarts, reset once a node stays healthy for ``backoff_reset_uptime``."""

    def __init__(self, config: RecoveryConfig) -> None:
        self.config = config
        self.attempt = 0
        """Restarts since the last reset."""
        self.total = 0
        """Restarts since the watchman started."""

    def note_healthy(self, healthy_for: float) -> None:
        """The running node has answered health probes for ``healthy_for`` seconds."""
        if healthy_for >= self.config.backoff_reset_uptime:
            self.attempt = 0

    def after_exit(self, healthy_for: float) -> Restart | GiveUp:
        """The node exited after ``healthy_for`` healthy seconds (0 if never healthy)."""
        self.note_healthy(healthy_for)
        if self.attempt >= self.config.max_restarts:
            return GiveUp(self.attempt)
        self.attempt += 1
        self.total += 1
        return Restart(self.attempt, backoff_for(self.attempt, self.config))
