"""Datagram transports: the one interface the DHT sends and receives through.

``UdpNetwork`` is the real one (asyncio UDP sockets). Anything else that implements
:class:`DatagramNetwork` (the simulator's in-memory network, a wrapper that injects delay
and loss) can carry a real node unchanged.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Callable
from typing import Any, Protocol

Addr = tuple[str, int]
DatagramHandler = Callable[[bytes, Addr], None]


class DatagramEndpoint(Protocol):
    """A bound datagram socket."""

    @property
    def local_address(self) -> Addr: ...

    def send(self, data: bytes, addr: Addr) -> None: ...

    def close(self) -> None: ...


class DatagramNetwork(Protocol):
    """Something that can bind datagram endpoints."""

    async def bind(self, host: str, port: int, handler: DatagramHandler) -> DatagramEndpoint: ...


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, handler: DatagramHandler) -> None:
        self._handler = handler

    def datagram_received(self, data: bytes, addr: tuple[str | Any, ...]) -> None:
        self._handler(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        # ICMP port-unreachable and friends: the request simply times out.
        pass


class UdpEndpoint:
    def __init__(self, transport: asyncio.DatagramTransport) -> None:
        self._transport = transport
        sockname = transport.get_extra_info("sockname")
        self._local: Addr = (str(sockname[0]), int(sockname[1]))

    @property
    def local_address(self) -> Addr:
        return self._local

    def send(self, data: bytes, addr: Addr) -> None:
        if not self._transport.is_closing():
            self._transport.sendto(data, addr)

    def close(self) -> None:
        self._transport.close()


class UdpNetwork:
    """Real UDP sockets on the running event loop."""

    async def bind(self, host: str, port: int, handler: DatagramHandler) -> UdpEndpoint:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(handler), local_addr=(host, port), family=family
        )
        return UdpEndpoint(transport)


class _ImpairedEndpoint:
    def __init__(self, inner: DatagramEndpoint, network: ImpairedNetwork) -> None:
        self._inner = inner
        self._net = network

    @property
    def local_address(self) -> Addr:
        return self._inner.local_address

    def send(self, data: bytes, addr: Addr) -> None:
        net = self._net
        if net.rng.random() < net.loss:
            return
        delay = net.delay()
        if delay <= 0:
            self._inner.send(data, addr)
        else:
            asyncio.get_running_loop().call_later(delay, self._inner.send, data, addr)

    def close(self) -> None:
        self._inner.close()


class ImpairedNetwork:
    """Wraps a network to drop a share of outgoing datagrams and delay the rest.

    Used where the kernel cannot impair links itself (no netem): the node under test
    sees the same interface as with a real lossy path.
    """

    def __init__(
        self,
        inner: DatagramNetwork,
        *,
        loss: float = 0.0,
        delay: Callable[[], float] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.inner = inner
        self.loss = loss
        self.rng = rng or random.Random()
        self.delay: Callable[[], float] = delay or (lambda: 0.0)

    async def bind(self, host: str, port: int, handler: DatagramHandler) -> DatagramEndpoint:
        return _ImpairedEndpoint(await self.inner.bind(host, port, handler), self)
