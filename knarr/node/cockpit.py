"""The cockpit: a local, versioned JSON API over a node's state, with a live event stream.

It listens on a Unix socket in the node's data folder (mode 0600, and connections from
other users are refused by their peer credentials) and, when asked, on
``127.0.0.1:PORT`` with a bearer token kept in the data folder. The console and watchman
use nothing else.

    GET  /health                  liveness (no auth needed beyond reaching the socket)
    GET  /v1/status               identity, addresses, uptime, counters
    GET  /v1/peers                routing table: bucket, last seen, RTT, failures
    GET  /v1/skills               local skills and discovered providers
    GET  /v1/demand | reputation | ledger | recipes | watchman
    GET  /v1/events?since=N       WebSocket: events after N, then live
    POST /v1/call                 {"skill", "input", "timeout"?}: run a skill on the network
    POST /v1/settle               {"peer"}: settle with a peer
    POST /v1/watchman             {"event", ...}: record a supervisor event
    GET  /v1/mail                 inbox and outbox
    POST /v1/mail                 {"to", "body", "type"?}: send mail as this node
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import secrets
import socket
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from knarr import __version__
from knarr.errors import ConfigError, KnarrError
from knarr.node.economy import to_credits

if TYPE_CHECKING:
    from knarr.node.node import Node

log = logging.getLogger("knarr.cockpit")
API_VERSION = 1
SOCKET_NAME = "cockpit.sock"
TOKEN_NAME = "cockpit.token"


def load_or_create_token(data_dir: Path) -> str:
    """The bearer token for TCP access, kept in the data folder readable only by us."""
    path = data_dir / TOKEN_NAME
    if path.is_file():
        token = path.read_text().strip()
        if token:
            return token
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def refuse_if_taken(data_dir: Path) -> None:
    """Raise :class:`ConfigError` if a live node's cockpit socket is in ``data_dir``.

    A socket nobody answers on (its node died) or a plain file is left for
    :meth:`Cockpit.start` to replace."""
    path = data_dir / SOCKET_NAME
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
            answer = "answers"
        except (TimeoutError, PermissionError) as exc:  # busy, or another user's
            answer = f"exists ({exc.strerror or exc})"
        except OSError:  # nobody listens; or a bad path, which binding it will report
            return
    raise ConfigError(
        f"{data_dir}: another knarr node is running in this folder (its cockpit socket "
        f"{path} {answer}); stop that node first, or start this one in another folder"
    )


def _peer_uid(request: web.Request) -> int | None:
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", creds)
    return int(uid)


class Cockpit:
    """Serves one node's state."""

    def __init__(self, node: Node, data_dir: Path, *, port: int | None = None) -> None:
        self.node = node
        self.data_dir = data_dir
        self.port = port
        self.socket_path = data_dir / SOCKET_NAME
        self.token = load_or_create_token(data_dir) if port is not None else None
        self._runner: web.AppRunner | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self.started = time.time()
        self.boot_id = secrets.token_hex(8)
        self._wall_offset: float | None = None
        """Wall-clock time minus event-loop time, for peers' "last seen"."""

    # ------------------------------------------------------------------ server

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=1 << 20)
        r = app.router
        r.add_get("/health", self.health)
        r.add_get("/v1/status", self.status)
        r.add_get("/v1/peers", self.peers)
        r.add_get("/v1/skills", self.skills)
        r.add_get("/v1/demand", self.demand)
        r.add_get("/v1/reputation", self.reputation)
        r.add_get("/v1/ledger", self.ledger)
        r.add_get("/v1/recipes", self.recipes)
        r.add_get("/v1/watchman", self.watchman)
        r.add_get("/v1/events", self.events)
        r.add_post("/v1/call", self.call)
        r.add_post("/v1/settle", self.settle)
        r.add_post("/v1/watchman", self.record_watchman)
        r.add_get("/v1/mail", self.mail)
        r.add_post("/v1/mail", self.send_mail)
        return app

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        refuse_if_taken(self.data_dir)
        self._runner = web.AppRunner(
            self.app(), access_log=None, handle_signals=False, shutdown_timeout=2.0
        )
        await self._runner.setup()
        if self.socket_path.exists() or self.socket_path.is_symlink():
            self.socket_path.unlink()  # a stale socket from a node that died
        old = os.umask(0o177)
        try:
            await web.UnixSite(self._runner, str(self.socket_path)).start()
        finally:
            os.umask(old)
        os.chmod(self.socket_path, 0o600)
        if self.port is not None:
            site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
            await site.start()
            server = site._server
            assert server is not None
            self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]

    async def stop(self) -> None:
        for ws in list(self._sockets):
            await ws.close(code=1001, message=b"node stopping")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.socket_path.unlink(missing_ok=True)

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        uid = _peer_uid(request)
        if uid is not None:
            if uid != os.getuid():
                raise web.HTTPForbidden(text="the cockpit belongs to another user")
        else:
            expected = f"Bearer {self.token}" if self.token else None
            given = request.headers.get("Authorization", "")
            if expected is None or not hmac.compare_digest(given.encode(), expected.encode()):
                raise web.HTTPUnauthorized(
                    text='{"error": "a bearer token is required"}', content_type="application/json"
                )
        response: web.StreamResponse = await handler(request)
        return response

    # ------------------------------------------------------------------ snapshots

    async def health(self, request: web.Request) -> web.Response:
        node = self.node
        return web.json_response({
            "status": "ok" if node.running else "starting",
            "node_id": node.node_id,
            "started": self.started,
            "boot_id": self.boot_id,
            "uptime": time.time() - self.started,
            "version": __version__,
            "api": API_VERSION,
            "inflight": node.tasks.inflight,
            "last_event": node.events.last_seq,
        })

    async def status(self, request: web.Request) -> web.Response:
        node = self.node
        dht = node.dht
        return web.json_response({
            "node_id": node.node_id,
            "public_key": node.identity.public_key.hex(),
            "version": __version__,
            "address": list(node.address),
            "advertise_host": node.contact.host,
            "sidecar_port": node.sidecar_port,
            "started": self.started,
            "uptime": time.time() - self.started,
            "peers": len(dht.table),
            "records_stored": len(dht.records),
            "skills": node.skills,
            "tasks": {"inflight": node.tasks.inflight, "completed": node.tasks.completed,
                      "failed": node.tasks.failed, "refused": node.tasks.refused},
            "dht": vars(dht.stats),
            "last_event": node.events.last_seq,
        })

    async def peers(self, request: web.Request) -> web.Response:
        dht = self.node.dht
        if self._wall_offset is None:
            # Fixed once: recomputed per request, its jitter would change every peer's
            # "last seen" in every snapshot, and a console would redraw them all.
            self._wall_offset = time.time() - _loop_time()
        offset = self._wall_offset
        out = []
        for index, entries in dht.table.buckets().items():
            for e in entries:
                c = e.contact
                out.append({
                    "node_id": c.node_id.hex(), "host": c.host, "port": c.port,
                    "bucket": index, "last_seen": round(offset + e.last_seen, 3),
                    "rtt_ms": round(dht.rtt.srtt(c.addr) * 1000, 3),
                    "failures": e.failures,
                })
        return web.json_response(out)

    async def skills(self, request: web.Request) -> web.Response:
        node = self.node
        return web.json_response({
            "local": node.local_skills(),
            "discovered": [r.to_dict() for r in node.discovered()],
        })

    async def demand(self, request: web.Request) -> web.Response:
        return web.json_response(self.node.ledger.demand())

    async def reputation(self, request: web.Request) -> web.Response:
        stats = sorted(self.node.ledger.reputation().values(), key=lambda s: -s.score)
        return web.json_response([
            {"provider": s.provider, "score": round(s.score, 4), "calls": s.calls,
             "successes": s.successes, "failures": s.failures, "timeouts": s.timeouts,
             "mean_latency_ms": round(s.mean_latency_ms, 2), "last_seen": s.last_seen}
            for s in stats
        ])

    async def ledger(self, request: web.Request) -> web.Response:
        ledger = self.node.ledger
        limit = min(int(request.query.get("limit", "500")), 10_000)
        totals = ledger.totals()
        return web.json_response({
            "totals": {k: (to_credits(v) if k != "unbalanced_transactions" else v)
                       for k, v in totals.items()},
            "balances": [{"peer": b.peer, "balance": to_credits(b.amount), "tasks": b.tasks}
                         for b in ledger.balances()],
            "receipts": ledger.receipts(limit=limit),
            "settlements": ledger.settlements(),
        })

    async def recipes(self, request: web.Request) -> web.Response:
        return web.json_response(self.node.journal("recipe"))

    async def watchman(self, request: web.Request) -> web.Response:
        return web.json_response(self.node.journal("watchman"))

    # ------------------------------------------------------------------ stream

    async def events(self, request: web.Request) -> web.WebSocketResponse:
        try:
            since = int(request.query.get("since", str(self.node.events.last_seq)))
        except ValueError:
            raise web.HTTPBadRequest(text="since must be an integer") from None
        ws = web.WebSocketResponse(heartbeat=20)
        await ws.prepare(request)
        self._sockets.add(ws)

        async def forward() -> None:
            async for event in self.node.events.follow(since):
                if ws.closed:
                    break
                message = {"type": "reset"} if event is None else event.to_dict()
                await ws.send_str(json.dumps(message))

        sender = asyncio.ensure_future(forward())
        reader = _drain_incoming(ws)
        try:
            # Whichever ends first (the client left, or sending failed) ends both, so a
            # departed console never holds the node's shutdown.
            await asyncio.wait({sender, reader}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sender, reader):
                task.cancel()
            await asyncio.gather(sender, reader, return_exceptions=True)
            self._sockets.discard(ws)
        return ws

    # ------------------------------------------------------------------ actions

    async def _json(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise web.HTTPBadRequest(text='{"error": "body must be JSON"}',
                                     content_type="application/json") from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text='{"error": "body must be a JSON object"}',
                                     content_type="application/json")
        return body

    async def call(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        skill, data = body.get("skill"), body.get("input", {})
        if not isinstance(skill, str) or not isinstance(data, dict):
            raise web.HTTPBadRequest(text='{"error": "need skill (text) and input (object)"}',
                                     content_type="application/json")
        timeout = float(body.get("timeout", 30))
        try:
            record, output = await self.node.request_detailed(skill, data, timeout=timeout)
        except KnarrError as exc:
            return web.json_response({"status": "failed", "error": str(exc),
                                      "code": getattr(exc, "code", type(exc).__name__)})
        return web.json_response({"status": "completed", "provider": record.provider_id.hex(),
                                  "output": output})

    async def settle(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        peer = body.get("peer")
        if not isinstance(peer, str) or len(peer) != 64:
            raise web.HTTPBadRequest(text='{"error": "need peer (a 64-hex node id)"}',
                                     content_type="application/json")
        try:
            statement = await self.node.settle(peer)
        except KnarrError as exc:
            return web.json_response({"status": "refused", "error": str(exc)})
        if statement is None:
            return web.json_response({"status": "nothing-owed"})
        return web.json_response({"status": "settled", "id": statement.id.hex(),
                                  "amount": to_credits(statement.amount)})

    async def mail(self, request: web.Request) -> web.Response:
        box = self.node.mailbox
        return web.json_response({"inbox": [m.to_dict() for m in box.inbox()],
                                  "outbox": box.outbox()})

    async def send_mail(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        to, text, kind = body.get("to"), body.get("body"), body.get("type", "text")
        if not isinstance(to, str):
            raise web.HTTPBadRequest(text='{"error": "need to (a node id)"}',
                                     content_type="application/json")
        try:
            mail_id = self.node.send_mail(to, text, kind)
        except KnarrError as exc:
            raise web.HTTPBadRequest(text=json.dumps({"error": str(exc)}),
                                     content_type="application/json") from None
        return web.json_response({"status": "queued", "id": mail_id})

    async def record_watchman(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        event = body.get("event")
        if not isinstance(event, str) or not event:
            raise web.HTTPBadRequest(text='{"error": "need event"}',
                                     content_type="application/json")
        self.node.record_journal("watchman", event, body)
        return web.json_response({"status": "recorded"})


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


def _drain_incoming(ws: web.WebSocketResponse) -> Any:
    """Read (and ignore) what the client sends, so pings and close frames are handled."""

    async def read() -> None:
        async for message in ws:
            if message.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                break

    return asyncio.ensure_future(read())
