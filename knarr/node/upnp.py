"""UPnP port mapping: make a node behind a home router reachable.

:class:`PortMapper` maps the DHT port (UDP and TCP) and the sidecar port through an
Internet Gateway Device, learns the external address, renews the leases before they
run out and removes the mappings on shutdown. The device is reached through the
:class:`Gateway` interface; :class:`MiniupnpcGateway` is the real one (miniupnpc), and
tests use a fake behind the same interface since no router exists there.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger("knarr.upnp")


class GatewayError(Exception):
    """The gateway could not be found or refused a request."""


class Gateway(Protocol):
    """What the port mapper needs of an Internet Gateway Device (blocking calls)."""

    def discover(self, timeout_ms: int) -> None:
        """Find the device; :class:`GatewayError` if there is none."""

    def lan_address(self) -> str: ...

    def external_address(self) -> str: ...

    def add_mapping(
        self, external_port: int, protocol: str, internal_host: str, internal_port: int,
        description: str, lease_s: int,
    ) -> None: ...

    def delete_mapping(self, external_port: int, protocol: str) -> None: ...


class MiniupnpcGateway:
    """The real gateway, through miniupnpc (SSDP discovery on the local network)."""

    def __init__(self) -> None:
        import miniupnpc

        self._u = miniupnpc.UPnP()

    def discover(self, timeout_ms: int) -> None:
        self._u.discoverdelay = timeout_ms
        try:
            if self._u.discover() == 0:
                raise GatewayError("no UPnP gateway answered on the local network")
            self._u.selectigd()
        except Exception as exc:  # miniupnpc raises bare Exception
            raise GatewayError(str(exc) or "no UPnP gateway found") from exc

    def lan_address(self) -> str:
        return str(self._u.lanaddr)

    def external_address(self) -> str:
        try:
            return str(self._u.externalipaddress())
        except Exception as exc:
            raise GatewayError(f"gateway did not tell its external address: {exc}") from exc

    def add_mapping(
        self, external_port: int, protocol: str, internal_host: str, internal_port: int,
        description: str, lease_s: int,
    ) -> None:
        try:
            ok = self._u.addportmapping(
                external_port, protocol, internal_host, internal_port, description, "", lease_s
            )
        except Exception as exc:
            raise GatewayError(f"mapping {protocol} {external_port} refused: {exc}") from exc
        if not ok:
            raise GatewayError(f"mapping {protocol} {external_port} refused")

    def delete_mapping(self, external_port: int, protocol: str) -> None:
        try:
            self._u.deleteportmapping(external_port, protocol)
        except Exception as exc:
            raise GatewayError(f"unmapping {protocol} {external_port} failed: {exc}") from exc


@dataclass(frozen=True)
class Mapping:
    port: int
    protocol: str


def wants_upnp(advertise_host: str) -> bool:
    """Only a node that advertises a private address sits behind a NAT worth mapping;
    loopback nodes never look for a gateway (and so send nothing on the network)."""
    try:
        ip = ipaddress.ip_address(advertise_host)
    except ValueError:
        return False
    return ip.version == 4 and ip.is_private and not ip.is_loopback and not ip.is_link_local


class PortMapper:
    """Maps ports for the node's lifetime and keeps the leases fresh."""

    def __init__(
        self,
        gateway: Gateway,
        ports: list[Mapping],
        *,
        lease_s: int = 3600,
        discover_timeout_ms: int = 2000,
        description: str = "knarr",
    ) -> None:
        self.gateway = gateway
        self.ports = ports
        self.lease_s = lease_s
        self.discover_timeout_ms = discover_timeout_ms
        self.description = description
        self.external_address: str | None = None
        self.mapped: list[Mapping] = []
        self.renewals = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> str | None:
        """Discover the gateway and map every port. Returns the external address, or
        ``None`` (with one notice in the log) when there is no gateway."""
        try:
            await asyncio.to_thread(self.gateway.discover, self.discover_timeout_ms)
            lan = await asyncio.to_thread(self.gateway.lan_address)
            await self._map_all(lan)
            self.external_address = await asyncio.to_thread(self.gateway.external_address)
        except GatewayError as exc:
            log.info("UPnP: %s; continuing without port mapping", exc)
            await self.stop()
            return None
        log.info("UPnP: mapped %s; external address %s",
                 ", ".join(f"{m.protocol} {m.port}" for m in self.mapped), self.external_address)
        self._task = asyncio.create_task(self._renew_forever(lan), name="upnp-renewal")
        return self.external_address

    async def _map_all(self, lan: str) -> None:
        for mapping in self.ports:
            await asyncio.to_thread(
                self.gateway.add_mapping, mapping.port, mapping.protocol, lan, mapping.port,
                self.description, self.lease_s,
            )
            if mapping not in self.mapped:
                self.mapped.append(mapping)

    async def _renew_forever(self, lan: str) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 2)
            try:
                await self._map_all(lan)
                self.renewals += 1
            except GatewayError as exc:
                log.warning("UPnP: renewing the mappings failed (%s); will retry", exc)

    async def stop(self) -> None:
        """Stop renewing and remove every mapping made."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for mapping in list(self.mapped):
            try:
                await asyncio.to_thread(self.gateway.delete_mapping, mapping.port,
                                        mapping.protocol)
            except GatewayError as exc:
                log.warning("UPnP: %s", exc)
            self.mapped.remove(mapping)
