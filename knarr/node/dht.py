"""The UDP Kademlia service: the asyncio glue around the pure protocol modules.

It owns one datagram endpoint, answers PING / FIND_NODE / FIND_VALUE / STORE, matches
replies to requests by nonce, keeps the routing table fresh and drives the pure
:class:`~knarr.node.lookup.Lookup` machine. All time comes from ``clock`` (wall time, for
message timestamps and record expiry) and the event loop (for timers), so the same code
runs on real sockets and on the simulator's virtual-time loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import lru_cache, partial

from knarr.errors import (
    BootstrapFailed,
    InvalidRecord,
    LocalProtocolError,
    NetworkError,
    RemoteProtocolError,
    RequestTimeout,
)
from knarr.node import cbor, wire
from knarr.node.contact import (
    ID_BITS,
    ID_SIZE,
    Contact,
    HostKind,
    distance,
    host_kind,
    is_loopback,
    pack_ip,
)
from knarr.node.identity import Identity
from knarr.node.lookup import Lookup, RttEstimator
from knarr.node.ratelimit import RateLimiter
from knarr.node.records import (
    RecordStore,
    SkillRecord,
    Unconfirmed,
    names_local_host,
    parse_record,
    servable,
    skill_key,
    vouched,
)
from knarr.node.routing import (
    TABLE_SUBNET_SHARE,
    AddResult,
    RoutingTable,
    bucket_index,
    random_id_in_bucket,
)
from knarr.node.transport import Addr, DatagramEndpoint, DatagramNetwork, UdpNetwork
from knarr.node.wire import (
    Envelope,
    Error,
    ErrorCode,
    FindNode,
    FindValue,
    Message,
    Nodes,
    Ping,
    Pong,
    Reply,
    Request,
    Store,
    Stored,
    Value,
)

log = logging.getLogger("knarr.dht")

_EXPECTED_REPLIES: dict[type[Message], tuple[type[Reply], ...]] = {
    Ping: (Pong, Error),
    FindNode: (Nodes, Error),
    FindValue: (Value, Nodes, Error),
    Store: (Stored, Error),
}
AMPLIFICATION = 3  # a reply to an unproven address is at most this many times the request
VALUE_PAD = 320  # request padding that makes room for a full-size reply from anyone
_REPLY_BUDGET = wire.MAX_DATAGRAM


@lru_cache(maxsize=64)
def _encoded_size(kind: str, ipv6: bool = False, port: int = 0) -> int:
    """Bytes that one contact, or an empty reply, takes on the wire (from the codec)."""
    if kind == "contact":
        host = "::1" if ipv6 else "0.0.0.0"
        return len(cbor.encode(Contact(bytes(ID_SIZE), host, port).to_wire()))
    if kind == "ping":
        return wire.OVERHEAD + len(cbor.encode(Ping().to_body()))
    if kind == "ack":  # what asking for a PONG adds to a reply
        return len(cbor.encode(Pong(bytes(wire.NONCE_SIZE), True).to_body())) - len(
            cbor.encode(Pong(bytes(wire.NONCE_SIZE)).to_body())
        )
    empty = Nodes(bytes(wire.NONCE_SIZE), ()) if kind == "nodes" else Value(
        bytes(wire.NONCE_SIZE), (), True
    )
    return wire.OVERHEAD + len(cbor.encode(empty.to_body()))


def _port_class(port: int) -> int:
    """A representative port with the same encoded size as ``port``."""
    return 1 if port < 24 else 24 if port < 256 else 256


def _fit(reply: Reply, budget: int) -> Reply:
    """Cut a NODES or VALUE reply to what fits in ``budget`` bytes, by arithmetic on the
    encoded sizes, so that it is signed once (signing is the expensive part)."""
    if isinstance(reply, Nodes):
        size = _encoded_size("nodes") + (_encoded_size("ack") if reply.ack else 0)
        for count, c in enumerate(reply.nodes):
            size += _encoded_size("contact", ":" in c.host, _port_class(c.port))
            if size > budget:
                return replace(reply, nodes=reply.nodes[:count])
    elif isinstance(reply, Value) and len(reply.records) > 1:
        size = _encoded_size("value") + (_encoded_size("ack") if reply.ack else 0)
        for count, raw in enumerate(reply.records):
            size += len(raw) + 3  # a byte string's head is at most 3 bytes here
            if size > budget and count:
                return replace(reply, records=reply.records[:count], more=True)
    return reply


@dataclass
class DhtSettings:
    """Protocol parameters. Defaults follow the Kademlia paper where it has one."""

    k: int = 20
    alpha: int = 3
    value_quorum: int = 3
    window_s: float = 60.0
    subnet_limit: int = 2
    table_subnet_share: float = TABLE_SUBNET_SHARE
    rate_limit: float = 200.0
    rate_burst: float = 400.0
    refresh_interval: float = 900.0
    fresh_interval: float = 900.0  # a contact heard from this recently is not pinged to
    # make room for a newcomer, and a newcomer is not pinged to offer it a full bucket
    maintenance_interval: float = 60.0
    record_ttl: int = 3600
    republish_interval: float = 1800.0
    read_only: bool = False
    crowd_detection: bool = True  # off only to measure what it buys (an eclipse "before")
    rtt: RttEstimator = field(default_factory=RttEstimator)


@dataclass
class DhtStats:
    received: int = 0
    sent: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    invalid: int = 0
    rate_limited: int = 0
    timeouts: int = 0
    truncated_replies: int = 0


@dataclass
class LookupResult:
    closest: list[Contact]
    records: list[SkillRecord]
    hops: int
    queries: int
    messages: int = 0  # datagrams this lookup sent and received (requests and replies)


@dataclass
class _Publication:
    resign: Callable[[], SkillRecord]
    record: SkillRecord
    at: float
    table_size: int
    stored: int = 0  # STOREs accepted, over all the record's keys
    short: int = 0  # publications in a row that reached fewer nodes than the table holds


def _after_done(*_: object, **__: object) -> None:
    """What a finished lookup's ``launch`` and ``fetch_page`` become (see Dht.lookup)."""


