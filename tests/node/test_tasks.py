"""The task channel between real nodes on loopback: round trips, confidentiality, the
provider's checks and refusals, fallback, graceful shutdown and hostile frames."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from knarr.errors import (
    BadSignature,
    KnarrError,
    ProviderUnreachable,
    RequestTimeout,
    SkillNotFound,
    TaskError,
    TaskFailed,
    TaskRefused,
    TaskTimedOut,
)
from knarr.node import cbor, wire
from knarr.node.identity import Identity
from knarr.node.node import Node
from knarr.node.taskchannel import Sealer
from knarr.node.tasks import (
    ENVELOPE_SLACK,
    FRAME_HEADER,
    Boxes,
    TaskRequest,
    TaskResult,
    frame,
    open_frame,
    outcome_of,
    seal_frame,
)
from knarr.node.wire import Ping
from tests.conftest import NodeFactory, sheet, wait_for

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


def _now_ms() -> int:
    return int(time.time() * 1000)


class Calls:
    """A handler that records every input it is called with."""

    def __init__(self, respond: Callable[[dict[str, Any]], Any] | None = None) -> None:
        self.inputs: list[dict[str, Any]] = []
        self._respond = respond or (lambda data: {"text": str(data.get("text", "")).upper()})

    async def __call__(self, data: dict[str, Any]) -> Any:
        self.inputs.append(dict(data))
        return self._respond(data)

    @property
    def count(self) -> int:
        return len(self.inputs)


class Gate:
    """A handler that waits on an event the test controls, and says whether it was
    cancelled."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = False

    async def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return {"text": "released"}


async def _joined(make_node: NodeFactory, *peers: Node, **node_kwargs: Any) -> Node:
    node = await make_node(**node_kwargs)
    for peer in peers:
        await node.join([f"127.0.0.1:{peer.port}"])
    return node


async def _network(
    make_node: NodeFactory,
    handler: Handler,
    name: str = "upper",
    *,
    max_task_timeout: float = 3600.0,
    **extra: Any,
) -> tuple[Node, Node]:
    """A provider serving ``handler`` as ``name`` (announced from ``sheet`` plus
    ``extra``) and a requester that has joined it."""
    requester = await make_node()
    provider = await _joined(make_node, requester, max_task_timeout=max_task_timeout)
    provider.register_handler(name, handler)
    await provider.announce({**sheet(name), **extra})
    return provider, requester


async def _call(requester: Node, provider: Node, skill: str, data: dict[str, Any],
                **kwargs: Any) -> Any:
    """Call ``skill`` at ``provider`` directly, without looking it up in the DHT."""
    host, port = provider.address
    return await requester.client.call(
        host, port, provider.identity.public_key, skill, data, **kwargs
    )


async def _task_error(call: Awaitable[Any], cls: type[TaskError] = TaskRefused) -> TaskError:
    with pytest.raises(cls) as caught:
        await call
    assert type(caught.value) is cls
    return caught.value


class Tap:
    """A loopback relay in front of a provider's TCP port that keeps every byte it carries."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.upstream = bytearray()
        self.downstream = bytearray()
        self._writers: list[asyncio.StreamWriter] = []
        self._relays: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Tap:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await asyncio.gather(*self._relays, return_exceptions=True)
        await self._server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._relays.add(task)
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers += [writer, up_writer]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                       sink: bytearray) -> None:
            try:
                while data := await src.read(65536):
                    sink += data
                    dst.write(data)
                    await dst.drain()
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_writer, self.upstream),
                             pump(up_reader, writer, self.downstream),
                             return_exceptions=True)


class RawRequester:
    """A hand-driven requester on a bare TCP connection."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self.sealer = Sealer(identity, Boxes(identity), wire.ReplayGuard())
        self.provider_key = b""
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self, provider: Node) -> None:
        self.provider_key = provider.identity.public_key
        self.reader, self.writer = await asyncio.open_connection(*provider.address)

    def seal_input(self, data: Any) -> bytes:
        """The request's ``input`` field: the input's canonical encoding."""
        return cbor.encode(data)

    def request_frame(self, skill: str, encoded: bytes) -> tuple[bytes, bytes]:
        return self.sealer.seal_task(self.provider_key, TaskRequest(skill, encoded),
                                     len(encoded) + ENVELOPE_SLACK)

    def send(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)

    async def result(self) -> dict[str, Any]:
        assert self.reader is not None
        async with asyncio.timeout(5):
            (length,) = FRAME_HEADER.unpack(await self.reader.readexactly(4))
            data = await self.reader.readexactly(length)
        env = open_frame(self.sealer.boxes, data, now_ms=_now_ms(), replay=None,
                         max_size=1 << 20)
        assert isinstance(env.message, TaskResult)
        assert env.public_key == self.provider_key
        return outcome_of(cbor.decode(env.message.out))

    async def closed_by_peer(self) -> bool:
        """Whether the provider closes the connection (rather than answering)."""
        assert self.reader is not None
        try:
            async with asyncio.timeout(5):
                return await self.reader.read() == b""
        except ConnectionResetError:
            return True

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(ConnectionError):
                await self.writer.wait_closed()


