"""Signed envelopes and the DHT messages they carry, as pure code.

An envelope is fixed-layout header, canonical CBOR body, Ed25519 signature::

    magic "KN" | version u8 | type u8 | public key 32 | timestamp ms u64 | nonce 16 | body | sig 64

The signature covers every byte before it, so verification needs no re-encoding.
Opening a datagram checks, cheapest first: size, header, timestamp window, replay,
signature, then decodes the body with limits. ``docs/protocol.md`` is the spec.
Nothing here reads a clock or touches a socket: callers pass ``now_ms`` and nonces.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from types import MappingProxyType
from typing import Any, ClassVar

from knarr.errors import (
    FutureMessage,
    LocalProtocolError,
    MalformedMessage,
    MistypedMessage,
    OversizedMessage,
    ReplayedMessage,
    StaleMessage,
    TruncatedMessage,
)
from knarr.node import cbor
from knarr.node.contact import ID_SIZE, Contact
from knarr.node.identity import SIGNATURE_SIZE, Identity, node_id_of, verify

MAGIC = b"KN"
VERSION = 1
NONCE_SIZE = 16
_HEADER = struct.Struct(">2sBB32sQ16s")
HEADER_SIZE = _HEADER.size  # 60
OVERHEAD = HEADER_SIZE + SIGNATURE_SIZE  # 124
MAX_DATAGRAM = 1400
DEFAULT_WINDOW_MS = 60_000


class MsgType(IntEnum):
    """Message type codes. 1-15 are the DHT's; 16 and up belong to the task channel."""

    PING = 1
    PONG = 2
    FIND_NODE = 3
    NODES = 4
    FIND_VALUE = 5
    VALUE = 6
    STORE = 7
    STORED = 8
    ERROR = 15
    TASK_REQUEST = 16
    TASK_RESULT = 17
    SETTLE_PROPOSE = 18
    SETTLE_REPLY = 19
    MAIL = 20
    MAIL_ACK = 21
    SETTLE_RECONCILE = 22
    SETTLE_RECONCILED = 23


# ----------------------------------------------------------------------------- bodies


def _bytes(body: dict[Any, Any], key: str, size: int | None = None) -> bytes:
    value = body.get(key)
    if not isinstance(value, bytes) or (size is not None and len(value) != size):
        want = f"{size} bytes" if size is not None else "bytes"
        raise MistypedMessage(f"field {key!r} must be {want}")
    return value


