"""Netting: two peers agree what one owes the other over their unsettled receipts.

The proposer signs a :class:`~knarr.node.economy.Statement` of the net amount and the
hash of the receipts it covers; the other side recomputes both from its own books and
countersigns only if they match exactly. Each side books the settlement only with both
signatures, and a disagreement is reported with both views, never accepted.

A node may let a *delegate* key (Thrall's) sign proposals for it: the proposal then
carries a :class:`DelegateCertificate`, signed by the node identity, that names the
delegate key, its scope, a daily ceiling and an expiry. The other side checks the chain
(envelope signed by the node, certificate signed by the same node, statement signed by
the delegate) and refuses proposals past the ceiling.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from knarr.errors import KnarrError, MistypedMessage, RemoteProtocolError
from knarr.node import cbor, wire
from knarr.node.economy import VERSION, InvalidReceipt, Statement, to_credits
from knarr.node.identity import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, Identity, node_id_of, verify
from knarr.node.ledger import Ledger
from knarr.node.wire import NONCE_SIZE, MsgType, Reply, Request, _bytes, _flag, _only, _text


class SettlementRefused(KnarrError):
    """The peer does not agree with our view of what is owed."""


DELEGATE_MAGIC = b"DG"
DELEGATE_SCOPE = "settle"
_CERT_FIELDS = frozenset({"node", "key", "scope", "ceiling", "expires"})
MAX_CERTIFICATE = 256


@dataclass(frozen=True, slots=True)
class DelegateCertificate:
    """The node identity's signed word that ``key`` may sign settlements for it, up to
    ``ceiling`` micro-credits of spending per UTC day, until ``expires`` (Unix seconds)."""

    node_key: bytes
    key: bytes
    scope: str
    ceiling: int
    expires: int
    signature: bytes = b""

    def body(self) -> bytes:
        return DELEGATE_MAGIC + bytes([VERSION]) + cbor.encode({
            "node": self.node_key, "key": self.key, "scope": self.scope,
            "ceiling": self.ceiling, "expires": self.expires,
        })

    def encode(self) -> bytes:
        return self.body() + self.signature

    @classmethod
    def issue(cls, identity: Identity, key: bytes, *, ceiling: int, expires: int,
              scope: str = DELEGATE_SCOPE) -> DelegateCertificate:
        unsigned = cls(identity.public_key, key, scope, ceiling, expires)
        return cls(identity.public_key, key, scope, ceiling, expires,
                   identity.sign(unsigned.body()))

    @classmethod
    def parse(cls, raw: bytes) -> DelegateCertificate:
        """A certificate whose signature verifies; :class:`InvalidReceipt` if not."""
        if not MAX_CERTIFICATE >= len(raw) > 3 + SIGNATURE_SIZE or raw[:2] != DELEGATE_MAGIC:
            raise InvalidReceipt("not a delegate certificate")
        if raw[2] != VERSION:
            raise InvalidReceipt(f"unsupported delegate certificate version {raw[2]}")
        try:
            body = cbor.decode(raw[3:-SIGNATURE_SIZE], max_depth=1, max_items=8)
        except RemoteProtocolError as exc:
            raise InvalidReceipt(f"delegate certificate is malformed: {exc}") from exc
        if not isinstance(body, dict) or body.keys() != _CERT_FIELDS:
            raise InvalidReceipt("delegate certificate has missing or unexpected fields")
        cert = cls(body["node"], body["key"], body["scope"], body["ceiling"], body["expires"],
                   raw[-SIGNATURE_SIZE:])
        ok = (
            isinstance(cert.node_key, bytes) and len(cert.node_key) == PUBLIC_KEY_SIZE
            and isinstance(cert.key, bytes) and len(cert.key) == PUBLIC_KEY_SIZE
            and isinstance(cert.scope, str) and len(cert.scope) <= 32
            and type(cert.ceiling) is int and cert.ceiling >= 0
            and type(cert.expires) is int and cert.expires >= 0
        )
        if not ok:
            raise InvalidReceipt("delegate certificate fields have the wrong types")
        try:
            verify(cert.node_key, raw[:-SIGNATURE_SIZE], cert.signature)
        except RemoteProtocolError as exc:
            raise InvalidReceipt("delegate certificate signature does not verify") from exc
        return cert

    def authorise(self, issuer_key: bytes, now: float, scope: str = DELEGATE_SCOPE) -> None:
        """Raise :class:`InvalidReceipt` unless ``issuer_key`` issued this for ``scope``
        and it has not expired."""
        if self.node_key != issuer_key:
            raise InvalidReceipt("the delegate certificate was issued by another node")
        if self.scope != scope:
            raise InvalidReceipt(f"the delegate certificate is for {self.scope!r}, not {scope!r}")
        if now >= self.expires:
            raise InvalidReceipt("the delegate certificate has expired")


@dataclass(frozen=True, slots=True)
class Delegation:
    """A delegate key and the certificate that authorises it."""

    key: Identity
    certificate: DelegateCertificate


@dataclass(frozen=True, slots=True)
class SettlePropose(Request):
    """A signed proposal to settle the receipts between us; with ``cert``, signed by the
    delegate key that the certificate names."""

    TYPE = MsgType.SETTLE_PROPOSE
    FIELDS = frozenset({"stmt", "sig", "cert"})
    statement: Statement
    signature: bytes
    cert: bytes = b""
    ro: bool = False

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"stmt": self.statement.to_wire(), "sig": self.signature}
        if self.cert:
            body["cert"] = self.cert
        return body

    @classmethod
    def from_body(cls, body: dict[Any, Any]) -> SettlePropose:
        _only(body, cls.FIELDS)
        try:
            statement = Statement.from_wire(body.get("stmt"))
        except InvalidReceipt as exc:
            raise MistypedMessage(str(exc)) from exc
        cert = _bytes(body, "cert") if "cert" in body else b""
        if "cert" in body and not 0 < len(cert) <= MAX_CERTIFICATE:
            raise MistypedMessage(f"field 'cert' must be 1-{MAX_CERTIFICATE} bytes")
        return cls(statement, _bytes(body, "sig", 64), cert)


@dataclass(frozen=True, slots=True)
class SettleReply(Reply):
    """The countersignature, or why not and what the other side sees."""

    TYPE = MsgType.SETTLE_REPLY
    FIELDS = frozenset({"re", "ok", "sig", "why", "amount", "count"})
    re: bytes
    ok: bool
    signature: bytes = b""
    why: str = ""
    amount: int = 0
    count: int = 0

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"re": self.re, "ok": self.ok}
        if self.ok:
            body["sig"] = self.signature
        else:
            body |= {"why": self.why, "amount": self.amount, "count": self.count}
        return body

    @classmethod
    def from_body(cls, body: dict[Any, Any]) -> SettleReply:
        _only(body, cls.FIELDS)
        if "ok" not in body:
            raise MistypedMessage("field 'ok' is required")
        ok = _flag(body, "ok")
        if ok:
            return cls(_bytes(body, "re", NONCE_SIZE), True, _bytes(body, "sig", 64))
        amount, count = body.get("amount", 0), body.get("count", 0)
        if type(amount) is not int or type(count) is not int or count < 0:
            raise MistypedMessage("settlement view must be integers")
        return cls(_bytes(body, "re", NONCE_SIZE), False, b"", _text(body, "why"), amount, count)


MAX_RECONCILE_IDS = 30_000
"""Receipt ids in one reconciliation (960,000 bytes: within a provider's frame limit)."""
RECONCILE_GRACE_S = 120.0
"""A receipt younger than this is never voided: its result may still be on its way."""


def _ids_field(body: dict[Any, Any], key: str) -> list[str]:
    """A field of concatenated 32-byte receipt ids (one byte string, so that thousands of
    ids stay within an envelope body's item limit)."""
    raw = _bytes(body, key)
    if len(raw) % 32 or len(raw) > 32 * MAX_RECONCILE_IDS:
        raise MistypedMessage(f"field {key!r} must be up to {MAX_RECONCILE_IDS} 32-byte ids")
    return [raw[i : i + 32].hex() for i in range(0, len(raw), 32)]


def _pack_ids(ids: list[str]) -> bytes:
    return b"".join(bytes.fromhex(i) for i in ids)


@dataclass(frozen=True, slots=True)
class SettleReconcile(Request):
    """The unsettled receipts the sender holds with the recipient, by id: sent when a
    settlement was refused because the two books differ."""

    TYPE = MsgType.SETTLE_RECONCILE
    FIELDS = frozenset({"ids"})
    ids: list[str]
    ro: bool = False

    def to_body(self) -> dict[str, Any]:
        return {"ids": _pack_ids(self.ids)}

    @classmethod
    def from_body(cls, body: dict[Any, Any]) -> SettleReconcile:
        _only(body, cls.FIELDS)
        return cls(_ids_field(body, "ids"))


@dataclass(frozen=True, slots=True)
class SettleReconciled(Reply):
    """What the recipient voided (receipts it provided that the sender never got) and
    the unsettled receipts it holds after that."""

    TYPE = MsgType.SETTLE_RECONCILED
    FIELDS = frozenset({"re", "void", "ids"})
    re: bytes
    void: list[str]
    ids: list[str]

    def to_body(self) -> dict[str, Any]:
        return {"re": self.re, "void": _pack_ids(self.void), "ids": _pack_ids(self.ids)}

    @classmethod
    def from_body(cls, body: dict[Any, Any]) -> SettleReconciled:
        _only(body, cls.FIELDS)
        return cls(_bytes(body, "re", NONCE_SIZE), _ids_field(body, "void"),
                   _ids_field(body, "ids"))


wire.register_message(SettlePropose)
wire.register_message(SettleReply)
wire.register_message(SettleReconcile)
wire.register_message(SettleReconciled)


class SettlementDesk:
    """Proposes, checks and books settlements for one node."""

    def __init__(
        self, identity: Identity, ledger: Ledger, entropy: Callable[[int], bytes] = os.urandom,
        *, clock: Callable[[], float] = time.time,
    ) -> None:
        self.identity = identity
        self.ledger = ledger
        self.entropy = entropy
        self.clock = clock
        self._proposed: dict[bytes, list[str]] = {}
        self._delegated: dict[tuple[bytes, int], int] = {}
        """(proposer, UTC day) → micro-credits its delegate spent with us that day."""
        self.grace = RECONCILE_GRACE_S

    def propose(self, peer: bytes, delegation: Delegation | None = None) -> SettlePropose | None:
        """A signed proposal over our unsettled receipts with ``peer`` (a node id), or
        ``None`` when they net to zero. With ``delegation``, the delegate key signs it."""
        balance, receipts, ids = self.ledger.settlement_view(peer.hex())
        if balance == 0:
            return None
        me = self.identity.node_id
        creditor, debtor = (me, peer) if balance > 0 else (peer, me)
        statement = Statement(self.entropy(16), creditor, debtor, abs(balance), receipts,
                              len(ids))
        self._proposed[statement.id] = ids
        if delegation is not None:
            return SettlePropose(statement, delegation.key.sign(statement.encode()),
                                 delegation.certificate.encode())
        return SettlePropose(statement, self.identity.sign(statement.encode()))

    def answer(self, proposer_key: bytes, nonce: bytes, proposal: SettlePropose) -> SettleReply:
        """Countersign and book a proposal that matches our books exactly."""
        statement = proposal.statement
        proposer = node_id_of(proposer_key)
        me = self.identity.node_id
        if {statement.creditor, statement.debtor} != {proposer, me}:
            return SettleReply(nonce, False, why="the statement is not between us")
        spend: tuple[bytes, int] | None = None
        if proposal.cert:
            cert = DelegateCertificate.parse(proposal.cert)
            now = self.clock()
            cert.authorise(proposer_key, now)
            statement.verify(cert.key, proposal.signature)
            if statement.debtor == proposer:
                spend = (proposer, int(now // 86400))
                spent = self._delegated.get(spend, 0)
                if spent + statement.amount > cert.ceiling:
                    return SettleReply(
                        nonce, False,
                        why=(f"past the delegate's daily ceiling: {to_credits(spent):g} of"
                             f" {to_credits(cert.ceiling):g} credits spent today, this would"
                             f" add {to_credits(statement.amount):g}"),
                    )
        else:
            statement.verify(proposer_key, proposal.signature)
        balance, receipts, ids = self.ledger.settlement_view(proposer.hex())
        count = len(ids)
        ours = balance if statement.creditor == me else -balance
        if ours != statement.amount or receipts != statement.receipts:
            return SettleReply(
                nonce, False,
                why=(f"books differ: we see {to_credits(abs(balance)):g} credits over {count}"
                     f" receipts, you proposed {to_credits(statement.amount):g} over"
                     f" {statement.count}"),
                amount=balance, count=count,
            )
        signature = self.identity.sign(statement.encode())
        self.ledger.settle(
            statement, peer=proposer.hex(), our_sig=signature, their_sig=proposal.signature,
            we_are_creditor=statement.creditor == me, ids=ids,
        )
        if spend is not None:
            self._delegated[spend] = self._delegated.get(spend, 0) + statement.amount
        return SettleReply(nonce, True, signature)

    def reconcile(self, peer: bytes, theirs: list[str]) -> list[str]:
        """Void the receipts we provided to ``peer`` that it does not hold (so never
        received), unless they are too recent to tell. A charge stands only on a receipt
        its requester has: a provider that booked a task and then died, or lost the
        connection, before the result left would otherwise keep a charge the requester
        never saw, and the two books would disagree for good."""
        if len(theirs) >= MAX_RECONCILE_IDS:
            return []  # the list may have been cut short: absence proves nothing
        held = set(theirs)
        ours = self.ledger.unsettled(peer.hex(), role="provided")
        return self.ledger.void(
            [i for i in ours if i not in held], peer=peer.hex(),
            before=self.clock() - self.grace,
        )

    def conclude(self, proposal: SettlePropose, reply: SettleReply, peer_key: bytes, *,
                 raise_refusal: bool = True) -> None:
        """Book an accepted proposal, or raise :class:`SettlementRefused` (only forget a
        refused one with ``raise_refusal=False``)."""
        statement = proposal.statement
        ids = self._proposed.pop(statement.id, None)
        if not reply.ok:
            if not raise_refusal:
                return
            raise SettlementRefused(f"the peer refused the settlement: {reply.why}")
        statement.verify(peer_key, reply.signature)
        peer = node_id_of(peer_key)
        self.ledger.settle(
            statement, peer=peer.hex(), our_sig=proposal.signature, their_sig=reply.signature,
            we_are_creditor=statement.creditor == self.identity.node_id, ids=ids,
        )
