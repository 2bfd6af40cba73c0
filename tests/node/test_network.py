"""Many real nodes on loopback: discovery at scale, churn, restart, hostile input."""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import sys
from pathlib import Path

import psutil
import pytest

from knarr.errors import NetworkError
from knarr.node import wire
from knarr.node.dht import DhtSettings
from knarr.node.identity import Identity
from knarr.node.node import Node
from knarr.node.transport import Addr, DatagramEndpoint, DatagramHandler, UdpNetwork
from knarr.node.wire import FindNode, FindValue, Ping, Store
from tests.conftest import NodeFactory, sheet, wait_for

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


async def _network(make_node: NodeFactory, count: int) -> list[Node]:
    nodes = [await make_node() for _ in range(count)]
    boot = f"127.0.0.1:{nodes[0].port}"
    await asyncio.gather(*(n.join([boot]) for n in nodes[1:]))
    return nodes


class _Proc:
    def __init__(self, proc: asyncio.subprocess.Process, info: dict[str, object]) -> None:
        self.proc = proc
        self.node_id = str(info["node_id"])

    async def ask(self, command: str) -> list[str]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(command.encode() + b"\n")
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        return list(json.loads(line))


async def _spawn(name: str, bootstrap: str) -> _Proc:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.node.peer_process", name, bootstrap,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT,
    )
    assert proc.stdout
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    return _Proc(proc, json.loads(line))


async def test_fifty_nodes_and_three_processes_find_each_other(make_node: NodeFactory) -> None:
    nodes = await _network(make_node, 50)
    boot = f"127.0.0.1:{nodes[0].port}"
    procs = [await _spawn(f"proc-{i}", boot) for i in range(3)]
    try:
        for i, node in enumerate(nodes):
            await node.announce(sheet(f"skill-{i}", "net", f"group-{i % 5}"))
        expected = {f"skill-{i}": node.node_id for i, node in enumerate(nodes)}
        expected |= {f"proc-{i}": p.node_id for i, p in enumerate(procs)}
        everyone = sorted(f"{pid}:{name}" for name, pid in expected.items())

        # Every in-process node finds every other node's skill by name.
        for i, node in enumerate(nodes):
            for name, provider in expected.items():
                found = await node.find_skills(name)
                assert [r.provider_id.hex() for r in found] == [provider], (i, name)
        # ... and by tag, including the processes' records (paged: ~53 records).
        for node in nodes[::7]:
            found = await node.find_skills(tag="net")
            assert sorted(f"{r.provider_id.hex()}:{r.name}" for r in found) == everyone
            group = await node.find_skills(tag="group-2")
            assert sorted(r.name for r in group) == sorted(f"skill-{i}" for i in range(2, 50, 5))
        # Every process finds every node's skills by name and the whole set by tag.
        for p in procs:
            for name, provider in expected.items():
                assert await p.ask(f"find-name {name}") == [f"{provider}:{name}"]
            assert await p.ask("find-tag net") == everyone
    finally:
        for p in procs:
            if p.proc.returncode is None:
                assert p.proc.stdin
                p.proc.stdin.write(b"quit\n")
                await p.proc.stdin.drain()
                await asyncio.wait_for(p.proc.wait(), 30)


async def test_lookups_survive_thirty_percent_of_nodes_dying(make_node: NodeFactory) -> None:
    nodes = await _network(make_node, 50)
    for i, node in enumerate(nodes):
        await node.announce(sheet(f"skill-{i}", "net"))
    rng = random.Random(7)
    dead = set(rng.sample(range(1, 50), 15))
    for i in dead:
        nodes[i].dht.close()  # abrupt: no goodbye, no saved state
    alive = [n for i, n in enumerate(nodes) if i not in dead]
    attempts = successes = 0
    for round_ in range(4):
        for i, node in enumerate(nodes):
            asker = alive[(i + round_ * 13) % len(alive)]
            found = await asker.find_skills(f"skill-{i}")
            attempts += 1
            successes += [r.provider_id for r in found] == [node.identity.node_id]
    assert successes / attempts >= 0.99, f"{successes}/{attempts}"


