"""The test vectors in docs/protocol.md, regenerated from the real code byte for byte.

The spec is what another implementation is written from, so its vectors must be what
this implementation produces. Every ``hex vector=NAME`` block in the document is parsed,
rebuilt here from the inputs the document states, and compared; each envelope vector must
also open to the message the document describes, each sealed box must open to its stated
plaintext, and each signature must verify. Ed25519 signatures are deterministic (RFC 8032)
and the boxes use the fixed nonces the document gives, so the vectors never change unless
the encoding does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from functools import cache
from pathlib import Path
from typing import Any

import nacl.bindings
import pytest

from knarr.errors import BadSignature, MalformedMessage, MistypedMessage
from knarr.node import cbor, wire
from knarr.node.contact import Contact
from knarr.node.dht import VALUE_PAD
from knarr.node.economy import (
    Receipt,
    ReceiptDraft,
    Statement,
    check_receipt,
    digest,
    parse_receipt,
    receipts_hash,
    sign_receipt,
    sign_receipts,
)
from knarr.node.identity import Identity, node_id_of, verify
from knarr.node.lookup import RttEstimator
from knarr.node.mail import MailAck, MailMessage, check_payload, open_payload
from knarr.node.records import (
    MAX_RECORD,
    SkillRecord,
    parse_record,
    sign_record,
    skill_key,
    tag_key,
)
from knarr.node.settlement import (
    SettlePropose,
    SettleReconcile,
    SettleReconciled,
    SettleReply,
)
from knarr.node.sidecar import EMPTY_HASH, UNSIGNED_PAYLOAD, sign_headers, signed_message
from knarr.node.tasks import (
    ERROR_CLASSES,
    SEALED_OVERHEAD,
    TASK_TYPES,
    Boxes,
    TaskRequest,
    TaskResult,
    open_frame,
    seal_frame,
    split_result,
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
_HEADERS_BLOCK = re.compile(r"^```http headers=([a-z0-9_.-]+)[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
_ANY_HTTP_BLOCK = re.compile(r"^```http\b", re.M)
TASK_CHANNEL_FIRST_TYPE = 16  # types below this are the DHT's, carried over UDP
_TYPE_ROW = re.compile(r"^\|\s*`?([A-Z_]+)`?\s*\|\s*(\d+)\s*\|", re.M)
_CODE_ROW = re.compile(r"^\|\s*`([a-z_]+)`\s*\|", re.M)

# ------------------------------------------------------------ inputs, as the doc states them

NOW_MS = 1_700_000_000_000
ALICE = Identity.from_seed(bytes(range(32)))  # seed 00 01 .. 1f: requests; the task's requester
BOB = Identity.from_seed(bytes(range(32, 64)))  # seed 20 21 .. 3f: replies; the task's provider
MALLORY = Identity.from_seed(bytes(range(64, 96)))  # a third node, for what must not open
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

# The task of section 9.5 and the receipt and settlement of section 9.6.
TASK_INPUT: dict[str, Any] = {"text": "hello"}
TASK_OUTPUT: dict[str, Any] = {"text": "hello"}
TASK_TIMEOUT_MS = 30_000
REQUESTER_SIDECAR = 9001
REQUEST_BOX_NONCE = bytes(24)  # 00 x 24
RESULT_BOX_NONCE = bytes(range(24))  # 00 01 .. 17
PRICE = 1_000_000  # micro-credits: 1 credit
RECEIPT_MS = 3
STATEMENT_ID = bytes(range(64, 80))  # 40 41 .. 4f
REFUSAL_WHY = "books differ: we see 2 credits over 2 receipts, you proposed 1 over 1"

# The mail of section 9.5.
MAIL_ID = bytes(range(80, 96))  # 50 51 .. 5f
MAIL_TYPE = "text"
MAIL_BODY: dict[str, Any] = {"text": "hello"}
MAIL_SENT = NOW_MS / 1000
MAIL_BOX_NONCE = bytes(range(24, 48))  # 18 19 .. 2f

# The sidecar requests of section 9.7.
ASSET = b"hello"
ASSET_HASH = hashlib.sha256(ASSET).hexdigest()
SIDECAR_REQUESTS: dict[str, tuple[str, str, str]] = {  # name -> (method, path, content hash)
    "put": ("PUT", "/assets", ASSET_HASH),
    "put_unsigned": ("PUT", "/assets", UNSIGNED_PAYLOAD),
    "get": ("GET", f"/assets/{ASSET_HASH}", EMPTY_HASH),
}


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


def task_request() -> TaskRequest:
    return TaskRequest(
        skill="echo", input=cbor.encode(TASK_INPUT), timeout_ms=TASK_TIMEOUT_MS,
        sidecar=REQUESTER_SIDECAR,
    )


def task_result() -> TaskResult:
    return TaskResult(re=REQUEST_NONCE, out=cbor.encode({"ok": TASK_OUTPUT}),
                      receipt=receipt().raw)


@cache
def request_frame() -> bytes:
    return seal_frame(ALICE, Boxes(ALICE), BOB.public_key, task_request(), now_ms=NOW_MS,
                      nonce=REQUEST_NONCE, box_nonce=REQUEST_BOX_NONCE, max_size=1 << 20)


@cache
def result_frame() -> bytes:
    return seal_frame(BOB, Boxes(BOB), ALICE.public_key, task_result(), now_ms=NOW_MS,
                      nonce=REPLY_NONCE, box_nonce=RESULT_BOX_NONCE, max_size=1 << 20)


@cache
def receipt() -> Receipt:
    return sign_receipt(
        BOB, task=REQUEST_NONCE, skill="echo", price=PRICE, requester_key=ALICE.public_key,
        input_hash=digest(TASK_INPUT),
        output_hash=hashlib.sha256(cbor.encode({"ok": TASK_OUTPUT})).digest(),
        time_ms=NOW_MS, outcome="completed", duration_ms=RECEIPT_MS,
    )


BATCH_TASKS = (REQUEST_NONCE, bytes(range(16, 32)), bytes(range(32, 48)))


@cache
def batch() -> list[Receipt]:
    """The receipts of three tasks like section 9.5's, signed as one batch."""
    fields = dataclasses.asdict(receipt_draft())
    return sign_receipts(BOB, [ReceiptDraft(**fields | {"task": t}) for t in BATCH_TASKS])


