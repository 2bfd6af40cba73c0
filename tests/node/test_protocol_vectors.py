"""The test vectors in docs/protocol.md, regenerated from the real code byte for byte.

The spec is what another implementation is written from, so its vectors must be what
this implementation produces. Every ``hex vector=NAME`` block in the document is parsed,
rebuilt here from the inputs the document states, and compared; each envelope vector must
also open to the message the document describes. Ed25519 signatures are deterministic
(RFC 8032), so the vectors never change unless the encoding does.
"""

from __future__ import annotations

import math
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from knarr.errors import BadSignature
from knarr.node import cbor, wire
from knarr.node.contact import Contact
from knarr.node.identity import Identity, node_id_of
from knarr.node.records import (
    MAX_RECORD,
    SkillRecord,
    parse_record,
    sign_record,
    skill_key,
    tag_key,
)
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
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
_VECTOR_BLOCK = re.compile(r"^```hex vector=([a-z0-9_.-]+)[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
_ANY_HEX_BLOCK = re.compile(r"^```hex\b", re.M)
TASK_CHANNEL_FIRST_TYPE = 16  # types below this are the DHT's, carried over UDP
_TYPE_ROW = re.compile(r"^\|\s*`?([A-Z_]+)`?\s*\|\s*(\d+)\s*\|", re.M)

# ------------------------------------------------------------ inputs, as the doc states them

NOW_MS = 1_700_000_000_000
ALICE = Identity.from_seed(bytes(range(32)))  # seed 00 01 .. 1f: sends the requests
BOB = Identity.from_seed(bytes(range(32, 64)))  # seed 20 21 .. 3f: sends the replies
REQUEST_NONCE = bytes(range(16))  # 00 01 .. 0f
REPLY_NONCE = bytes(range(16, 32))  # 10 11 .. 1f

SHEET: dict[str, Any] = {
    "name": "echo",
    "version": "1.0.0",
    "description": "Returns its input unchanged.",
    "tags": ["example", "text"],
    "input_schema": {"text": "string"},
    "output_schema": {"text": "string"},
    "price": 1.0,
    "visibility": "public",
}
RECORD_EXPIRES = 1_700_003_600


@cache
def record() -> SkillRecord:
    return sign_record(
        ALICE, SHEET, host="127.0.0.1", port=9000, sidecar_port=9001,
        expires=RECORD_EXPIRES, seq=1,
    )


def contacts() -> tuple[Contact, ...]:
    return (
        Contact(b"\x11" * 32, "192.0.2.1", 9000),
        Contact(b"\x22" * 32, "2001:db8::1", 9001),
    )


def envelopes() -> dict[str, tuple[Identity, bytes, Message]]:
    """Envelope vectors: name -> (signer, nonce, message), all at ``NOW_MS``."""
    a, b, n = ALICE, BOB, REQUEST_NONCE
    raw = record().raw
    return {
        "ping": (a, n, Ping()),
        "ping_ro": (a, n, Ping(ro=True)),
        "pong": (b, REPLY_NONCE, Pong(re=n)),
        "find_node": (a, n, FindNode(target=ALICE.node_id)),
        "nodes": (b, REPLY_NONCE, Nodes(re=n, nodes=contacts())),
        "find_value": (a, n, FindValue(key=skill_key("echo"))),
        "find_value_page": (a, n, FindValue(key=skill_key("echo"), offset=20, ro=True)),
        "value": (b, REPLY_NONCE, Value(re=n, records=(raw,))),
        "store": (a, n, Store(key=skill_key("echo"), record=raw)),
        "stored": (b, REPLY_NONCE, Stored(re=n, ok=True)),
        "stored_refused": (b, REPLY_NONCE, Stored(re=n, ok=False, why="record has expired")),
        "error": (b, REPLY_NONCE, Error(re=n, code=ErrorCode.RATE_LIMITED, msg="slow down")),
    }


CBOR_VALUES: dict[str, Any] = {
    "cbor.ints": [0, 23, 24, 255, 256, 65535, 65536, 4294967295, 4294967296, -1, -24, -25, -256,
                  -257],
    "cbor.floats": [1.0, 0.5, -2.5, 65504.0, 100000.0, 0.1, math.inf, -0.0],
    "cbor.strings": ["", "a", "\u00fc", b"", b"\x00\xff", "x" * 24],
    "cbor.map_order": {"tags": 1, "seq": 2, "in": 3, "exp": 4, "a": 5, 10: 6, -1: 7},
}


def expected_vectors() -> dict[str, bytes]:
    """Every vector the document must carry, built with the real code."""
    vectors: dict[str, bytes] = {}
    for label, identity in (("a", ALICE), ("b", BOB)):
        vectors[f"identity.{label}.public_key"] = identity.public_key
        vectors[f"identity.{label}.node_id"] = identity.node_id
    vectors["key.skill.echo"] = skill_key("echo")
    vectors["key.tag.example"] = tag_key("example")
    vectors["key.tag.text"] = tag_key("text")
    vectors["record.echo"] = record().raw
    for name, (identity, nonce, message) in envelopes().items():
        vectors[f"envelope.{name}"] = wire.seal(identity, message, now_ms=NOW_MS, nonce=nonce)
    for name, value in CBOR_VALUES.items():
        vectors[name] = cbor.encode(value)
    return vectors


# --------------------------------------------------------------------------- the document


@cache
def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


@cache
def doc_vectors() -> dict[str, bytes]:
    """``name -> bytes`` for every ``hex vector=NAME`` fenced block in the document."""
    vectors: dict[str, bytes] = {}
    for name, body in _VECTOR_BLOCK.findall(doc_text()):
        assert name not in vectors, f"vector {name!r} appears twice in {DOC.name}"
        lines = body.split()
        assert lines, f"vector {name!r} is empty"
        for line in lines:
            assert re.fullmatch(r"[0-9a-f]+", line), f"vector {name!r}: not lowercase hex: {line}"
        assert all(len(line) == 64 for line in lines[:-1]) and len(lines[-1]) <= 64, (
            f"vector {name!r} must be wrapped at exactly 64 hex characters per line"
        )
        vectors[name] = bytes.fromhex("".join(lines))
    return vectors


def test_every_hex_block_is_a_well_formed_vector() -> None:
    assert len(_ANY_HEX_BLOCK.findall(doc_text())) == len(doc_vectors())


def test_the_document_carries_exactly_the_expected_vectors() -> None:
    assert sorted(doc_vectors()) == sorted(expected_vectors())


@pytest.mark.parametrize("name", sorted(expected_vectors()))
def test_vector_matches_the_code(name: str) -> None:
    got = doc_vectors().get(name)
    assert got is not None, f"{DOC.name} has no vector {name!r}"
    assert got.hex() == expected_vectors()[name].hex()


# -------------------------------------------------------------------- what the bytes mean


def test_identities_derive_node_id_from_public_key() -> None:
    vectors = doc_vectors()
    for label in ("a", "b"):
        public_key = vectors[f"identity.{label}.public_key"]
        assert vectors[f"identity.{label}.node_id"] == node_id_of(public_key)


@pytest.mark.parametrize("name", sorted(envelopes()))
def test_envelope_vector_opens_to_its_message(name: str) -> None:
    identity, nonce, message = envelopes()[name]
    data = doc_vectors()[f"envelope.{name}"]
    opened = wire.open_envelope(data, now_ms=NOW_MS, replay=ReplayGuard())
    assert opened.message == message
    assert type(opened.message) is type(message)
    assert opened.public_key == identity.public_key
    assert opened.sender_id == identity.node_id
    assert opened.timestamp_ms == NOW_MS
    assert opened.nonce == nonce
    assert wire.peek_type(data) == message.TYPE
    assert len(data) <= wire.MAX_DATAGRAM


@pytest.mark.parametrize("name", sorted(envelopes()))
def test_envelope_vector_signature_covers_every_byte(name: str) -> None:
    data = bytearray(doc_vectors()[f"envelope.{name}"])
    data[len(data) // 2] ^= 0x01
    with pytest.raises(BadSignature):
        wire.open_envelope(bytes(data), now_ms=NOW_MS, replay=None)


def test_record_vector_parses_to_the_stated_sheet() -> None:
    raw = doc_vectors()["record.echo"]
    assert len(raw) <= MAX_RECORD
    parsed = parse_record(raw, now_s=NOW_MS // 1000)
    assert (parsed.name, parsed.version, parsed.description) == (
        "echo", "1.0.0", "Returns its input unchanged."
    )
    assert parsed.tags == ("example", "text")
    assert dict(parsed.input_schema) == dict(parsed.output_schema) == {"text": "string"}
    assert (parsed.price, parsed.visibility) == (1.0, "public")
    assert (parsed.host, parsed.port, parsed.sidecar_port) == ("127.0.0.1", 9000, 9001)
    assert (parsed.expires, parsed.seq) == (RECORD_EXPIRES, 1)
    assert parsed.public_key == ALICE.public_key
    vectors = doc_vectors()
    assert parsed.keys() == {
        vectors["key.skill.echo"], vectors["key.tag.example"], vectors["key.tag.text"]
    }


@pytest.mark.parametrize("name", sorted(CBOR_VALUES))
def test_cbor_vector_decodes_to_its_value(name: str) -> None:
    decoded = cbor.decode(doc_vectors()[name])
    assert decoded == CBOR_VALUES[name]
    assert cbor.encode(decoded) == doc_vectors()[name]


# ------------------------------------------------------------------ every type documented


def test_the_message_type_table_lists_every_type() -> None:
    start = doc_text().index("\n### Type codes\n")
    end = doc_text().index("\n#", start + 1)
    table = {name: int(code) for name, code in _TYPE_ROW.findall(doc_text()[start:end])}
    assert table == {t.name: t.value for t in MsgType}


def test_every_message_type_has_a_section() -> None:
    for t in MsgType:
        assert re.search(rf"^### {t.name} \({t.value}\)", doc_text(), re.M), (
            f"{DOC.name} has no '### {t.name} ({t.value})' section"
        )


def test_every_dht_message_type_has_an_envelope_vector() -> None:
    covered = {wire.peek_type(data) for name, data in doc_vectors().items()
               if name.startswith("envelope.")}
    assert covered == {t.value for t in MsgType if t < TASK_CHANNEL_FIRST_TYPE}
