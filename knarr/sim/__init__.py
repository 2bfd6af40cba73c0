"""A discrete-event simulator that runs many real DHT nodes in virtual time.

Thousands of unmodified :class:`~knarr.node.dht.Dht` instances share one
:class:`~knarr.sim.loop.VirtualTimeLoop` and talk over a
:class:`~knarr.sim.network.SimNetwork` (long-tailed latency, loss, churn). Crypto, wire
encoding, routing tables, lookups and record validation are the node's own code; this
package only builds networks, injects failures and attackers, and measures.
``benchmarks/dht_sim.py`` is the command line; ``docs/simulation.md`` the guide.
"""

from __future__ import annotations

from knarr.sim.loop import SimulationStuck, VirtualTimeLoop
from knarr.sim.network import LatencyModel, SimNetwork
from knarr.sim.run import simulate
from knarr.sim.scenario import EPOCH, SimConfig

__all__ = [
    "EPOCH",
    "LatencyModel",
    "SimConfig",
    "SimNetwork",
    "SimulationStuck",
    "VirtualTimeLoop",
    "simulate",
]
