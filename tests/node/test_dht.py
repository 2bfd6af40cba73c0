"""A few real nodes on loopback: the RPCs, defences and the DHTNode API."""

from __future__ import annotations

import asyncio
import gc
import socket
import weakref
from typing import Any

import pytest

from knarr.dht.node import DHTNode
from knarr.errors import (
    BootstrapFailed,
    LocalProtocolError,
    RecordTooLarge,
    RequestTimeout,
    SkillNotFound,
)
from knarr.node import dht as dht_module
from knarr.node import wire
from knarr.node.contact import Contact
from knarr.node.dht import DhtSettings
from knarr.node.identity import Identity
from knarr.node.lookup import Lookup, RttEstimator
from knarr.node.node import Node
from knarr.node.records import skill_key
from knarr.node.wire import FindNode, Nodes, Ping, Pong
from tests.conftest import NodeFactory, sheet, wait_for


async def test_ping_and_join_fill_routing_tables(make_node: NodeFactory) -> None:
    a = await make_node()
    b = await make_node()
    contact = await b.dht.ping(a.address)
    assert contact.node_id == a.identity.node_id
    assert await b.join([f"127.0.0.1:{a.port}"]) >= 1
    await wait_for(lambda: b.identity.node_id in a.dht.table)


async def test_find_skills_by_name_and_tag(make_node: NodeFactory) -> None:
    nodes = [await make_node() for _ in range(8)]
    for n in nodes[1:]:
        await n.join([f"127.0.0.1:{nodes[0].port}"])
    await nodes[3].announce(sheet("echo", "example", "text"))
    await nodes[5].announce(sheet("echo", "example"))
    by_name = await nodes[7].find_skills("echo")
    assert {r.provider_id for r in by_name} == {nodes[3].identity.node_id,
                                                 nodes[5].identity.node_id}
    by_tag = await nodes[1].find_skills(tag="text")
    assert [r.provider_id for r in by_tag] == [nodes[3].identity.node_id]
    assert by_tag[0].port == nodes[3].port and by_tag[0].host == "127.0.0.1"
    assert await nodes[2].find_skills("nobody-serves-this") == []


async def test_private_skills_are_never_published(make_node: NodeFactory) -> None:
    a, b = await make_node(), await make_node()
    await b.join([f"127.0.0.1:{a.port}"])

    async def secret(data: dict[str, str]) -> dict[str, str]:
        return {"text": "s"}

    b.register_handler("secret", secret)
    record = await b.announce({**sheet("secret"), "visibility": "private"})
    assert record.visibility == "private"
    assert a.dht.records.get(skill_key("secret"), now_s=0) == []
    assert await a.find_skills("secret") == []
    assert await b.call_local("secret", {}) == {"text": "s"}


async def test_higher_sequence_replaces_a_record(make_node: NodeFactory) -> None:
    a, b = await make_node(), await make_node()
    await b.join([f"127.0.0.1:{a.port}"])
    first = await b.announce({**sheet("calc"), "description": "v1"})
    second = await b.announce({**sheet("calc"), "description": "v2"})
    assert second.seq > first.seq
    found = await a.find_skills("calc")
    assert [r.description for r in found] == ["v2"]


async def test_call_local_and_the_product_example(make_node: NodeFactory) -> None:
    node = await make_node()

    async def echo(data: dict[str, str]) -> dict[str, str]:
        return data

    async def upper(data: dict[str, str]) -> dict[str, str]:
        return {"text": data["text"].upper()}

    node.register_handler("echo", echo)
    node.register_handler("upper", upper)
    await node.announce({
        "name": "echo", "version": "1.0.0", "description": "Echo",
        "tags": ["example"], "input_schema": {"text": "string"},
        "output_schema": {"text": "string"},
    })
    assert await node.call_local("upper", {"text": "hello"}) == {"text": "HELLO"}
    with pytest.raises(SkillNotFound):
        await node.call_local("missing", {})