@contextlib.asynccontextmanager
async def _raw(provider: Node, identity: Identity | None = None) -> AsyncIterator[RawRequester]:
    raw = RawRequester(identity or Identity.generate())
    await raw.connect(provider)
    try:
        yield raw
    finally:
        await raw.close()


# -------------------------------------------------------------------------- round trips


async def test_remote_request_round_trip(make_node: NodeFactory) -> None:
    calls = Calls()
    provider, requester = await _network(make_node, calls)
    record, output = await requester.request_detailed("upper", {"text": "hello"}, timeout=5)
    assert output == {"text": "HELLO"}
    assert record.provider_id == provider.identity.node_id
    assert calls.inputs == [{"text": "hello"}]
    assert provider.tasks.completed == 1


async def test_many_requests_share_one_connection(make_node: NodeFactory) -> None:
    provider, requester = await _network(make_node, Calls())
    for i in range(5):
        assert await requester.request("upper", {"text": f"s{i}"}) == {"text": f"S{i}"}
    outputs = await asyncio.gather(
        *(requester.request("upper", {"text": f"c{i}"}) for i in range(20))
    )
    assert outputs == [{"text": f"C{i}"} for i in range(20)]
    assert len(requester.client._connections) == 1
    assert len(provider.tasks._connections) == 1
    assert provider.tasks.completed == 25


