"""The headless node: identity, storage and the DHT under one programmatic API.

``knarr.dht.node.DHTNode`` is this class under the name the product description uses.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from knarr.config import parse_hostport
from knarr.errors import (
    BootstrapFailed,
    ConfigError,
    LocalProtocolError,
    SkillNotFound,
)
from knarr.node.contact import Contact, pack_ip
from knarr.node.dht import Dht, DhtSettings
from knarr.node.identity import Identity
from knarr.node.records import SkillRecord, sign_record, skill_key, tag_key
from knarr.node.store import Store
from knarr.node.transport import Addr, DatagramNetwork

log = logging.getLogger("knarr.node")

Handler = Callable[..., Awaitable[Mapping[str, Any]] | Mapping[str, Any]]


@dataclass
class _Skill:
    handler: Handler
    wants_context: bool


def _wants_context(fn: Handler) -> bool:
    try:
        params = [
            p for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        return False
    return len(params) >= 2


def _is_unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def outbound_address(peer: Addr) -> str:
    """The local address the OS would use to reach ``peer`` (no packet is sent)."""
    family = socket.AF_INET6 if ":" in peer[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect(peer)
        return str(probe.getsockname()[0])


class Node:
    """A Knarr node. Start it, join a network, register and announce skills."""

    def __init__(
        self,
        host: str = "0.0.0.0",
        port: int = 9000,
        *,
        storage: str | os.PathLike[str] = ":memory:",
        advertise_host: str | None = None,
        sidecar_port: int = 0,
        settings: DhtSettings | None = None,
        network: DatagramNetwork | None = None,
        clock: Callable[[], float] = time.time,
        entropy: Callable[[int], bytes] = os.urandom,
        identity: Identity | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.advertise_host = advertise_host
        self.sidecar_port = sidecar_port
        self.clock = clock
        self.store = Store(storage)
        self.identity = identity or Identity.load_or_create(self.store)
        self.dht = Dht(
            self.identity, settings=settings, network=network, clock=clock, entropy=entropy
        )
        self._skills: dict[str, _Skill] = {}
        self._maintenance: asyncio.Task[None] | None = None
        self._started = False

    # ------------------------------------------------------------------ identity

    @property
    def node_id(self) -> str:
        """This node's id, as 64 hex characters."""
        return self.identity.node_id_hex

    @property
    def address(self) -> Addr:
        """The (host, port) the node is bound to."""
        if self.dht.endpoint is None:
            raise LocalProtocolError("the node is not started")
        return self.dht.endpoint.local_address

    @property
    def contact(self) -> Contact:
        host = self.advertise_host or self.address[0]
        return Contact(self.identity.node_id, host, self.address[1])

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Bind the UDP socket and, if the database remembers peers, rejoin through them."""
        if self._started:
            return
        bound = await self.dht.bind(self.host, self.port)
        self.port = bound[1]
        self._started = True
        log.info("node %s listening on %s:%d", self.node_id[:16], *bound)
        saved = self._saved_peers()
        if saved:
            try:
                size = await self.dht.join([], seeds=saved)
                log.info("rejoined through %d remembered peers (%d in table)", len(saved), size)
            except BootstrapFailed:
                log.warning("none of %d remembered peers answered", len(saved))
        self._maintenance = asyncio.create_task(
            self.dht.run_maintenance(on_tick=self._save_peers), name="knarr-maintenance"
        )

    async def join(self, bootstrap: Iterable[str]) -> int:
        """Join the network through ``"host:port"`` peers. Returns the routing table size.

        Unreachable entries are skipped; :class:`BootstrapFailed` only if none answers.
        """
        self._check_started()
        addrs = [await self._resolve(entry) for entry in bootstrap]
        if self.advertise_host is None and _is_unspecified(self.host) and addrs:
            try:
                self.advertise_host = outbound_address(addrs[0])
            except OSError:
                pass
        own = self.address
        addrs = [a for a in addrs if a != own and a != ("127.0.0.1", own[1])]
        size = await self.dht.join(addrs, seeds=self._saved_peers())
        self._save_peers()
        return size

    async def _resolve(self, entry: str) -> Addr:
        host, port = parse_hostport(entry, source="bootstrap")
        try:
            pack_ip(host)
            return (host, port)
        except ValueError:
            pass
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except OSError as exc:
            raise ConfigError(f"bootstrap: cannot resolve {host!r}: {exc}") from exc
        return (str(infos[0][4][0]), port)

    async def stop(self) -> None:
        """Stop serving, remember the routing table, close the database."""
        if not self._started:
            self.store.close()
            return
        self._started = False
        if self._maintenance is not None:
            self._maintenance.cancel()
            try:
                await self._maintenance
            except asyncio.CancelledError:
                pass
        self._save_peers()
        self.dht.close()
        self.store.close()

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _check_started(self) -> None:
        if not self._started:
            raise LocalProtocolError("call `await node.start()` first")

    # ------------------------------------------------------------------ persistence

    def _saved_peers(self) -> list[Contact]:
        rows = self.store.execute(
            "SELECT node_id, host, port FROM peers ORDER BY last_seen DESC LIMIT 200"
        )
        return [Contact(bytes(r[0]), str(r[1]), int(r[2])) for r in rows]

    def _save_peers(self) -> None:
        now = self.clock()
        rows = [
            (e.contact.node_id, e.contact.host, e.contact.port, now)
            for e in self.dht.table.contacts()
        ]
        if not rows:
            return
        with self.store.transaction():
            self.store.execute("DELETE FROM peers")
            self.store.executemany(
                "INSERT INTO peers(node_id, host, port, last_seen) VALUES(?, ?, ?, ?)", rows
            )

    # ------------------------------------------------------------------ skills

    def register_handler(self, name: str, handler: Handler) -> None:
        """Serve ``handler`` (``async def f(data)`` or ``f(data, ctx)``) as skill ``name``."""
        if not callable(handler):
            raise TypeError(f"handler for {name!r} is not callable")
        self._skills[name] = _Skill(handler, _wants_context(handler))

    @property
    def skills(self) -> list[str]:
        return sorted(self._skills)

    async def call_local(self, name: str, data: Mapping[str, Any]) -> Any:
        """Call a registered skill directly: no network, no signing, no policy checks."""
        skill = self._skills.get(name)
        if skill is None:
            raise SkillNotFound(f"no skill named {name!r} is registered on this node")
        result = skill.handler(data, None) if skill.wants_context else skill.handler(data)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def announce(self, sheet: Mapping[str, Any]) -> SkillRecord:
        """Sign a skill record from ``sheet`` and publish it (unless it is private)."""
        self._check_started()
        frozen = dict(sheet)
        record = self._sign(frozen)
        if record.visibility == "private":
            self.dht.withdraw(record.name)
        else:
            stored = await self.dht.publish(record, lambda: self._sign(frozen))
            log.info("announced %s (%d stores)", record.name, stored)
        return record

    def _sign(self, sheet: dict[str, Any]) -> SkillRecord:
        name = sheet.get("name")
        visibility = sheet.get("visibility", "public")
        rows = self.store.execute("SELECT seq FROM announced WHERE name = ?", (name,))
        seq = max(int(rows[0][0]) + 1 if rows else 0, int(self.clock() * 1000))
        now = self.clock()
        host = self.contact.host
        if _is_unspecified(host):
            host = "127.0.0.1"
        record = sign_record(
            self.identity,
            {**sheet, "visibility": "public" if visibility == "private" else visibility},
            host=host,
            port=self.address[1],
            sidecar_port=self.sidecar_port,
            expires=int(now) + self.dht.settings.record_ttl,
            seq=seq,
        )
        with self.store.transaction():
            self.store.execute(
                "INSERT INTO announced(name, seq, record) VALUES(?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET seq = excluded.seq, record = excluded.record",
                (record.name, seq, record.raw),
            )
        if visibility == "private":
            return _as_private(record)
        return record

    async def find_skills(
        self, name: str | None = None, *, tag: str | None = None
    ) -> list[SkillRecord]:
        """Verified records of providers serving skill ``name`` (or carrying ``tag``)."""
        self._check_started()
        if (name is None) == (tag is None):
            raise ValueError("give exactly one of name= or tag=")
        if name is not None:
            key = skill_key(name)
            result = await self.dht.lookup(key, want_value=True, accept=lambda r: r.name == name)
        else:
            assert tag is not None
            key = tag_key(tag)
            result = await self.dht.lookup(key, want_value=True, accept=lambda r: tag in r.tags)
        return result.records



def _as_private(record: SkillRecord) -> SkillRecord:
    """The local view of a private skill: never published, so never needs a signature."""
    from dataclasses import replace

    return replace(record, visibility="private")
