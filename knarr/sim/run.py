"""Run a :class:`~knarr.sim.scenario.SimConfig` on the virtual-time loop."""

from __future__ import annotations

import contextlib
import gc
import random
import resource
import time
from typing import Any

from knarr.errors import KnarrError
from knarr.node import identity, wire
from knarr.node.dht import DhtSettings
from knarr.sim.loop import VirtualTimeLoop
from knarr.sim.network import SimNetwork
from knarr.sim.scenario import EPOCH, Attack, Scenario, SimConfig
from knarr.sim.swarm import HostPlan

GC_THRESHOLDS = (50_000, 20, 10)
"""Young-generation collections every 50,000 allocations instead of 700. Nodes allocate
by the million, and most of it (envelopes, contacts, futures) lives for one round trip:
collected every 700 allocations, it survives into the old generation, whose full
collections then walk the whole simulated network's heap (a quarter of the CPU time at
10,000 nodes). Only when and how often cyclic garbage is found changes."""


class SimulationError(KnarrError):
    """A callback raised inside the simulation (a bug in the node or the simulator)."""


def simulate(config: SimConfig, attacks: list[Attack] | None = None) -> dict[str, Any]:
    """Run ``config`` in virtual time and return its figures (see ``docs/simulation.md``)."""
    from knarr.sim.adversaries import attacks_for

    loop = VirtualTimeLoop()
    errors: list[str] = []

    def on_error(_: Any, context: dict[str, Any]) -> None:
        errors.append(str(context.get("exception") or context.get("message")))

    loop.set_exception_handler(on_error)
    rng = random.Random(config.seed)
    network = SimNetwork(rng=random.Random(rng.getrandbits(64)), loss=config.loss,
                         latency=config.latency)
    scenario = Scenario(
        config,
        network,
        clock=lambda: EPOCH + loop.time(),
        hosts=HostPlan(random.Random(rng.getrandbits(64))),
        settings=lambda: DhtSettings(crowd_detection=config.crowd_detection),
        attacks=attacks if attacks is not None else attacks_for(config),
    )
    started = time.perf_counter()
    cpu_started = time.process_time()
    # Every datagram is signed by one simulated node and verified by another, in this
    # process: a stand-in of the same size for Ed25519 saves 14-25 % of the CPU.
    signing = (
        contextlib.nullcontext() if config.real_signatures
        else identity.stand_in_signatures()
    )
    thresholds = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        with signing:
            out = loop.run_until_complete(scenario.run())
    finally:
        gc.set_threshold(*thresholds)
        loop.close()
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    if errors:
        raise SimulationError(f"{len(errors)} errors in callbacks; the first: {errors[0]}")
    total = network.total
    out["simulated_s"] = round(loop.time(), 1)
    out["datagrams"] = total.sent
    out["datagrams_lost"] = network.lost
    names = {int(t): t.name for t in wire.MsgType}
    out["datagrams_by_type"] = {
        names.get(k, str(k)): v for k, v in sorted(network.by_type.items())
    }
    out["wall_s"] = round(wall, 1)
    out["cpu_s"] = round(cpu, 1)
    out["cpu_us_per_datagram"] = round(cpu * 1e6 / max(1, total.sent), 1)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out