async def test_calls_made_together_leave_in_batches(
    make_node: NodeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider, requester = await _network(make_node, Calls())
    record, _ = await requester.request_detailed("upper", {"text": "warm"}, timeout=5)
    (conn,) = requester.client._connections.values()
    writes: list[int] = []
    real_write = conn.writer.write

    def write(data: bytes) -> None:
        writes.append(len(data))
        real_write(data)

    monkeypatch.setattr(conn.writer, "write", write)
    replies = await asyncio.gather(*(
        requester.client.call(record.host, record.port, record.public_key, "upper",
                              {"text": f"c{i}"}, timeout=5)
        for i in range(20)
    ))
    assert [r.output for r in replies] == [{"text": f"C{i}"} for i in range(20)]
    # 20 requests made in one turn of the loop: 8 + 8 in full batches, 4 at its end.
    assert len(writes) == 3
    assert writes[0] > 1.9 * writes[2] < writes[1]


async def test_200_concurrent_requests_all_complete_with_their_own_output(
    make_node: NodeFactory,
) -> None:
    async def double(data: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0)  # let the requests interleave
        return {"text": data["text"], "n": data["n"] * 2}

    provider, requester = await _network(  # free, so no credit limit applies
        make_node, double, "double", input_schema={"text": "string", "n": "integer"}, price=0
    )
    outputs = await asyncio.gather(
        *(requester.request("double", {"text": f"r{i}", "n": i}, timeout=20)
          for i in range(200))
    )
    assert outputs == [{"text": f"r{i}", "n": 2 * i} for i in range(200)]
    assert provider.tasks.completed == 200
    assert len(requester.client._connections) == 1
    assert len(provider.tasks._connections) == 1


# ------------------------------------------------------------------------ confidentiality


def _first_frame(data: bytes | bytearray) -> bytes:
    (length,) = FRAME_HEADER.unpack(data[:4])
    return bytes(data[4 : 4 + length])


async def test_task_payloads_are_unreadable_on_the_wire(make_node: NodeFactory) -> None:
    async def echo(data: dict[str, Any]) -> dict[str, Any]:
        return dict(data)

    provider, requester = await _network(make_node, echo, "echo")
    secret = "the-eagle-lands-at-0400"
    async with Tap(provider.address) as tap:
        reply = await requester.client.call(
            "127.0.0.1", tap.port, provider.identity.public_key, "echo", {"text": secret},
            timeout=5,
        )
        assert reply.output == {"text": secret}
        await requester.client.close()
    assert tap.upstream and tap.downstream
    assert secret.encode() not in tap.upstream
    assert secret.encode() not in tap.downstream

    upstream, downstream = _first_frame(tap.upstream), _first_frame(tap.downstream)
    env = open_frame(Boxes(provider.identity), upstream, now_ms=_now_ms(), replay=None,
                     max_size=1 << 20)
    assert isinstance(env.message, TaskRequest) and env.message.skill == "echo"
    assert env.public_key == requester.identity.public_key
    assert cbor.decode(env.message.input) == {"text": secret}
    with pytest.raises(BadSignature):  # nobody else can open it
        open_frame(Boxes(Identity.generate()), upstream, now_ms=_now_ms(), replay=None,
                   max_size=1 << 20)

    result = open_frame(Boxes(requester.identity), downstream, now_ms=_now_ms(), replay=None,
                        max_size=1 << 20)
    assert isinstance(result.message, TaskResult) and result.message.re == env.nonce
    assert result.public_key == provider.identity.public_key
    with pytest.raises(BadSignature):
        open_frame(Boxes(Identity.generate()), downstream, now_ms=_now_ms(), replay=None,
                   max_size=1 << 20)


# ------------------------------------------------------------------------ refusals


async def test_an_unannounced_handler_is_not_callable_remotely(make_node: NodeFactory) -> None:
    calls = Calls()
    provider, requester = await _network(make_node, Calls())
    provider.register_handler("hidden", calls)
    refusal = await _task_error(_call(requester, provider, "hidden", {"text": "x"}))
    assert refusal.code == "not_found" and "'hidden'" in str(refusal)
    assert calls.count == 0
    assert await provider.call_local("hidden", {"text": "x"}) == {"text": "X"}
    with pytest.raises(SkillNotFound):
        await requester.request("hidden", {"text": "x"})


async def test_an_unknown_skill_is_not_found(make_node: NodeFactory) -> None:
    provider, requester = await _network(make_node, Calls())
    refusal = await _task_error(_call(requester, provider, "nobody-has-it", {}))
    assert refusal.code == "not_found"
    assert provider.tasks.refused == 1


async def test_a_private_skill_is_not_found_remotely(make_node: NodeFactory) -> None:
    calls = Calls()
    provider, requester = await _network(make_node, Calls())
    provider.register_handler("secret", calls)
    await provider.announce({**sheet("secret"), "visibility": "private"})
    refusal = await _task_error(_call(requester, provider, "secret", {"text": "x"}))
    assert refusal.code == "not_found"
    assert calls.count == 0
    with pytest.raises(SkillNotFound):
        await requester.request("secret", {"text": "x"})
    assert await provider.call_local("secret", {"text": "x"}) == {"text": "X"}


async def test_a_whitelist_admits_only_the_allowed_nodes(make_node: NodeFactory) -> None:
    calls = Calls()
    provider = await make_node()
    stranger = await _joined(make_node, provider)
    friend = await _joined(make_node, provider)
    provider.register_handler("partner", calls)
    await provider.announce({**sheet("partner"), "visibility": "whitelist",
                             "allowed_nodes": [friend.node_id.upper()]})
    refusal = await _task_error(stranger.request("partner", {"text": "x"}))
    assert refusal.code == "forbidden"
    assert calls.count == 0
    assert await friend.request("partner", {"text": "hi"}) == {"text": "HI"}
    assert calls.inputs == [{"text": "hi"}]


async def test_input_over_max_input_size_is_refused(make_node: NodeFactory) -> None:
    calls = Calls()
    provider, requester = await _network(make_node, calls, "tiny", max_input_size=64)
    refusal = await _task_error(requester.request("tiny", {"text": "x" * 200}))
    assert refusal.code == "input_too_large" and "64 bytes" in str(refusal)
    assert await requester.request("tiny", {"text": "x" * 40}) == {"text": "X" * 40}
    assert calls.count == 1


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"n": 1}, "missing field 'text'"),
        ({"text": 5, "n": 1}, "'text' must be string, got int"),
        ({"text": "a", "n": True}, "'n' must be number, got bool"),
        ({"text": "a", "n": "1"}, "'n' must be number, got str"),
    ],
)
async def test_schema_violations_are_invalid_input(
    make_node: NodeFactory, data: dict[str, Any], problem: str
) -> None:
    calls = Calls()
    provider, requester = await _network(
        make_node, calls, input_schema={"text": "string", "n": "number"}
    )
    refusal = await _task_error(requester.request("upper", data))
    assert refusal.code == "invalid_input" and problem in str(refusal)
    assert calls.count == 0