def receipt_draft() -> ReceiptDraft:
    return ReceiptDraft(
        task=REQUEST_NONCE, skill="echo", price=PRICE, requester_key=ALICE.public_key,
        input_hash=digest(TASK_INPUT),
        output_hash=hashlib.sha256(cbor.encode({"ok": TASK_OUTPUT})).digest(),
        time_ms=NOW_MS, outcome="completed", duration_ms=RECEIPT_MS,
    )


def batch_root_message() -> bytes:
    """What BOB signed for :func:`batch`, rebuilt from the leaves by hand."""
    leaves = [hashlib.sha256(b"\x00" + r.raw[:-68 - 64]).digest() for r in batch()[:2]]
    leaves.append(hashlib.sha256(b"\x00" + batch()[2].raw[:-68 - 32]).digest())
    left = hashlib.sha256(b"\x01" + leaves[0] + leaves[1]).digest()
    root = hashlib.sha256(b"\x01" + left + leaves[2]).digest()
    return b"RR\x02" + BOB.public_key + b"\x00\x03" + root


def mail_payload() -> dict[str, Any]:
    return {"type": MAIL_TYPE, "body": check_payload(MAIL_TYPE, MAIL_BODY), "sent": MAIL_SENT}


@cache
def mail_box() -> bytes:
    return Boxes(ALICE).seal(BOB.public_key, mail_payload(), MAIL_BOX_NONCE)


@cache
def statement() -> Statement:
    return Statement(
        STATEMENT_ID, BOB.node_id, ALICE.node_id, PRICE, receipts_hash([receipt().id]), 1
    )


def sidecar_headers(name: str) -> dict[str, str]:
    method, path, content_hash = SIDECAR_REQUESTS[name]
    return sign_headers(ALICE, method, path, content_hash, now=NOW_MS / 1000)


