"""A replayed older record: a node that never saw the newer version asks the provider
before it stores a record a third party offers, and ends up with the newest version."""

from __future__ import annotations

import asyncio
import random

from knarr.node.records import SkillRecord, skill_key
from knarr.node.wire import Store, Stored
from knarr.sim.loop import VirtualTimeLoop
from knarr.sim.network import SimNetwork
from knarr.sim.scenario import EPOCH
from knarr.sim.swarm import HostPlan, Peer, Swarm


async def _virtual_seconds_pass(seconds: float) -> None:
    """Let simulated time advance: on the virtual-time loop this returns at once."""
    await asyncio.sleep(seconds)


async def _network(size: int) -> tuple[Swarm, list[Peer]]:
    loop = asyncio.get_running_loop()
    rng = random.Random(7)
    swarm = Swarm(
        SimNetwork(rng=random.Random(8)), rng=rng, clock=lambda: EPOCH + loop.time(),
        hosts=HostPlan(random.Random(9)),
    )
    peers = [await swarm.spawn() for _ in range(size)]
    for p in peers[1:]:
        assert await swarm.join(p, [peers[0].addr])
    return swarm, peers


async def _offer(sender: Peer, to: Peer, record: SkillRecord) -> bool:
    key = skill_key(record.name)
    env = await sender.dht.call(to.addr, Store(key, record.raw), expect=to.node_id)
    assert isinstance(env.message, Stored)
    return env.message.ok


def _held(peer: Peer, name: str) -> list[int]:
    return [r.seq for r in peer.dht.records.get(skill_key(name), now_s=0)]


def test_a_replayed_older_version_is_refused_and_the_newest_fetched() -> None:
    async def main() -> None:
        swarm, peers = await _network(6)
        provider, attacker, fresh = peers[1], peers[2], peers[3]
        await swarm.publish(provider, "replayed")
        older = provider.published["replayed"]
        await provider.dht.republish(force=True)
        assert provider.published["replayed"].seq == older.seq + 1
        newcomer = await swarm.spawn()
        assert await swarm.join(newcomer, [peers[0].addr])
        newcomer.dht.records = type(newcomer.dht.records)()  # it saw no version at all
        assert not await _offer(attacker, newcomer, older)
        await _virtual_seconds_pass(5)
        assert _held(newcomer, "replayed") == [older.seq + 1]
        # Offered by its provider, a record is taken at once (the publisher's own STORE).
        assert await _offer(provider, fresh, provider.published["replayed"])
        await swarm.shutdown()

    _run(main())


def test_a_record_whose_provider_does_not_answer_is_not_stored() -> None:
    async def main() -> None:
        swarm, peers = await _network(5)
        provider, attacker, holder = peers[1], peers[2], peers[3]
        await swarm.publish(provider, "orphan")
        record = provider.published["orphan"]
        swarm.kill(provider)
        holder.dht.records = type(holder.dht.records)()
        assert not await _offer(attacker, holder, record)
        await _virtual_seconds_pass(30)
        assert _held(holder, "orphan") == []
        await swarm.shutdown()

    _run(main())


def _run(coro: object) -> None:
    loop = VirtualTimeLoop()
    try:
        loop.run_until_complete(coro)  # type: ignore[arg-type]
    finally:
        loop.close()