async def test_a_raising_handler_is_a_task_failure_with_its_message(
    make_node: NodeFactory,
) -> None:
    def boom(data: dict[str, Any]) -> Any:
        raise ValueError("the flux capacitor is empty")

    provider, requester = await _network(make_node, Calls(boom))
    failure = await _task_error(requester.request("upper", {"text": "x"}), TaskFailed)
    assert failure.code == "handler_error"
    assert "ValueError: the flux capacitor is empty" in str(failure)
    assert provider.tasks.failed == 1


@pytest.mark.parametrize(
    ("output", "why"),
    [
        (["not", "a", "dict"], "handler returned list"),
        ("text", "handler returned str"),
        (None, "handler returned NoneType"),
        ({"when": {1, 2}}, "cannot be sent"),
    ],
)
async def test_a_handler_output_that_is_not_a_sendable_dict_is_bad_output(
    make_node: NodeFactory, output: Any, why: str
) -> None:
    provider, requester = await _network(make_node, Calls(lambda data: output))
    failure = await _task_error(requester.request("upper", {"text": "x"}), TaskFailed)
    assert failure.code == "bad_output" and why in str(failure)


async def test_a_handler_past_the_providers_limit_times_out(make_node: NodeFactory) -> None:
    gate = Gate()
    provider, requester = await _network(make_node, gate, max_task_timeout=0.2)
    started = time.monotonic()
    timed_out = await _task_error(requester.request("upper", {"text": "x"}), TaskTimedOut)
    assert timed_out.code == "timeout" and "0.2 s limit" in str(timed_out)
    assert time.monotonic() - started < 2.0
    assert gate.cancelled
    assert provider.tasks.inflight == 0


async def test_the_requesters_shorter_timeout_is_honoured(make_node: NodeFactory) -> None:
    gate = Gate()
    provider, requester = await _network(make_node, gate)
    assert provider.tasks.max_task_timeout == 3600
    started = time.monotonic()
    with pytest.raises((TaskTimedOut, RequestTimeout)):
        await requester.request("upper", {"text": "x"}, timeout=0.3)
    assert time.monotonic() - started < 0.3 + 1.5
    await wait_for(lambda: gate.cancelled and provider.tasks.inflight == 0, timeout=1.5)