def envelopes() -> dict[str, tuple[Identity, bytes, Message]]:
    """Envelope vectors: name -> (signer, nonce, message), all at ``NOW_MS``."""
    a, b, n = ALICE, BOB, REQUEST_NONCE
    raw = record().raw
    stmt = statement().encode()
    return {
        "ping": (a, n, Ping()),
        "ping_ro": (a, n, Ping(ro=True)),
        "pong": (b, REPLY_NONCE, Pong(re=n)),
        "pong_ack": (b, REPLY_NONCE, Pong(re=n, ack=True)),
        "find_node": (a, n, FindNode(target=ALICE.node_id)),
        "nodes": (b, REPLY_NONCE, Nodes(re=n, nodes=contacts())),
        "find_value": (a, n, FindValue(key=skill_key("echo"))),
        "find_value_page": (a, n, FindValue(key=skill_key("echo"), offset=20, ro=True)),
        "find_value_query": (a, n, FindValue(
            key=skill_key("echo"), ro=True, pad=VALUE_PAD, query="skill:echo"
        )),
        "value": (b, REPLY_NONCE, Value(re=n, records=(raw,))),
        "store": (a, n, Store(key=skill_key("echo"), record=raw)),
        "stored": (b, REPLY_NONCE, Stored(re=n, ok=True)),
        "stored_refused": (b, REPLY_NONCE, Stored(re=n, ok=False, why="record has expired")),
        "error": (b, REPLY_NONCE, Error(re=n, code=ErrorCode.RATE_LIMITED, msg="slow down")),
        "error_bare": (b, REPLY_NONCE, Error(re=n, code=ErrorCode.INTERNAL)),
        "settle_propose": (a, n, SettlePropose(statement(), ALICE.sign(stmt))),
        "settle_reply": (b, REPLY_NONCE, SettleReply(re=n, ok=True, signature=BOB.sign(stmt))),
        "settle_reply_refused": (b, REPLY_NONCE, SettleReply(
            re=n, ok=False, why=REFUSAL_WHY, amount=2 * PRICE, count=2
        )),
        "settle_reconcile": (a, n, SettleReconcile(ids=[receipt().id])),
        "settle_reconciled": (b, REPLY_NONCE, SettleReconciled(
            re=n, void=[], ids=[receipt().id]
        )),
        "mail": (a, n, MailMessage(id=MAIL_ID, box=mail_box())),
        "mail_ack": (b, REPLY_NONCE, MailAck(re=n, ok=True)),
    }


CBOR_VALUES: dict[str, Any] = {
    "cbor.ints": [0, 23, 24, 255, 256, 65535, 65536, 4294967295, 4294967296, -1, -24, -25, -256,
                  -257],
    "cbor.floats": [1.0, 0.5, -2.5, 65504.0, 100000.0, 0.1, math.inf, -0.0],
    "cbor.strings": ["", "a", "\u00fc", b"", b"\x00\xff", "x" * 24],
    "cbor.map_order": {"tags": 1, "seq": 2, "in": 3, "exp": 4, "a": 5, 10: 6, -1: 7},
}


def _x25519_public(identity: Identity) -> bytes:
    return bytes(identity.signing_key.verify_key.to_curve25519_public_key())