async def test_restarted_node_rejoins_from_its_database(
    make_node: NodeFactory, tmp_path: Path
) -> None:
    nodes = await _network(make_node, 10)
    await nodes[4].announce(sheet("weather", "api"))
    db = tmp_path / "node.db"
    node = Node("127.0.0.1", 0, storage=db)
    await node.start()
    await node.join([f"127.0.0.1:{nodes[0].port}"])
    node_id = node.node_id
    await node.stop()

    again = Node("127.0.0.1", 0, storage=db)
    await again.start()  # no join(), no bootstrap
    try:
        assert again.node_id == node_id
        assert len(again.dht.table) >= 5
        found = await again.find_skills("weather")
        assert [r.provider_id for r in found] == [nodes[4].identity.node_id]
    finally:
        await again.stop()


def _hostile_datagrams(rng: random.Random, valid: list[bytes], count: int) -> list[bytes]:
    out: list[bytes] = []
    for i in range(count):
        kind = i % 5
        if kind == 0:  # pure noise, any length up to beyond the limit
            out.append(rng.randbytes(rng.randint(0, 2000)))
        elif kind == 1:  # a valid datagram with a few bytes flipped
            data = bytearray(rng.choice(valid))
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            out.append(bytes(data))
        elif kind == 2:  # truncated or extended
            data = rng.choice(valid)
            cut = rng.randint(0, len(data) + 50)
            out.append(data[:cut] + rng.randbytes(max(0, cut - len(data))))
        elif kind == 3:  # header intact, body replaced with noise
            data = rng.choice(valid)
            out.append(data[: wire.HEADER_SIZE] + rng.randbytes(rng.randint(0, 1300)))
        else:  # replay of a valid datagram
            out.append(rng.choice(valid))
    return out


async def test_hostile_datagrams_do_not_hurt_a_live_node(make_node: NodeFactory) -> None:
    settings = DhtSettings(rate_limit=1e9, rate_burst=1e9)  # let every datagram be parsed
    victim = await make_node(settings=settings)
    helpers = [await make_node() for _ in range(5)]
    for h in helpers:
        await h.join([f"127.0.0.1:{victim.port}"])
    await helpers[2].announce(sheet("survivor", "net"))

    attacker = Identity.generate()
    rng = random.Random(1234)
    now = int(__import__("time").time() * 1000)
    record = helpers[2].dht.records.get(next(iter(helpers[2].dht.records.keys())), now_s=0)
    valid = [
        wire.seal(attacker, msg, now_ms=now, nonce=rng.randbytes(16))
        for msg in (
            Ping(), FindNode(rng.randbytes(32)), FindValue(rng.randbytes(32), 3),
            Store(rng.randbytes(32), record[0].raw if record else b"x"),
        )
    ]
    datagrams = _hostile_datagrams(rng, valid, 10_000)
    process = psutil.Process(os.getpid())
    rss_before = process.memory_info().rss
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    received_before = victim.dht.stats.received
    try:
        for start in range(0, len(datagrams), 50):
            for data in datagrams[start : start + 50]:
                sock.sendto(data, victim.address)
            sent = start + len(datagrams[start : start + 50])
            await wait_for(lambda s=sent: victim.dht.stats.received - received_before >= s)
    finally:
        sock.close()
    stats = victim.dht.stats
    assert stats.received - received_before == 10_000
    assert stats.invalid >= 9_000
    growth = process.memory_info().rss - rss_before
    assert growth < 64 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB"
    assert len(victim.dht.replay) <= victim.dht.replay.capacity
    assert len(victim.dht.table) <= 6
    assert len(victim.dht.records) <= 20

    found = await victim.find_skills("survivor")
    assert [r.provider_id for r in found] == [helpers[2].identity.node_id]
    late = await make_node()
    await late.join([f"127.0.0.1:{victim.port}"])
    assert [r.name for r in await late.find_skills(tag="net")] == ["survivor"]