@pytest.mark.parametrize(
    ("allowed", "box", "code"),
    [
        # whitelist before size: a stranger's oversized garbage is "forbidden"
        (False, "garbage-over", "forbidden"),
        (False, "valid", "forbidden"),
        # size before decryption: oversized garbage is "input_too_large", not unreadable
        (True, "garbage-over", "input_too_large"),
        # size before schema
        (True, "schema-violation-over", "input_too_large"),
        (True, "garbage-under", "invalid_input"),
        (True, "schema-violation-under", "invalid_input"),
        (True, "valid", None),
    ],
)
async def test_the_provider_checks_in_order(
    make_node: NodeFactory, allowed: bool, box: str, code: str | None
) -> None:
    calls = Calls()
    raw = RawRequester(Identity.generate())
    provider = await make_node()
    provider.register_handler("guarded", calls)
    await provider.announce({
        **sheet("guarded"), "visibility": "whitelist", "max_input_size": 64,
        "allowed_nodes": [raw.identity.node_id_hex if allowed else "ab" * 32],
    })
    await raw.connect(provider)
    limit = 64  # max_input_size: the encoded input's length
    sealed = {
        "garbage-over": os.urandom(limit + 1),
        "garbage-under": os.urandom(limit),
        "schema-violation-over": raw.seal_input({"text": 1, "pad": "x" * 100}),
        "schema-violation-under": raw.seal_input({"text": 1}),
        "valid": raw.seal_input({"text": "ok"}),
    }[box]
    _, data = raw.request_frame("guarded", sealed)
    raw.send(data)
    try:
        if code is None:
            assert await raw.result() == {"text": "OK"}
            assert calls.count == 1
        else:
            refusal = await _task_error(raw.result())
            assert refusal.code == code
            assert calls.count == 0
    finally:
        await raw.close()


async def test_a_request_sealed_for_another_key_is_never_run(make_node: NodeFactory) -> None:
    """A requester that expects another node at this address (a stale record, an
    impostor's) seals for that node's key: the provider cannot open the frame and hangs
    up, so nothing runs and no result from the wrong node is ever taken."""
    calls = Calls()
    provider, requester = await _network(make_node, calls)
    host, port = provider.address
    impostor = Identity.generate()
    with pytest.raises(ProviderUnreachable, match="closed the connection"):
        await requester.client.call(host, port, impostor.public_key, "upper", {"text": "x"},
                                    timeout=5)
    assert calls.count == 0
    assert await requester.request("upper", {"text": "x"}) == {"text": "X"}


# -------------------------------------------------------------------------- fallback


async def _two_providers(
    make_node: NodeFactory, first_handler: Handler, second_handler: Handler, **extra: Any
) -> tuple[Node, Node, Node]:
    """Two providers of ``upper`` and a requester, ordered as the requester tries them."""
    a = await make_node()
    b = await _joined(make_node, a)
    requester = await _joined(make_node, a)
    await requester.join([f"127.0.0.1:{b.port}"])
    for node in (a, b):
        await node.announce({**sheet("upper"), **extra})
    records = await requester.find_skills("upper")
    assert {r.provider_id for r in records} == {a.identity.node_id, b.identity.node_id}
    first, second = (a, b) if records[0].provider_id == a.identity.node_id else (b, a)
    first.register_handler("upper", first_handler)
    second.register_handler("upper", second_handler)
    return first, second, requester


async def test_fallback_when_the_first_provider_is_unreachable(make_node: NodeFactory) -> None:
    first_calls, second_calls = Calls(), Calls()
    first, second, requester = await _two_providers(make_node, first_calls, second_calls)
    await first.tasks.stop(grace=0)
    record, output = await requester.request_detailed("upper", {"text": "x"}, timeout=5)
    assert output == {"text": "X"}
    assert record.provider_id == second.identity.node_id
    assert (first_calls.count, second_calls.count) == (0, 1)


async def test_fallback_when_the_first_providers_handler_fails(make_node: NodeFactory) -> None:
    def boom(data: dict[str, Any]) -> Any:
        raise RuntimeError("down for maintenance")

    first_calls, second_calls = Calls(boom), Calls()
    first, second, requester = await _two_providers(make_node, first_calls, second_calls)
    record, output = await requester.request_detailed("upper", {"text": "x"}, timeout=5)
    assert output == {"text": "X"}
    assert record.provider_id == second.identity.node_id
    assert (first_calls.count, second_calls.count) == (1, 1)
    assert first.tasks.failed == 1


async def test_invalid_input_is_not_retried_on_another_provider(make_node: NodeFactory) -> None:
    first_calls, second_calls = Calls(), Calls()
    first, second, requester = await _two_providers(
        make_node, first_calls, second_calls, input_schema={"n": "number"}
    )
    refusal = await _task_error(requester.request("upper", {"n": "not a number"}))
    assert refusal.code == "invalid_input"
    assert (first.tasks.refused, second.tasks.refused) == (1, 0)
    assert (first_calls.count, second_calls.count) == (0, 0)
    assert second.tasks.completed == 0 and len(requester.client._connections) == 1


