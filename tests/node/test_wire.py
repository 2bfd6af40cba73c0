"""Signed envelopes: every message type round-trips, and every bad datagram is refused
with its own error type. Times and nonces are passed in; nothing here reads a clock."""

from __future__ import annotations

import struct

import pytest

from knarr.errors import (
    BadSignature,
    FutureMessage,
    LocalProtocolError,
    MalformedMessage,
    MistypedMessage,
    OversizedMessage,
    RemoteProtocolError,
    ReplayedMessage,
    StaleMessage,
    TruncatedMessage,
)
from knarr.node import cbor, wire
from knarr.node.contact import Contact
from knarr.node.identity import Identity
from knarr.node.wire import (
    Error,
    ErrorCode,
    FindNode,
    FindValue,
    Message,
    MsgType,
    Nodes,
    Ping,
    Pong,
    ReplayGuard,
    Store,
    Stored,
    Value,
    open_envelope,
    seal,
)

# The envelope header as docs/protocol.md describes it, written out independently of
# wire.py so that a change to the layout there shows up here.
HEADER = struct.Struct(">2sBB32sQ16s")
NOW = 1_700_000_000_000
WINDOW = wire.DEFAULT_WINDOW_MS

ALICE = Identity.from_seed(bytes(range(32)))
BOB = Identity.from_seed(bytes(range(32, 64)))


def nonce(n: int) -> bytes:
    return n.to_bytes(16, "big")


def sealed(message: Message, *, ts: int = NOW, n: int = 1, identity: Identity = ALICE) -> bytes:
    return seal(identity, message, now_ms=ts, nonce=nonce(n))


def opened(data: bytes, *, now: int = NOW, replay: ReplayGuard | None = None) -> wire.Envelope:
    return open_envelope(data, now_ms=now, replay=replay)


def hand_signed(
    mtype: int,
    body: bytes,
    *,
    magic: bytes = b"KN",
    version: int = 1,
    ts: int = NOW,
    identity: Identity = ALICE,
) -> bytes:
    """An envelope built without wire.seal, for bodies seal would never produce."""
    signed = HEADER.pack(magic, version, mtype, identity.public_key, ts, nonce(99)) + body
    return signed + identity.sign(signed)


def twenty_contacts() -> tuple[Contact, ...]:
    contacts = []
    for i in range(20):
        node_id = bytes([i]) * 32
        host = f"2001:db8:{i:x}::{i + 1:x}" if i % 2 else f"203.0.{i}.{i + 1}"
        contacts.append(Contact(node_id, host, 65535 - i))
    return tuple(contacts)


def test_header_layout_matches_the_spec() -> None:
    assert HEADER.size == wire.HEADER_SIZE == 60
    assert wire.OVERHEAD == 60 + 64


# ----------------------------------------------------------------------- round trips

ROUND_TRIPS = [
    Ping(),
    Ping(ro=True),
    Pong(re=nonce(7)),
    Pong(re=nonce(7), ack=True),
    FindNode(target=b"\x11" * 32),
    FindNode(target=b"\x11" * 32, ro=True),
    Nodes(re=nonce(7), nodes=twenty_contacts()),
    Nodes(re=nonce(7), nodes=()),
    Nodes(re=nonce(7), nodes=(), ack=True),
    FindValue(key=b"\x22" * 32),
    FindValue(key=b"\x22" * 32, offset=40, ro=True),
    Value(re=nonce(7), records=(b"first record", b"\x00" * 300, b""), more=True),
    Value(re=nonce(7), records=()),
    Value(re=nonce(7), records=(b"one",), ack=True),
    Store(key=b"\x33" * 32, record=b"a signed record"),
    Stored(re=nonce(7), ok=True),
    Stored(re=nonce(7), ok=True, ack=True),
    Stored(re=nonce(7), ok=False, why="stale record: sequence 3 <= stored 4"),
    Error(re=nonce(7), code=ErrorCode.RATE_LIMITED, msg="slow down"),
]


@pytest.mark.parametrize("message", ROUND_TRIPS, ids=lambda m: type(m).__name__)
def test_every_message_type_round_trips(message: Message) -> None:
    data = sealed(message, n=5)
    envelope = opened(data, replay=ReplayGuard())
    assert envelope.message == message
    assert type(envelope.message) is type(message)
    assert envelope.public_key == ALICE.public_key
    assert envelope.sender_id == ALICE.node_id
    assert envelope.timestamp_ms == NOW
    assert envelope.nonce == nonce(5)
    assert wire.peek_type(data) == message.TYPE


