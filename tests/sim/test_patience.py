"""A store reaches a slow node among the k closest (virtual time, so the timing is exact).

The 50-node test on loopback once failed in CI this way: while the test process's
event loop was busy, every in-process node stalled at once, and records published from
the other processes went past them to farther nodes, so a tag lookup that asked the
nearest nodes missed them.
"""

from __future__ import annotations

import random

from knarr.node.contact import distance
from knarr.node.dht import Dht, DhtSettings
from knarr.node.lookup import RttEstimator
from knarr.node.records import skill_key
from knarr.node.transport import ImpairedNetwork
from knarr.sim.loop import VirtualTimeLoop
from knarr.sim.network import LatencyModel, SimNetwork
from knarr.sim.swarm import HostPlan, Swarm

SLOW_S = 1.0  # the slow node's extra delay: far past a stall, well short of a timeout


def _settings() -> DhtSettings:
    return DhtSettings(rtt=RttEstimator(min_timeout=3.0, max_timeout=6.0))


async def _scenario() -> tuple[bool, bool, bool, bool]:
    rng = random.Random(8)
    base = SimNetwork(rng=random.Random(rng.getrandbits(64)),
                      latency=LatencyModel(access_ms=5.0, access_sigma=0.2, tail_prob=0.0))
    delay = [0.0]
    slow_net = ImpairedNetwork(base, delay=lambda: delay[0])
    swarm = Swarm(base, rng=rng, clock=lambda: 1_700_000_000.0, hosts=HostPlan(rng),
                  settings=_settings)
    try:
        peers = [await swarm.spawn() for _ in range(40)]
        slow = Dht(swarm.identity(), settings=_settings(), network=slow_net,
                   clock=swarm.clock, entropy=random.Random(3).randbytes)
        await slow.bind(*swarm.hosts.next())
        via = [peers[0].addr]
        for peer in peers[1:]:
            assert await swarm.join(peer, via)
        await slow.join(via)
        asker = peers[-1].dht
        target = slow.identity.node_id  # the slow node is the closest there is
        delay[0] = SLOW_S
        impatient = await asker.lookup(target)
        patient = await asker.lookup(target, patient=True)
        nearest = patient.closest[0].node_id == target
        # A record whose skill key lies nearest the slow node is stored there.
        ids = [p.dht.identity.node_id for p in peers] + [target]
        name = next(f"s{i}" for i in range(10_000)
                    if min(ids, key=lambda n: distance(n, skill_key(f"s{i}"))) == target)
        await asker.store(swarm.sign(peers[-1], name, 1))
        held = bool(slow.records.get(skill_key(name), now_s=int(swarm.clock())))
        return (any(c.node_id == target for c in impatient.closest),
                any(c.node_id == target for c in patient.closest), nearest, held)
    finally:
        slow.close()
        await swarm.shutdown()


def test_a_patient_lookup_keeps_a_slow_node_among_the_closest() -> None:
    loop = VirtualTimeLoop()
    try:
        impatient, patient, nearest, held = loop.run_until_complete(_scenario())
    finally:
        loop.close()
    assert not impatient  # the premise: an ordinary lookup ends without it
    assert patient and nearest and held