# ------------------------------------------------------------------- graceful shutdown


async def test_stop_lets_a_running_task_finish_and_refuses_new_ones(
    make_node: NodeFactory,
) -> None:
    gate = Gate()
    provider, requester = await _network(make_node, gate)
    running = asyncio.create_task(requester.request("upper", {"text": "x"}, timeout=10))
    await asyncio.wait_for(gate.started.wait(), 5)
    stopping = asyncio.create_task(provider.stop(grace=5))
    await wait_for(lambda: provider.tasks._draining)

    refusal = await _task_error(requester.request("upper", {"text": "y"}, timeout=5))
    assert refusal.code == "shutting_down"
    with pytest.raises(OSError):
        await asyncio.open_connection(*provider.address)
    assert not running.done() and not stopping.done()

    gate.release.set()
    assert await asyncio.wait_for(running, 5) == {"text": "released"}
    await asyncio.wait_for(stopping, 5)
    assert not gate.cancelled


async def test_stop_cancels_a_task_past_the_grace_and_says_so(make_node: NodeFactory) -> None:
    gate = Gate()
    provider, requester = await _network(make_node, gate)
    running = asyncio.create_task(requester.request("upper", {"text": "x"}, timeout=10))
    await asyncio.wait_for(gate.started.wait(), 5)
    started = time.monotonic()
    await provider.stop(grace=0.1)
    refusal = await asyncio.wait_for(_task_error(running), 3)
    assert refusal.code == "shutting_down"
    assert gate.cancelled
    assert time.monotonic() - started < 2.0


# -------------------------------------------------------------------- hostile frames


async def _still_serves(requester: Node, calls: Calls) -> None:
    before = calls.count
    assert await requester.request("upper", {"text": "still"}, timeout=5) == {"text": "STILL"}
    assert calls.count == before + 1


async def test_a_frame_over_the_limit_is_dropped_unread(make_node: NodeFactory) -> None:
    calls = Calls()
    provider, requester = await _network(make_node, calls)
    async with _raw(provider) as raw:
        raw.send(FRAME_HEADER.pack(2**31))  # no body follows: reading it would hang
        assert await raw.closed_by_peer()
    assert calls.count == 0
    await _still_serves(requester, calls)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(lambda raw: frame(os.urandom(300)), id="random-bytes"),
        pytest.param(lambda raw: frame(b""), id="empty-frame"),
        pytest.param(lambda raw: frame(b"KN" + bytes(200)), id="zero-header"),
        pytest.param(
            lambda raw: raw.sealer.seal(Ping(), 1400)[1], id="not-a-task-request"
        ),
        pytest.param(
            lambda raw: frame(seal_frame(
                raw.identity, raw.sealer.boxes, raw.provider_key, TaskRequest("upper", b"\xa0"),
                now_ms=_now_ms() - 3_600_000, nonce=os.urandom(16), box_nonce=os.urandom(24),
                max_size=4096,
            )),
            id="stale",
        ),
        pytest.param(
            lambda raw: frame(wire.seal(raw.identity, TaskRequest("upper", b"\xa0"),
                                        now_ms=_now_ms(), nonce=os.urandom(16),
                                        max_size=4096)),
            id="signed-not-sealed",
        ),
    ],
)
async def test_a_garbage_envelope_closes_the_connection(
    make_node: NodeFactory, payload: Callable[[RawRequester], bytes]
) -> None:
    calls = Calls()
    provider, requester = await _network(make_node, calls)
    async with _raw(provider) as raw:
        raw.send(payload(raw))
        assert await raw.closed_by_peer()
    assert calls.count == 0
    await _still_serves(requester, calls)


async def test_a_replayed_request_runs_once(make_node: NodeFactory) -> None:
    calls = Calls()
    provider, requester = await _network(make_node, calls)
    async with _raw(provider) as raw:
        _, data = raw.request_frame("upper", raw.seal_input({"text": "once"}))
        raw.send(data)
        assert await raw.result() == {"text": "ONCE"}
        raw.send(data)
        assert await raw.closed_by_peer()
    async with _raw(provider, raw.identity) as again:  # a fresh connection does not help
        again.send(data)
        assert await again.closed_by_peer()
    assert calls.count == 1
    await _still_serves(requester, calls)