def test_round_trips_cover_every_dht_type() -> None:
    covered = {type(m).TYPE for m in ROUND_TRIPS}
    assert covered == {t for t in MsgType if t < 16}  # 16 and up: the task channel


def test_nodes_reply_keeps_ipv6_addresses_and_ports() -> None:
    contacts = twenty_contacts()
    got = opened(sealed(Nodes(re=nonce(1), nodes=contacts))).message
    assert isinstance(got, Nodes)
    assert [c.addr for c in got.nodes] == [c.addr for c in contacts]
    assert any(":" in c.host for c in got.nodes)


def test_a_twenty_contact_nodes_reply_fits_in_one_datagram() -> None:
    # Worst case per contact: IPv6 and a three-byte port.
    contacts = tuple(
        Contact(bytes([i]) * 32, f"2001:db8:ffff:ffff:ffff:ffff:ffff:{i:x}", 65535)
        for i in range(20)
    )
    data = sealed(Nodes(re=nonce(1), nodes=contacts))
    assert len(data) < 1400
    got = opened(data).message
    assert isinstance(got, Nodes) and got.nodes == contacts


def test_seal_refuses_a_message_too_large_for_a_datagram() -> None:
    big = Value(re=nonce(1), records=(b"x" * 700, b"y" * 700))
    with pytest.raises(LocalProtocolError, match="limit is 1400"):
        sealed(big)
    # ...and it is a local error, never one that would blame a peer.
    with pytest.raises(LocalProtocolError) as info:
        sealed(big)
    assert not isinstance(info.value, RemoteProtocolError)


def test_seal_accepts_exactly_the_limit() -> None:
    probe = len(sealed(Value(re=nonce(1), records=(b"",))))
    size = 1400 - probe - 2  # the byte string's head grows from one byte to three
    fits = Value(re=nonce(1), records=(b"z" * size,))
    assert len(sealed(fits)) == 1400
    assert opened(sealed(fits)).message == fits
    with pytest.raises(LocalProtocolError):
        sealed(Value(re=nonce(1), records=(b"z" * (size + 1),)))


def test_seal_refuses_a_nonce_of_the_wrong_size() -> None:
    with pytest.raises(LocalProtocolError, match="nonce"):
        seal(ALICE, Ping(), now_ms=NOW, nonce=b"short")


# ------------------------------------------------------------------------ time window


def test_a_message_at_the_edges_of_the_window_is_accepted() -> None:
    assert opened(sealed(Ping(), ts=NOW - WINDOW)).timestamp_ms == NOW - WINDOW
    assert opened(sealed(Ping(), ts=NOW + WINDOW)).timestamp_ms == NOW + WINDOW


def test_a_stale_message_is_refused() -> None:
    with pytest.raises(StaleMessage):
        opened(sealed(Ping(), ts=NOW - WINDOW - 1))


def test_a_future_dated_message_is_refused() -> None:
    with pytest.raises(FutureMessage):
        opened(sealed(Ping(), ts=NOW + WINDOW + 1))


def test_the_window_is_configurable() -> None:
    data = sealed(Ping(), ts=NOW - 5_000)
    with pytest.raises(StaleMessage):
        open_envelope(data, now_ms=NOW, replay=None, window_ms=1_000)
    assert open_envelope(data, now_ms=NOW, replay=None, window_ms=10_000)


# ----------------------------------------------------------------------------- replay


def test_the_same_datagram_twice_is_a_replay() -> None:
    guard = ReplayGuard()
    data = sealed(FindNode(target=b"\x01" * 32))
    opened(data, replay=guard)
    with pytest.raises(ReplayedMessage):
        opened(data, now=NOW + 1, replay=guard)


def test_a_nonce_is_scoped_to_its_sender() -> None:
    guard = ReplayGuard()
    opened(sealed(Ping(), n=1, identity=ALICE), replay=guard)
    assert opened(sealed(Ping(), n=1, identity=BOB), replay=guard).public_key == BOB.public_key


def test_a_forged_copy_does_not_poison_the_replay_guard() -> None:
    guard = ReplayGuard()
    data = sealed(Ping(), n=3)
    forged = data[:-1] + bytes([data[-1] ^ 1])
    with pytest.raises(BadSignature):
        opened(forged, replay=guard)
    assert opened(data, replay=guard).nonce == nonce(3)


