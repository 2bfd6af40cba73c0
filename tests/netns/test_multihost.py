"""Eight nodes, each a process in its own network namespace, over real UDP sockets.

The hosts share one bridged /16 (each in its own /24); the test owns every namespace,
veth and bridge and removes them afterwards (see ``topology.py``).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.netns.cluster import NodeProcess, eventually, running_nodes
from tests.netns.topology import SUBNET, Topology, missing_prerequisite

_skip_reason = missing_prerequisite()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.netns,
    pytest.mark.skipif(_skip_reason is not None, reason=_skip_reason or ""),
]
CONVERGE_S = 20.0


def skills(nodes: list[NodeProcess]) -> dict[str, str]:
    """Each host's own skill, as the ``"<provider id>:<skill>"`` a lookup should return."""
    return {f"skill-{n.host.index}": f"{n.node_id}:skill-{n.host.index}" for n in nodes}


async def converged(nodes: list[NodeProcess], *, stored: bool = True) -> float:
    """Wait until every routing table holds every other host and, with ``stored``, every
    node has stored its records again since its table last grew, with no STORE missed.

    A node announces its skill as soon as it has joined, into the few hosts it knows by
    then, and stores it again at the next maintenance round after its table grows (see
    ``Dht.republish``). Until then the hosts nearest a tag may not all hold the record,
    and a tag lookup, which merges what the first three holders return, can miss it.
    Where datagrams are lost, a missed STORE is retried with backoff, so ``stored`` may
    take long: such tests wait for the lookups themselves instead.
    """

    async def problems() -> list[str]:
        stats = await asyncio.gather(*(n.stats() for n in nodes))
        found = [
            f"h{n.host.index} knows {len(s['table'])}/{len(nodes) - 1} hosts"
            for n, s in zip(nodes, stats, strict=True) if len(s["table"]) < len(nodes) - 1
        ]
        return found or [
            f"h{n.host.index} will store {s['unsettled']} again"
            for n, s in zip(nodes, stats, strict=True) if stored and s["unsettled"]
        ]

    return await eventually(problems, timeout=CONVERGE_S, what="full tables, records stored")


async def lookup_failures(
    nodes: list[NodeProcess], by_name: dict[str, str], by_tag: dict[str, list[str]]
) -> list[str]:
    """Every host looks up every name and tag; what it got wrong, as readable lines."""

    async def from_host(node: NodeProcess) -> list[str]:
        wrong = []
        for name, want in by_name.items():
            got = await node.find(name)
            if got != [want]:
                wrong.append(f"h{node.host.index} find {name}: {got}")
        for tag, records in by_tag.items():
            got = await node.find(tag=tag)
            if got != sorted(records):
                wrong.append(f"h{node.host.index} tag {tag}: {len(got)}/{len(records)}")
        return wrong

    return [line for lines in await asyncio.gather(*map(from_host, nodes)) for line in lines]


async def test_every_host_finds_every_skill_by_name_and_tag(
    topology: Topology, tmp_path: Path
) -> None:
    for host in topology.hosts:  # the /16 is the only way anywhere: nothing can leave it
        assert topology.routes(host) == [
            f"{SUBNET} dev eth0 proto kernel scope link src {host.address}"
        ]
    async with running_nodes(topology, tmp_path) as nodes:
        await converged(nodes)
        expected = skills(nodes)
        wrong = await lookup_failures(nodes, expected, {"netns": list(expected.values())})
        assert wrong == []


def other_side(node: NodeProcess, peers: list[str], topology: Topology) -> list[str]:
    """The ``peers`` that sit on the other side of the trunk from ``node``."""
    theirs = {f"{h.address}:" for h in topology.hosts if h.side != node.host.side}
    return [p for p in peers if p[: p.rindex(":") + 1] in theirs]


async def test_partition_hides_records_across_the_cut_and_heals(
    topology: Topology, tmp_path: Path
) -> None:
    async with running_nodes(topology, tmp_path) as nodes:
        await converged(nodes)
        side_a = [n for n in nodes if n.host.side == "a"]
        side_b = [n for n in nodes if n.host.side == "b"]
        topology.cut()
        try:
            # Announced after the cut, so each record can only reach its own side.
            announced = {
                "left": await side_a[1].announce("left", "partition"),
                "right": await side_b[1].announce("right", "partition"),
            }
            own_record = {"a": "left", "b": "right"}

            async def view_during_cut(node: NodeProcess) -> list[str]:
                mine = own_record[node.host.side]
                (other,) = set(announced) - {mine}
                assert await node.find(mine) == [announced[mine]], f"h{node.host.index}"
                assert await node.find(other) == [], f"h{node.host.index} saw across the cut"
                stale = other_side(node, await node.peers(), topology)
                return [f"h{node.host.index} still lists {stale}"] if stale else []

            async def cut_in_force() -> list[str]:
                """Each side sees its own new record and never the other's. The lookups
                across the cut time out until every table has dropped the other side, so
                the heal below has to go through dormant contacts and the bootstrap."""
                views = await asyncio.gather(*map(view_during_cut, nodes))
                return [line for lines in views for line in lines]

            await eventually(cut_in_force, timeout=30, what="tables split by the cut")
        finally:
            topology.heal()

        by_name = skills(nodes) | announced
        by_tag = {"netns": list(skills(nodes).values()), "partition": list(announced.values())}
        healed_in = await eventually(
            lambda: lookup_failures(nodes, by_name, by_tag),
            timeout=30, what="every record findable from every host after the heal",
        )
        await converged(nodes)  # the two halves' routing tables have merged again
        assert all(n.running for n in nodes), "a node restarted or died"
        print(f"partition healed: everything findable everywhere {healed_in:.1f} s after")


async def test_lookups_succeed_with_loss_and_delay(
    topology: Topology, tmp_path: Path
) -> None:
    impaired = running_nodes(
        topology, tmp_path, loss=0.05, delay_ms=(20, 80)
    )
    async with impaired as nodes:
        await converged(nodes, stored=False)
        expected = skills(nodes)
        await eventually(
            lambda: lookup_failures(nodes, expected, {"netns": list(expected.values())}),
            timeout=CONVERGE_S, what="every record findable from every host despite loss",
        )
        # The impairment is really there: requests went unanswered in time, and a lookup
        # takes at least one round trip of 2 x 20 ms.
        stats = await asyncio.gather(*(n.stats() for n in nodes))
        assert sum(s["timeouts"] for s in stats) > 0
        started = time.monotonic()
        assert await nodes[3].find("skill-6") == [expected["skill-6"]]
        assert time.monotonic() - started >= 0.04