@pytest.mark.parametrize("where", ["ciphertext", "tag", "box-nonce", "public-key"])
async def test_an_altered_request_is_dropped(make_node: NodeFactory, where: str) -> None:
    calls = Calls()
    provider, requester = await _network(make_node, calls)
    raw = RawRequester(Identity.generate())
    raw.provider_key = provider.identity.public_key
    _, data = raw.request_frame("upper", raw.seal_input({"text": "genuine"}))
    altered = bytearray(data)
    if where == "ciphertext":
        altered[-1] ^= 0x01
    elif where == "tag":
        altered[4 + 59] ^= 0x80
    elif where == "box-nonce":
        altered[4 + 35] ^= 0x01
    else:
        altered[4 + 3 : 4 + 35] = Identity.generate().public_key
    async with _raw(provider, raw.identity) as tampered:
        tampered.send(bytes(altered))
        assert await tampered.closed_by_peer()
    assert calls.count == 0
    async with _raw(provider, raw.identity) as genuine:  # the forgery did not burn the nonce
        genuine.send(data)
        assert await genuine.result() == {"text": "GENUINE"}
    assert calls.count == 1
    await _still_serves(requester, calls)


# ------------------------------------------------------------- fixed defects


async def test_input_far_over_the_limit_is_refused_without_harming_other_requests(
    make_node: NodeFactory,
) -> None:
    gate = Gate()
    provider, requester = await _network(make_node, Calls(), "tiny", max_input_size=64)
    provider.register_handler("slow", gate)
    await provider.announce({**sheet("slow"), "max_input_size": 64})
    slow = asyncio.create_task(requester.request("slow", {"text": "x"}, timeout=10))
    await asyncio.wait_for(gate.started.wait(), 5)
    try:
        refusal = await _task_error(requester.request("tiny", {"text": "x" * 5000}, timeout=5))
        assert refusal.code == "input_too_large"
        gate.release.set()
        assert await asyncio.wait_for(slow, 5) == {"text": "released"}
    finally:
        gate.release.set()
        with contextlib.suppress(KnarrError):
            await asyncio.wait_for(slow, 5)


async def test_a_handler_raising_timeout_error_is_a_handler_error(
    make_node: NodeFactory,
) -> None:
    def gives_up(data: dict[str, Any]) -> Any:
        raise TimeoutError("upstream API did not answer")

    provider, requester = await _network(make_node, Calls(gives_up))
    failure = await _task_error(requester.request("upper", {"text": "x"}, timeout=5), TaskFailed)
    assert failure.code == "handler_error" and "upstream API" in str(failure)


async def test_a_sub_millisecond_timeout_still_bounds_the_handler(
    make_node: NodeFactory,
) -> None:
    gate = Gate()
    provider, requester = await _network(make_node, gate)
    await _task_error(_call(requester, provider, "warm-up", {}))  # connect first
    with pytest.raises((TaskTimedOut, RequestTimeout)):
        await _call(requester, provider, "upper", {"text": "x"}, timeout=0.0005)
    try:
        await wait_for(lambda: provider.tasks.inflight == 0, timeout=1.0)
    finally:
        gate.release.set()


@contextlib.contextmanager
def _unanswered_port() -> Iterator[int]:
    """A loopback port whose listener never accepts and whose queue is full, so a new
    connection hangs in SYN_SENT instead of being refused."""
    listener = socket.socket()
    fillers = [socket.socket() for _ in range(3)]
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for filler in fillers:
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


