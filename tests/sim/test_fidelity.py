"""The simulator against reality: the same scenario on 200 real ``Dht`` nodes over
loopback UDP and on 200 simulated ones must give the same figures, within tolerance.

Tolerance, and why: the two runs cannot be identical (real sockets reorder datagrams by
CPU scheduling; the simulator by its latency model), so each figure is allowed the
spread it shows between seeds of the *same* simulator: success rate within 2 points
(200 lookups: one failure is 0.5 point; both must in any case be at least 97 %), median
hops within 1, messages per lookup within 35 % (seeds 11-14 give 8.8-8.9 here, but
runs with more timeouts spread by up to ~25 %; the real run's timing is noisier). A simulator
that mis-modelled routing, lookup termination, timeouts or replies would miss these by
far more: hops would shift and messages per lookup would double or halve.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest

from knarr.node.transport import UdpNetwork
from knarr.sim.loop import VirtualTimeLoop
from knarr.sim.network import LatencyModel, SimNetwork
from knarr.sim.scenario import EPOCH, Scenario, SimConfig
from knarr.sim.swarm import HostPlan

pytestmark = pytest.mark.slow

LOOPBACK_LIKE = LatencyModel(
    access_ms=0.05, access_sigma=0.3, jitter_ms=0.1, jitter_sigma=0.5, tail_prob=0.0
)


def _config(seed: int) -> SimConfig:
    return SimConfig(
        nodes=200, dead=0.2, loss=0.0, seed=seed, lookups=200, records=50, duration=10.0,
        join_period=20.0, settle=2.0, publish_period=5.0, availability_pause=0.2,
        latency=LOOPBACK_LIKE,
    )


def _simulated(seed: int) -> dict[str, Any]:
    cfg = _config(seed)
    loop = VirtualTimeLoop()
    try:
        rng = random.Random(seed)
        network = SimNetwork(rng=random.Random(rng.getrandbits(64)), latency=cfg.latency)
        scenario = Scenario(cfg, network, clock=lambda: EPOCH + loop.time(),
                            hosts=HostPlan(random.Random(rng.getrandbits(64))))
        return loop.run_until_complete(scenario.run())
    finally:
        loop.close()


async def _real(seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    scenario = Scenario(_config(seed), UdpNetwork(), clock=time.time,
                        hosts=HostPlan(rng, host="127.0.0.1", port=0))
    return await scenario.run()


async def test_the_simulator_matches_real_nodes_on_loopback() -> None:
    real = await _real(11)
    loop = asyncio.get_running_loop()
    sim = await loop.run_in_executor(None, _simulated, 11)
    report = {k: (sim[k], real[k]) for k in ("success_rate", "hops_p50", "messages_per_lookup",
                                             "record_availability")}
    print("simulated vs real:", report)
    assert sim["success_rate"] >= 0.97 and real["success_rate"] >= 0.97, report
    assert abs(sim["success_rate"] - real["success_rate"]) <= 0.02, report
    assert abs(sim["hops_p50"] - real["hops_p50"]) <= 1, report
    ratio = sim["messages_per_lookup"] / real["messages_per_lookup"]
    assert 1 / 1.35 <= ratio <= 1.35, report