async def test_pipeline_handler_calls_local_skills(make_node: NodeFactory) -> None:
    node = await make_node()

    async def translate(data: dict[str, str]) -> dict[str, str]:
        return {"translated": data["text"].replace("hallo", "hello")}

    async def summarize(data: dict[str, str]) -> dict[str, str]:
        return {"text": data["text"].split()[0]}

    def make_pipeline_handler(node: DHTNode):  # type: ignore[no-untyped-def]
        async def handle(input_data: dict[str, str]) -> dict[str, str]:
            translated = await node.call_local(
                "translate", {"text": input_data["text"], "source_lang": "auto"}
            )
            summary = await node.call_local("summarize", {"text": translated["translated"]})
            return {"summary": summary["text"]}

        return handle

    node.register_handler("translate", translate)
    node.register_handler("summarize", summarize)
    node.register_handler("translate-and-summarize", make_pipeline_handler(node))
    result = await node.call_local("translate-and-summarize", {"text": "hallo world"})
    assert result == {"summary": "hello"}


async def test_bootstrap_with_dead_entries_still_joins(make_node: NodeFactory) -> None:
    a, b = await make_node(), await make_node()
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    try:
        size = await b.join([f"127.0.0.1:{dead_port}", f"127.0.0.1:{a.port}"])
    finally:
        dead.close()
    assert size >= 1


async def test_bootstrap_with_only_dead_entries_fails_clearly(make_node: NodeFactory) -> None:
    b = await make_node()
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))
    try:
        with pytest.raises(BootstrapFailed, match="none of 1 bootstrap peers answered"):
            await b.join([f"127.0.0.1:{dead.getsockname()[1]}"])
    finally:
        dead.close()


async def test_announce_needs_a_started_node_and_a_small_record() -> None:
    node = DHTNode("127.0.0.1", 0)
    with pytest.raises(LocalProtocolError, match="start"):
        await node.announce(sheet("echo"))
    await node.start()
    try:
        with pytest.raises(RecordTooLarge):
            await node.announce({**sheet("big"), "input_schema": {f"f{i}": "string"
                                                                  for i in range(120)}})
    finally:
        await node.stop()


async def test_read_only_clients_stay_out_of_routing_tables(make_node: NodeFactory) -> None:
    server = await make_node()
    client = await make_node(settings=DhtSettings(read_only=True))
    await client.join([f"127.0.0.1:{server.port}"])
    assert server.identity.node_id in client.dht.table
    peer = await make_node()
    await peer.join([f"127.0.0.1:{server.port}"])
    await wait_for(lambda: peer.identity.node_id in server.dht.table)
    assert client.identity.node_id not in server.dht.table


