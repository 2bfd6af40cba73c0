"""The headless node: identity, storage and the DHT under one programmatic API.

``knarr.dht.node.DHTNode`` is this class under the name the product description uses.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from knarr.config import EconomyConfig, parse_hostport
from knarr.errors import (
    BootstrapFailed,
    ConfigError,
    KnarrError,
    LocalProtocolError,
    NetworkError,
    RemoteProtocolError,
    RequestTimeout,
    SkillNotFound,
    TaskError,
    TaskTimedOut,
)

if TYPE_CHECKING:
    from knarr.node.cockpit import Cockpit
    from knarr.node.sidecar import Sidecar
from knarr.node.assets import AssetError, AssetStore, TaskContext, asset_refs
from knarr.node.contact import Contact, pack_ip
from knarr.node.dht import Dht, DhtSettings
from knarr.node.economy import InvalidReceipt, Receipt, Statement, rank, to_micro
from knarr.node.events import EventLog
from knarr.node.identity import Identity
from knarr.node.ledger import CreditBooks, Ledger
from knarr.node.mail import (
    MAX_BODY,
    MailAck,
    Mailbox,
    MailError,
    MailMessage,
    MailRefused,
    open_payload,
)
from knarr.node.records import SkillRecord, sign_record, skill_key, tag_key
from knarr.node.routing import AddResult, bucket_index
from knarr.node.settlement import (
    MAX_RECONCILE_IDS,
    Delegation,
    SettlementDesk,
    SettlementRefused,
    SettlePropose,
    SettleReconcile,
    SettleReconciled,
    SettleReply,
)
from knarr.node.store import Store
from knarr.node.taskchannel import Sealer, SkillPolicy, TaskCall, TaskClient, TaskServer
from knarr.node.tasks import ENVELOPE_SLACK, SEALED_OVERHEAD, Boxes, TaskRefusal
from knarr.node.transport import Addr, DatagramNetwork
from knarr.node.wire import Envelope, Ping, Reply

log = logging.getLogger("knarr.node")

MIN_FRAME_INPUT = 2**20  # input bytes a task frame may carry, whatever the skills' limits

PROVIDERS_FRESH_S = 30.0
"""How long ``request`` reuses the providers a lookup found before looking again (a
lookup per call cost a DHT round trip and, past ~200 calls a second, ran into the
provider's per-address rate limit)."""
# Refusals that say the caller's request was wrong, not that the provider is unreliable.
CALLER_FAULTS = frozenset({"invalid_input", "input_too_large", "forbidden", "credit_limit"})

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


def _reason(exc: OSError) -> str:
    """Why a bind failed, in the system's words ("Address already in use")."""
    return os.strerror(exc.errno) if exc.errno else str(exc)


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
        sidecar_port: int | None = None,
        asset_dir: str | os.PathLike[str] | None = None,
        max_asset_size: int = 104_857_600,
        settings: DhtSettings | None = None,
        network: DatagramNetwork | None = None,
        clock: Callable[[], float] = time.time,
        entropy: Callable[[int], bytes] = os.urandom,
        identity: Identity | None = None,
        max_task_timeout: float = 3600.0,
        economy: EconomyConfig | None = None,
        cockpit_dir: str | os.PathLike[str] | None = None,
        cockpit_port: int | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.advertise_host = advertise_host
        self._sidecar_wanted = sidecar_port
        self._temp_assets: Path | None = None
        self.sidecar_port = 0
        self.assets: AssetStore | None = None
        if sidecar_port is not None:
            folder = asset_dir or tempfile.mkdtemp(prefix="knarr-assets-")
            self._temp_assets = None if asset_dir else Path(folder)
            self.assets = AssetStore(folder, max_size=max_asset_size)
        self.sidecar: Sidecar | None = None  # started with the node when assets are on
        self.clock = clock
        self.store = Store(storage)
        self.identity = identity or Identity.load_or_create(self.store)
        self.dht = Dht(
            self.identity, settings=settings, network=network, clock=clock, entropy=entropy
        )
        self._skills: dict[str, _Skill] = {}
        self._policies: dict[str, SkillPolicy] = {}
        sealer = Sealer(self.identity, Boxes(self.identity), self.dht.replay, clock, entropy)
        self.ledger = Ledger(self.store, clock)
        self.tasks = TaskServer(
            sealer, policy=self._policies.get, run=self._run_remote,
            max_task_timeout=max_task_timeout, max_frame=self._max_frame,
            accounting=CreditBooks(
                self.ledger, (economy or EconomyConfig()).limit_for,
                on_booked=lambda r: self.events.emit("task.provided", **r.to_dict()),
            ),
        )
        self.client = TaskClient(sealer)
        self._sealer = sealer
        self.client.on_late_receipt = lambda r: self._book(r, "consumed")
        self.mailbox = Mailbox(self.store, clock)
        self._mail_wakeup = asyncio.Event()
        self._mail_task: asyncio.Task[None] | None = None
        self._peer_keys: dict[bytes, bytes] = {}
        self.settlements = SettlementDesk(self.identity, self.ledger, entropy, clock=clock)
        self.tasks.on_request = self._on_request
        self.tasks.answers = (SettlePropose, SettleReconcile, MailMessage)
        self.events = EventLog(clock=clock)
        self.dht.on_unmet = self._unmet
        self.dht.on_contact = self._contact_added
        self.dht.on_contact_lost = self._contact_lost
        self._discovered: OrderedDict[tuple[bytes, str], SkillRecord] = OrderedDict()
        self._providers: OrderedDict[str, tuple[float, list[SkillRecord]]] = OrderedDict()
        """skill -> (loop time of the lookup, the providers it found), for ``request``."""
        self._sheets: dict[str, dict[str, Any]] = {}
        self.cockpit: Cockpit | None = None
        self._cockpit_dir = Path(cockpit_dir) if cockpit_dir is not None else None
        self._cockpit_port = cockpit_port
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
        # Before binding anything: a node already running here must not be disturbed.
        self.store.claim()
        if self._cockpit_dir is not None:
            from knarr.node.cockpit import refuse_if_taken

            refuse_if_taken(self._cockpit_dir)
        bound = await self._bind_both()
        try:
            await self._start_services()
        except BaseException:
            await self._unbind()  # a failed start leaves nothing listening
            raise
        self._started = True
        self.events.emit("node.started", node_id=self.node_id, port=self.port)
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
        self._mail_task = asyncio.create_task(self._deliver_mail(), name="knarr-mail")

    async def _start_services(self) -> None:
        """The asset sidecar and the cockpit, where wanted."""
        if self.assets is not None:
            from knarr.node.sidecar import Sidecar  # aiohttp only when assets are used

            self.sidecar = Sidecar(self.identity, self.assets, clock=self.clock)
            assert self._sidecar_wanted is not None
            try:
                self.sidecar_port = await self.sidecar.start(self.host, self._sidecar_wanted)
            except OSError as exc:
                where = f"{self.host}:{self._sidecar_wanted}"
                raise NetworkError(f"cannot listen on TCP {where} (asset sidecar): "
                                   f"{_reason(exc)}") from exc
        if self._cockpit_dir is not None:
            from knarr.node.cockpit import Cockpit  # aiohttp only when the cockpit is on

            self.cockpit = Cockpit(self, self._cockpit_dir, port=self._cockpit_port)
            try:
                await self.cockpit.start()
            except OSError as exc:
                where = (f"127.0.0.1:{self._cockpit_port}" if self._cockpit_port is not None
                         else str(self.cockpit.socket_path))
                raise NetworkError(f"cannot serve the cockpit on {where}: "
                                   f"{_reason(exc)}") from exc

    async def _unbind(self) -> None:
        for service in (self.cockpit, self.sidecar):
            if service is not None:
                await service.stop()
        self.cockpit = self.sidecar = None
        await self.tasks.stop(grace=0)
        self.dht.close_endpoint()

    async def _bind_both(self) -> Addr:
        """UDP (DHT) and TCP (tasks) on the same port number; with port 0, one the OS
        picks that is free for both."""
        for attempt in range(20):
            try:
                bound = await self.dht.bind(self.host, self.port)
            except OSError as exc:
                raise NetworkError(f"cannot listen on UDP {self.host}:{self.port}: "
                                   f"{_reason(exc)}") from exc
            try:
                await self.tasks.start(self.host, bound[1])
            except OSError as exc:
                self.dht.close_endpoint()
                if self.port != 0 or attempt == 19:
                    where = f"{self.host}:{bound[1]}"
                    raise NetworkError(f"cannot listen on TCP {where}: "
                                       f"{_reason(exc)}") from exc
                continue
            self.port = bound[1]
            return bound
        raise AssertionError("unreachable")

    def _max_frame(self) -> int:
        largest = max((p.max_input_size for p in self._policies.values()), default=0)
        # Read inputs well past a skill's limit so the sender hears "input_too_large"
        # instead of losing the connection and every request multiplexed on it.
        return max(largest, MIN_FRAME_INPUT) + SEALED_OVERHEAD + ENVELOPE_SLACK + 64

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

    def _remove_temp_assets(self) -> None:
        if self._temp_assets is not None:  # a folder we made ourselves, not the user's
            shutil.rmtree(self._temp_assets, ignore_errors=True)
            self._temp_assets = None

    async def stop(self, grace: float = 10.0) -> None:
        """Stop serving: refuse new tasks, give running ones ``grace`` seconds, remember
        the routing table, close the database."""
        if not self._started:  # never started, or its start failed
            self._remove_temp_assets()
            self.store.close()
            return
        self._started = False
        self.events.emit("node.stopping", inflight=self.tasks.inflight)
        await self.tasks.stop(grace=grace)
        await self.client.close()
        if self.cockpit is not None:
            await self.cockpit.stop()
        if self.sidecar is not None:
            await self.sidecar.stop()
        self._remove_temp_assets()
        for task in (self._maintenance, self._mail_task):
            if task is not None:
                task.cancel()
                try:
                    await task
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

    @property
    def running(self) -> bool:
        return self._started

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

    def unregister(self, name: str) -> None:
        """Stop serving skill ``name``: no handler, no republishing (its records expire
        where they are stored; callers meanwhile get "not served here" and move on)."""
        self._skills.pop(name, None)
        self._policies.pop(name, None)
        self._sheets.pop(name, None)
        self.dht.withdraw(name)
        self.events.emit("skill.withdrawn", name=name)

    @property
    def skills(self) -> list[str]:
        return sorted(self._skills)

    async def call_local(self, name: str, data: Mapping[str, Any]) -> Any:
        """Call a registered skill directly: no network, no signing, no policy checks."""
        return await self._invoke(name, data, TaskContext(self.assets, skill=name))

    async def _invoke(self, name: str, data: Mapping[str, Any], ctx: TaskContext) -> Any:
        skill = self._skills.get(name)
        if skill is None:
            raise SkillNotFound(f"no skill named {name!r} is registered on this node")
        result = skill.handler(data, ctx) if skill.wants_context else skill.handler(data)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _run_remote(self, call: TaskCall) -> Any:
        """A remote task: resolve ``knarr-asset://`` inputs to local files, then run."""
        data = dict(call.data)
        try:
            refs = asset_refs(data)
        except AssetError as exc:
            raise TaskRefusal("invalid_input", str(exc)) from exc
        if refs and self.assets is None:
            raise TaskRefusal("invalid_input", "this provider has no sidecar for assets")
        for key, digest in refs.items():
            assert self.assets is not None
            if not self.assets.has(digest):
                from knarr.node.sidecar import download_to

                if not call.requester_sidecar:
                    raise TaskRefusal("invalid_input", f"asset {digest[:16]}… is not here")
                try:
                    await download_to(
                        call.peer_host, call.requester_sidecar, digest, self.identity,
                        self.assets,
                    )
                except (KnarrError, OSError) as exc:
                    raise TaskRefusal(
                        "invalid_input", f"asset {digest[:16]}… could not be fetched: {exc}"
                    ) from exc
            data[key] = str(self.assets.path(digest))
        ctx = TaskContext(self.assets, skill=call.skill, requester=call.requester.hex())
        return await self._invoke(call.skill, data, ctx)

    async def announce(self, sheet: Mapping[str, Any]) -> SkillRecord:
        """Sign a skill record from ``sheet`` and publish it (unless it is private)."""
        self._check_started()
        frozen = dict(sheet)
        record = self._sign(frozen)
        self._sheets[record.name] = frozen
        self._policies[record.name] = SkillPolicy(
            visibility=str(sheet.get("visibility", "public")),
            allowed_nodes=frozenset(str(n).lower() for n in sheet.get("allowed_nodes", ())),
            max_input_size=int(sheet.get("max_input_size", 65536)),
            input_schema=dict(sheet.get("input_schema", {})),
            price=float(sheet.get("price", 1.0)),
        )
        if record.visibility == "private":
            self.dht.withdraw(record.name)
        else:
            stored = await self.dht.publish(record, lambda: self._sign(frozen))
            log.info("announced %s (%d stores)", record.name, stored)
        self.events.emit("skill.announced", name=record.name, visibility=record.visibility,
                         price=record.price)
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
            result = await self.dht.lookup(
                skill_key(name), want_value=True, accept=lambda r: r.name == name
            )
        else:
            assert tag is not None
            result = await self.dht.lookup(
                tag_key(tag), want_value=True, accept=lambda r: tag in r.tags
            )
        if not result.records:
            kind, what = ("skill", name) if name is not None else ("tag", tag or "")
            self._unmet(kind, what)
            key = skill_key(what) if name is not None else tag_key(what)
            await self.dht.report_unmet(key, f"{kind}:{what}", result.closest)
        for record in result.records:
            if record.slot not in self._discovered:
                self.events.emit("skill.discovered", **record.to_dict())
            self._discovered[record.slot] = record
            self._discovered.move_to_end(record.slot)
            while len(self._discovered) > 2000:
                self._discovered.popitem(last=False)
        return rank(result.records, self.ledger.reputation(), key=lambda r: r.provider_id.hex())



    # ------------------------------------------------------------------ state and events

    def _book(self, receipt: Receipt, role: str) -> None:
        if self.ledger.record(receipt, role=role):
            self.events.emit(f"task.{role}", **receipt.to_dict())

    def _unmet(self, kind: str, name: str) -> None:
        self.ledger.count_demand(kind, name)
        self.events.emit("demand", kind=kind, name=name)

    def _contact_added(self, contact: Contact, result: AddResult) -> None:
        if result is AddResult.ADDED:
            self.events.emit(
                "peer.added", node_id=contact.node_id.hex(), host=contact.host,
                port=contact.port,
                bucket=bucket_index(self.identity.node_id, contact.node_id),
            )

    def _contact_lost(self, contact: Contact) -> None:
        self.events.emit("peer.removed", node_id=contact.node_id.hex(), host=contact.host,
                         port=contact.port)

    def local_skills(self) -> list[dict[str, Any]]:
        """Skills registered here, with their announced sheet if any."""
        out = []
        for name in sorted(self._skills):
            sheet = self._sheets.get(name, {})
            policy = self._policies.get(name)
            out.append({
                "name": name,
                "announced": name in self._sheets,
                "visibility": policy.visibility if policy else "local",
                "price": policy.price if policy else 0.0,
                "description": sheet.get("description", ""),
                "tags": list(sheet.get("tags", [])),
                "input_schema": dict(sheet.get("input_schema", {})),
                "output_schema": dict(sheet.get("output_schema", {})),
            })
        return out

    def discovered(self) -> list[SkillRecord]:
        """Provider records this node has found or stores for the network."""
        seen = dict(self._discovered)
        now = int(self.clock())
        for key in self.dht.records.keys():
            for record in self.dht.records.get(key, now_s=now):
                seen.setdefault(record.slot, record)
        return sorted(seen.values(), key=lambda r: (r.name, r.provider_id))

    def record_journal(self, kind: str, event: str, data: Mapping[str, Any]) -> None:
        """Keep an event the operator should see later (a watchman restart, a recipe
        firing) in the database, and stream it."""
        payload = {k: v for k, v in data.items() if k not in ("event", "id")}
        now = self.clock()
        self.store.execute(
            "INSERT INTO journal(kind, time, event, data) VALUES(?, ?, ?, ?)",
            (kind, now, event, json.dumps(payload, default=str)),
        )
        row_id = self.store.execute("SELECT last_insert_rowid()")[0][0]
        self.events.emit(kind, **{**payload, "event": event, "id": row_id, "recorded": now})

    def journal(self, kind: str, limit: int = 500) -> list[dict[str, Any]]:
        rows = self.store.execute(
            "SELECT id, time, event, data FROM journal WHERE kind = ? ORDER BY id DESC LIMIT ?",
            (kind, limit),
        )
        return [{"id": r[0], "time": r[1], "event": r[2], **json.loads(r[3])} for r in rows]

    # ------------------------------------------------------------------ mail

    def send_mail(self, node_id: str, body: Any, msg_type: str = "text") -> str:
        """Queue a mail to ``node_id``; it is delivered (and retried with backoff while
        the recipient is away) in the background. Returns the mail id."""
        try:
            peer = bytes.fromhex(node_id)
        except ValueError:
            peer = b""
        if len(peer) != 32:
            raise MailError(f"not a node id (64 hex characters): {node_id[:80]!r}")
        mail_id = self.dht.entropy(16).hex()
        self.mailbox.queue(mail_id, node_id.lower(), msg_type, body)
        self.events.emit("mail.queued", id=mail_id, to=node_id.lower(), type=msg_type)
        self._mail_wakeup.set()
        return mail_id

    async def _peer_key(self, peer: bytes) -> tuple[Contact, bytes]:
        """Where a node listens and its public key: a DHT lookup of its id, then a PING
        whose signed reply carries the key (checked against the id)."""
        found = await self.dht.lookup(peer)
        contact = next((c for c in found.closest if c.node_id == peer), None)
        if contact is None:
            raise NetworkError(f"node {peer.hex()[:16]}… is not on the network")
        key = self._peer_keys.get(peer)
        if key is None:
            env = await self.dht.call(contact.addr, Ping(), expect=peer)
            key = self._peer_keys[peer] = env.public_key
        return contact, key

    async def _deliver(self, mail_id: str, recipient: str, msg_type: str, body: str) -> None:
        contact, key = await self._peer_key(bytes.fromhex(recipient))
        payload = {"type": msg_type, "body": body, "sent": self.clock()}
        box = self._sealer.boxes.seal(key, payload, self.dht.entropy(24))
        env = await self.client.exchange(
            contact.host, contact.port, key, MailMessage(bytes.fromhex(mail_id), box),
            timeout=10,
        )
        if not isinstance(env.message, MailAck):
            raise NetworkError("the recipient answered the mail with something else")
        if not env.message.ok:
            raise MailRefused("the recipient refused the mail")

    async def _deliver_mail(self) -> None:
        """Deliver due mail until cancelled; sleeps until the next retry is due."""
        while True:
            for mail_id, recipient, msg_type, body, attempts in self.mailbox.due():
                try:
                    await self._deliver(mail_id, recipient, msg_type, body)
                except MailRefused as exc:
                    self.mailbox.give_up(mail_id, str(exc))
                    self.events.emit("mail.refused", id=mail_id, to=recipient)
                    continue
                except (KnarrError, OSError) as exc:
                    delay = self.mailbox.failed(mail_id, attempts, str(exc))
                    log.info("mail %s to %s…: %s; retrying in %.0f s", mail_id[:8],
                             recipient[:12], exc, delay)
                    continue
                self.mailbox.delivered(mail_id)
                self.events.emit("mail.delivered", id=mail_id, to=recipient)
            next_due = self.mailbox.next_due()
            wait = 30.0 if next_due is None else max(0.0, min(30.0, next_due - self.clock()))
            self._mail_wakeup.clear()
            try:
                await asyncio.wait_for(self._mail_wakeup.wait(), wait)
            except TimeoutError:
                pass

    def _receive_mail(self, env: Envelope, message: MailMessage) -> MailAck:
        try:
            payload = self._sealer.boxes.open(env.public_key, message.box,
                                              max_size=MAX_BODY + 1024)
            msg_type, body, sent = open_payload(payload)
        except (RemoteProtocolError, MailError, ValueError) as exc:
            log.info("refused mail from %s…: %s", env.sender_id.hex()[:12], exc)
            return MailAck(env.nonce, False)
        sender = env.sender_id.hex()
        if self.mailbox.receive(message.id.hex(), sender, msg_type, body, sent):
            self.events.emit("mail.received", id=message.id.hex(), sender=sender,
                             type=msg_type, body=body)
        return MailAck(env.nonce, True)

    # ------------------------------------------------------------------ settlement

    async def _on_request(self, env: Envelope) -> Reply | None:
        if isinstance(env.message, MailMessage):
            return self._receive_mail(env, env.message)
        if isinstance(env.message, SettlePropose):
            try:
                reply = self.settlements.answer(env.public_key, env.nonce, env.message)
            except (InvalidReceipt, ValueError) as exc:
                reply = SettleReply(env.nonce, False, why=str(exc)[:200])
            statement = env.message.statement
            self.events.emit(
                "settlement.inbound", peer=env.sender_id.hex(), id=statement.id.hex(),
                amount=statement.amount / 1e6, ok=reply.ok, why=reply.why,
                delegated=bool(env.message.cert),
                direction="in" if statement.creditor == self.identity.node_id else "out",
            )
            return reply
        if isinstance(env.message, SettleReconcile):
            voided = self.settlements.reconcile(env.sender_id, env.message.ids)
            self._report_void(env.sender_id.hex(), voided)
            remaining = self.ledger.unsettled(env.sender_id.hex())
            return SettleReconciled(env.nonce, voided, remaining[:MAX_RECONCILE_IDS])
        return None

    def _report_void(self, peer: str, voided: list[str]) -> None:
        if voided:
            log.warning("voided %d charge(s) to %s…: the requester never received them",
                        len(voided), peer[:16])
            self.events.emit("settlement.void", peer=peer, ids=voided)

    async def settle(
        self, peer: str, *, timeout: float = 30.0, delegation: Delegation | None = None
    ) -> Statement | None:
        """Agree with ``peer`` (a node id) on the net of our unsettled receipts and book
        it on both sides. ``None`` if nothing is owed; :class:`SettlementRefused` if the
        peer's books differ. With ``delegation``, the delegate key signs the proposal."""
        self._check_started()
        peer_id = bytes.fromhex(peer)
        proposal = self.settlements.propose(peer_id, delegation)
        if proposal is None:
            return None
        key = self.ledger.peer_key(peer)
        if key is None:
            raise SettlementRefused(f"no receipts name the key of {peer[:16]}…")
        found = await self.dht.lookup(peer_id)
        contact = next((c for c in found.closest if c.node_id == peer_id), None)
        if contact is None:
            # A provider that restarted on another port is found by its newest record
            # before the routing tables have caught up.
            records = [r for r in self._discovered.values() if r.provider_id == peer_id]
            if records:
                newest = max(records, key=lambda r: r.seq)
                contact = Contact(peer_id, newest.host, newest.port)
        if contact is None:
            raise SettlementRefused(f"peer {peer[:16]}… cannot be found on the network")
        reply = await self._propose(contact, key, proposal, timeout)
        if not reply.ok and reply.why.startswith("books differ"):
            # Reconcile once: each side voids the charges whose receipts the other never
            # got, then the proposal is made again over what both hold.
            self.settlements.conclude(proposal, reply, key, raise_refusal=False)
            ours = self.ledger.unsettled(peer)[:MAX_RECONCILE_IDS]
            env = await self.client.exchange(
                contact.host, contact.port, key, SettleReconcile(ours), timeout=timeout
            )
            if not isinstance(env.message, SettleReconciled):
                raise RemoteProtocolError("the peer answered a reconciliation with something else")
            self._report_void(peer, self.settlements.reconcile(peer_id, env.message.ids))
            retry = self.settlements.propose(peer_id, delegation)
            if retry is None:
                return None
            proposal = retry
            reply = await self._propose(contact, key, proposal, timeout)
        self.settlements.conclude(proposal, reply, key)
        statement = proposal.statement
        signed = statement.amount if statement.creditor == self.identity.node_id else (
            -statement.amount
        )
        self.events.emit("settlement", peer=peer, amount=signed / 1e6, id=statement.id.hex(),
                         note="amount > 0: the peer paid us; < 0: we paid the peer")
        return proposal.statement

    async def _propose(self, contact: Contact, key: bytes, proposal: SettlePropose,
                       timeout: float) -> SettleReply:
        env = await self.client.exchange(
            contact.host, contact.port, key, proposal, timeout=timeout
        )
        if not isinstance(env.message, SettleReply):
            raise RemoteProtocolError("the peer answered a settlement with something else")
        return env.message

    async def request(
        self, skill: str, data: Mapping[str, Any], *, timeout: float = 30.0
    ) -> dict[str, Any]:
        """Run ``skill`` on the network: find its providers, try the best one, fall back
        to the next on failure. Returns the output; raises the last provider's error."""
        _, output = await self.request_detailed(skill, data, timeout=timeout)
        return output

    async def request_detailed(
        self,
        skill: str,
        data: Mapping[str, Any],
        *,
        timeout: float = 30.0,
        prepare: Callable[[SkillRecord, dict[str, Any]], Awaitable[dict[str, Any]]] | None = None,
    ) -> tuple[SkillRecord, dict[str, Any]]:
        """:meth:`request`, also saying which provider's record answered. ``prepare``
        adapts the input to each provider tried (e.g. uploads files to its sidecar)."""
        self._check_started()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        providers, cached = await self._providers_of(skill)
        try:
            return await self._try_providers(skill, data, providers, deadline, prepare)
        except (RequestTimeout, NetworkError, RemoteProtocolError):
            if not cached or deadline <= loop.time():
                raise
        # The providers we remembered failed to answer: they may have moved or gone.
        self._providers.pop(skill, None)
        providers, _ = await self._providers_of(skill)
        return await self._try_providers(skill, data, providers, deadline, prepare)

    async def _providers_of(self, skill: str) -> tuple[list[SkillRecord], bool]:
        """The providers of ``skill``, best first, and whether they came from the cache
        of recent lookups rather than a new one."""
        now = asyncio.get_running_loop().time()
        entry = self._providers.get(skill)
        if entry is not None and now - entry[0] < PROVIDERS_FRESH_S:
            wall = self.dht.now_ms // 1000
            live = [r for r in entry[1] if r.expires > wall]
            if live:
                ranked = rank(live, self.ledger.reputation(), key=lambda r: r.provider_id.hex())
                return ranked, True
        providers = await self.find_skills(skill)
        if not providers:
            self._providers.pop(skill, None)
            raise SkillNotFound(f"no provider serves {skill!r} on the network")
        self._providers[skill] = (now, providers)
        self._providers.move_to_end(skill)
        while len(self._providers) > 1000:
            self._providers.popitem(last=False)
        return providers, False

    async def _try_providers(
        self, skill: str, data: Mapping[str, Any], providers: list[SkillRecord],
        deadline: float,
        prepare: Callable[[SkillRecord, dict[str, Any]], Awaitable[dict[str, Any]]] | None,
    ) -> tuple[SkillRecord, dict[str, Any]]:
        """Call the providers in turn until one answers; raises the last one's error."""
        loop = asyncio.get_running_loop()
        last: KnarrError | None = None
        for record in providers:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            provider = record.provider_id.hex()
            started = loop.time()
            try:
                sent = await prepare(record, dict(data)) if prepare else data
                reply = await self.client.call(
                    record.host, record.port, record.public_key, skill, sent,
                    timeout=remaining, sidecar=self.sidecar_port,
                    max_price=to_micro(record.price),
                )
            except TaskError as exc:
                if isinstance(exc.receipt, Receipt):
                    self._book(exc.receipt, "consumed")
                if exc.code not in CALLER_FAULTS:
                    kind = "timeout" if isinstance(exc, TaskTimedOut) else "failed"
                    self.ledger.observe(provider, kind)
                if exc.code in ("invalid_input", "input_too_large"):
                    raise  # the input is wrong; another provider would refuse it too
                last = exc
            except RequestTimeout as exc:
                self.ledger.observe(provider, "timeout")
                last = exc
            except (NetworkError, RemoteProtocolError) as exc:
                self.ledger.observe(provider, "failed")
                last = exc
            except KnarrError as exc:  # e.g. a prepare() step that cannot use this provider
                last = exc
            else:
                if reply.receipt is not None:
                    self._book(reply.receipt, "consumed")
                self.ledger.observe(provider, "completed", (loop.time() - started) * 1000)
                return record, reply.output
            log.info("provider %s failed for %s: %s", record.provider_id.hex()[:16], skill, last)
        raise last or NetworkError(f"{skill!r}: no time left to try a provider")

def _as_private(record: SkillRecord) -> SkillRecord:
    """The local view of a private skill: never published, so never needs a signature."""
    from dataclasses import replace

    return replace(record, visibility="private")