def _flag(body: dict[Any, Any], key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise MistypedMessage(f"field {key!r} must be a boolean")
    return value


def _uint(body: dict[Any, Any], key: str, default: int | None = None) -> int:
    value = body.get(key, default)
    if type(value) is not int or value < 0:
        raise MistypedMessage(f"field {key!r} must be a non-negative integer")
    return value


def _text(body: dict[Any, Any], key: str, limit: int = 512) -> str:
    value = body.get(key, "")
    if not isinstance(value, str) or len(value) > limit:
        raise MistypedMessage(f"field {key!r} must be text of at most {limit} characters")
    return value


def _pad(body: dict[Any, Any]) -> int:
    """Padding buys reply room from a node that has not yet seen our address answer
    (replies to unproven addresses are capped at 3x the request)."""
    if "pad" not in body:
        return 0
    pad = body["pad"]
    if not isinstance(pad, bytes) or len(pad) > MAX_DATAGRAM:
        raise MistypedMessage("field 'pad' must be bytes")
    return len(pad)


def _only(body: dict[Any, Any], allowed: frozenset[str]) -> None:
    extra = body.keys() - allowed
    if extra:
        raise MistypedMessage(f"unexpected fields {sorted(map(str, extra))}")


class Message:
    """A message body. Subclasses are frozen dataclasses with a ``TYPE``."""

    TYPE: ClassVar[MsgType]
    FIELDS: ClassVar[frozenset[str]]

    def to_body(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_body(cls, body: dict[Any, Any]) -> Message:
        raise NotImplementedError


class Request(Message):
    """A message that expects a reply carrying its nonce in ``re``."""

    ro: bool


class Reply(Message):
    """A message that answers the request whose nonce is ``re``. PONG, NODES, VALUE and
    STORED may set ``ack``: the responder does not know the requester yet and asks it to
    prove its address by answering this reply with a PONG (``docs/protocol.md`` 3.3)."""

    re: bytes


@dataclass(frozen=True, slots=True)
class Ping(Request):
    """Are you there? ``ro`` marks a client that must not enter routing tables."""

    TYPE = MsgType.PING
    FIELDS = frozenset({"ro"})
    ro: bool = False

    def to_body(self) -> dict[str, Any]:
        return {"ro": True} if self.ro else {}

    @classmethod
    def from_body(cls, body: dict[Any, Any]) -> Ping:
        _only(body, cls.FIELDS)
        return cls(_flag(body, "ro"))


@dataclass(frozen=True, slots=True)
class Pong(Reply):
    TYPE = MsgType.PONG
    FIELDS = frozenset({"re", "ack"})
    re: bytes
    ack: bool = False

    def to_body(self) -> dict[str, Any]:
        return {"re": self.re, "ack": True} if self.ack else {"re": self.re}

    @classmethod
    def from_body(cls, body: dict[Any, Any]) -> Pong:
        _only(body, cls.FIELDS)
        return cls(_bytes(body, "re", NONCE_SIZE), _flag(body, "ack"))


@dataclass(frozen=True, slots=True)
class FindNode(Request):
    """Ask for the contacts closest to ``target`` that the receiver knows."""

    TYPE = MsgType.FIND_NODE
    FIELDS = frozenset({"target", "ro", "pad"})
    target: bytes
    ro: bool = False
    pad: int = 0

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"target": self.target}
        if self.ro:
            body["ro"] = True
        if self.pad:
            body["pad"] = bytes(self.pad)
        return body

    @classmethod
    def from_body(cls, body: dict[Any, Any]) -> FindNode:
        _only(body, cls.FIELDS)
        return cls(_bytes(body, "target", ID_SIZE), _flag(body, "ro"), _pad(body))


@dataclass(frozen=True, slots=True)
class Nodes(Reply):
    """The receiver's closest contacts to a FIND_NODE target (or a FIND_VALUE key)."""

    TYPE = MsgType.NODES
    FIELDS = frozenset({"re", "nodes", "ack"})
    re: bytes
    nodes: tuple[Contact, ...]
    ack: bool = False

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"re": self.re, "nodes": [c.encoded() for c in self.nodes]}
        if self.ack:
            body["ack"] = True
        return body

    @classmethod
    def from_body(cls, body: dict[Any, Any]) -> Nodes:
        _only(body, cls.FIELDS)
        raw = body.get("nodes")
        if not isinstance(raw, list):
            raise MistypedMessage("field 'nodes' must be a list")
        return cls(
            _bytes(body, "re", NONCE_SIZE), tuple(Contact.from_wire(c) for c in raw),
            _flag(body, "ack"),
        )


@dataclass(frozen=True, slots=True)
class FindValue(Request):
    """Ask for the records stored under ``key``, from the ``offset``-th on."""

    TYPE = MsgType.FIND_VALUE
    FIELDS = frozenset({"key", "offset", "ro", "pad", "q"})
    key: bytes
    offset: int = 0
    ro: bool = False
    pad: int = 0
    query: str = ""
    """What was asked (``"skill:NAME"`` or ``"tag:TAG"``, hashing to ``key``), so the
    nodes responsible for the key can count demand that nobody serves."""

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"key": self.key}
        if self.offset:
            body["offset"] = self.offset
        if self.ro:
            body["ro"] = True
        if self.pad:
            body["pad"] = bytes(self.pad)
        if self.query:
            body["q"] = self.query
        return body

    @classmethod
    def from_body(cls, body: dict[Any, Any]) -> FindValue:
        _only(body, cls.FIELDS)
        return cls(
            _bytes(body, "key", ID_SIZE), _uint(body, "offset", 0), _flag(body, "ro"),
            _pad(body), _text(body, "q", 100),
        )


@dataclass(frozen=True, slots=True)
class Value(Reply):
    """Signed records stored under a key; ``more`` when they did not all fit."""

    TYPE = MsgType.VALUE
    FIELDS = frozenset({"re", "records", "more", "ack"})
    re: bytes
    records: tuple[bytes, ...]
    more: bool = False
    ack: bool = False

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"re": self.re, "records": list(self.records)}
        if self.more:
            body["more"] = True
        if self.ack:
            body["ack"] = True
        return body

    @classmethod
    def from_body(cls, body: dict[Any, Any]) -> Value:
        _only(body, cls.FIELDS)
        raw = body.get("records")
        if not isinstance(raw, list) or not all(isinstance(r, bytes) for r in raw):
            raise MistypedMessage("field 'records' must be a list of bytes")
        return cls(
            _bytes(body, "re", NONCE_SIZE), tuple(raw), _flag(body, "more"), _flag(body, "ack")
        )