def expected_vectors() -> dict[str, bytes]:
    """Every vector the document must carry, built with the real code."""
    vectors: dict[str, bytes] = {}
    for label, identity in (("a", ALICE), ("b", BOB)):
        vectors[f"identity.{label}.public_key"] = identity.public_key
        vectors[f"identity.{label}.node_id"] = identity.node_id
        vectors[f"identity.{label}.x25519_public_key"] = _x25519_public(identity)
    vectors["box.ab.shared_key"] = Boxes(ALICE).box(BOB.public_key).shared_key()
    vectors["key.skill.echo"] = skill_key("echo")
    vectors["key.tag.example"] = tag_key("example")
    vectors["key.tag.text"] = tag_key("text")
    vectors["record.echo"] = record().raw
    for name, (identity, nonce, message) in envelopes().items():
        vectors[f"envelope.{name}"] = wire.seal(identity, message, now_ms=NOW_MS, nonce=nonce)
    vectors["task.request.input"] = cbor.encode(TASK_INPUT)
    vectors["task.request.envelope"] = wire.encode_unsigned(
        ALICE.public_key, task_request(), now_ms=NOW_MS, nonce=REQUEST_NONCE
    )
    vectors["task.request.frame"] = request_frame()
    vectors["task.result.out"] = cbor.encode({"ok": TASK_OUTPUT})
    vectors["task.result.envelope"] = wire.encode_unsigned(
        BOB.public_key, task_result(), now_ms=NOW_MS, nonce=REPLY_NONCE
    )
    vectors["task.result.frame"] = result_frame()
    vectors["mail.box"] = mail_box()
    vectors["receipt.echo"] = receipt().raw
    vectors["receipt.echo.id"] = bytes.fromhex(receipt().id)
    vectors["receipt.batch.0"] = batch()[0].raw
    vectors["receipt.batch.root_message"] = batch_root_message()
    vectors["settlement.statement"] = statement().encode()
    for name, (method, path, content_hash) in SIDECAR_REQUESTS.items():
        headers = sidecar_headers(name)
        if name == "put":
            vectors["sidecar.put.message"] = signed_message(
                method, path, headers["X-Knarr-Timestamp"], content_hash
            )
        vectors[f"sidecar.{name}.signature"] = bytes.fromhex(headers["X-Knarr-Signature"])
    for name, value in CBOR_VALUES.items():
        vectors[name] = cbor.encode(value)
    return vectors


# --------------------------------------------------------------------------- the document


@cache
def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


@cache
def doc_flat() -> str:
    """The document with every run of whitespace made one space, to find wrapped prose."""
    return " ".join(doc_text().split())


def doc_section(heading: str) -> str:
    """The text from ``heading`` (a whole line) to the next heading."""
    start = doc_text().index(f"\n{heading}\n")
    end = doc_text().index("\n#", start + 1)
    return doc_text()[start:end]


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


@cache
def doc_headers() -> dict[str, tuple[str, str, dict[str, str]]]:
    """``name -> (method, path, headers)`` for every ``http headers=NAME`` block."""
    blocks: dict[str, tuple[str, str, dict[str, str]]] = {}
    for name, body in _HEADERS_BLOCK.findall(doc_text()):
        assert name not in blocks, f"headers block {name!r} appears twice in {DOC.name}"
        request_line, *lines = body.strip("\n").split("\n")
        method, path, version = request_line.split(" ")
        assert version == "HTTP/1.1", f"headers block {name!r}: bad request line"
        headers: dict[str, str] = {}
        for line in lines:
            key, sep, value = line.partition(": ")
            assert sep and key not in headers, f"headers block {name!r}: bad line {line!r}"
            headers[key] = value
        blocks[name] = (method, path, headers)
    return blocks


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


def test_x25519_forms_follow_the_documented_derivation() -> None:
    """Section 1.2 written out: the Montgomery u of the Edwards y for the public key, the
    clamped first half of SHA-512(seed) for the private key; the box key from either end."""
    p = 2**255 - 19
    vectors = doc_vectors()
    private = {}
    for label, identity in (("a", ALICE), ("b", BOB)):
        y = int.from_bytes(identity.public_key, "little") & ((1 << 255) - 1)
        u = (1 + y) * pow(1 - y, -1, p) % p
        assert vectors[f"identity.{label}.x25519_public_key"] == u.to_bytes(32, "little")
        scalar = bytearray(hashlib.sha512(identity.seed).digest()[:32])
        scalar[0] &= 248
        scalar[31] = (scalar[31] & 127) | 64
        private[label] = bytes(scalar)
        assert nacl.bindings.crypto_scalarmult_base(private[label]) == u.to_bytes(32, "little")
    shared = vectors["box.ab.shared_key"]
    for mine, theirs in (("a", "b"), ("b", "a")):
        their_public = vectors[f"identity.{theirs}.x25519_public_key"]
        assert nacl.bindings.crypto_box_beforenm(their_public, private[mine]) == shared


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
def test_only_dht_envelopes_open_on_udp(name: str) -> None:
    data = doc_vectors()[f"envelope.{name}"]
    if wire.peek_type(data) in wire.DHT_TYPES:
        wire.open_envelope(data, now_ms=NOW_MS, replay=None, types=wire.DHT_TYPES)
    else:
        with pytest.raises(MistypedMessage):
            wire.open_envelope(data, now_ms=NOW_MS, replay=None, types=wire.DHT_TYPES)


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