class _RawPeer(asyncio.DatagramProtocol):
    """A hand-driven peer: sends signed datagrams, collects what comes back."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.identity = Identity.generate()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append(data)

    def seal(self, message: wire.Message, nonce: bytes) -> bytes:
        return wire.seal(self.identity, message, now_ms=_now_ms(), nonce=nonce)


@pytest.mark.parametrize(
    ("host", "via", "taken"),
    [
        ("203.0.113.7", "203.0.113.9", True),
        ("2001:db8::7", "203.0.113.9", True),
        ("0.0.0.0", "203.0.113.9", False),
        ("::", "203.0.113.9", False),
        ("::ffff:0.0.0.0", "203.0.113.9", False),  # the mapped form reaches this machine too
        ("0.0.0.0", "127.0.0.1", False),  # nobody listens there, whoever says so
        ("127.0.0.1", "203.0.113.9", False),
        ("::ffff:127.0.0.1", "203.0.113.9", False),
        ("127.0.0.1", "127.0.0.1", True),
        ("peer.example", "203.0.113.9", False),  # not an IP literal
        ("fe80::1%eth0", "203.0.113.9", False),  # scoped: a link of ours
        ("::1%lo", "127.0.0.1", False),
    ],
)
async def test_which_contacts_a_peer_may_tell_us_about(
    make_node: NodeFactory, host: str, via: str, taken: bool,
) -> None:
    node = await make_node()
    contact = Contact(Identity.generate().node_id, host, 9000)
    assert node.dht._acceptable(contact, (via, 9000)) is taken  # a check only: nothing is sent


async def test_a_record_published_into_a_smaller_network_is_unsettled_until_stored_again(
    make_node: NodeFactory,
) -> None:
    first = await make_node()
    await first.announce(sheet("early"))  # into a network of one
    assert first.dht.unsettled() == []  # nobody else to hold it: nothing missed
    second = await make_node()
    await second.join([f"127.0.0.1:{first.port}"])
    await wait_for(lambda: len(first.dht.table) == 1)
    assert first.dht.unsettled() == ["early"]  # the network grew since it was stored
    def held() -> int:
        [record] = second.dht.records.get(skill_key("early"), now_s=int(second.dht.clock()))
        return record.seq

    await wait_for(lambda: bool(second.dht.records.get(skill_key("early"), now_s=0)))
    before = held()  # handed over when the two met
    await first.dht.maintain()  # stores a fresh version, into the network as it is now
    assert first.dht.unsettled() == []
    assert held() > before


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


async def _raw_peer() -> tuple[asyncio.DatagramTransport, _RawPeer]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        _RawPeer, local_addr=("127.0.0.1", 0)
    )
    return transport, proto


async def _hub(make_node: NodeFactory, settings: DhtSettings | None = None) -> Node:
    """A node that 24 others have joined through: it knows more than a small reply holds."""
    hub = await make_node(settings=settings)
    for _ in range(24):
        await (await make_node()).join([f"127.0.0.1:{hub.port}"])
    return hub


async def test_replies_to_unproven_addresses_do_not_amplify(make_node: NodeFactory) -> None:
    hub = await _hub(make_node)
    transport, peer = await _raw_peer()
    try:
        request = peer.seal(FindNode(bytes(32), ro=True), b"\x01" * 16)
        transport.sendto(request, hub.address)
        await wait_for(lambda: len(peer.received) == 1)
        reply = wire.open_envelope(peer.received[0], now_ms=_now_ms(), replay=None)
        assert isinstance(reply.message, Nodes)
        assert len(peer.received[0]) <= 3 * len(request)
        assert 0 < len(reply.message.nodes) < 20
        assert hub.dht.stats.truncated_replies > 0
    finally:
        transport.close()


def _opened(data: bytes) -> wire.Envelope:
    return wire.open_envelope(data, now_ms=_now_ms(), replay=None)


async def test_an_unknown_requester_proves_its_address_by_answering_the_reply(
    make_node: NodeFactory,
) -> None:
    node = await make_node()
    transport, peer = await _raw_peer()
    try:
        transport.sendto(peer.seal(FindNode(bytes(32)), b"\x03" * 16), node.address)
        await wait_for(lambda: len(peer.received) == 1)
        reply = _opened(peer.received[0])
        assert isinstance(reply.message, Nodes) and reply.message.ack
        assert peer.identity.node_id not in node.dht.table  # asked, not yet proven
        transport.sendto(peer.seal(Pong(reply.nonce), b"\x04" * 16), node.address)
        await wait_for(lambda: peer.identity.node_id in node.dht.table)
        # The reply was the whole probe: no PING went out before the answer to this one.
        transport.sendto(peer.seal(Ping(ro=True), b"\x05" * 16), node.address)
        await wait_for(lambda: isinstance(_opened(peer.received[-1]).message, Pong))
        assert [type(_opened(d).message) for d in peer.received] == [Nodes, Pong]
        assert not _opened(peer.received[-1]).message.ack  # known now, and asked with ro
    finally:
        transport.close()


async def test_an_unanswered_ack_is_followed_by_one_ping(make_node: NodeFactory) -> None:
    node = await make_node(settings=DhtSettings(rtt=RttEstimator(initial=0.05)))
    transport, peer = await _raw_peer()
    try:
        transport.sendto(peer.seal(FindNode(bytes(32)), b"\x06" * 16), node.address)
        await wait_for(lambda: len(peer.received) == 2)  # the NODES, then a PING
        await wait_for(lambda: not node.dht._probing)  # the PING has timed out too
        reply, ping = (_opened(d) for d in peer.received)
        assert isinstance(reply.message, Nodes) and reply.message.ack
        assert isinstance(ping.message, Ping)
        assert len(peer.received) == 2  # one PING, no retry: the ack was the first try
        assert peer.identity.node_id not in node.dht.table
    finally:
        transport.close()


@pytest.mark.parametrize("read_only", [False, True], ids=["full node", "read-only"])
async def test_only_a_matched_reply_asking_for_ack_is_answered(
    make_node: NodeFactory, read_only: bool,
) -> None:
    node = await make_node(settings=DhtSettings(read_only=read_only))
    transport, peer = await _raw_peer()
    addr = transport.get_extra_info("sockname")
    try:
        # Nobody asked for this one, so nothing answers it.
        transport.sendto(peer.seal(Pong(b"\x08" * 16, ack=True), b"\x09" * 16), node.address)
        asked = node.dht.request(addr, Ping(ro=read_only), expect=peer.identity.node_id)
        await wait_for(lambda: len(peer.received) == 1)
        transport.sendto(
            peer.seal(Pong(_opened(peer.received[0]).nonce, ack=True), b"\x0a" * 16),
            node.address,
        )
        await asked
        # A second request marks the end: whatever answered the first went out before it.
        marker = node.dht.request(addr, Ping(ro=True))
        await wait_for(lambda: isinstance(_opened(peer.received[-1]).message, Ping) and
                       len(peer.received) > 1)
        transport.sendto(
            peer.seal(Pong(_opened(peer.received[-1]).nonce), b"\x0b" * 16), node.address
        )
        await marker
        got = [_opened(d).message for d in peer.received]
        if read_only:
            assert [type(m) for m in got] == [Ping, Ping]
        else:
            assert [type(m) for m in got] == [Ping, Pong, Ping]
            assert got[1] == Pong(b"\x0a" * 16)  # answers the reply's own nonce, no ack
    finally:
        transport.close()


async def test_an_unknown_requester_costs_an_unproven_address_at_most_three_times_its_request(
    make_node: NodeFactory,
) -> None:
    hub = await _hub(make_node, DhtSettings(rtt=RttEstimator(initial=0.05)))
    transport, peer = await _raw_peer()
    try:
        request = peer.seal(FindNode(bytes(32)), b"\x0c" * 16)
        transport.sendto(request, hub.address)
        await wait_for(lambda: len(peer.received) == 2)  # the reply, then the PING
        await wait_for(lambda: not hub.dht._probing)  # and nothing after it
        reply, ping = (_opened(d) for d in peer.received)
        assert isinstance(reply.message, Nodes) and reply.message.ack  # the flag survives
        assert 0 < len(reply.message.nodes) < 20  # cutting the reply to its budget
        assert isinstance(ping.message, Ping)
        assert sum(map(len, peer.received)) <= 3 * len(request)
    finally:
        transport.close()


async def test_an_ack_is_answered_only_from_the_address_and_key_it_went_to(
    make_node: NodeFactory,
) -> None:
    node = await make_node()
    transport, peer = await _raw_peer()
    other, stranger = await _raw_peer()
    try:
        transport.sendto(peer.seal(FindNode(bytes(32)), b"\x0d" * 16), node.address)
        transport.sendto(peer.seal(FindNode(bytes(32)), b"\x0e" * 16), node.address)
        await wait_for(lambda: len(peer.received) == 2)
        first, second = (_opened(d).message for d in peer.received)
        assert isinstance(first, Nodes) and isinstance(second, Nodes)
        assert (first.ack, second.ack) == (True, False)  # one proof at a time
        nonce = _opened(peer.received[0]).nonce
        # Another key from the right address, the right key from another port: no.
        transport.sendto(stranger.seal(Pong(nonce), b"\x0f" * 16), node.address)
        other.sendto(peer.seal(Pong(nonce), b"\x10" * 16), node.address)
        await wait_for(lambda: node.dht.stats.received == 4)
        assert peer.identity.node_id not in node.dht.table
        assert stranger.identity.node_id not in node.dht.table
        # The right key from the right address, even asking for an ack back: yes, and
        # nothing answers that.
        transport.sendto(peer.seal(Pong(nonce, ack=True), b"\x11" * 16), node.address)
        await wait_for(lambda: peer.identity.node_id in node.dht.table)
        transport.sendto(peer.seal(Ping(ro=True), b"\x12" * 16), node.address)
        await wait_for(lambda: len(peer.received) == 3)
        last = _opened(peer.received[-1]).message
        assert isinstance(last, Pong) and last.re == b"\x12" * 16
    finally:
        transport.close()
        other.close()


async def test_a_reply_cut_down_after_signing_keeps_its_ack(
    make_node: NodeFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # _fit's arithmetic is exact, so the shrink loop after signing is a fallback that
    # nothing reaches; without _fit it must still cut to the budget and keep the flag.
    import knarr.node.dht as dht_module

    monkeypatch.setattr(dht_module, "_fit", lambda reply, budget: reply)
    node = await make_node()
    transport, peer = await _raw_peer()
    try:
        contacts = tuple(
            Contact(Identity.generate().node_id, f"192.0.2.{i}", 9000) for i in range(20)
        )
        sent = node.dht._reply(
            Nodes(b"\x15" * 16, contacts, ack=True), transport.get_extra_info("sockname"), 400
        )
        await wait_for(lambda: len(peer.received) == 1)
        reply = _opened(peer.received[0])
        assert reply.nonce == sent and len(peer.received[0]) <= 400
        assert isinstance(reply.message, Nodes) and reply.message.ack
        assert 0 < len(reply.message.nodes) < 20
    finally:
        transport.close()


def _same_bucket_identity(own: bytes, other: bytes) -> Identity:
    """An identity whose id falls in the bucket of ``other`` in ``own``'s table."""
    from knarr.node.routing import bucket_index

    while True:
        identity = Identity.generate()
        if bucket_index(own, identity.node_id) == bucket_index(own, other):
            return identity


