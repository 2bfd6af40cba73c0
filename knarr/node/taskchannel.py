"""The task channel over TCP: the provider's server and the requester's connection pool.

Frames are a 4-byte big-endian length and one signed envelope. One connection carries
any number of concurrent requests; results are matched by the request's nonce. The
provider checks, in order: signature and replay, visibility and whitelist, input size
(before decrypting), input schema; then runs the handler under the time limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import math
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from knarr.errors import (
    LocalProtocolError,
    ProviderUnreachable,
    RemoteProtocolError,
    RequestTimeout,
    TaskError,
)
from knarr.node import cbor, wire
from knarr.node.economy import (
    InvalidReceipt,
    Receipt,
    ReceiptDraft,
    check_receipt,
    parse_receipt,
    sign_receipts,
    to_micro,
)
from knarr.node.identity import Identity
from knarr.node.records import connectable, names_local_host
from knarr.node.tasks import (
    ENVELOPE_SLACK,
    FRAME_HEADER,
    Boxes,
    TaskRefusal,
    TaskRequest,
    TaskResult,
    check_frame_length,
    error_payload,
    frame,
    is_sealed,
    ok_payload,
    open_frame,
    schema_problem,
    seal_frame,
    split_result,
)

log = logging.getLogger("knarr.tasks")

DEFAULT_MAX_RESULT = 64 * 2**20


@dataclass(frozen=True)
class SkillPolicy:
    """Who may call a skill and with what (from its ``knarr.toml`` section or sheet)."""

    visibility: str = "public"
    allowed_nodes: frozenset[str] = frozenset()
    max_input_size: int = 65536
    input_schema: Mapping[str, str] = field(default_factory=dict)
    price: float = 1.0


@dataclass(frozen=True)
class TaskCall:
    """One remote task as the provider's runner sees it."""

    skill: str
    data: dict[str, Any]
    requester: bytes
    """The requester's public key."""
    peer_host: str
    """The address the request came from."""
    requester_sidecar: int = 0
    """The requester's sidecar port, for fetching its assets (0: none)."""


Runner = Callable[[TaskCall], Awaitable[Any]]


RequestHandler = Callable[[wire.Envelope], Awaitable[wire.Reply | None]]


class Accounting(Protocol):
    """The provider's books, as the task server uses them."""

    def reserve(self, requester: bytes, price: int) -> None:
        """Hold ``price`` against the requester's credit, or raise a ``credit_limit``
        :class:`TaskRefusal`."""

    def release(self, requester: bytes, price: int) -> None:
        """Drop a hold made by :meth:`reserve`."""

    def book(self, receipts: Sequence[Receipt]) -> None:
        """Record receipts we signed, with their ledger rows, in one transaction."""


PolicyLookup = Callable[[str], SkillPolicy | None]


@dataclass
class Sealer:
    """Signs and opens this node's task envelopes and seals payloads."""

    identity: Identity
    boxes: Boxes
    replay: wire.ReplayGuard
    clock: Callable[[], float] = time.time
    entropy: Callable[[int], bytes] = os.urandom

    def seal(self, message: wire.Message, max_size: int) -> tuple[bytes, bytes]:
        nonce = self.entropy(wire.NONCE_SIZE)
        envelope = wire.seal(
            self.identity, message, now_ms=int(self.clock() * 1000), nonce=nonce,
            max_size=max_size,
        )
        return nonce, frame(envelope)

    def open(self, data: bytes, max_size: int) -> wire.Envelope:
        return wire.open_envelope(
            data, now_ms=int(self.clock() * 1000), replay=self.replay,
            window_ms=self.replay.window_ms, max_size=max_size,
        )

    def seal_task(self, peer_public_key: bytes, message: wire.Message,
                  max_size: int) -> tuple[bytes, bytes]:
        """A sealed frame for a task request or result; its nonce and the framed bytes."""
        randomness = self.entropy(wire.NONCE_SIZE + 24)
        nonce = randomness[: wire.NONCE_SIZE]
        body = seal_frame(
            self.identity, self.boxes, peer_public_key, message,
            now_ms=int(self.clock() * 1000), nonce=nonce,
            box_nonce=randomness[wire.NONCE_SIZE :], max_size=max_size,
        )
        return nonce, frame(body)

    def open_any(self, data: bytes, max_size: int) -> wire.Envelope:
        """A sealed task frame or a signed envelope, whichever ``data`` is."""
        if is_sealed(data):
            return open_frame(
                self.boxes, data, now_ms=int(self.clock() * 1000), replay=self.replay,
                window_ms=self.replay.window_ms, max_size=max_size,
            )
        return self.open(data, max_size)