def test_find_value_query_hashes_to_its_key_and_pads_as_documented() -> None:
    opened = wire.open_envelope(
        doc_vectors()["envelope.find_value_query"], now_ms=NOW_MS, replay=None,
        types=wire.DHT_TYPES,
    )
    message = opened.message
    assert isinstance(message, FindValue)
    assert hashlib.sha256(message.query.encode()).digest() == message.key
    assert message.pad == VALUE_PAD
    assert f"pads with {VALUE_PAD} zero bytes" in doc_flat()
    # The budgets section 3.3 quotes: the smallest padded requests, and what 3x of them buys.
    smallest_value = wire.seal(
        ALICE, FindValue(skill_key("echo"), pad=VALUE_PAD), now_ms=NOW_MS, nonce=REQUEST_NONCE
    )
    ro_node = wire.seal(
        ALICE, FindNode(ALICE.node_id, ro=True, pad=VALUE_PAD), now_ms=NOW_MS,
        nonce=REQUEST_NONCE,
    )
    assert f"smallest padded FIND_VALUE is {len(smallest_value)} bytes" in doc_flat()
    assert f"budget ({3 * len(smallest_value):,}) exceeds" in doc_flat()
    assert 3 * len(smallest_value) > wire.MAX_DATAGRAM
    assert f"(at least {len(ro_node)} bytes" in doc_flat()


def test_task_request_frame_opens_for_the_provider_only() -> None:
    vectors = doc_vectors()
    frame_body, inner = vectors["task.request.frame"], vectors["task.request.envelope"]
    assert frame_body[:3] == b"KS\x01" and frame_body[3:35] == ALICE.public_key
    assert frame_body[35:59] == REQUEST_BOX_NONCE
    assert len(frame_body) == len(inner) + SEALED_OVERHEAD == len(inner) + 75
    # Section 6.2 written out: header ‖ crypto_box(envelope, nonce, their public, my private).
    their_public = vectors["identity.b.x25519_public_key"]
    my_private = nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(
        ALICE.seed + ALICE.public_key
    )
    sealed = nacl.bindings.crypto_box(inner, REQUEST_BOX_NONCE, their_public, my_private)
    assert frame_body == b"KS\x01" + ALICE.public_key + REQUEST_BOX_NONCE + sealed
    opened = open_frame(Boxes(BOB), frame_body, now_ms=NOW_MS, replay=None, max_size=4096)
    assert opened.public_key == ALICE.public_key and opened.nonce == REQUEST_NONCE
    assert isinstance(opened.message, TaskRequest)
    assert opened.message.input == vectors["task.request.input"]
    assert cbor.decode(opened.message.input) == TASK_INPUT
    with pytest.raises(BadSignature):  # a third node cannot open it
        open_frame(Boxes(MALLORY), frame_body, now_ms=NOW_MS, replay=None, max_size=4096)


def test_task_result_frame_carries_the_output_and_a_receipt_the_requester_accepts() -> None:
    vectors = doc_vectors()
    opened = open_frame(Boxes(ALICE), vectors["task.result.frame"], now_ms=NOW_MS,
                        replay=None, max_size=4096)
    message = opened.message
    assert isinstance(message, TaskResult) and message.re == REQUEST_NONCE
    assert message.out == vectors["task.result.out"]
    output, _ = split_result(cbor.decode(message.out))
    assert output == TASK_OUTPUT and message.receipt == vectors["receipt.echo"]
    check_receipt(
        parse_receipt(message.receipt), provider_key=BOB.public_key,
        requester_key=ALICE.public_key, task=REQUEST_NONCE,
        input_hash=hashlib.sha256(vectors["task.request.input"]).digest(),
        output_hash=hashlib.sha256(message.out).digest(), max_price=PRICE,
    )