@pytest.mark.parametrize("proves", [True, False], ids=["proven", "unproven"])
async def test_a_full_bucket_pings_its_stale_oldest_only_for_a_proven_newcomer(
    make_node: NodeFactory, proves: bool,
) -> None:
    node = await make_node(
        settings=DhtSettings(k=1, fresh_interval=0.0, rtt=RttEstimator(initial=0.05))
    )
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the bucket's only contact
    silent.bind(("127.0.0.1", 0))
    silent.setblocking(False)
    old = Contact(Identity.generate().node_id, *silent.getsockname())
    node.dht.table.add(old, asyncio.get_running_loop().time())
    transport, peer = await _raw_peer()
    peer.identity = _same_bucket_identity(node.identity.node_id, old.node_id)
    try:
        transport.sendto(peer.seal(FindNode(bytes(32)), b"\x13" * 16), node.address)
        await wait_for(lambda: len(peer.received) == 1)
        reply = _opened(peer.received[0])
        assert isinstance(reply.message, Nodes) and reply.message.ack
        if proves:
            transport.sendto(peer.seal(Pong(reply.nonce), b"\x14" * 16), node.address)
            # Proven, it waits in the replacement cache; the stale oldest is pinged, does
            # not answer, and the newcomer takes its place.
            await wait_for(lambda: peer.identity.node_id in node.dht.table)
            assert old.node_id not in node.dht.table
            assert silent.recv(2048)  # the PING that found it gone
        else:
            await wait_for(lambda: len(peer.received) == 2)  # the fallback PING, unanswered
            await wait_for(lambda: not node.dht._probing)
            assert old.node_id in node.dht.table
            with pytest.raises(BlockingIOError):
                silent.recv(2048)  # an unproven sender never made us ping our contact
    finally:
        transport.close()
        silent.close()