def test_the_replay_guard_stays_bounded_and_refuses_what_it_forgot() -> None:
    guard = ReplayGuard(window_ms=WINDOW, capacity=8)
    datagrams = [sealed(Ping(), ts=NOW + i, n=i) for i in range(30)]
    for i, data in enumerate(datagrams):
        opened(data, now=NOW + i, replay=guard)
        assert len(guard) <= 8
    # The first datagrams were evicted to make room; replaying one is refused as stale
    # (the guard can no longer vouch for it), never accepted.
    for data in datagrams[:22]:
        with pytest.raises(StaleMessage):
            opened(data, now=NOW + 30, replay=guard)
    # The ones it still remembers are refused as replays.
    for data in datagrams[22:]:
        with pytest.raises(ReplayedMessage):
            opened(data, now=NOW + 30, replay=guard)
    # Fresh traffic still flows.
    assert opened(sealed(Ping(), ts=NOW + 31, n=100), now=NOW + 31, replay=guard)


def test_the_replay_guard_forgets_entries_older_than_the_window() -> None:
    guard = ReplayGuard(window_ms=WINDOW, capacity=1_000)
    for i in range(10):
        opened(sealed(Ping(), n=i), replay=guard)
    assert len(guard) == 10
    later = NOW + WINDOW + 1
    opened(sealed(Ping(), ts=later, n=50), now=later, replay=guard)
    assert len(guard) == 1
    # The forgotten ones are stale by now, so forgetting them reopened nothing.
    with pytest.raises(StaleMessage):
        opened(sealed(Ping(), n=0), now=later, replay=guard)


# --------------------------------------------------------------------------- forgery


def test_a_flipped_signature_byte_is_refused() -> None:
    data = bytearray(sealed(Ping()))
    data[-10] ^= 0x40
    with pytest.raises(BadSignature):
        opened(bytes(data))


def test_a_flipped_body_byte_is_refused() -> None:
    data = bytearray(sealed(FindNode(target=b"\x05" * 32)))
    data[wire.HEADER_SIZE + 12] ^= 0x01  # inside the target
    with pytest.raises(BadSignature):
        opened(bytes(data))


@pytest.mark.parametrize(
    "offset", [3, 4, 35, 43, 44, 59], ids=["type", "key0", "key31", "ts", "nonce0", "nonce15"]
)
def test_a_flipped_header_byte_is_refused(offset: int) -> None:
    data = bytearray(sealed(Ping()))
    data[offset] ^= 0x01 if offset != 3 else MsgType.PING ^ MsgType.PONG
    with pytest.raises(BadSignature):
        opened(bytes(data))


def test_a_swapped_public_key_is_refused() -> None:
    data = sealed(Ping())
    swapped = data[:4] + BOB.public_key + data[36:]
    with pytest.raises(BadSignature):
        opened(swapped)


def test_a_public_key_that_is_not_a_curve_point_is_refused() -> None:
    data = sealed(Ping())
    with pytest.raises(BadSignature):
        opened(data[:4] + b"\xff" * 32 + data[36:])


# --------------------------------------------------------------------- size and shape


def test_a_short_datagram_is_truncated() -> None:
    with pytest.raises(TruncatedMessage):
        opened(sealed(Ping())[:50])
    with pytest.raises(TruncatedMessage):
        opened(b"")


def test_an_envelope_with_an_empty_body_is_truncated() -> None:
    with pytest.raises(TruncatedMessage):
        opened(hand_signed(MsgType.PING, b""))


def test_an_oversized_datagram_is_refused_before_parsing() -> None:
    # Garbage: if anything were parsed first, the magic check would raise instead.
    with pytest.raises(OversizedMessage):
        opened(b"\xff" * 1401)
    with pytest.raises(OversizedMessage):
        opened(sealed(Ping()) + b"\x00" * (1401 - len(sealed(Ping()))))


def test_the_size_limit_is_configurable() -> None:
    data = sealed(Ping())
    with pytest.raises(OversizedMessage):
        open_envelope(data, now_ms=NOW, replay=None, max_size=len(data) - 1)


def test_bad_magic_is_malformed() -> None:
    with pytest.raises(MalformedMessage, match="magic"):
        opened(hand_signed(MsgType.PING, cbor.encode({}), magic=b"XX"))


def test_an_unknown_version_is_malformed() -> None:
    with pytest.raises(MalformedMessage, match="version"):
        opened(hand_signed(MsgType.PING, cbor.encode({}), version=2))


