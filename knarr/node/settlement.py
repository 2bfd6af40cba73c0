"""Netting: two peers agree what one owes the other over their unsettled receipts.

The proposer signs a :class:`~knarr.node.economy.Statement` of the net amount and the
hash of the receipts it covers; the other side recomputes both from its own books and
countersigns only if they match exactly. Each side books the settlement only with both
signatures, and a disagreement is reported with both views, never accepted.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from knarr.errors import KnarrError, MistypedMessage
from knarr.node import wire
from knarr.node.economy import InvalidReceipt, Statement, to_credits
from knarr.node.identity import Identity, node_id_of
from knarr.node.ledger import Ledger
from knarr.node.wire import NONCE_SIZE, MsgType, Reply, Request, _bytes, _flag, _only, _text


class SettlementRefused(KnarrError):
    """The peer does not agree with our view of what is owed."""


@dataclass(frozen=True, slots=True)
class SettlePropose(Request):
    """A signed proposal to settle the receipts between us."""

    TYPE = MsgType.SETTLE_PROPOSE
    FIELDS = frozenset({"stmt", "sig"})
    statement: Statement
    signature: bytes
    ro: bool = False

    def to_body(self) -> dict[str, Any]:
        return {"stmt": self.statement.to_wire(), "sig": self.signature}

    @classmethod
    def from_body(cls, body: dict[Any, Any]) -> SettlePropose:
        _only(body, cls.FIELDS)
        try:
            statement = Statement.from_wire(body.get("stmt"))
        except InvalidReceipt as exc:
            raise MistypedMessage(str(exc)) from exc
        return cls(statement, _bytes(body, "sig", 64))


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


wire.register_message(SettlePropose)
wire.register_message(SettleReply)


class SettlementDesk:
    """Proposes, checks and books settlements for one node."""

    def __init__(
        self, identity: Identity, ledger: Ledger, entropy: Callable[[int], bytes] = os.urandom
    ) -> None:
        self.identity = identity
        self.ledger = ledger
        self.entropy = entropy
        self._proposed: dict[bytes, list[str]] = {}

    def propose(self, peer: bytes) -> SettlePropose | None:
        """A signed proposal over our unsettled receipts with ``peer`` (a node id), or
        ``None`` when they net to zero."""
        balance, receipts, ids = self.ledger.settlement_view(peer.hex())
        if balance == 0:
            return None
        me = self.identity.node_id
        creditor, debtor = (me, peer) if balance > 0 else (peer, me)
        statement = Statement(self.entropy(16), creditor, debtor, abs(balance), receipts,
                              len(ids))
        self._proposed[statement.id] = ids
        return SettlePropose(statement, self.identity.sign(statement.encode()))

    def answer(self, proposer_key: bytes, nonce: bytes, proposal: SettlePropose) -> SettleReply:
        """Countersign and book a proposal that matches our books exactly."""
        statement = proposal.statement
        proposer = node_id_of(proposer_key)
        me = self.identity.node_id
        if {statement.creditor, statement.debtor} != {proposer, me}:
            return SettleReply(nonce, False, why="the statement is not between us")
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
        return SettleReply(nonce, True, signature)

    def conclude(self, proposal: SettlePropose, reply: SettleReply, peer_key: bytes) -> None:
        """Book an accepted proposal, or raise :class:`SettlementRefused`."""
        statement = proposal.statement
        ids = self._proposed.pop(statement.id, None)
        if not reply.ok:
            raise SettlementRefused(f"the peer refused the settlement: {reply.why}")
        statement.verify(peer_key, reply.signature)
        peer = node_id_of(peer_key)
        self.ledger.settle(
            statement, peer=peer.hex(), our_sig=proposal.signature, their_sig=reply.signature,
            we_are_creditor=statement.creditor == self.identity.node_id, ids=ids,
        )