def test_a_sealed_frame_reflected_to_its_author_is_refused() -> None:
    """X25519 is symmetric: A's frame to B opens for A too. The envelope inside names A,
    so passing it off to A as B's is caught."""
    body = bytearray(doc_vectors()["task.request.frame"])
    body[3:35] = BOB.public_key
    with pytest.raises(MalformedMessage, match="another sender"):
        open_frame(Boxes(ALICE), bytes(body), now_ms=NOW_MS, replay=None, max_size=4096)


def test_mail_box_opens_for_the_recipient() -> None:
    vectors = doc_vectors()
    box = vectors["mail.box"]
    assert box[:24] == MAIL_BOX_NONCE
    payload = Boxes(BOB).open(ALICE.public_key, box, max_size=4096)
    assert list(payload) == ["body", "sent", "type"]
    assert open_payload(payload) == (MAIL_TYPE, MAIL_BODY, MAIL_SENT)
    assert payload["body"] == '{"text": "hello"}'
    opened = wire.open_envelope(vectors["envelope.mail"], now_ms=NOW_MS, replay=None)
    assert isinstance(opened.message, MailMessage)
    assert (opened.message.id, opened.message.box) == (MAIL_ID, box)


def test_receipt_vector_parses_to_the_stated_fields() -> None:
    vectors = doc_vectors()
    raw = vectors["receipt.echo"]
    parsed = parse_receipt(raw)
    assert raw[:3] == b"RC\x01" and raw[3:35] == BOB.public_key
    assert (parsed.task, parsed.skill, parsed.price) == (REQUEST_NONCE, "echo", PRICE)
    assert parsed.requester_key == ALICE.public_key
    assert parsed.input_hash == hashlib.sha256(cbor.encode(TASK_INPUT)).digest()
    assert parsed.output_hash == hashlib.sha256(cbor.encode({"ok": TASK_OUTPUT})).digest()
    assert (parsed.time_ms, parsed.outcome, parsed.duration_ms) == (
        NOW_MS, "completed", RECEIPT_MS
    )
    assert list(cbor.decode(raw[35:-64])) == [
        "t", "in", "ms", "out", "req", "task", "price", "skill", "outcome"
    ]
    verify(BOB.public_key, raw[:-64], raw[-64:])
    assert vectors["receipt.echo.id"] == hashlib.sha256(raw).digest()
    assert f"SHA-256 of the {len(raw)} bytes above" in doc_flat()


def test_batch_receipt_vector_proves_itself_through_its_path() -> None:
    vectors = doc_vectors()
    raw, message = vectors["receipt.batch.0"], vectors["receipt.batch.root_message"]
    parsed = parse_receipt(raw)
    assert raw[:3] == b"RC\x02" and raw[-68:-64] == b"\x00\x00\x00\x03"
    assert (parsed.task, parsed.skill, parsed.price) == (REQUEST_NONCE, "echo", PRICE)
    fields = raw[:-68 - 64]  # index 0 of 3: a path of two hashes
    assert fields[3:] == receipt().raw[3:-64]  # the same key and body as section 9.6's
    leaf = hashlib.sha256(b"\x00" + fields).digest()
    assert parsed.id == leaf.hex()
    sibling, uncle = raw[-68 - 64:-68 - 32], raw[-68 - 32:-68]
    root = hashlib.sha256(b"\x01" + hashlib.sha256(b"\x01" + leaf + sibling).digest() + uncle)
    assert message == b"RR\x02" + BOB.public_key + b"\x00\x03" + root.digest()
    verify(BOB.public_key, message, raw[-64:])
    assert f"{len(raw)} bytes" in doc_flat()


