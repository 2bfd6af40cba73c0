"""The simulated Internet: datagrams between addresses, with loss and long-tailed delay.

:class:`SimNetwork` implements :class:`~knarr.node.transport.DatagramNetwork`, so a real
:class:`~knarr.node.dht.Dht` binds to it exactly as it binds to UDP. A datagram sent from
one endpoint to an address is dropped with probability ``loss``; otherwise it arrives
after a delay drawn from :class:`LatencyModel`, scheduled on the event loop (on a
:class:`~knarr.sim.loop.VirtualTimeLoop`, in virtual time). A datagram for an address
nobody is bound to any more is dropped, as a closed port's would be.

Every endpoint counts what it sent and received. :meth:`SimNetwork.inject` sends from any
source address: that is how an attacker spoofs one.
"""

from __future__ import annotations

import asyncio
import errno
import math
import random
from dataclasses import dataclass

from knarr.node.transport import Addr, DatagramHandler


@dataclass(frozen=True)
class LatencyModel:
    """One-way delay of a datagram, in milliseconds.

    Each endpoint has an *access delay* (its distance from the core of the network),
    drawn once from a lognormal distribution; a datagram takes the sender's plus the
    receiver's access delay, plus per-datagram queueing *jitter* (lognormal), plus, with
    probability ``tail_prob``, a Pareto-distributed excess (congestion, a bufferbloated
    link, a busy peer) that gives the distribution its long tail. Delays are capped at
    ``max_ms``.

    The defaults give a median round trip near 100 ms between random peers, in line with
    wide-area measurements of P2P networks, with a 1-in-50 chance of an excess of 100 ms
    or more per datagram.
    """

    access_ms: float = 20.0
    access_sigma: float = 0.7
    jitter_ms: float = 2.0
    jitter_sigma: float = 1.0
    tail_prob: float = 0.02
    tail_ms: float = 100.0
    tail_alpha: float = 1.5
    max_ms: float = 10_000.0

    def access(self, rng: random.Random) -> float:
        """An endpoint's access delay, in seconds."""
        return rng.lognormvariate(math.log(self.access_ms), self.access_sigma) / 1000

    def delay(self, rng: random.Random, src_access: float, dst_access: float) -> float:
        """One datagram's one-way delay, in seconds."""
        ms = rng.lognormvariate(math.log(self.jitter_ms), self.jitter_sigma)
        if self.tail_prob and rng.random() < self.tail_prob:
            ms += self.tail_ms * rng.paretovariate(self.tail_alpha)
        return min(src_access + dst_access + ms / 1000, self.max_ms / 1000)


@dataclass
class Traffic:
    """Datagrams and bytes counted at one endpoint (or over the whole network)."""

    sent: int = 0
    bytes_sent: int = 0
    received: int = 0
    bytes_received: int = 0


class SimEndpoint:
    """One bound address on a :class:`SimNetwork`."""

    __slots__ = ("network", "address", "handler", "access", "traffic", "closed")

    def __init__(
        self, network: SimNetwork, address: Addr, handler: DatagramHandler, access: float
    ) -> None:
        self.network = network
        self.address = address
        self.handler = handler
        self.access = access
        self.traffic = Traffic()
        self.closed = False

    @property
    def local_address(self) -> Addr:
        return self.address

    def send(self, data: bytes, addr: Addr) -> None:
        if not self.closed:
            self.network.transmit(data, self.address, addr, self.access, self.traffic)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.network.release(self)


class SimNetwork:
    """Endpoints keyed by (ip, port); delivery through the running event loop."""

    def __init__(
        self,
        *,
        rng: random.Random,
        loss: float = 0.0,
        latency: LatencyModel | None = None,
    ) -> None:
        self.rng = rng
        self.loss = loss
        self.latency = latency or LatencyModel()
        self.endpoints: dict[Addr, SimEndpoint] = {}
        self.total = Traffic()
        self.lost = 0
        self.undeliverable = 0
        self.by_type: dict[int, int] = {}  # datagrams sent, by message type byte
        self._next_port = 40_000
        self._loop: asyncio.AbstractEventLoop | None = None  # delivers; set by bind()

    async def bind(self, host: str, port: int, handler: DatagramHandler) -> SimEndpoint:
        self._loop = asyncio.get_running_loop()
        if port == 0:
            port = self._free_port(host)
        addr = (host, port)
        if addr in self.endpoints:
            raise OSError(errno.EADDRINUSE, f"{host}:{port} is already bound")
        endpoint = SimEndpoint(self, addr, handler, self.latency.access(self.rng))
        self.endpoints[addr] = endpoint
        return endpoint

    def _free_port(self, host: str) -> int:
        while (host, self._next_port) in self.endpoints:
            self._next_port = 40_000 + (self._next_port - 40_000 + 1) % 20_000
        port = self._next_port
        self._next_port = 40_000 + (port - 40_000 + 1) % 20_000
        return port

    def release(self, endpoint: SimEndpoint) -> None:
        if self.endpoints.get(endpoint.address) is endpoint:
            del self.endpoints[endpoint.address]

    def transmit(
        self, data: bytes, src: Addr, dst: Addr, src_access: float, traffic: Traffic | None
    ) -> None:
        """Send ``data`` from ``src`` (counted in ``traffic``) to ``dst``."""
        size = len(data)
        if traffic is not None:
            traffic.sent += 1
            traffic.bytes_sent += size
        total = self.total
        total.sent += 1
        total.bytes_sent += size
        kind = data[3] if size > 3 else -1
        self.by_type[kind] = self.by_type.get(kind, 0) + 1
        rng = self.rng
        if self.loss and rng.random() < self.loss:
            self.lost += 1
            return
        target = self.endpoints.get(dst)
        dst_access = target.access if target is not None else src_access
        delay = self.latency.delay(rng, src_access, dst_access)
        loop = self._loop or asyncio.get_running_loop()  # asking costs a getpid() syscall
        loop.call_later(delay, self._deliver, data, src, dst)

    def inject(self, data: bytes, src: Addr, dst: Addr) -> None:
        """Send ``data`` to ``dst`` claiming to come from ``src`` (a spoofed source)."""
        self.transmit(data, src, dst, self.latency.access_ms / 1000, None)

    def _deliver(self, data: bytes, src: Addr, dst: Addr) -> None:
        endpoint = self.endpoints.get(dst)
        if endpoint is None or endpoint.closed:
            self.undeliverable += 1
            return
        traffic = endpoint.traffic
        traffic.received += 1
        traffic.bytes_received += len(data)
        self.total.received += 1
        self.total.bytes_received += len(data)
        endpoint.handler(data, src)
