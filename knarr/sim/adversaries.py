"""Attackers for the simulator: Sybil flood, eclipse, record poisoning, reflection."""

from __future__ import annotations

from knarr.sim.scenario import Attack, SimConfig


def attacks_for(config: SimConfig) -> list[Attack]:
    return []