async def _read_frame(reader: asyncio.StreamReader, limit: int) -> bytes:
    header = await reader.readexactly(FRAME_HEADER.size)
    (length,) = FRAME_HEADER.unpack(header)
    check_frame_length(length, limit)
    return await reader.readexactly(length)


@dataclass
class _Outgoing:
    writer: asyncio.StreamWriter
    frame: bytes | None
    """The sealed frame, or ``None`` for a result sealed once its receipt is signed."""
    requester_key: bytes = b""
    task: bytes = b""
    out: bytes = b""
    draft: ReceiptDraft | None = None
    hold: tuple[bytes, int] | None = None
    """The requester and the credit held for this task, released once it is booked."""
    receipt: Receipt | None = None


class Outbox:
    """Results waiting to leave, with a group commit: the receipts of every task that
    finished in one turn of the event loop are signed together (one signature over their
    Merkle root) and booked in one transaction, and only then do their results go out
    (one write per connection). A charge is thus always on disk before its result
    leaves, at the cost of one signature and one transaction per turn, not per task."""

    def __init__(self, crypto: Sealer, accounting: Accounting | None) -> None:
        self._crypto = crypto
        self._accounting = accounting
        self._queue: list[_Outgoing] = []
        self._scheduled = False

    def put(self, item: _Outgoing) -> None:
        self._queue.append(item)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Sign this turn's receipts, seal their results, book the receipts, then write.
        Whatever fails drops only the results that carry a receipt, and only those not
        booked: a receipt never leaves unbooked, and one that was booked always leaves."""
        queue, self._queue, self._scheduled = self._queue, [], False
        books = self._accounting
        holds = [item.hold for item in queue if item.hold is not None]
        try:
            queue = self._sign_and_seal(queue)
            receipts = [item.receipt for item in queue if item.receipt is not None]
            if books is not None and receipts:
                books.book(receipts)
        except Exception:
            # Nothing was charged (the transaction rolled back, or it never began): send
            # no result that carries a receipt, so the two sides' books stay the same.
            log.exception("signing or booking this turn's receipts failed; their results "
                          "are dropped")
            queue = [item for item in queue if item.draft is None]
        finally:
            if books is not None:
                for requester, price in holds:
                    books.release(requester, price)
        by_writer: dict[asyncio.StreamWriter, list[bytes]] = {}
        for item in queue:
            if item.frame is not None:
                by_writer.setdefault(item.writer, []).append(item.frame)
        for writer, frames in by_writer.items():
            if not writer.is_closing():
                writer.write(b"".join(frames))

    def _sign_and_seal(self, queue: list[_Outgoing]) -> list[_Outgoing]:
        """Sign the drafted receipts in one batch and seal each result with its receipt;
        a result that cannot be sealed is dropped here, before its receipt is booked."""
        drafts = [item.draft for item in queue if item.draft is not None]
        receipts = iter(sign_receipts(self._crypto.identity, drafts))
        kept: list[_Outgoing] = []
        for item in queue:  # in the order the tasks finished
            if item.draft is not None:
                item.receipt = receipt = next(receipts)
                try:
                    _, item.frame = self._crypto.seal_task(
                        item.requester_key, TaskResult(item.task, item.out, receipt.raw),
                        DEFAULT_MAX_RESULT + ENVELOPE_SLACK,
                    )
                except Exception:
                    log.exception("sealing the result of task %s failed; it is dropped",
                                  item.task.hex())
                    continue
            kept.append(item)
        return kept


class TaskServer:
    """Serves announced skills to remote requesters."""

    def __init__(
        self,
        crypto: Sealer,
        *,
        policy: PolicyLookup,
        run: Runner,
        max_task_timeout: float = 3600.0,
        max_frame: Callable[[], int],
        accounting: Accounting | None = None,
    ) -> None:
        self._crypto = crypto
        self._accounting = accounting
        self._outbox = Outbox(crypto, accounting)
        self.on_request: RequestHandler | None = None
        self.answers: tuple[type[wire.Request], ...] = ()
        """Request types besides tasks that ``on_request`` answers; others close the
        connection."""
        self._policy = policy
        self._run = run
        self.max_task_timeout = max_task_timeout
        self._max_frame = max_frame
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()
        self._inflight: set[asyncio.Task[None]] = set()
        self._draining = False
        self.completed = 0
        self.refused = 0
        self.failed = 0

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._serve, host, port, reuse_address=True)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self, grace: float = 10.0) -> None:
        """Refuse new tasks, give running ones ``grace`` seconds, then cancel them."""
        self._draining = True
        if self._server is not None:
            self._server.close()
        if self._inflight:
            _, pending = await asyncio.wait(list(self._inflight), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        self._outbox.flush()  # results of the last tasks leave before their connections close
        for writer in list(self._connections):
            writer.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        peer = writer.get_extra_info("peername")
        try:
            while True:
                limit = self._max_frame()
                data = await _read_frame(reader, limit)
                env = self._crypto.open_any(data, limit)
                if isinstance(env.message, TaskRequest):
                    work = self._handle(env, env.message, writer)
                elif self.on_request is not None and isinstance(env.message, self.answers):
                    work = self._answer(env, self.on_request, writer)
                else:
                    raise RemoteProtocolError(f"unexpected {type(env.message).__name__}")
                task = asyncio.create_task(work)
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except RemoteProtocolError as exc:
            log.info("closing task connection from %s: %s", peer, exc)
        finally:
            self._connections.discard(writer)
            writer.close()

    async def _answer(
        self, env: wire.Envelope, handler: RequestHandler, writer: asyncio.StreamWriter
    ) -> None:
        """A non-task request (e.g. a settlement): signed reply, not sealed."""
        try:
            reply = await handler(env)
        except Exception:
            log.exception("answering %s failed", type(env.message).__name__)
            return
        if reply is not None and not writer.is_closing():
            _, data = self._crypto.seal(reply, DEFAULT_MAX_RESULT)
            writer.write(data)

    async def _handle(
        self, env: wire.Envelope, request: TaskRequest, writer: asyncio.StreamWriter
    ) -> None:
        try:
            policy, data = self._admit(env, request)
        except TaskRefusal as refusal:
            self.refused += 1
            self._refuse(env, refusal, writer)
            return
        own = env.public_key == self._crypto.identity.public_key
        price = 0 if own else to_micro(policy.price)  # a node never charges itself
        books = self._accounting
        try:
            if books is not None:
                books.reserve(env.sender_id, price)
        except TaskRefusal as refusal:
            self.refused += 1
            self._refuse(env, refusal, writer)
            return
        hold = (env.sender_id, price) if books is not None else None
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            output = await self._execute(env, request, data, writer)
            payload = ok_payload(output)
            outcome = "completed"
            self.completed += 1
        except TaskRefusal as refusal:
            payload = error_payload(refusal.code, str(refusal))
            outcome = "timeout" if refusal.code == "timeout" else "failed"
            self.failed += 1
        except BaseException:
            if hold is not None and books is not None:
                books.release(*hold)
            raise
        if writer.is_closing():  # nobody left to deliver to: no receipt, no charge
            if hold is not None and books is not None:
                books.release(*hold)
            return
        try:
            encoded_output = cbor.encode(payload)
            if len(encoded_output) + ENVELOPE_SLACK > DEFAULT_MAX_RESULT:
                raise LocalProtocolError(f"output is {len(encoded_output)} bytes")
        except LocalProtocolError as exc:
            payload = error_payload("bad_output", f"output cannot be sent: {exc}")
            outcome = "failed"
            encoded_output = cbor.encode(payload)
        draft = ReceiptDraft(
            task=env.nonce, skill=request.skill, price=price, requester_key=env.public_key,
            input_hash=hashlib.sha256(request.input).digest(),
            output_hash=hashlib.sha256(encoded_output).digest(),
            time_ms=int(self._crypto.clock() * 1000), outcome=outcome,
            duration_ms=int((loop.time() - started) * 1000),
        )
        # Signed with the others of this turn and booked (the outbox's group commit)
        # before the result leaves.
        self._outbox.put(_Outgoing(writer, None, env.public_key, env.nonce, encoded_output,
                                   draft, hold))

    @staticmethod
    def _peer_host(writer: asyncio.StreamWriter) -> str:
        peer = writer.get_extra_info("peername")
        return str(peer[0]) if peer else ""

    def _admit(
        self, env: wire.Envelope, request: TaskRequest
    ) -> tuple[SkillPolicy, dict[str, Any]]:
        """Every check before the handler runs, in the documented order."""
        if self._draining:
            raise TaskRefusal("shutting_down", "the provider is shutting down; try another")
        policy = self._policy(request.skill)
        if policy is None or policy.visibility == "private":
            raise TaskRefusal("not_found", f"skill {request.skill!r} is not served here")
        requester = env.sender_id.hex()
        if policy.visibility == "whitelist" and requester not in policy.allowed_nodes:
            raise TaskRefusal("forbidden", f"node {requester[:16]}… may not call {request.skill!r}")
        if len(request.input) > policy.max_input_size:
            raise TaskRefusal(
                "input_too_large",
                f"input is over the limit of {policy.max_input_size} bytes for {request.skill!r}",
            )
        try:
            data = cbor.decode(request.input, max_depth=32, max_items=1_000_000)
        except RemoteProtocolError as exc:
            raise TaskRefusal("invalid_input", f"input cannot be read: {exc}") from exc
        problem = schema_problem(policy.input_schema, data)
        if problem:
            raise TaskRefusal("invalid_input", problem)
        assert isinstance(data, dict)
        return policy, data

    async def _execute(
        self, env: wire.Envelope, request: TaskRequest, data: dict[str, Any],
        writer: asyncio.StreamWriter,
    ) -> Mapping[str, Any]:
        limits = [t for t in (self.max_task_timeout, request.timeout_ms / 1000) if t > 0]
        timeout = min(limits) if limits else None
        limit = asyncio.timeout(timeout)
        try:
            async with limit:
                call = TaskCall(
                    request.skill, data, env.public_key, self._peer_host(writer),
                    request.sidecar,
                )
                output = await self._run(call)
        except TimeoutError as exc:
            if not limit.expired():  # the handler's own TimeoutError
                raise TaskRefusal("handler_error", f"{type(exc).__name__}: {exc}") from exc
            message = f"{request.skill!r} ran past its {timeout:g} s limit"
            raise TaskRefusal("timeout", message) from exc
        except asyncio.CancelledError:
            if self._draining:
                message = "the provider stopped before finishing"
                raise TaskRefusal("shutting_down", message) from None
            raise
        except TaskRefusal:
            raise
        except Exception as exc:
            log.warning("skill %s failed: %s: %s", request.skill, type(exc).__name__, exc)
            log.debug("handler traceback", exc_info=True)
            raise TaskRefusal("handler_error", f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(output, Mapping):
            raise TaskRefusal("bad_output", f"handler returned {type(output).__name__}, not a dict")
        return output

    def _refuse(self, env: wire.Envelope, refusal: TaskRefusal, writer: Any) -> None:
        out = cbor.encode(error_payload(refusal.code, str(refusal)))
        _, data = self._crypto.seal_task(
            env.public_key, TaskResult(env.nonce, out), DEFAULT_MAX_RESULT + ENVELOPE_SLACK
        )
        self._outbox.put(_Outgoing(writer, data))


@dataclass(frozen=True)
class TaskReply:
    """A completed task as the requester sees it."""

    output: dict[str, Any]
    receipt: Receipt | None


_BATCH = 8
"""Frames per write on a task connection (see :meth:`_Connection.send`). With 64 calls
in flight over one connection: 4 → 7,140 calls/s, 8 → 7,587, 16 → 7,316, and whole
turns → 3,979 (`benchmarks/tasks.py`, 2 cores)."""


def _time_out(future: asyncio.Future[wire.Envelope]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    public_key: bytes
    pending: dict[bytes, asyncio.Future[wire.Envelope]] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    outgoing: list[bytes] = field(default_factory=list)
    flush_due: bool = False

    @property
    def alive(self) -> bool:
        return not self.writer.is_closing() and self.task is not None and not self.task.done()

    def send(self, data: bytes) -> None:
        """Queue a frame. Frames queued in one turn of the loop leave together, up to
        :data:`_BATCH` per write: calls made together (a pipeline, a fan-out) then cost
        a system call per batch, not one each (on loopback a send also runs the
        receiver's TCP input path). Whole turns in one write would leave the provider
        idle while we prepare the next turn's requests, and us idle while it answers."""
        outgoing = self.outgoing
        outgoing.append(data)
        if len(outgoing) >= _BATCH:
            self.flush()
        elif not self.flush_due:
            self.flush_due = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        frames, self.outgoing, self.flush_due = self.outgoing, [], False
        if frames and not self.writer.is_closing():
            self.writer.write(b"".join(frames) if len(frames) > 1 else frames[0])


Resolver = Callable[[str, int], Awaitable[list[str]]]
"""Turns a host name and port into the addresses it stands for."""


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def provider_addresses(
    host: str, port: int, resolver: Resolver = system_resolver
) -> list[str]:
    """Where to connect for a provider's ``host`` (from its signed record), in order: an
    address as it is; a name resolved here, never to this machine unless the name says
    so (:func:`~knarr.node.records.connectable`). Connecting to these addresses, not to
    the name, means a second answer from DNS cannot swap one in.
    :class:`ProviderUnreachable` if none is left."""
    try:
        ipaddress.ip_address(host)
        return [host]
    except ValueError:
        pass
    try:
        resolved = await resolver(host, port)
    except (OSError, ValueError) as exc:  # a malformed name ("a..b"): UnicodeError
        raise ProviderUnreachable(f"cannot resolve {host}: {exc}") from exc
    usable = list(dict.fromkeys(connectable(host, resolved)))
    if not usable:
        shown = ", ".join(dict.fromkeys(resolved)) or "nothing"
        raise ProviderUnreachable(
            f"{host} resolves to this machine ({shown}); a provider elsewhere cannot "
            "be reached there, so knarr does not connect"
        )
    return usable


async def provider_address(host: str, port: int, resolver: Resolver = system_resolver) -> str:
    """One address for :func:`provider_addresses`' ``host`` (the first), or the name
    itself when it names this machine (``localhost``: nothing to vet, and an HTTP client
    then tries each of its addresses)."""
    usable = await provider_addresses(host, port, resolver)
    return host if names_local_host(host) else usable[0]


async def _open_first(
    addresses: Sequence[str], port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to the first of ``addresses`` that accepts one."""
    failure: OSError | None = None
    for address in addresses:
        try:
            return await asyncio.open_connection(address, port)
        except OSError as exc:
            failure = exc
    assert failure is not None
    raise failure


class TaskClient:
    """Sends task requests to providers, one reusable connection per provider."""

    def __init__(self, crypto: Sealer, *, max_result: int = DEFAULT_MAX_RESULT) -> None:
        self._crypto = crypto
        self.resolver: Resolver = system_resolver
        self.max_result = max_result
        self._connections: dict[tuple[str, int, bytes], _Connection] = {}
        self._late: OrderedDict[bytes, tuple[bytes, bytes, int | None, str]] = OrderedDict()
        self.on_late_receipt: Callable[[Receipt], None] | None = None
        """Called with the verified receipt of a result that came after we gave up."""
        self._connecting: dict[tuple[str, int, bytes], asyncio.Future[_Connection]] = {}

    async def _connection(self, host: str, port: int, public_key: bytes,
                          timeout: float) -> _Connection:
        key = (host, port, public_key)
        conn = self._connections.get(key)
        if conn is not None and conn.alive:
            return conn
        waiting = self._connecting.get(key)
        if waiting is not None:
            try:
                async with asyncio.timeout(timeout):
                    return await asyncio.shield(waiting)
            except TimeoutError as exc:
                raise ProviderUnreachable(f"cannot connect to {host}:{port}: timed out") from exc
        future: asyncio.Future[_Connection] = asyncio.get_running_loop().create_future()
        self._connecting[key] = future
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await _open_first(
                    await provider_addresses(host, port, self.resolver), port
                )
        except ProviderUnreachable as exc:
            future.set_exception(exc)
            future.exception()
            raise
        except (OSError, TimeoutError) as exc:
            reason = str(exc) or "timed out"
            error = ProviderUnreachable(f"cannot connect to {host}:{port}: {reason}")
            future.set_exception(error)
            future.exception()
            raise error from exc
        except BaseException:  # cancelled: wake whoever waits on this connect
            future.set_exception(ProviderUnreachable(f"connecting to {host}:{port} was abandoned"))
            future.exception()
            raise
        finally:
            self._connecting.pop(key, None)
        conn = _Connection(reader, writer, public_key)
        conn.task = asyncio.create_task(self._read(conn))
        self._connections[key] = conn
        future.set_result(conn)
        return conn

    async def _read(self, conn: _Connection) -> None:
        error: Exception = ProviderUnreachable("the provider closed the connection")
        try:
            while True:
                data = await _read_frame(conn.reader, self.max_result + ENVELOPE_SLACK)
                env = self._crypto.open_any(data, self.max_result + ENVELOPE_SLACK)
                if env.public_key != conn.public_key or not isinstance(env.message, wire.Reply):
                    raise RemoteProtocolError("reply from the wrong node or of the wrong type")
                future = conn.pending.pop(env.message.re, None)
                if future is not None and not future.done():
                    future.set_result(env)
                elif env.message.re in self._late:
                    self._late_result(env, *self._late.pop(env.message.re))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except RemoteProtocolError as exc:
            error = exc
        finally:
            conn.writer.close()
            for future in conn.pending.values():
                if not future.done():
                    future.set_exception(error)
            conn.pending.clear()

    async def call(
        self,
        host: str,
        port: int,
        public_key: bytes,
        skill: str,
        data: Mapping[str, Any],
        *,
        timeout: float = 30.0,
        sidecar: int = 0,
        max_price: int | None = None,
    ) -> TaskReply:
        """Run ``skill`` at the provider; its output and verified receipt, or the
        :class:`TaskError` it sent. ``sidecar`` is our own sidecar port, where the
        provider may fetch our assets; ``max_price`` (micro-credits) the most its
        receipt may charge."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        conn = await self._connection(host, port, public_key, timeout)
        encoded = cbor.encode(dict(data))
        input_hash = hashlib.sha256(encoded).digest()
        timeout_ms = max(1, math.ceil(timeout * 1000)) if math.isfinite(timeout) else 0
        request = TaskRequest(skill, encoded, timeout_ms, sidecar)
        nonce, frame_bytes = self._crypto.seal_task(public_key, request,
                                                    len(encoded) + ENVELOPE_SLACK)
        future: asyncio.Future[wire.Envelope] = loop.create_future()
        conn.pending[nonce] = future
        conn.send(frame_bytes)
        # The provider stops the handler at ``timeout``; allow its answer to arrive.
        timer = loop.call_at(deadline + 1.0, _time_out, future)
        try:
            if conn.writer.transport.get_write_buffer_size():
                await conn.writer.drain()  # the provider is slow to read: wait for it
            env = await future
        except TimeoutError as exc:
            # The provider may still answer, and charge: keep what is needed to check and
            # book its receipt when the result arrives.
            self._late[nonce] = (public_key, input_hash, max_price, skill)
            while len(self._late) > 4096:
                self._late.popitem(last=False)
            raise RequestTimeout(f"no result from {host}:{port} within {timeout:g} s") from exc
        except ConnectionError as exc:
            raise ProviderUnreachable(f"connection to {host}:{port} failed: {exc}") from exc
        finally:
            timer.cancel()
            conn.pending.pop(nonce, None)
        result, receipt = self._open_result(env, public_key, input_hash, max_price, skill)
        if isinstance(result, TaskError):
            result.receipt = receipt
            raise result
        return TaskReply(result, receipt)

    def _open_result(
        self, env: wire.Envelope, public_key: bytes, input_hash: bytes,
        max_price: int | None, skill: str,
    ) -> tuple[dict[str, Any] | TaskError, Receipt | None]:
        """Decode a task result and check its receipt against what we asked."""
        message = env.message
        if not isinstance(message, TaskResult):
            raise RemoteProtocolError(f"expected a task result, got {type(message).__name__}")
        if len(message.out) > self.max_result:
            raise RemoteProtocolError(f"result of {len(message.out)} bytes is over the limit")
        payload = cbor.decode(message.out, max_depth=32, max_items=1_000_000)
        if isinstance(payload, dict) and "receipt" in payload:
            raise RemoteProtocolError("a receipt belongs beside the output, not in it")
        result, _ = split_result(payload)
        receipt = None
        if message.receipt is not None:
            receipt = parse_receipt(message.receipt)
            check_receipt(
                receipt, provider_key=public_key, requester_key=self._crypto.identity.public_key,
                task=message.re, input_hash=input_hash,
                output_hash=hashlib.sha256(message.out).digest(),
                max_price=max_price if max_price is not None else receipt.price,
                skill=skill, completed=not isinstance(result, TaskError),
            )
        return result, receipt

    def _late_result(
        self, env: wire.Envelope, public_key: bytes, input_hash: bytes,
        max_price: int | None, skill: str,
    ) -> None:
        try:
            _, receipt = self._open_result(env, public_key, input_hash, max_price, skill)
        except (RemoteProtocolError, InvalidReceipt) as exc:
            log.info("late result refused: %s", exc)
            return
        if receipt is not None and self.on_late_receipt is not None:
            self.on_late_receipt(receipt)

    async def exchange(
        self, host: str, port: int, public_key: bytes, message: wire.Request,
        *, timeout: float = 30.0,
    ) -> wire.Envelope:
        """Send a non-task request over the task channel; the peer's signed reply."""
        loop = asyncio.get_running_loop()
        conn = await self._connection(host, port, public_key, timeout)
        nonce, frame_bytes = self._crypto.seal(message, DEFAULT_MAX_RESULT)
        future: asyncio.Future[wire.Envelope] = loop.create_future()
        conn.pending[nonce] = future
        conn.send(frame_bytes)
        try:
            async with asyncio.timeout(timeout):
                await conn.writer.drain()
                return await future
        except TimeoutError as exc:
            raise RequestTimeout(f"no reply from {host}:{port} within {timeout:g} s") from exc
        finally:
            conn.pending.pop(nonce, None)

    async def close(self) -> None:
        for conn in self._connections.values():
            conn.writer.close()
            if conn.task is not None:
                conn.task.cancel()
        tasks = [c.task for c in self._connections.values() if c.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        self._connections.clear()


