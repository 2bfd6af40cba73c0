"""The task channel's messages and payload sealing, as pure code.

A task travels in the same signed envelope as DHT messages, framed on TCP by a 4-byte
big-endian length. Its input and output are confidential: sealed with a NaCl box between
the two nodes' X25519 keys, which are derived from their Ed25519 identities, so no key
exchange is needed and only the two ends can read the payload.
"""

from __future__ import annotations

import math
import struct
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import nacl.exceptions
import nacl.public
import nacl.signing

from knarr.errors import (
    BadSignature,
    LocalProtocolError,
    MalformedMessage,
    MistypedMessage,
    OversizedMessage,
    RemoteProtocolError,
    TaskError,
    TaskFailed,
    TaskRefused,
    TaskTimedOut,
    TruncatedMessage,
)
from knarr.node import cbor, wire
from knarr.node.identity import Identity
from knarr.node.wire import NONCE_SIZE, MsgType, Reply, Request, _bytes, _only, _text, _uint

FRAME_HEADER = struct.Struct(">I")
BOX_OVERHEAD = nacl.public.Box.NONCE_SIZE + 16  # nonce + Poly1305 tag
ENVELOPE_SLACK = 1024  # frame and envelope headers, body keys, a receipt's share
MAX_SKILL_NAME = 64