@dataclass(frozen=True, slots=True)
class Store(Request):
    """Keep a signed record under ``key``."""

    TYPE = MsgType.STORE
    FIELDS = frozenset({"key", "record"})
    key: bytes
    record: bytes
    ro: bool = False

    def to_body(self) -> dict[str, Any]:
        return {"key": self.key, "record": self.record}

    @classmethod
    def from_body(cls, body: dict[Any, Any]) -> Store:
        _only(body, cls.FIELDS)
        return cls(_bytes(body, "key", ID_SIZE), _bytes(body, "record"))


@dataclass(frozen=True, slots=True)
class Stored(Reply):
    """Whether a STORE was kept, and why not."""

    TYPE = MsgType.STORED
    FIELDS = frozenset({"re", "ok", "why", "ack"})
    re: bytes
    ok: bool
    why: str = ""
    ack: bool = False

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"re": self.re, "ok": self.ok}
        if self.why:
            body["why"] = self.why
        if self.ack:
            body["ack"] = True
        return body

    @classmethod
    def from_body(cls, body: dict[Any, Any]) -> Stored:
        _only(body, cls.FIELDS)
        if "ok" not in body:
            raise MistypedMessage("field 'ok' is required")
        return cls(
            _bytes(body, "re", NONCE_SIZE), _flag(body, "ok"), _text(body, "why"),
            _flag(body, "ack"),
        )


class ErrorCode(IntEnum):
    BAD_REQUEST = 1
    RATE_LIMITED = 2
    INTERNAL = 3


@dataclass(frozen=True, slots=True)
class Error(Reply):
    """The request ``re`` was refused."""

    TYPE = MsgType.ERROR
    FIELDS = frozenset({"re", "code", "msg"})
    re: bytes
    code: int
    msg: str = ""

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"re": self.re, "code": self.code}
        if self.msg:
            body["msg"] = self.msg
        return body

    @classmethod
    def from_body(cls, body: dict[Any, Any]) -> Error:
        _only(body, cls.FIELDS)
        return cls(_bytes(body, "re", NONCE_SIZE), _uint(body, "code"), _text(body, "msg"))


DHT_TYPES: Mapping[int, type[Message]] = MappingProxyType(
    {cls.TYPE: cls for cls in (Ping, Pong, FindNode, Nodes, FindValue, Value, Store, Stored, Error)}
)
"""The messages a UDP datagram may carry; anything else is refused as mistyped."""
MESSAGE_TYPES: dict[int, type[Message]] = dict(DHT_TYPES)
"""Every message type (the task channel registers its own)."""


def register_message(cls: type[Message]) -> type[Message]:
    """Add a message class (the task channel's) to the codec; codes must be unique."""
    if cls.TYPE in MESSAGE_TYPES:
        raise LocalProtocolError(f"message type {int(cls.TYPE)} is already registered")
    MESSAGE_TYPES[cls.TYPE] = cls
    return cls


# ------------------------------------------------------------------------------ envelope


@dataclass(frozen=True, slots=True)
class Envelope:
    """A verified message and who sent it."""

    public_key: bytes
    timestamp_ms: int
    nonce: bytes
    message: Message

    @property
    def sender_id(self) -> bytes:
        return node_id_of(self.public_key)


def seal(
    identity: Identity,
    message: Message,
    *,
    now_ms: int,
    nonce: bytes,
    max_size: int = MAX_DATAGRAM,
) -> bytes:
    """Encode and sign ``message`` from ``identity``."""
    if len(nonce) != NONCE_SIZE:
        raise LocalProtocolError(f"nonce must be {NONCE_SIZE} bytes")
    header = _HEADER.pack(MAGIC, VERSION, message.TYPE, identity.public_key, now_ms, nonce)
    signed = header + cbor.encode(message.to_body())
    if len(signed) + SIGNATURE_SIZE > max_size:
        raise LocalProtocolError(
            f"{message.TYPE.name} is {len(signed) + SIGNATURE_SIZE} bytes; the limit is {max_size}"
        )
    return signed + identity.sign(signed)


def peek_type(data: bytes) -> int | None:
    """The type byte of an envelope, without any validation (for cheap dispatch)."""
    return data[3] if len(data) >= HEADER_SIZE else None


def open_envelope(
    data: bytes,
    *,
    now_ms: int,
    replay: ReplayGuard | None,
    window_ms: int = DEFAULT_WINDOW_MS,
    max_size: int = MAX_DATAGRAM,
    types: Mapping[int, type[Message]] = MESSAGE_TYPES,
) -> Envelope:
    """Validate and decode one envelope, raising the :class:`RemoteProtocolError` that fits.
    Only message types in ``types`` are accepted."""
    size = len(data)
    if size > max_size:
        raise OversizedMessage(f"message is {size} bytes; the limit is {max_size}")
    if size < OVERHEAD:
        raise TruncatedMessage(f"message is {size} bytes; an envelope needs at least {OVERHEAD}")
    signed = bytes(data[: size - SIGNATURE_SIZE])
    public_key = signed[4:36]

    def check_signature() -> None:
        verify(public_key, signed, bytes(data[size - SIGNATURE_SIZE :]))

    return _open_checked(signed, public_key, check_signature, now_ms=now_ms, replay=replay,
                         window_ms=window_ms, types=types)