@dataclass
class _Pending:
    future: asyncio.Future[Envelope]
    addr: Addr
    expect: bytes | None
    kinds: tuple[type[Reply], ...]
    sent_at: float
    timer: asyncio.TimerHandle | None = None
    is_ack: bool = False  # a reply of ours that asked for a PONG (see _await_ack)


class Dht:
    """One node's presence in the DHT."""

    def __init__(
        self,
        identity: Identity,
        *,
        settings: DhtSettings | None = None,
        network: DatagramNetwork | None = None,
        clock: Callable[[], float] = time.time,
        entropy: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.identity = identity
        self.settings = s = settings or DhtSettings()
        self.network: DatagramNetwork = network or UdpNetwork()
        self.clock = clock
        self.entropy = entropy
        self.table = RoutingTable(
            identity.node_id, k=s.k, subnet_limit=s.subnet_limit,
            table_subnet_share=s.table_subnet_share,
        )
        self.records = RecordStore()
        self.replay = wire.ReplayGuard(int(s.window_s * 1000))
        self.limiter = RateLimiter(s.rate_limit, s.rate_burst)
        self.rtt = s.rtt
        self.stats = DhtStats()
        self.endpoint: DatagramEndpoint | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop bind() ran on
        self._pending: dict[bytes, _Pending] = {}
        self._late: OrderedDict[bytes, _Pending] = OrderedDict()
        self._proven: OrderedDict[Addr, bytes] = OrderedDict()  # address -> who answered
        self._probing: set[bytes] = set()
        self._confirming: set[tuple[bytes, bytes, str]] = set()  # (key, *slot) being asked
        self._tasks: dict[asyncio.Task[object], None] = {}  # ordered: close() is repeatable
        self._closed = False
        self._published: dict[str, _Publication] = {}
        self._dormant: OrderedDict[bytes, Contact] = OrderedDict()
        self._bootstrap: list[Addr] = []
        self._spacing_value = 0
        self._spacing_at = float("-inf")
        self.on_unmet: Callable[[str, str], None] | None = None
        """Called with (kind, name) when a FIND_VALUE for a key we answer finds nothing."""
        self.on_contact: Callable[[Contact, AddResult], None] | None = None
        self.on_contact_lost: Callable[[Contact], None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def bind(self, host: str, port: int) -> Addr:
        self._loop = asyncio.get_running_loop()
        self.endpoint = await self.network.bind(host, port, self.datagram_received)
        return self.endpoint.local_address

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        """The loop the node runs on. Kept from :meth:`bind` because asking asyncio for
        the running loop costs a ``getpid()`` system call, several times per datagram."""
        return self._loop if self._loop is not None else asyncio.get_running_loop()

    def close_endpoint(self) -> None:
        """Unbind without shutting down (to bind again elsewhere)."""
        if self.endpoint is not None:
            self.endpoint.close()
            self.endpoint = None

    def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        for pending in self._pending.values():
            if pending.timer:
                pending.timer.cancel()
            if not pending.future.done():
                pending.future.cancel()
        self._pending.clear()
        if self.endpoint is not None:
            self.endpoint.close()

    def _spawn(self, coro: object) -> None:
        """Run a fire-and-forget coroutine that :meth:`close` cancels."""
        if self._closed:
            coro.close()  # type: ignore[attr-defined]
            return
        task: asyncio.Task[object] = self._get_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks[task] = None
        task.add_done_callback(self._forget_task)

    def _forget_task(self, task: asyncio.Task[object]) -> None:
        self._tasks.pop(task, None)

    @property
    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # ------------------------------------------------------------------ sending

    def _seal(self, message: Message) -> tuple[bytes, bytes]:
        nonce = self.entropy(wire.NONCE_SIZE)
        return nonce, wire.seal(self.identity, message, now_ms=self.now_ms, nonce=nonce)

    def _send(self, data: bytes, addr: Addr) -> None:
        assert self.endpoint is not None, "bind() first"
        self.stats.sent += 1
        self.stats.bytes_sent += len(data)
        self.endpoint.send(data, addr)

    def request(
        self, addr: Addr, message: Request, *, expect: bytes | None = None,
        timeout: float | None = None,
    ) -> asyncio.Future[Envelope]:
        """Send a request; the future resolves with the verified reply envelope, or fails
        with :class:`RequestTimeout` or :class:`RemoteProtocolError`."""
        if self._closed:
            future: asyncio.Future[Envelope] = self._get_loop().create_future()
            future.set_exception(NetworkError("the node is stopped"))
            return future
        nonce, data = self._seal(message)
        future = self._expect(
            nonce, addr, expect, _EXPECTED_REPLIES[type(message)], timeout=timeout
        )
        self._send(data, addr)
        return future

    def _expect(
        self, nonce: bytes, addr: Addr, expect: bytes | None, kinds: tuple[type[Reply], ...],
        *, timeout: float | None = None, is_ack: bool = False,
    ) -> asyncio.Future[Envelope]:
        """Keep ``nonce`` outstanding towards ``addr`` until a reply matches it
        (``_on_reply``) or the timeout (``_expire``)."""
        loop = self._get_loop()
        future: asyncio.Future[Envelope] = loop.create_future()
        pending = _Pending(future, addr, expect, kinds, loop.time(), is_ack=is_ack)
        self._pending[nonce] = pending
        wait = timeout if timeout is not None else self.rtt.timeout(addr)
        pending.timer = loop.call_later(wait, self._expire, nonce)
        return future

    def _expire(self, nonce: bytes) -> None:
        pending = self._pending.pop(nonce, None)
        if pending is None:
            return
        # Back off (RFC 6298 5.5), and keep listening: a reply that comes late is still
        # proof of life and, since every request has its own nonce, a true RTT sample.
        self.rtt.backoff(pending.addr)
        self._late[nonce] = pending
        while len(self._late) > 4096:
            self._late.popitem(last=False)
        if not pending.future.done():
            self.stats.timeouts += 1
            pending.future.set_exception(RequestTimeout(f"no reply from {pending.addr}"))

    async def call(
        self, addr: Addr, message: Request, *, expect: bytes | None = None, retries: int = 1
    ) -> Envelope:
        """:meth:`request` with retries (each a freshly signed message)."""
        for attempt in range(retries + 1):
            try:
                return await self.request(addr, message, expect=expect)
            except RequestTimeout:
                if attempt == retries:
                    raise
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ receiving

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        stats = self.stats
        stats.received += 1
        stats.bytes_received += len(data)
        loop_now = self._get_loop().time()
        key: object = addr if is_loopback(addr[0]) else addr[0]
        if not self.limiter.allow(key, loop_now):
            stats.rate_limited += 1
            return
        try:
            env = wire.open_envelope(
                data, now_ms=self.now_ms, replay=self.replay,
                window_ms=self.replay.window_ms, types=wire.DHT_TYPES,
            )
        except RemoteProtocolError as exc:
            stats.invalid += 1
            log.debug("dropped datagram from %s: %s", addr, exc)
            return
        if env.public_key == self.identity.public_key:
            return
        message = env.message
        if isinstance(message, Reply):
            self._on_reply(env, message, addr, loop_now)
        elif isinstance(message, Request):
            try:
                self._on_request(env, message, addr, len(data))
            except Exception:  # a bug must not take the node down; log and drop
                log.exception("error handling %s from %s", type(message).__name__, addr)

    def _on_reply(self, env: Envelope, message: Reply, addr: Addr, loop_now: float) -> None:
        pending = self._pending.get(message.re) or self._late.get(message.re)
        if pending is None or pending.addr != addr:
            return  # unsolicited, or from an address we did not ask
        if pending.expect is not None and env.sender_id != pending.expect:
            return
        if not isinstance(message, pending.kinds):
            return
        self._pending.pop(message.re, None)
        self._late.pop(message.re, None)
        if pending.timer:
            pending.timer.cancel()
        if getattr(message, "ack", False) and not (self.settings.read_only or pending.is_ack):
            # The responder does not know us yet: answering its reply proves our address
            # to it, one datagram instead of its PING and our PONG. The PONG goes only to
            # where we sent our request, once per matched reply, and first, so that our
            # own work does not count in the responder's round-trip sample. A PONG that
            # answers an ack of ours is never answered, whatever it says.
            self._send(self._seal(Pong(env.nonce))[1], addr)
        self.rtt.observe(addr, loop_now - pending.sent_at)
        self._prove(addr, env.sender_id)
        self._offer(Contact(env.sender_id, addr[0], addr[1]))
        if not pending.future.done():
            pending.future.set_result(env)

    def _prove(self, addr: Addr, node_id: bytes) -> None:
        """``node_id`` answered a nonce we sent to ``addr``, so it really is there. Only a
        request signed by that same node earns full-size replies to ``addr``: anyone can
        sign a request and forge its source address, but not sign as someone else."""
        self._proven[addr] = node_id
        self._proven.move_to_end(addr)
        if len(self._proven) > 16_384:
            self._proven.popitem(last=False)

    def _on_request(self, env: Envelope, message: Request, addr: Addr, size: int) -> None:
        sender = Contact(env.sender_id, addr[0], addr[1])
        reply: Reply
        if isinstance(message, Ping):
            reply = Pong(env.nonce)
        elif isinstance(message, FindNode):
            reply = Nodes(env.nonce, tuple(self._closest_for(message.target, addr, sender)))
        elif isinstance(message, FindValue):
            reply = self._find_value(env.nonce, message, addr, sender)
        elif isinstance(message, Store):
            try:
                self.records.put(
                    message.key, message.record, now_s=int(self.clock()), sender=env.sender_id,
                    from_loopback=is_loopback(addr[0]),
                )
                reply = Stored(env.nonce, True)
            except Unconfirmed as exc:
                reply = Stored(env.nonce, False, str(exc)[:200])
                self._confirm(message.key, exc.record)
            except InvalidRecord as exc:
                reply = Stored(env.nonce, False, str(exc)[:200])
        else:  # pragma: no cover - every request type is handled above
            reply = Error(env.nonce, ErrorCode.BAD_REQUEST, "unsupported request")
        now = self._get_loop().time()
        probe = False
        if message.ro:
            pass
        elif sender.node_id in self.table:
            entry = self.table.get(sender.node_id)
            if entry is not None and entry.contact.addr == addr:
                self.table.seen(sender.node_id, now)
        else:
            # A sender that could get in (its bucket has room, or the bucket's oldest is
            # stale) must prove its address first. The reply asks it for a PONG, which
            # proves it as a PONG to our PING would (_await_ack); once proven, it is
            # offered to the table like anyone who answers us, so a full bucket pings its
            # stale oldest contact then, and never for a sender that cannot prove itself.
            probe = self.table.wants(sender, now, self.settings.fresh_interval)
        ack = probe and self._may_probe(sender)
        if ack and isinstance(reply, (Pong, Nodes, Value, Stored)):
            reply = replace(reply, ack=True)
        else:
            ack = False
        if self._proven.get(addr) == sender.node_id:
            budget = _REPLY_BUDGET
        else:
            # Everything this request makes us send to an unproven address, the PING
            # that follows an unanswered ack included, stays within AMPLIFICATION times
            # the request.
            budget = AMPLIFICATION * size
            if probe:
                budget -= _encoded_size("ping")
        nonce = self._reply(reply, addr, budget)
        if ack and nonce is not None:
            self._await_ack(nonce, sender)
        elif probe:
            self._probe(sender, retries=0)

    def _closest_for(self, target: bytes, addr: Addr, sender: Contact) -> list[Contact]:
        contacts = self.table.closest(target, exclude=sender.node_id)
        if self.table.has_loopback and not is_loopback(addr[0]):
            contacts = [c for c in contacts if not is_loopback(c.host)]
        return contacts

    def _find_value(self, nonce: bytes, message: FindValue, addr: Addr, sender: Contact) -> Reply:
        stored = self.records.get(message.key, now_s=int(self.clock()))
        if not stored:
            if message.query and message.offset == 0 and self.on_unmet is not None:
                kind, _, name = message.query.partition(":")
                if servable(kind, name) and (
                    hashlib.sha256(message.query.encode()).digest() == message.key
                ):
                    self.on_unmet(kind, name)
            return Nodes(nonce, tuple(self._closest_for(message.key, addr, sender)))
        page: list[bytes] = []
        size = wire.OVERHEAD + 48
        for record in stored[message.offset :]:
            size += len(record.raw) + 3
            if size > _REPLY_BUDGET and page:
                break
            page.append(record.raw)
        more = message.offset + len(page) < len(stored)
        return Value(nonce, tuple(page), more)

    def _reply(self, reply: Reply, addr: Addr, budget: int) -> bytes | None:
        """Send ``reply`` cut to ``budget``; the nonce it went under, None if not sent."""
        fitted = _fit(reply, budget)
        if fitted is not reply:
            self.stats.truncated_replies += 1
            reply = fitted
        nonce, data = self._seal(reply)
        while len(data) > budget:
            # Shrink towards the budget: fewer contacts or records, never a fragment.
            if isinstance(reply, Nodes) and reply.nodes:
                reply = replace(reply, nodes=reply.nodes[:-1])
            elif isinstance(reply, Value) and len(reply.records) > 1:
                reply = replace(reply, records=reply.records[:-1], more=True)
            else:
                break
            self.stats.truncated_replies += 1
            nonce, data = self._seal(reply)
        if len(data) <= max(budget, wire.OVERHEAD + 32):
            self._send(data, addr)
            return nonce
        return None

    def _await_ack(self, nonce: bytes, contact: Contact) -> None:
        """Our reply under ``nonce`` asked ``contact`` for a PONG. Its PONG is matched like
        the answer to a PING (``_on_reply``: proven, offered to the table); if none comes,
        one PING is the probe's retry."""
        future = self._expect(nonce, contact.addr, contact.node_id, (Pong,), is_ack=True)
        self._probing.add(contact.node_id)
        future.add_done_callback(partial(self._acked, contact))

    def _acked(self, contact: Contact, future: asyncio.Future[Envelope]) -> None:
        self._probing.discard(contact.node_id)
        if not future.cancelled() and future.exception() is not None:
            self._probe(contact, retries=0)

    # ------------------------------------------------------------------ routing table

    def _offer(self, contact: Contact) -> None:
        """A contact answered us: add it, pinging an old contact if its bucket is full."""
        now = self._get_loop().time()
        result, oldest = self.table.add(contact, now)
        if result is AddResult.ADDED:
            self._dormant.pop(contact.node_id, None)
            if len(self.records):
                self._replicate_to(contact)
        if self.on_contact is not None and result in (AddResult.ADDED, AddResult.PENDING):
            self.on_contact(contact, result)
        if result is AddResult.PENDING and oldest is not None:
            entry = self.table.get(oldest.node_id)
            if entry is not None and now - entry.last_seen >= self.settings.fresh_interval:
                self._probe(oldest, evict_on_failure=True)

    def _failed(self, contact: Contact, *, max_failures: int = 2) -> None:
        """A contact did not answer. If the table drops it, keep it as dormant: after a
        partition heals, pinging dormant contacts is how the two sides find each other."""
        if self.table.failed(contact.node_id, max_failures=max_failures):
            if self.on_contact_lost is not None:
                self.on_contact_lost(contact)
            self._dormant[contact.node_id] = contact
            self._dormant.move_to_end(contact.node_id)
            while len(self._dormant) > 4 * self.settings.k:
                self._dormant.popitem(last=False)

    async def revive(self, count: int = 8) -> int:
        """Ping a few dormant contacts; those that answer rejoin the table. If the table
        has become small, go back to the bootstrap peers as well."""
        dormant = self._dormant
        batch = [dormant.popitem(last=False)[1] for _ in range(min(count, len(dormant)))]
        ping = Ping(ro=self.settings.read_only)
        tries = [self.call(c.addr, ping, expect=c.node_id, retries=0) for c in batch]
        if len(self.table) < self.settings.k // 4 and self._bootstrap:
            tries += [self.call(a, ping, retries=0) for a in self._bootstrap]
        answers = await asyncio.gather(*tries, return_exceptions=True)
        for contact, answer in zip(batch, answers, strict=False):
            if not isinstance(answer, Envelope):
                self._dormant[contact.node_id] = contact  # back of the queue
        revived = sum(1 for a in answers if isinstance(a, Envelope))
        if revived:
            await self.lookup(self.identity.node_id)
        return revived

    def _replicate_to(self, newcomer: Contact) -> None:
        """Kademlia's hand-over: give a new neighbour the records it is now among the
        closest to, if we are the nearest other holder (so it gets one copy, not k)."""
        if self.settings.read_only:
            return
        now_s = int(self.clock())
        own = int.from_bytes(self.identity.node_id, "big")
        new = int.from_bytes(newcomer.node_id, "big")
        for key in list(self.records.keys())[:2000]:
            k = int.from_bytes(key, "big")
            nearest = self.table.closest(key, 1, exclude=newcomer.node_id)
            if nearest and int.from_bytes(nearest[0].node_id, "big") ^ k < own ^ k:
                continue  # someone else is nearer: they hand it over (the usual case)
            nearest = self.table.closest(key, self.settings.k, exclude=newcomer.node_id)
            if len(nearest) >= self.settings.k and (
                new ^ k > int.from_bytes(nearest[-1].node_id, "big") ^ k
            ):
                continue  # the newcomer is not among the k closest
            for record in self.records.get(key, now_s=now_s):
                self._spawn(self._send_store(newcomer, key, record.raw))

    async def _send_store(self, contact: Contact, key: bytes, raw: bytes) -> None:
        try:
            await self.call(contact.addr, Store(key, raw), expect=contact.node_id)
        except (NetworkError, RemoteProtocolError):
            pass

    def _confirm(self, key: bytes, offer: SkillRecord) -> None:
        """Ask ``offer``'s provider for its current version of it and keep what the
        provider vouches for (see :class:`~knarr.node.records.Unconfirmed`). The query
        (a FIND_VALUE) is smaller than the STORE that caused it, so a record naming a
        victim's address amplifies nothing."""
        ident = (key, *offer.slot)
        if ident in self._confirming or len(self._confirming) >= 256 or self._closed:
            return
        entry = self.table.get(offer.provider_id)
        addr = entry.contact.addr if entry is not None else (offer.host, offer.port)
        try:
            pack_ip(addr[0])
        except ValueError:
            return  # a provider named by a hostname is left to its own republishing
        self._confirming.add(ident)
        self._spawn(self._confirm_task(key, offer, addr, ident))

    async def _confirm_task(
        self, key: bytes, offer: SkillRecord, addr: Addr, ident: tuple[bytes, bytes, str]
    ) -> None:
        answer: list[SkillRecord] = []
        try:
            offset = 0
            for _ in range(4):  # pages of the provider's records under the skill key
                query = FindValue(
                    skill_key(offer.name), offset, ro=self.settings.read_only, pad=VALUE_PAD
                )
                env = await self.call(addr, query, expect=offer.provider_id)
                reply = env.message
                if not isinstance(reply, Value):
                    break
                now_s = int(self.clock())
                for raw in reply.records:
                    try:
                        answer.append(parse_record(raw, now_s=now_s))
                    except InvalidRecord:
                        continue
                if not reply.more or not reply.records or any(
                    r.slot == offer.slot for r in answer
                ):
                    break
                offset += len(reply.records)
            keep = vouched(offer, answer)
            if keep is not None:
                self.records.put(key, keep.raw, now_s=int(self.clock()),
                                 from_loopback=is_loopback(addr[0]))
        except (NetworkError, RemoteProtocolError):
            pass
        finally:
            self._confirming.discard(ident)

    def _may_probe(self, contact: Contact) -> bool:
        return not (
            self.settings.read_only or self._closed or contact.node_id in self._probing
            or len(self._probing) > 256
        )

    def _probe(
        self, contact: Contact, *, evict_on_failure: bool = False, retries: int = 1
    ) -> None:
        """Ping ``contact`` (an answer offers it to the table); if it does not answer,
        evict it (with ``evict_on_failure``): a proven newcomer waiting in the bucket's
        replacement cache then takes its place."""
        if not self._may_probe(contact):
            return
        self._probing.add(contact.node_id)
        self._spawn(self._probe_task(contact, evict_on_failure, retries))

    async def _probe_task(self, contact: Contact, evict_on_failure: bool, retries: int) -> None:
        try:
            await self.call(contact.addr, Ping(), expect=contact.node_id, retries=retries)
        except (NetworkError, RemoteProtocolError):
            if evict_on_failure:
                self._failed(contact, max_failures=1)
        finally:
            self._probing.discard(contact.node_id)

    def _acceptable(self, contact: Contact, via: Addr) -> bool:
        """Contacts a peer tells us about: never our own id, never a loopback address
        from a non-loopback peer (that would aim us at our own host's services)."""
        if contact.node_id == self.identity.node_id:
            return False
        kind = host_kind(contact.host)
        if kind is HostKind.LOOPBACK:
            return is_loopback(via[0])
        return kind is HostKind.ROUTABLE

    # ------------------------------------------------------------------ lookups

    def _spacing(self) -> int:
        """The typical distance between neighbouring node ids (2**256 / network size),
        estimated from our k closest contacts; 0 while we know fewer than k nodes.
        Lookups use it to spot ids crowded next to a target (an eclipse); with
        ``crowd_detection`` off it is always 0, which turns the check off."""
        if not self.settings.crowd_detection:
            return 0
        now = self._get_loop().time()
        if now - self._spacing_at < 60.0 and self._spacing_value:
            return self._spacing_value
        own = self.identity.node_id
        k = self.settings.k
        known = self.table.closest(own, k)
        value = distance(own, known[-1].node_id) // k if len(known) >= k else 0
        self._spacing_value, self._spacing_at = value, now
        return value

    async def lookup(
        self,
        target: bytes,
        *,
        want_value: bool = False,
        seeds: Iterable[Contact] | None = None,
        accept: Callable[[SkillRecord], bool] | None = None,
        patient: bool = False,
    ) -> LookupResult:
        """Iterative lookup of ``target``; with ``want_value``, also collect the verified
        records stored there (those for which ``accept`` holds); ``patient``: see
        :class:`Lookup`."""
        loop = self._get_loop()
        s = self.settings
        own = self.identity.node_id
        seed_list = list(seeds) if seeds is not None else self.table.closest(target, s.k)
        machine = Lookup(
            own, target, seed_list, k=s.k, alpha=s.alpha,
            want_value=want_value, value_quorum=s.value_quorum, spacing=self._spacing(),
            patient=patient,
        )
        if seed_list and target != own:
            self.table.touch(bucket_index(own, target), loop.time())
        found: dict[tuple[bytes, str], SkillRecord] = {}
        if want_value:
            for record in self.records.get(target, now_s=int(self.clock())):
                if accept is None or accept(record):
                    found[record.slot] = record
        checked: dict[bytes, bool] = dict.fromkeys((r.raw for r in found.values()), True)
        done: asyncio.Future[None] = loop.create_future()
        pages: set[asyncio.Future[Envelope]] = set()
        messages = 0

        def message(offset: int = 0) -> Request:
            # Value replies must fit a whole record even from a node that has not yet
            # seen our address answer, and read-only clients are never seen to answer.
            if want_value:
                return FindValue(target, offset, ro=s.read_only, pad=VALUE_PAD)
            return FindNode(target, ro=s.read_only, pad=VALUE_PAD if s.read_only else 0)

        def check() -> None:
            if not done.done() and machine.finished and not pages:
                done.set_result(None)

        def take_records(reply: Value, via: Addr) -> int:
            """Keep the valid records for this lookup; returns how many there were."""
            now_s = int(self.clock())
            remote = not is_loopback(via[0])
            valid = 0
            for raw in reply.records:
                known = checked.get(raw)
                if known is not None:  # the same signed bytes from another holder
                    valid += known
                    continue
                checked[raw] = False
                try:
                    record = parse_record(raw, now_s=now_s)
                except InvalidRecord:
                    continue
                if target not in record.keys() or (accept is not None and not accept(record)):
                    continue
                if remote and names_local_host(record.host):
                    del checked[raw]  # a loopback holder may still vouch for it
                    continue
                checked[raw] = True
                valid += 1
                old = found.get(record.slot)
                if old is None or record.seq > old.seq:
                    found[record.slot] = record
            return valid

        def fetch_page(contact: Contact, offset: int) -> None:
            if done.done() or offset > self.records.max_per_key:
                return  # a late VALUE reply: the lookup has its answer
            nonlocal messages
            messages += 1
            fut = self.request(contact.addr, message(offset), expect=contact.node_id)
            pages.add(fut)
            fut.add_done_callback(partial(on_page, contact, offset))

        def on_page(contact: Contact, offset: int, fut: asyncio.Future[Envelope]) -> None:
            nonlocal messages
            pages.discard(fut)
            if not fut.cancelled() and fut.exception() is None:
                messages += 1
                reply = fut.result().message
                if isinstance(reply, Value):
                    take_records(reply, contact.addr)
                    if reply.more and reply.records:
                        fetch_page(contact, offset + len(reply.records))
            check()

        def launch(contacts: list[Contact]) -> None:
            nonlocal messages
            if done.done():
                return
            messages += len(contacts)
            for contact in contacts:
                fut = self.request(contact.addr, message(), expect=contact.node_id)
                stall = loop.call_later(self.rtt.stall(contact.addr), on_stall, contact, fut)
                fut.add_done_callback(partial(on_done, contact, stall))

        def on_stall(contact: Contact, fut: asyncio.Future[Envelope]) -> None:
            if not fut.done():
                launch(machine.on_stall(contact.node_id))
                check()

        def on_done(
            contact: Contact, stall: asyncio.TimerHandle, fut: asyncio.Future[Envelope]
        ) -> None:
            nonlocal messages
            stall.cancel()
            error = None if fut.cancelled() else fut.exception()
            if fut.cancelled() or error is not None:
                if isinstance(error, RequestTimeout):
                    self._failed(contact)
                launch(machine.on_failure(contact.node_id))
                check()
                return
            messages += 1
            reply = fut.result().message
            if isinstance(reply, Error):  # refused: the same as no answer for the lookup
                launch(machine.on_failure(contact.node_id))
                check()
                return
            has_value = False
            nodes: tuple[Contact, ...] = ()
            if isinstance(reply, Nodes):
                nodes = tuple(c for c in reply.nodes if self._acceptable(c, contact.addr))
            elif isinstance(reply, Value):
                # Only a reply with a valid record counts towards the quorum: junk in a
                # VALUE must not end a lookup early.
                has_value = take_records(reply, contact.addr) > 0
                if reply.more and reply.records:
                    fetch_page(contact, len(reply.records))
            launch(machine.on_reply(contact.node_id, nodes, has_value=has_value))
            check()

        launch(machine.start())
        check()
        try:
            await done
        finally:
            # launch and on_done, and fetch_page and on_page, call each other, so their
            # closures form a reference cycle that holds the whole lookup (candidates,
            # contacts, records). Finished or cancelled, a lookup sends nothing more, so
            # both become a no-op: that also breaks the cycle, and the lookup is freed by
            # reference counting when its last request ends instead of by the cyclic
            # collector (which otherwise collects every lookup a node makes).
            launch = fetch_page = _after_done  # noqa: F811 (rebinds the closures' cells)
        return LookupResult(
            machine.closest(),
            sorted(found.values(), key=lambda r: r.slot),
            machine.hops,
            machine.queries,
            messages,
        )

    async def store(self, record: SkillRecord) -> int:
        """Publish ``record`` at the k closest nodes to each of its keys.
        Returns how many STOREs were accepted in all."""
        keys = sorted(record.keys())
        results = await asyncio.gather(*(self._store_at(key, record) for key in keys))
        return sum(results)

    async def _store_at(self, key: bytes, record: SkillRecord) -> int:
        self.records.put(key, record.raw, now_s=int(self.clock()))
        found = await self.lookup(key, patient=True)
        replies = await asyncio.gather(
            *(self.call(c.addr, Store(key, record.raw), expect=c.node_id) for c in found.closest),
            return_exceptions=True,
        )
        return sum(
            1 for r in replies if isinstance(r, Envelope) and isinstance(r.message, Stored)
            and r.message.ok
        )

    async def report_unmet(self, key: bytes, query: str, contacts: Iterable[Contact]) -> None:
        """Tell the nodes responsible for ``key`` (the closest a lookup that found no
        records ended with) that nobody serves ``query``, so they count the demand."""
        message = FindValue(key, ro=self.settings.read_only, pad=VALUE_PAD, query=query)
        await asyncio.gather(
            *(self.request(c.addr, message, expect=c.node_id) for c in contacts),
            return_exceptions=True,
        )

    # ------------------------------------------------------------------ publishing

    async def publish(self, record: SkillRecord, resign: Callable[[], SkillRecord]) -> int:
        """Store ``record`` now and keep it alive: before it expires, and soon after the
        network grows past the size it was published into, ``resign()`` makes a fresh
        record (higher sequence, later expiry) that is stored again."""
        if self.settings.read_only:
            raise LocalProtocolError("a read-only node cannot publish records")
        pub = _Publication(resign, record, self.clock(), len(self.table))
        self._published[record.name] = pub
        pub.stored = await self.store(record)
        return pub.stored

    def withdraw(self, name: str) -> None:
        """Stop republishing ``name`` (its records expire where they are stored)."""
        self._published.pop(name, None)

    def _unsettled(self, pub: _Publication) -> tuple[bool, bool]:
        """Whether ``pub`` was stored into a smaller network than we know now (it has
        grown), and whether some of its STOREs were missed."""
        s = self.settings
        grown = pub.table_size < s.k and len(self.table) > pub.table_size
        missed = pub.stored < min(s.k, pub.table_size) * len(pub.record.keys())
        return grown, missed

    def unsettled(self) -> list[str]:
        """Names of our records that maintenance will soon store again: published into
        a smaller network than we know now, or with STOREs missed. Until then some of
        the nodes now responsible for them may not hold them."""
        return sorted(name for name, pub in self._published.items() if any(self._unsettled(pub)))

    async def republish(self, *, force: bool = False) -> int:
        """Publish again every record that is due (or all, with ``force``)."""
        now = self.clock()
        count = 0
        s = self.settings
        for name, pub in list(self._published.items()):
            grown, missed = self._unsettled(pub)
            # A STORE lost or a node too slow while the network formed: try again soon
            # (backing off) instead of leaving that node without the record for an hour.
            retry = missed and now - pub.at >= s.maintenance_interval * 2 ** min(pub.short, 10)
            if not (force or grown or retry or now - pub.at >= s.republish_interval):
                continue
            record = pub.resign()
            new = _Publication(pub.resign, record, now, len(self.table))
            new.short = pub.short + 1 if missed and not grown else 0
            self._published[name] = new
            new.stored = await self.store(record)
            count += 1
        return count

    async def maintain(self) -> None:
        """One round of upkeep: expire records, refresh idle buckets, republish."""
        self.records.expire(int(self.clock()))
        await self.revive()
        await self.refresh()
        await self.republish()

    async def run_maintenance(self, on_tick: Callable[[], None] | None = None) -> None:
        """Run :meth:`maintain` every ``maintenance_interval`` seconds until cancelled.
        A round that fails is logged and retried at the next tick."""
        while True:
            await asyncio.sleep(self.settings.maintenance_interval)
            try:
                await self.maintain()
                if on_tick is not None:
                    on_tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("DHT maintenance failed; retrying at the next tick")

    # ------------------------------------------------------------------ joining

    async def ping(self, addr: Addr, *, expect: bytes | None = None) -> Contact:
        env = await self.call(addr, Ping(ro=self.settings.read_only), expect=expect)
        return Contact(env.sender_id, addr[0], addr[1])

    async def join(self, addrs: Iterable[Addr], *, seeds: Iterable[Contact] = ()) -> int:
        """Ping bootstrap addresses and remembered contacts, then look up our own id.
        Returns the routing table size; :class:`BootstrapFailed` if nobody answered."""
        addr_list = list(dict.fromkeys(addrs))
        self._bootstrap = list(dict.fromkeys(self._bootstrap + addr_list))[:16]
        seed_list = list(seeds)
        attempts = [self.ping(a) for a in addr_list] + [
            self.ping(c.addr, expect=c.node_id) for c in seed_list
        ]
        if not attempts:
            return len(self.table)
        answers = await asyncio.gather(*attempts, return_exceptions=True)
        alive = [a for a in answers if isinstance(a, Contact)]
        if not alive:
            raise BootstrapFailed(
                f"none of {len(attempts)} bootstrap peers answered "
                f"({', '.join(f'{h}:{p}' for h, p in addr_list[:3]) or 'remembered peers'})"
            )
        await self._explore_neighbourhood(seeds=alive)
        return len(self.table)

    async def _explore_neighbourhood(self, seeds: Iterable[Contact] | None = None) -> None:
        """Look up our own id, then mark every bucket nearer than the k-th closest node
        found as fresh: that lookup saw everyone there is to see in them."""
        own = self.identity.node_id
        found = await self.lookup(own, seeds=seeds)
        complete = ID_BITS - 1
        if len(found.closest) >= self.settings.k:
            complete = bucket_index(own, found.closest[-1].node_id)
        now = self._get_loop().time()
        for index in range(complete + 1):
            self.table.touch(index, now)

    async def refresh(self) -> int:
        """Kademlia's bucket refresh: find peers for the buckets nobody touched lately.

        If a stale bucket lies in our neighbourhood (no farther than our k-th closest
        contact), one lookup of our own id refreshes the whole neighbourhood: once it has
        found the k closest nodes, no bucket nearer than the k-th of them can hold anyone
        it did not see. Every other stale bucket gets a lookup of a random id in it.
        Returns the number of lookups made."""
        loop = self._get_loop()
        own = self.identity.node_id
        k = self.settings.k
        interval = self.settings.refresh_interval
        stale = self.table.stale_buckets(loop.time(), interval)
        if not stale:
            return 0
        lookups = 0
        known = self.table.closest(own, k)
        if len(known) < k or stale[0] <= bucket_index(own, known[-1].node_id):
            await self._explore_neighbourhood()
            lookups += 1
            stale = self.table.stale_buckets(loop.time(), interval)
        for index in stale:
            target = random_id_in_bucket(own, index, self.entropy(32))
            await self.lookup(target)
            lookups += 1
        return lookups

    def contacts_for(self, target: bytes) -> list[Contact]:
        return self.table.closest(target)

    def check_open(self) -> None:
        if self.endpoint is None or self._closed:
            raise LocalProtocolError("the DHT is not running")