class TaskRefusal(Exception):
    """Raised on the provider's side to answer a task with an error ``code``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class TaskRequest(Request):
    """Run ``skill`` on ``input`` (the canonical CBOR encoding of the input map, kept as
    bytes so its size is checked before it is decoded and its hash needs no re-encoding);
    give up after ``timeout_ms`` (0: provider's limit). ``sidecar`` is the requester's
    sidecar port, where its assets can be fetched."""

    TYPE = MsgType.TASK_REQUEST
    FIELDS = frozenset({"skill", "input", "timeout", "side"})
    skill: str
    input: bytes
    timeout_ms: int = 0
    sidecar: int = 0
    ro: bool = False

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"skill": self.skill, "input": self.input}
        if self.timeout_ms:
            body["timeout"] = self.timeout_ms
        if self.sidecar:
            body["side"] = self.sidecar
        return body

    @classmethod
    def from_body(cls, body: dict[Any, Any]) -> TaskRequest:
        _only(body, cls.FIELDS)
        skill = _text(body, "skill", MAX_SKILL_NAME)
        if not skill:
            raise MistypedMessage("field 'skill' is required")
        sidecar = _uint(body, "side", 0)
        if sidecar > 65535:
            raise MistypedMessage("field 'side' must be a port")
        return cls(skill, _bytes(body, "input"), _uint(body, "timeout", 0), sidecar)


@dataclass(frozen=True, slots=True)
class TaskResult(Reply):
    """The outcome of the task whose request nonce is ``re``: ``out`` is the canonical
    CBOR encoding of ``{"ok": output}`` or ``{"error": {...}}`` (its SHA-256 is the
    receipt's output hash), ``receipt`` the provider's signed receipt, if one was made."""

    TYPE = MsgType.TASK_RESULT
    FIELDS = frozenset({"re", "out", "receipt"})
    re: bytes
    out: bytes
    receipt: bytes | None = None

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"re": self.re, "out": self.out}
        if self.receipt is not None:
            body["receipt"] = self.receipt
        return body

    @classmethod
    def from_body(cls, body: dict[Any, Any]) -> TaskResult:
        _only(body, cls.FIELDS)
        receipt = _bytes(body, "receipt") if "receipt" in body else None
        return cls(_bytes(body, "re", NONCE_SIZE), _bytes(body, "out"), receipt)


TASK_TYPES: Mapping[int, type[wire.Message]] = MappingProxyType({
    MsgType.TASK_REQUEST: TaskRequest, MsgType.TASK_RESULT: TaskResult,
})
"""The messages that travel only in sealed frames."""


# ---------------------------------------------------------------------- sealed frames

SEALED_MAGIC = b"KS"
_SEALED = struct.Struct(">2sB32s24s")  # magic, version, sender's public key, box nonce
SEALED_OVERHEAD = _SEALED.size + 16  # + Poly1305 tag


def seal_frame(
    identity: Identity, boxes: Boxes, peer_public_key: bytes, message: wire.Message, *,
    now_ms: int, nonce: bytes, box_nonce: bytes, max_size: int,
) -> bytes:
    """A task-channel frame body: ``message`` in an unsigned envelope, encrypted and
    authenticated with the NaCl box between us and the peer. The box proves the sender
    to the recipient as a signature would (only the two key holders can make it), at a
    small fraction of an Ed25519 signature and verification; what must convince third
    parties (the receipt) is still signed."""
    inner = wire.encode_unsigned(identity.public_key, message, now_ms=now_ms, nonce=nonce)
    if len(inner) + SEALED_OVERHEAD > max_size:
        raise LocalProtocolError(
            f"{message.TYPE.name} is {len(inner) + SEALED_OVERHEAD} bytes; the limit is {max_size}"
        )
    sealed = boxes.box(peer_public_key).encrypt(inner, box_nonce)
    header = _SEALED.pack(SEALED_MAGIC, wire.VERSION, identity.public_key, box_nonce)
    return header + sealed.ciphertext


def is_sealed(data: bytes) -> bool:
    return data[:2] == SEALED_MAGIC


def open_frame(
    boxes: Boxes, data: bytes, *, now_ms: int, replay: wire.ReplayGuard | None,
    window_ms: int = wire.DEFAULT_WINDOW_MS, max_size: int,
    types: Mapping[int, type[wire.Message]] = TASK_TYPES,
) -> wire.Envelope:
    """Check, decrypt and decode a sealed frame: size, header, box (authenticity), then
    the envelope's own checks (type, time window, replay, body)."""
    size = len(data)
    if size > max_size:
        raise OversizedMessage(f"frame is {size} bytes; the limit is {max_size}")
    if size < SEALED_OVERHEAD + wire.HEADER_SIZE:
        raise TruncatedMessage(f"frame is {size} bytes; a sealed envelope needs more")
    magic, version, sender, box_nonce = _SEALED.unpack_from(data)
    if magic != SEALED_MAGIC:
        raise MalformedMessage("not a sealed knarr frame (bad magic)")
    if version != wire.VERSION:
        raise MalformedMessage(f"unsupported protocol version {version}")
    try:
        inner = boxes.box(sender).decrypt(bytes(data[_SEALED.size :]), box_nonce)
    except nacl.exceptions.CryptoError as exc:
        raise BadSignature("sealed frame does not authenticate") from exc
    return wire.open_unsigned(inner, sender=sender, now_ms=now_ms, replay=replay,
                              window_ms=window_ms, types=types)


# ------------------------------------------------------------------------------ sealing


class Boxes:
    """NaCl boxes between this node and its peers, cached: the X25519 shared key costs a
    scalar multiplication, so it is computed once per peer."""

    def __init__(self, identity: Identity, capacity: int = 4096) -> None:
        self._private = identity.signing_key.to_curve25519_private_key()
        self._boxes: OrderedDict[bytes, nacl.public.Box] = OrderedDict()
        self.capacity = capacity

    def box(self, peer_public_key: bytes) -> nacl.public.Box:
        box = self._boxes.get(peer_public_key)
        if box is None:
            try:
                peer = nacl.signing.VerifyKey(peer_public_key).to_curve25519_public_key()
            except (nacl.exceptions.CryptoError, ValueError) as exc:
                raise MalformedMessage("peer key has no X25519 form") from exc
            box = nacl.public.Box(self._private, peer)
            self._boxes[peer_public_key] = box
            if len(self._boxes) > self.capacity:
                self._boxes.popitem(last=False)
        else:
            self._boxes.move_to_end(peer_public_key)
        return box

    def seal(self, peer_public_key: bytes, value: object, nonce: bytes) -> bytes:
        """Encrypt the canonical encoding of ``value`` for ``peer_public_key``."""
        return bytes(self.box(peer_public_key).encrypt(cbor.encode(value), nonce))

    def open(self, peer_public_key: bytes, sealed: bytes, *, max_size: int) -> Any:
        """Decrypt and decode a payload from ``peer_public_key``; size checked first."""
        if len(sealed) - BOX_OVERHEAD > max_size:
            raise MalformedMessage("sealed payload is larger than allowed")
        try:
            plain = self.box(peer_public_key).decrypt(sealed)
        except nacl.exceptions.CryptoError as exc:
            raise MalformedMessage("sealed payload does not open") from exc
        return cbor.decode(plain, max_depth=32, max_items=1_000_000)


# ------------------------------------------------------------------------ outcomes

ERROR_CLASSES: dict[str, type[TaskError]] = {
    "not_found": TaskRefused,
    "forbidden": TaskRefused,
    "input_too_large": TaskRefused,
    "invalid_input": TaskRefused,
    "busy": TaskRefused,
    "shutting_down": TaskRefused,
    "credit_limit": TaskRefused,
    "handler_error": TaskFailed,
    "bad_output": TaskFailed,
    "timeout": TaskTimedOut,
}


def ok_payload(output: Mapping[str, Any]) -> dict[str, Any]:
    return {"ok": dict(output)}


def error_payload(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message[:1000]}}


def split_result(payload: Any) -> tuple[dict[str, Any] | TaskError, bytes | None]:
    """A result payload's output (or the :class:`TaskError` it reports) and the raw
    receipt that came with it, if any."""
    if not isinstance(payload, dict):
        raise MistypedMessage("task result payload must be a map")
    receipt = payload.get("receipt")
    if receipt is not None and not isinstance(receipt, bytes):
        raise MistypedMessage("task result receipt must be bytes")
    keys = set(payload) - {"receipt"}
    if keys == {"ok"} and isinstance(payload["ok"], dict):
        return payload["ok"], receipt
    if keys == {"error"}:
        err = payload["error"]
        if isinstance(err, dict) and isinstance(err.get("code"), str):
            code, message = err["code"], str(err.get("message", ""))
            return ERROR_CLASSES.get(code, TaskError)(message or code, code=code), receipt
    raise MistypedMessage("task result payload is neither an output nor an error")


def outcome_of(payload: Any) -> dict[str, Any]:
    """The output dict of a result payload, or raise the :class:`TaskError` it carries."""
    result, _ = split_result(payload)
    if isinstance(result, TaskError):
        raise result
    return result


# -------------------------------------------------------------------------- schemas

_CHECKS: dict[str, Any] = {
    "string": lambda v: isinstance(v, str),
    "number": lambda v: type(v) in (int, float) and (type(v) is int or math.isfinite(v)),
    "integer": lambda v: type(v) is int,
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "any": lambda v: True,
}


def schema_problem(schema: Mapping[str, str], data: Any) -> str | None:
    """Why ``data`` does not fit ``schema`` (every declared field present, of its type),
    or ``None`` if it does. Undeclared extra fields are allowed."""
    if not isinstance(data, dict):
        return "input must be a JSON object"
    for field, kind in schema.items():
        if field not in data:
            return f"input is missing field {field!r} ({kind})"
        check = _CHECKS.get(kind, _CHECKS["any"])
        if not check(data[field]):
            return f"input field {field!r} must be {kind}, got {type(data[field]).__name__}"
    return None


def frame(envelope: bytes) -> bytes:
    return FRAME_HEADER.pack(len(envelope)) + envelope


def check_frame_length(length: int, limit: int) -> None:
    if length > limit:
        raise RemoteProtocolError(f"frame of {length} bytes exceeds the limit of {limit}")
