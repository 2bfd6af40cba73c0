"""Records that name this very machine (loopback, unspecified, ``localhost``) travel only
between loopback peers. Elsewhere they would aim a requester's task connection, or a
holder's confirmation query, at the requester's or holder's own local services.

The simulator's nodes have ordinary (non-loopback) addresses, which loopback sockets
cannot give a test; virtual time makes the runs exact.
"""

from __future__ import annotations

import random

import pytest

from knarr.errors import InvalidRecord
from knarr.node.identity import Identity
from knarr.node.records import (
    RecordStore,
    connectable,
    names_local_host,
    sign_record,
    skill_key,
)
from knarr.sim.loop import VirtualTimeLoop
from knarr.sim.network import LatencyModel, SimNetwork
from knarr.sim.swarm import HostPlan, Peer, Swarm, skill_sheet

NOW = 1_700_000_000


@pytest.mark.parametrize(
    ("host", "local"),
    [
        ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("0.0.0.0", True),
        ("::", True), ("::ffff:127.0.0.1", True), ("localhost", True),
        ("LocalHost.", True), ("api.localhost", True),
        ("203.0.113.7", False), ("10.0.0.2", False), ("2001:db8::1", False),
        ("example.org", False), ("localhost.example.org", False),
    ],
)
def test_which_hosts_mean_this_machine(host: str, local: bool) -> None:
    assert names_local_host(host) is local


def test_a_name_may_resolve_to_this_machine_only_when_it_says_so() -> None:
    resolved = ["127.0.0.1", "203.0.113.7", "::1", "0.0.0.0", "::ffff:127.0.0.2",
                "2001:db8::1", "not-an-address"]
    assert connectable("provider.example", resolved) == ["203.0.113.7", "2001:db8::1"]
    assert connectable("provider.example", ["127.0.0.1"]) == []
    assert connectable("localhost", ["127.0.0.1", "::1"]) == ["127.0.0.1", "::1"]


def _local_record(peer: Peer, name: str, host: str = "127.0.0.1") -> bytes:
    return sign_record(peer.dht.identity, skill_sheet(name), host=host, port=9000,
                       expires=NOW + 3600, seq=1).raw


async def _network() -> tuple[Swarm, list[Peer]]:
    rng = random.Random(4)
    net = SimNetwork(rng=random.Random(rng.getrandbits(64)),
                     latency=LatencyModel(access_ms=5.0, access_sigma=0.2, tail_prob=0.0))
    swarm = Swarm(net, rng=rng, clock=lambda: float(NOW), hosts=HostPlan(rng))
    peers = [await swarm.spawn() for _ in range(30)]
    for peer in peers[1:]:
        assert await swarm.join(peer, [peers[0].addr])
    return swarm, peers


async def _scenario() -> dict[str, object]:
    swarm, peers = await _network()
    try:
        provider, asker = peers[3], peers[-1]
        # Published from an ordinary address: every holder refuses it.
        record = sign_record(provider.dht.identity, skill_sheet("local-only"),
                             host="127.0.0.1", port=9000, expires=NOW + 3600, seq=1)
        accepted_local = await provider.dht.store(record)
        found_local = await asker.dht.lookup(skill_key("local-only"), want_value=True)
        # The same provider's ordinary record is stored and found.
        fine = swarm.sign(provider, "reachable", 1)
        accepted_fine = await provider.dht.store(fine)
        found_fine = await asker.dht.lookup(skill_key("reachable"), want_value=True)
        # A holder that has one anyway (taken from a loopback peer) does not pass it on.
        key = skill_key("planted")
        holders = (await asker.dht.lookup(key)).closest[:5]
        for peer in peers:
            if peer.dht.identity.node_id in {c.node_id for c in holders}:
                peer.dht.records.put(key, _local_record(provider, "planted"), now_s=NOW)
        found_planted = await asker.dht.lookup(key, want_value=True)
        return {
            "accepted_local": accepted_local, "found_local": found_local.records,
            "accepted_fine": accepted_fine, "found_fine": found_fine.records,
            "found_planted": found_planted.records,
        }
    finally:
        await swarm.shutdown()


def test_a_record_naming_a_local_host_does_not_spread_or_get_used() -> None:
    loop = VirtualTimeLoop()
    try:
        out = loop.run_until_complete(_scenario())
    finally:
        loop.close()
    assert out["accepted_local"] == 0 and out["found_local"] == []
    assert isinstance(out["accepted_fine"], int) and out["accepted_fine"] > 0
    assert len(out["found_fine"]) == 1  # type: ignore[arg-type]
    assert out["found_planted"] == []


def test_the_record_store_takes_a_local_host_only_from_loopback() -> None:
    store = RecordStore()
    identity = Identity.from_seed(random.Random(1).randbytes(32))
    raw = sign_record(identity, skill_sheet("x"), host="localhost", port=1,
                      expires=NOW + 60, seq=1).raw
    with pytest.raises(InvalidRecord, match="loopback"):
        store.put(skill_key("x"), raw, now_s=NOW, from_loopback=False)
    assert store.put(skill_key("x"), raw, now_s=NOW).host == "localhost"