class _Partition:
    """A datagram network that can cut traffic between two groups of ports."""

    def __init__(self) -> None:
        self.inner = UdpNetwork()
        self.side: dict[int, str] = {}
        self.cut = False

    async def bind(self, host: str, port: int, handler: DatagramHandler) -> DatagramEndpoint:
        endpoint = await self.inner.bind(host, port, handler)
        network = self

        class _Cuttable:
            local_address = endpoint.local_address

            def send(self, data: bytes, addr: Addr) -> None:
                ours = network.side.get(endpoint.local_address[1])
                theirs = network.side.get(addr[1])
                if not (network.cut and ours and theirs and ours != theirs):
                    endpoint.send(data, addr)

            def close(self) -> None:
                endpoint.close()

        return _Cuttable()


async def test_partition_heals_and_records_spread_again(make_node: NodeFactory) -> None:
    net = _Partition()
    fast = DhtSettings(maintenance_interval=0.2)
    nodes = [await make_node(network=net, settings=fast) for _ in range(12)]
    for i, n in enumerate(nodes):
        net.side[n.port] = "a" if i < 6 else "b"
    await asyncio.gather(*(n.join([f"127.0.0.1:{nodes[0].port}"]) for n in nodes[1:]))
    net.cut = True
    # Each side publishes while cut off; lookups across the cut fail and evict contacts.
    await nodes[1].announce(sheet("left", "side"))
    await nodes[7].announce(sheet("right", "side"))
    assert await nodes[8].find_skills("left") == []
    assert await nodes[2].find_skills("right") == []
    for _ in range(3):  # enough timeouts that contacts across the cut are dropped
        await asyncio.gather(*(n.dht.lookup(n.dht.entropy(32)) for n in nodes))
    sides = {n.identity.node_id: net.side[n.port] for n in nodes}
    isolated = [
        n for n in nodes
        if all(sides[e.contact.node_id] == net.side[n.port] for e in n.dht.table.contacts())
    ]
    assert isolated, "the cut should have emptied some tables of the other side"
    net.cut = False
    # Dormant contacts are pinged, tables reconnect, records are handed over or
    # republished: every node finds both records again with no help from the test.
    for n in nodes:
        for name in ("left", "right"):
            await _eventually_found(n, name)


async def _eventually_found(node: Node, name: str, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await node.find_skills(name):
        assert loop.time() < deadline, f"{name} not found from {node.node_id[:8]}"


async def test_fully_separated_nodes_find_each_other_after_the_cut(
    make_node: NodeFactory,
) -> None:
    net = _Partition()
    a, b = await make_node(network=net), await make_node(network=net)
    net.side |= {a.port: "a", b.port: "b"}
    await b.join([f"127.0.0.1:{a.port}"])
    await wait_for(lambda: b.identity.node_id in a.dht.table)
    net.cut = True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while len(a.dht.table) or len(b.dht.table):  # lookups time out until both give up
        assert loop.time() < deadline
        await asyncio.gather(a.dht.lookup(bytes(32)), b.dht.lookup(bytes(32)))
    net.cut = False
    await a.dht.maintain()  # pings the dormant contact it lost
    assert b.identity.node_id in a.dht.table
    await wait_for(lambda: a.identity.node_id in b.dht.table)


async def test_a_port_in_use_is_a_clear_error_and_a_failed_start_leaves_nothing_bound(
    tmp_path: Path,
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        node = Node("127.0.0.1", port, storage=":memory:")
        with pytest.raises(NetworkError, match=f"cannot listen on UDP 127.0.0.1:{port}: "
                                               "Address already in use"):
            await node.start()
        await node.stop()
    # The sidecar's port taken: the node's own UDP and TCP ports are let go again.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        sidecar = busy.getsockname()[1]
        node = Node("127.0.0.1", 0, storage=":memory:", sidecar_port=sidecar)
        assert node.assets is not None
        made = node.assets.directory  # no asset_dir given: a temporary folder of its own
        with pytest.raises(NetworkError, match=r"\(asset sidecar\): Address already in use"):
            await node.start()
        own = node.port
        await node.stop()
    assert not made.exists()

    def free(kind: int) -> bool:
        with socket.socket(socket.AF_INET, kind) as again:
            try:
                again.bind(("127.0.0.1", own))
            except OSError:
                return False
            return True

    # UDP transports close on the loop's next turn, so poll (fails if the port is kept).
    await wait_for(lambda: free(socket.SOCK_DGRAM) and free(socket.SOCK_STREAM), timeout=5)