def encode_unsigned(public_key: bytes, message: Message, *, now_ms: int, nonce: bytes) -> bytes:
    """An envelope without its signature, for a channel that authenticates it otherwise
    (the task channel's sealed frames)."""
    if len(nonce) != NONCE_SIZE:
        raise LocalProtocolError(f"nonce must be {NONCE_SIZE} bytes")
    header = _HEADER.pack(MAGIC, VERSION, message.TYPE, public_key, now_ms, nonce)
    return header + cbor.encode(message.to_body())


def open_unsigned(
    data: bytes,
    *,
    sender: bytes,
    now_ms: int,
    replay: ReplayGuard | None,
    window_ms: int = DEFAULT_WINDOW_MS,
    types: Mapping[int, type[Message]],
) -> Envelope:
    """Check and decode an unsigned envelope that the caller has already authenticated as
    coming from ``sender``: every check of :func:`open_envelope` but the signature, plus
    that the envelope names ``sender`` (so a frame cannot be reflected back to its
    author under another name)."""
    if len(data) < HEADER_SIZE:
        raise TruncatedMessage(f"message is {len(data)} bytes; a header needs {HEADER_SIZE}")
    if data[4:36] != sender:
        raise MalformedMessage("the envelope names another sender than its frame")
    return _open_checked(data, sender, None, now_ms=now_ms, replay=replay,
                         window_ms=window_ms, types=types)


def _open_checked(
    signed: bytes,
    public_key: bytes,
    check_signature: Callable[[], None] | None,
    *,
    now_ms: int,
    replay: ReplayGuard | None,
    window_ms: int,
    types: Mapping[int, type[Message]],
) -> Envelope:
    """The checks shared by signed and sealed envelopes, cheapest first."""
    magic, version, mtype, _, ts, nonce = _HEADER.unpack_from(signed)
    if magic != MAGIC:
        raise MalformedMessage("not a knarr message (bad magic)")
    if version != VERSION:
        raise MalformedMessage(f"unsupported protocol version {version}")
    cls = types.get(mtype)
    if cls is None:
        raise MistypedMessage(f"unknown message type {mtype}")
    if ts < now_ms - window_ms:
        raise StaleMessage(f"timestamp is {(now_ms - ts) / 1000:.1f} s old")
    if ts > now_ms + window_ms:
        raise FutureMessage(f"timestamp is {(ts - now_ms) / 1000:.1f} s in the future")
    if replay is not None:
        replay.check(public_key, nonce, ts)
    if check_signature is not None:
        check_signature()
    body = cbor.decode(memoryview(signed)[HEADER_SIZE:], max_depth=8, max_items=512)
    if not isinstance(body, dict):
        raise MistypedMessage("message body must be a map")
    message = cls.from_body(body)
    if replay is not None:
        replay.remember(public_key, nonce, ts, now_ms)
    return Envelope(public_key, ts, nonce, message)


class ReplayGuard:
    """Nonces seen inside the timestamp window, with bounded memory.

    An entry can be forgotten once its timestamp is older than the window, since such a
    message is stale anyway. When full, the oldest entries go and the guard refuses
    anything not newer than them (as stale), so a flood cannot reopen a replay.
    """

    def __init__(self, window_ms: int = DEFAULT_WINDOW_MS, capacity: int = 50_000) -> None:
        self.window_ms = window_ms
        self.capacity = capacity
        self._seen: OrderedDict[bytes, int] = OrderedDict()
        self._floor_ms = -1

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, public_key: bytes, nonce: bytes, ts: int) -> None:
        if ts <= self._floor_ms:
            raise StaleMessage("timestamp is older than the replay cache can vouch for")
        if public_key + nonce in self._seen:
            raise ReplayedMessage("nonce already seen from this sender")

    def remember(self, public_key: bytes, nonce: bytes, ts: int, now_ms: int) -> None:
        seen = self._seen
        seen[public_key + nonce] = ts
        horizon = now_ms - self.window_ms
        while seen:
            key, oldest = next(iter(seen.items()))
            if oldest >= horizon and len(seen) <= self.capacity:
                break
            del seen[key]
            if oldest >= horizon:
                self._floor_ms = max(self._floor_ms, oldest)
