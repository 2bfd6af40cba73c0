"""A population of real DHT nodes, and the honest things their operators do with them.

A :class:`Swarm` creates :class:`~knarr.node.dht.Dht` instances on any
:class:`~knarr.node.transport.DatagramNetwork` — the simulator's, or real UDP sockets on
loopback (which is how the simulator is checked against reality) — joins them, runs
their maintenance, publishes skill records the way a node does, looks them up, and
kills nodes abruptly. It holds no protocol logic: everything a node does, its ``Dht``
does.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from knarr.errors import BootstrapFailed
from knarr.node.dht import Dht, DhtSettings
from knarr.node.identity import Identity
from knarr.node.records import SkillRecord, sign_record, skill_key
from knarr.node.transport import Addr, DatagramNetwork

DhtFactory = Callable[..., Dht]


@dataclass(eq=False)
class Peer:
    """One node of the swarm and what the scenario knows about it."""

    dht: Dht
    role: str
    born: float
    died: float | None = None
    maintenance: asyncio.Task[None] | None = None
    published: dict[str, SkillRecord] = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        return self.died is None

    @property
    def addr(self) -> Addr:
        assert self.dht.endpoint is not None
        return self.dht.endpoint.local_address

    @property
    def node_id(self) -> bytes:
        return self.dht.identity.node_id


@dataclass(frozen=True)
class Probe:
    """The outcome of one measured lookup."""

    ok: bool
    hops: int
    messages: int
    seconds: float


def skill_sheet(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "version": "1.0.0",
        "description": f"{name}: a simulated skill",
        "tags": [],
        "input_schema": {"text": "string"},
        "output_schema": {"text": "string"},
    }


class HostPlan:
    """Addresses for new nodes: ``host`` for every node, or unique random IPv4 hosts
    spread over the whole address space (so almost every honest node has its own /24)."""

    def __init__(self, rng: random.Random, *, host: str | None = None, port: int = 4000) -> None:
        self.rng = rng
        self.host = host
        self.port = port
        self._used: set[str] = set()

    def next(self) -> Addr:
        if self.host is not None:
            return (self.host, self.port)
        rng = self.rng
        while True:
            first = rng.randint(1, 223)
            if first in (10, 127):
                continue
            host = f"{first}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randint(1, 254)}"
            if host not in self._used:
                self._used.add(host)
                return (host, self.port)

    def claim(self, host: str) -> None:
        self._used.add(host)


class Swarm:
    """Real nodes on one event loop, created, joined and killed by a scenario."""

    def __init__(
        self,
        network: DatagramNetwork,
        *,
        rng: random.Random,
        clock: Callable[[], float],
        hosts: HostPlan,
        settings: Callable[[], DhtSettings] = DhtSettings,
    ) -> None:
        self.network = network
        self.rng = rng
        self.clock = clock
        self.hosts = hosts
        self.settings = settings
        self.peers: list[Peer] = []
        self._live: dict[str, dict[Peer, None]] = {}  # role -> live peers, in spawn order
        self._seq = 0

    # ------------------------------------------------------------------ population

    def identity(self) -> Identity:
        return Identity.from_seed(self.rng.randbytes(32))

    async def spawn(
        self,
        role: str = "honest",
        *,
        identity: Identity | None = None,
        addr: Addr | None = None,
        factory: DhtFactory = Dht,
        **kwargs: Any,
    ) -> Peer:
        """Create and bind a node (it has not joined yet)."""
        entropy = random.Random(self.rng.getrandbits(64)).randbytes
        dht = factory(
            identity or self.identity(),
            settings=self.settings(),
            network=self.network,
            clock=self.clock,
            entropy=entropy,
            **kwargs,
        )
        host, port = addr or self.hosts.next()
        await dht.bind(host, port)
        peer = Peer(dht, role, asyncio.get_running_loop().time())
        self.peers.append(peer)
        self._live.setdefault(role, {})[peer] = None
        return peer

    async def join(self, peer: Peer, via: list[Addr]) -> bool:
        """Join through ``via``; a node nobody answered leaves again."""
        try:
            await peer.dht.join(via)
        except BootstrapFailed:
            self.kill(peer)
            return False
        return True

    def start_maintenance(self, peer: Peer) -> None:
        if peer.alive and peer.maintenance is None:
            peer.maintenance = asyncio.ensure_future(peer.dht.run_maintenance())

    def kill(self, peer: Peer) -> None:
        """The node stops abruptly: no goodbye, its state is gone."""
        if not peer.alive:
            return
        peer.died = asyncio.get_running_loop().time()
        self._live[peer.role].pop(peer, None)
        if peer.maintenance is not None:
            peer.maintenance.cancel()
        peer.dht.close()

    def live(self, role: str | None = "honest") -> list[Peer]:
        """The live peers (of ``role``, or all), in the order they were spawned."""
        if role is None:
            return [p for p in self.peers if p.alive]
        return list(self._live.get(role, ()))

    async def shutdown(self) -> None:
        """Stop every node and let the cancelled tasks finish."""
        tasks = [p.maintenance for p in self.peers if p.maintenance is not None]
        for peer in self.peers:
            self.kill(peer)
        await asyncio.gather(*tasks, return_exceptions=True)
        for _ in range(3):
            await asyncio.sleep(0)

    # ------------------------------------------------------------------ records

    def sign(self, peer: Peer, name: str, seq: int) -> SkillRecord:
        """What a node's ``_sign`` does, minus its database: a fresh record."""
        host, port = peer.addr
        return sign_record(
            peer.dht.identity,
            skill_sheet(name),
            host=host,
            port=port,
            expires=int(self.clock()) + peer.dht.settings.record_ttl,
            seq=seq,
        )

    async def publish(self, peer: Peer, name: str) -> int:
        """Publish skill ``name`` from ``peer`` and keep it alive (republish). Returns the
        number of accepted STOREs."""
        record = self.sign(peer, name, 1)
        peer.published[name] = record

        def resign() -> SkillRecord:
            fresh = self.sign(peer, name, peer.published[name].seq + 1)
            peer.published[name] = fresh
            return fresh

        return await peer.dht.publish(record, resign)

    async def find(self, asker: Peer, name: str, provider: bytes) -> Probe:
        """Look up skill ``name`` from ``asker``; ``ok`` if ``provider``'s record is found."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        result = await asker.dht.lookup(
            skill_key(name), want_value=True, accept=lambda r: r.name == name
        )
        ok = any(r.provider_id == provider for r in result.records)
        return Probe(ok, result.hops, getattr(result, "messages", 0), loop.time() - start)