async def test_replayed_datagram_gets_no_second_answer(make_node: NodeFactory) -> None:
    node = await make_node()
    transport, peer = await _raw_peer()
    try:
        ping = peer.seal(Ping(ro=True), b"\x02" * 16)
        transport.sendto(ping, node.address)
        await wait_for(lambda: len(peer.received) == 1)
        transport.sendto(ping, node.address)
        await wait_for(lambda: node.dht.stats.invalid == 1)
        assert len(peer.received) == 1
        assert isinstance(
            wire.open_envelope(peer.received[0], now_ms=_now_ms(), replay=None).message, Pong
        )
    finally:
        transport.close()


async def test_per_ip_rate_limit_drops_floods(make_node: NodeFactory) -> None:
    node = await make_node(settings=DhtSettings(rate_limit=10.0, rate_burst=20.0))
    transport, peer = await _raw_peer()
    try:
        for i in range(100):
            transport.sendto(peer.seal(Ping(ro=True), i.to_bytes(16, "big")), node.address)
        await wait_for(lambda: node.dht.stats.received == 100)
        assert node.dht.stats.rate_limited >= 75
        await wait_for(lambda: len(peer.received) <= 25)
    finally:
        transport.close()


async def test_request_to_silent_address_times_out(make_node: NodeFactory) -> None:
    node = await make_node()
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))
    try:
        with pytest.raises(RequestTimeout):
            await node.dht.request(dead.getsockname(), Ping(), timeout=0.05)
    finally:
        dead.close()