def test_an_unknown_type_byte_is_mistyped() -> None:
    with pytest.raises(MistypedMessage, match="type 99"):
        opened(hand_signed(99, cbor.encode({})))


@pytest.mark.parametrize(
    ("mtype", "body"),
    [
        (MsgType.FIND_NODE, {"target": b"\x00" * 31}),
        (MsgType.FIND_NODE, {"target": "not bytes" * 4}),
        (MsgType.FIND_NODE, {}),
        (MsgType.FIND_NODE, {"target": b"\x00" * 32, "extra": 1}),
        (MsgType.PING, {"ro": 1}),
        (MsgType.PING, {7: True}),
        (MsgType.PONG, {"re": b"\x00" * 15}),
        (MsgType.NODES, {"re": b"\x00" * 16, "nodes": {}}),
        (MsgType.NODES, {"re": b"\x00" * 16, "nodes": [[b"\x00" * 32, b"\x7f\0\0\1", 0]]}),
        (MsgType.NODES, {"re": b"\x00" * 16, "nodes": [[b"\x00" * 32, b"\x7f\0\0", 1]]}),
        (MsgType.NODES, {"re": b"\x00" * 16, "nodes": [[b"\x00" * 32, b"\x7f\0\0\1", True]]}),
        (MsgType.FIND_VALUE, {"key": b"\x00" * 32, "offset": -1}),
        (MsgType.FIND_VALUE, {"key": b"\x00" * 32, "offset": True}),
        (MsgType.VALUE, {"re": b"\x00" * 16, "records": ["text, not bytes"]}),
        (MsgType.STORE, {"key": b"\x00" * 32, "record": b"r", "ro": True}),
        (MsgType.STORED, {"re": b"\x00" * 16}),
        (MsgType.STORED, {"re": b"\x00" * 16, "ok": True, "why": "x" * 513}),
        (MsgType.ERROR, {"re": b"\x00" * 16, "code": "1"}),
    ],
    ids=lambda v: v.name if isinstance(v, MsgType) else None,
)
def test_a_signed_body_with_a_wrong_field_is_mistyped(mtype: MsgType, body: object) -> None:
    with pytest.raises(MistypedMessage):
        opened(hand_signed(mtype, cbor.encode(body)))


def test_a_body_that_is_not_a_map_is_mistyped() -> None:
    with pytest.raises(MistypedMessage, match="map"):
        opened(hand_signed(MsgType.PING, cbor.encode([])))


def test_a_non_canonical_body_is_malformed() -> None:
    # {"ro": true} with the map length in a needlessly long head (0xb8 0x01).
    with pytest.raises(MalformedMessage):
        opened(hand_signed(MsgType.PING, b"\xb8\x01\x62ro\xf5"))


def test_a_hand_signed_canonical_body_is_accepted() -> None:
    # The control for the tests above: the same construction with a valid body works.
    got = opened(hand_signed(MsgType.FIND_NODE, cbor.encode({"target": b"\x00" * 32})))
    assert got.message == FindNode(target=b"\x00" * 32)


def test_registering_a_taken_type_code_is_refused() -> None:
    with pytest.raises(LocalProtocolError, match="already registered"):
        wire.register_message(Ping)


def test_a_contact_is_encoded_once_and_as_its_wire_form() -> None:
    contact = twenty_contacts()[0]
    first = contact.encoded()
    assert first == cbor.encode(contact.to_wire())
    assert contact.encoded() is first
    assert contact == Contact(contact.node_id, contact.host, contact.port)  # not compared


def test_contacts_from_the_wire_are_shared_only_when_id_and_address_match() -> None:
    node_id = bytes(range(32))
    first = Contact.from_wire([node_id, bytes([203, 0, 113, 7]), 4000])
    again = Contact.from_wire([bytes(range(32)), bytes([203, 0, 113, 7]), 4000])
    assert again is first  # one object per (id, address)
    moved = Contact.from_wire([node_id, bytes([203, 0, 113, 7]), 4001])
    elsewhere = Contact.from_wire([node_id, bytes([203, 0, 113, 8]), 4000])
    assert (moved.host, moved.port) == ("203.0.113.7", 4001)
    assert (elsewhere.host, elsewhere.port) == ("203.0.113.8", 4000)
    assert moved.encoded() != first.encoded() != elsewhere.encoded()