def test_settlement_vectors_carry_one_statement_signed_by_both_sides() -> None:
    vectors = doc_vectors()
    encoded = vectors["settlement.statement"]
    assert encoded[:3] == b"ST\x01"
    body = cbor.decode(encoded[3:])
    assert list(body) == ["cr", "db", "id", "count", "amount", "receipts"]
    stmt = Statement.from_wire(body)
    assert stmt == statement()
    assert (stmt.creditor, stmt.debtor, stmt.amount, stmt.count) == (
        BOB.node_id, ALICE.node_id, PRICE, 1
    )
    assert stmt.receipts == hashlib.sha256(vectors["receipt.echo.id"]).digest()
    propose = wire.open_envelope(vectors["envelope.settle_propose"], now_ms=NOW_MS, replay=None)
    reply = wire.open_envelope(vectors["envelope.settle_reply"], now_ms=NOW_MS, replay=None)
    assert isinstance(propose.message, SettlePropose) and isinstance(reply.message, SettleReply)
    assert propose.message.statement.encode() == encoded
    propose.message.statement.verify(propose.public_key, propose.message.signature)
    stmt.verify(reply.public_key, reply.message.signature)
    assert reply.message.re == propose.nonce


@pytest.mark.parametrize("name", sorted(SIDECAR_REQUESTS))
def test_sidecar_headers_are_the_signed_request(name: str) -> None:
    method, path, content_hash = SIDECAR_REQUESTS[name]
    got_method, got_path, headers = doc_headers()[f"sidecar.{name}"]
    assert (got_method, got_path) == (method, path)
    assert headers == sidecar_headers(name)
    assert headers["X-Knarr-Timestamp"] == str(NOW_MS)
    message = signed_message(method, path, headers["X-Knarr-Timestamp"], content_hash)
    assert message == (
        f"knarr-sidecar/1\n{method}\n{path}\n{NOW_MS}\n{content_hash}".encode()
    )
    signature = doc_vectors()[f"sidecar.{name}.signature"]
    verify(bytes.fromhex(headers["X-Knarr-PublicKey"]), message, signature)


def test_every_http_block_is_a_headers_block() -> None:
    assert len(_ANY_HTTP_BLOCK.findall(doc_text())) == len(doc_headers())
    assert sorted(doc_headers()) == sorted(f"sidecar.{name}" for name in SIDECAR_REQUESTS)


@pytest.mark.parametrize("name", sorted(CBOR_VALUES))
def test_cbor_vector_decodes_to_its_value(name: str) -> None:
    decoded = cbor.decode(doc_vectors()[name])
    assert decoded == CBOR_VALUES[name]
    assert cbor.encode(decoded) == doc_vectors()[name]


# ------------------------------------------------------------------ every type documented


def test_the_message_type_table_lists_every_type() -> None:
    table = {name: int(code) for name, code in _TYPE_ROW.findall(doc_section("### Type codes"))}
    assert table == {t.name: t.value for t in MsgType}


def test_every_message_type_has_a_section() -> None:
    for t in MsgType:
        assert re.search(rf"^### {t.name} \({t.value}\)", doc_text(), re.M), (
            f"{DOC.name} has no '### {t.name} ({t.value})' section"
        )


def test_every_message_type_is_registered_with_a_codec() -> None:
    assert set(wire.MESSAGE_TYPES) == {t.value for t in MsgType} - set(TASK_TYPES)
    assert set(TASK_TYPES) == {MsgType.TASK_REQUEST, MsgType.TASK_RESULT}
    assert set(wire.DHT_TYPES) == {t.value for t in MsgType if t < TASK_CHANNEL_FIRST_TYPE}


def test_every_message_type_has_an_envelope_vector() -> None:
    covered = {wire.peek_type(data) for name, data in doc_vectors().items()
               if name.startswith("envelope.") or name.endswith(".envelope")}
    assert covered == {t.value for t in MsgType}


def test_the_error_code_table_lists_every_task_error_code() -> None:
    codes = _CODE_ROW.findall(doc_section("### 6.5 Error codes"))
    assert sorted(codes) == sorted(ERROR_CLASSES)


def test_the_timeouts_before_any_sample_are_the_documented_ones() -> None:
    rtt = RttEstimator()
    timeout, stall = rtt.timeout("peer"), rtt.stall("peer")
    assert f"a timeout of {timeout:g} s and a stall of {stall:g} s" in doc_flat()