async def test_reply_from_wrong_node_id_is_ignored(make_node: NodeFactory) -> None:
    a, b = await make_node(), await make_node()
    impostor = Contact(bytes(32), "127.0.0.1", a.port)
    with pytest.raises(RequestTimeout):
        await b.dht.request(impostor.addr, Ping(), expect=impostor.node_id, timeout=0.2)


async def test_new_neighbour_is_handed_the_records_it_should_hold(
    make_node: NodeFactory,
) -> None:
    a, b = await make_node(), await make_node()
    await b.join([f"127.0.0.1:{a.port}"])
    await b.announce(sheet("handed", "over"))
    c = await make_node()
    await c.join([f"127.0.0.1:{a.port}"])
    # c is among the k closest to every key in a 3-node network, so it gets a copy
    # without anyone republishing.
    await wait_for(lambda: len(c.dht.records.get(skill_key("handed"), now_s=0)) == 1)


async def test_a_finished_lookup_is_freed_without_the_cyclic_collector(
    make_node: NodeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    nodes = [await make_node() for _ in range(5)]
    for n in nodes[1:]:
        await n.join([f"127.0.0.1:{nodes[0].port}"])
    target = bytes(32)
    machines: list[weakref.ref[Lookup]] = []

    class Tracked(Lookup):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if self.target == target:
                machines.append(weakref.ref(self))

    monkeypatch.setattr(dht_module, "Lookup", Tracked)
    gc.collect()
    gc.disable()  # anything still alive below is held by a reference cycle
    try:
        result = await nodes[4].dht.lookup(target)
        assert len(result.closest) == 4
        await wait_for(lambda: not nodes[4].dht._pending)  # its last request has ended
        assert len(machines) == 1
        assert machines[0]() is None
    finally:
        gc.enable()


async def test_a_cancelled_lookup_sends_no_more_queries(make_node: NodeFactory) -> None:
    node = await make_node()
    peers = [await _raw_peer() for _ in range(9)]  # they never answer
    try:
        seeds = [Contact(bytes([i + 1]) * 32, "127.0.0.1", t.get_extra_info("sockname")[1])
                 for i, (t, _) in enumerate(peers)]

        def queried() -> int:
            return sum(len(p.received) for _, p in peers)

        task = asyncio.create_task(node.dht.lookup(bytes(32), seeds=seeds))
        await wait_for(lambda: queried() == 3)  # alpha queries in flight
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The queries stall (after ~1.1 s) and time out (~1.5 s); a live lookup would
        # ask the next seeds then. A cancelled one asks nobody.
        await wait_for(lambda: not node.dht._pending)
        assert queried() == 3
    finally:
        for transport, _ in peers:
            transport.close()