async def test_a_provider_name_that_resolves_to_this_machine_is_not_dialled(
    make_node: NodeFactory,
) -> None:
    """A record's host is its provider's word. A name that resolves to loopback would
    aim our connection at our own local services; only a name that says so itself
    (``localhost``, which only loopback peers' records may carry) is dialled there."""
    async def echo(data: dict[str, Any]) -> dict[str, Any]:
        return dict(data)

    provider, requester = await _network(make_node, echo, "echo")
    _, port = provider.address
    asked: list[str] = []

    async def resolver(host: str, _port: int) -> list[str]:
        asked.append(host)
        if host == "gone.example":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        if host == "bad..name":  # what getaddrinfo raises for an empty label
            raise UnicodeError("encoding with 'idna' codec failed (label empty or too long)")
        return ["::1", "127.0.0.1"]  # the provider listens on 127.0.0.1 only

    requester.client.resolver = resolver
    key = provider.identity.public_key
    with pytest.raises(ProviderUnreachable, match=r"resolves to this machine \(::1, 127.0.0.1\)"):
        await requester.client.call("provider.example", port, key, "echo", {"text": "x"})
    with pytest.raises(ProviderUnreachable, match="cannot resolve gone.example"):
        await requester.client.call("gone.example", port, key, "echo", {"text": "x"})
    with pytest.raises(ProviderUnreachable, match="cannot resolve bad..name"):
        await requester.client.call("bad..name", port, key, "echo", {"text": "x"})
    assert not provider.tasks._connections and provider.tasks.completed == 0
    reply = await requester.client.call("localhost", port, key, "echo", {"text": "x"})
    assert reply.output == {"text": "x"}
    assert asked == ["provider.example", "gone.example", "bad..name", "localhost"]
    await requester.client.call("127.0.0.1", port, key, "echo", {"text": "y"})
    assert len(asked) == 4  # an address is not resolved


async def test_a_connect_timeout_says_it_timed_out(make_node: NodeFactory) -> None:
    requester = await make_node()
    with _unanswered_port() as port:
        with pytest.raises(ProviderUnreachable, match=r"timed out$"):
            await requester.client.call("127.0.0.1", port, Identity.generate().public_key,
                                        "upper", {}, timeout=0.2)


async def test_a_cancelled_connect_does_not_strand_other_callers(
    make_node: NodeFactory,
) -> None:
    requester = await make_node()
    key = Identity.generate().public_key
    callers: list[asyncio.Task[dict[str, Any]]] = []
    with _unanswered_port() as port:
        try:
            callers.append(asyncio.create_task(
                requester.client.call("127.0.0.1", port, key, "upper", {}, timeout=30)
            ))
            await wait_for(lambda: bool(requester.client._connecting))
            callers.append(asyncio.create_task(
                requester.client.call("127.0.0.1", port, key, "upper", {}, timeout=0.3)
            ))
            await asyncio.sleep(0)  # one loop turn: the second caller joins the connect
            callers[0].cancel()
            with pytest.raises((ProviderUnreachable, RequestTimeout)):
                await asyncio.wait_for(callers[1], 1.5)
        finally:
            for caller in callers:
                caller.cancel()
            await asyncio.gather(*callers, return_exceptions=True)


# ----------------------------------------------------------------- provider cache


class CountingLookups:
    """Wraps a node's ``find_skills`` to count the DHT lookups ``request`` makes."""

    def __init__(self, node: Node) -> None:
        self.count = 0
        self._real = node.find_skills
        node.find_skills = self  # type: ignore[method-assign]

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.count += 1
        return await self._real(*args, **kwargs)


async def test_repeated_requests_reuse_the_providers_a_lookup_found(
    make_node: NodeFactory,
) -> None:
    calls = Calls()
    _, requester = await _network(make_node, calls)
    lookups = CountingLookups(requester)
    for i in range(20):
        assert await requester.request("upper", {"text": f"x{i}"}) == {"text": f"X{i}"}
    assert calls.count == 20
    assert lookups.count == 1


async def test_a_remembered_provider_that_stopped_answering_is_looked_up_again(
    make_node: NodeFactory,
) -> None:
    first_calls, second_calls = Calls(), Calls()
    first, requester = await _network(make_node, first_calls)
    assert await requester.request("upper", {"text": "a"}) == {"text": "A"}  # remembers first
    second = await _joined(make_node, first, requester)
    second.register_handler("upper", second_calls)
    await second.announce(sheet("upper"))
    lookups = CountingLookups(requester)
    await first.tasks.stop(grace=0)
    assert await requester.request("upper", {"text": "b"}) == {"text": "B"}
    assert (first_calls.count, second_calls.count) == (1, 1)
    assert lookups.count == 1  # the remembered provider failed, so it looked again
