"""Agent mail: signed, sealed messages between nodes, addressed by node id.

A mail travels over the task channel (MAIL, answered by MAIL_ACK), sealed to the
recipient like a task payload. The sender keeps it in an outbox in its database and
retries with backoff until the recipient acknowledges it, so a node that was offline
receives what was sent to it when it returns. The recipient stores each mail id once,
so a retry never delivers twice.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from knarr.errors import KnarrError, MistypedMessage
from knarr.node import wire
from knarr.node.store import Store
from knarr.node.wire import NONCE_SIZE, MsgType, Reply, Request, _bytes, _flag, _only

log = logging.getLogger("knarr.mail")

MAX_BODY = 64 * 1024
MAX_TYPE = 32
RETRY_MIN = 1.0
RETRY_MAX = 300.0


class MailError(KnarrError):
    """A mail cannot be sent (too large, bad recipient)."""


class MailRefused(MailError):
    """The recipient read the mail and refused it; retrying would not help."""


@dataclass(frozen=True, slots=True)
class MailMessage(Request):
    """One sealed mail: ``box`` holds ``{"type", "body", "sent"}``."""

    TYPE = MsgType.MAIL
    FIELDS = frozenset({"id", "box"})
    id: bytes
    box: bytes
    ro: bool = False

    def to_body(self) -> dict[str, Any]:
        return {"id": self.id, "box": self.box}

    @classmethod
    def from_body(cls, body: dict[Any, Any]) -> MailMessage:
        _only(body, cls.FIELDS)
        return cls(_bytes(body, "id", 16), _bytes(body, "box"))


@dataclass(frozen=True, slots=True)
class MailAck(Reply):
    TYPE = MsgType.MAIL_ACK
    FIELDS = frozenset({"re", "ok"})
    re: bytes
    ok: bool

    def to_body(self) -> dict[str, Any]:
        return {"re": self.re, "ok": self.ok}

    @classmethod
    def from_body(cls, body: dict[Any, Any]) -> MailAck:
        _only(body, cls.FIELDS)
        if "ok" not in body:
            raise MistypedMessage("field 'ok' is required")
        return cls(_bytes(body, "re", NONCE_SIZE), _flag(body, "ok"))


wire.register_message(MailMessage)
wire.register_message(MailAck)


@dataclass(frozen=True)
class Mail:
    id: str
    peer: str
    type: str
    body: Any
    time: float

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "peer": self.peer, "type": self.type, "body": self.body,
                "time": self.time}


def check_payload(msg_type: str, body: Any) -> str:
    """The body's JSON text, if the mail is within limits; :class:`MailError` if not."""
    if not isinstance(msg_type, str) or not 0 < len(msg_type) <= MAX_TYPE:
        raise MailError(f"mail type must be 1-{MAX_TYPE} characters")
    try:
        text = json.dumps(body)
    except (TypeError, ValueError) as exc:
        raise MailError(f"mail body must be JSON: {exc}") from exc
    if len(text.encode()) > MAX_BODY:
        raise MailError(f"mail body is {len(text.encode())} bytes; the limit is {MAX_BODY}")
    return text


def open_payload(payload: Any) -> tuple[str, Any, float]:
    """``(type, body, sent)`` from a decrypted mail payload."""
    if not isinstance(payload, dict) or set(payload) != {"type", "body", "sent"}:
        raise MistypedMessage("mail payload must be {type, body, sent}")
    msg_type, body, sent = payload["type"], payload["body"], payload["sent"]
    if not isinstance(msg_type, str) or not isinstance(body, str) or type(sent) not in (
        int, float
    ):
        raise MistypedMessage("mail payload fields have the wrong types")
    check_payload(msg_type, json.loads(body))
    return msg_type, json.loads(body), float(sent)


class Mailbox:
    """The outbox and inbox in the node database."""

    def __init__(self, store: Store, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock

    def queue(self, mail_id: str, recipient: str, msg_type: str, body: Any) -> None:
        text = check_payload(msg_type, body)
        now = self.clock()
        self.store.execute(
            "INSERT INTO mail_out(id, recipient, type, body, created, next_try)"
            " VALUES(?, ?, ?, ?, ?, ?)",
            (mail_id, recipient, msg_type, text, now, now),
        )

    def due(self, limit: int = 50) -> list[tuple[str, str, str, str, int]]:
        rows = self.store.execute(
            "SELECT id, recipient, type, body, attempts FROM mail_out"
            " WHERE delivered IS NULL AND next_try <= ? ORDER BY next_try LIMIT ?",
            (self.clock(), limit),
        )
        return [(str(r[0]), str(r[1]), str(r[2]), str(r[3]), int(r[4])) for r in rows]

    def next_due(self) -> float | None:
        rows = self.store.execute(
            "SELECT MIN(next_try) FROM mail_out WHERE delivered IS NULL"
        )
        value = rows[0][0] if rows else None
        return None if value is None else float(value)

    def delivered(self, mail_id: str) -> None:
        self.store.execute(
            "UPDATE mail_out SET delivered = ?, last_error = NULL WHERE id = ?",
            (self.clock(), mail_id),
        )

    def failed(self, mail_id: str, attempts: int, error: str) -> float:
        """Schedule the next try with exponential backoff; returns the delay."""
        delay: float = min(RETRY_MAX, RETRY_MIN * 2.0 ** attempts)
        self.store.execute(
            "UPDATE mail_out SET attempts = ?, next_try = ?, last_error = ? WHERE id = ?",
            (attempts + 1, self.clock() + delay, error[:300], mail_id),
        )
        return delay

    def give_up(self, mail_id: str, error: str) -> None:
        """Stop retrying a mail (it stays in the outbox with the reason)."""
        self.store.execute(
            "UPDATE mail_out SET next_try = 1e18, last_error = ? WHERE id = ?",
            (error[:300], mail_id),
        )

    def receive(self, mail_id: str, sender: str, msg_type: str, body: Any, sent: float) -> bool:
        """Keep a mail once; False if this id was already received."""
        with self.store.transaction():
            if self.store.execute(
                "SELECT 1 FROM mail_in WHERE id = ? AND sender = ?", (mail_id, sender)
            ):
                return False
            self.store.execute(
                "INSERT INTO mail_in(id, sender, type, body, sent, received)"
                " VALUES(?, ?, ?, ?, ?, ?)",
                (mail_id, sender, msg_type, json.dumps(body), sent, self.clock()),
            )
        return True

    def inbox(self, limit: int = 100) -> list[Mail]:
        rows = self.store.execute(
            "SELECT id, sender, type, body, received FROM mail_in ORDER BY received DESC LIMIT ?",
            (limit,),
        )
        return [Mail(str(r[0]), str(r[1]), str(r[2]), json.loads(r[3]), float(r[4]))
                for r in rows]

    def outbox(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self.store.execute(
            "SELECT id, recipient, type, created, attempts, delivered, last_error FROM mail_out"
            " ORDER BY created DESC LIMIT ?", (limit,),
        )
        keys = ("id", "to", "type", "created", "attempts", "delivered", "last_error")
        return [dict(zip(keys, r, strict=True)) for r in rows]
