"""The node's books in SQLite: receipts, a double-entry ledger, settlements, reputation
and unmet demand. Every change that spans rows is one transaction, and receipts are
keyed by their hash, so a retried or replayed receipt is never counted twice.

Accounts: ``peer:<node id>`` holds what that peer owes us (negative: what we owe it);
``provided`` and ``consumed`` are the other legs of task charges; ``settled:<node id>``
the other leg of settlements. Every transaction's rows sum to zero.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from knarr.node.economy import (
    ProviderStats,
    Receipt,
    Statement,
    receipts_hash,
    to_credits,
    to_micro,
)
from knarr.node.store import Store
from knarr.node.tasks import TaskRefusal


@dataclass(frozen=True, slots=True)
class Balance:
    peer: str
    amount: int
    """Micro-credits the peer owes us (negative: we owe it)."""
    tasks: int


MAX_DEMAND = 10_000
"""Names the demand table keeps (see :meth:`Ledger.count_demand`)."""


class Ledger:
    """Books over one node :class:`Store`."""

    def __init__(self, store: Store, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock
        # peer -> balance as of the last commit, filled on first use: summing a peer's
        # whole history for every task made providers slower with every task served.
        # The node process is the only writer of its books while it runs.
        self._balances: dict[str, int] = {}
        self._voided: dict[str, int] = {}
        """peer -> micro-credits of its charges we voided (same caching as balances)."""
        self._demand_rows: int | None = None
        """Rows in the demand table, counted on first use and kept up to date."""
        self._totals: dict[str, int] | None = None
        """:meth:`totals` as of the last commit, kept up to date by every write: summing
        (and auditing) the whole ledger each time the cockpit asked cost a full scan."""

    # ------------------------------------------------------------------ receipts

    def record(self, receipt: Receipt, *, role: str) -> bool:
        """Book a receipt (``role``: we ``provided`` or ``consumed`` the task). Returns
        False if it was booked before. The receipt and its ledger rows commit together."""
        return bool(self.record_many([receipt], role=role))

    def record_many(self, receipts: Sequence[Receipt], *, role: str) -> list[Receipt]:
        """Book several receipts in one transaction (a provider's group commit: one
        write to the log covers every task finished in the same turn of the loop).
        Returns those not booked before; each receipt's rows are whole either way."""
        sign = 1 if role == "provided" else -1
        now = self.clock()
        booked: list[Receipt] = []
        rows: list[tuple[str, str, int, float]] = []
        store = self.store
        with store.transaction():
            for receipt in receipts:
                peer = (receipt.requester if role == "provided" else receipt.provider).hex()
                charged = receipt.charged
                store.execute(
                    "INSERT OR IGNORE INTO receipts(id, role, peer, skill, price, charged,"
                    " outcome, duration, created, raw) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (receipt.id, role, peer, receipt.skill, receipt.price, charged,
                     receipt.outcome, receipt.duration_ms, now, receipt.raw),
                )
                if not store.changes():
                    continue  # booked before: never counted twice
                if charged:
                    rows += [(receipt.id, f"peer:{peer}", sign * charged, now),
                             (receipt.id, role, -sign * charged, now)]
                booked.append(receipt)
            if rows:
                store.executemany(
                    "INSERT INTO ledger(txn, account, amount, created) VALUES(?, ?, ?, ?)", rows
                )
        # Only after the commit: a failed transaction leaves the cache as it was.
        for receipt in booked:
            peer = (receipt.requester if role == "provided" else receipt.provider).hex()
            if receipt.charged and peer in self._balances:
                self._balances[peer] += sign * receipt.charged
        self._count(rows)
        return booked

    def receipts(self, *, peer: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        where, params = ("WHERE peer = ?", (peer,)) if peer else ("", ())
        rows = self.store.execute(
            "SELECT id, role, peer, skill, price, charged, outcome, duration, created,"
            f" settlement FROM receipts {where} ORDER BY created DESC LIMIT ?",
            (*params, limit),
        )
        keys = ("id", "role", "peer", "skill", "price", "charged", "outcome", "duration_ms",
                "created", "settlement")
        out = [dict(zip(keys, row, strict=True)) for row in rows]
        for row in out:
            row["price"] = to_credits(row["price"])
            row["charged"] = to_credits(row["charged"])
        return out

    def peer_key(self, peer: str) -> bytes | None:
        """A peer's public key, from a receipt that names it."""
        from knarr.node.economy import parse_receipt

        rows = self.store.execute("SELECT role, raw FROM receipts WHERE peer = ? LIMIT 1", (peer,))
        if not rows:
            return None
        receipt = parse_receipt(bytes(rows[0][1]))
        return receipt.requester_key if rows[0][0] == "provided" else receipt.provider_key

    # ------------------------------------------------------------------ balances

    def reload(self) -> None:
        """Forget cached balances (after the database was changed by another process)."""
        self._balances.clear()
        self._voided.clear()
        self._totals = None

    def voided(self, peer: str) -> int:
        """Micro-credits of the charges to ``peer`` that reconciliation voided because it
        said it never received them. They still count against its credit: otherwise a
        requester could deny every receipt, have its debt voided and start again."""
        cached = self._voided.get(peer)
        if cached is None:
            rows = self.store.execute(
                "SELECT COALESCE(SUM(charged), 0) FROM receipts WHERE peer = ?"
                " AND role = 'provided' AND settlement = 'void'", (peer,),
            )
            cached = self._voided[peer] = int(rows[0][0])
        return cached

    def balance(self, peer: str) -> int:
        cached = self._balances.get(peer)
        if cached is None:
            rows = self.store.execute(
                "SELECT COALESCE(SUM(amount), 0) FROM ledger WHERE account = ?",
                (f"peer:{peer}",),
            )
            cached = self._balances[peer] = int(rows[0][0])
        return cached

    def balances(self) -> list[Balance]:
        rows = self.store.execute(
            "SELECT substr(l.account, 6), SUM(l.amount),"
            " (SELECT COUNT(*) FROM receipts r WHERE r.peer = substr(l.account, 6))"
            " FROM ledger l WHERE l.account LIKE 'peer:%' GROUP BY l.account"
            " ORDER BY ABS(SUM(l.amount)) DESC"
        )
        return [Balance(str(r[0]), int(r[1]), int(r[2])) for r in rows]

    def totals(self) -> dict[str, int]:
        """Sums per account kind: what we earned, spent, and settled; and the check that
        every transaction balances (``unbalanced_transactions`` must be 0). Read from the
        database once, then kept up to date as this ledger writes: every transaction it
        writes balances, so the audit holds until another process changes the books
        (:meth:`reload`)."""
        if self._totals is None:
            self._totals = self._read_totals()
        return dict(self._totals)

    def _read_totals(self) -> dict[str, int]:
        rows = self.store.execute(
            "SELECT CASE WHEN account LIKE 'peer:%' THEN 'outstanding'"
            " WHEN account LIKE 'settled:%' THEN 'settled' ELSE account END, SUM(amount)"
            " FROM ledger GROUP BY 1"
        )
        totals = {str(k): int(v) for k, v in rows}
        imbalance = self.store.execute(
            "SELECT COUNT(*) FROM (SELECT txn FROM ledger GROUP BY txn HAVING SUM(amount) != 0)"
        )
        totals["unbalanced_transactions"] = int(imbalance[0][0])
        return totals

    def _count(self, rows: Sequence[tuple[str, str, int, float]]) -> None:
        """Add committed ledger rows ``(txn, account, amount, created)`` to the totals."""
        totals = self._totals
        if totals is None:
            return
        for _, account, amount, _ in rows:
            kind = ("outstanding" if account.startswith("peer:")
                    else "settled" if account.startswith("settled:") else account)
            totals[kind] = totals.get(kind, 0) + amount

    def unsettled(self, peer: str, *, role: str | None = None) -> list[str]:
        """Ids of the charged receipts with ``peer`` that no settlement covers yet (only
        those of ``role``, ``provided`` or ``consumed``, if given)."""
        where, params = ("AND role = ?", (peer, role)) if role else ("", (peer,))
        rows = self.store.execute(
            "SELECT id FROM receipts WHERE peer = ? AND settlement IS NULL AND charged > 0 "
            + where, params,
        )
        return [str(r[0]) for r in rows]

    def void(self, ids: Sequence[str], *, peer: str, before: float) -> list[str]:
        """Cancel the charges of receipts we provided to ``peer`` and booked before
        ``before``: each gets reversing ledger rows (transaction ``void:<id>``) and is
        marked ``void``, so no settlement counts it. Returns the ids voided."""
        voided: list[str] = []
        written: list[tuple[str, str, int, float]] = []
        now = self.clock()
        with self.store.transaction():
            for rid in ids:
                rows = self.store.execute(
                    "SELECT charged FROM receipts WHERE id = ? AND peer = ? AND role = 'provided'"
                    " AND settlement IS NULL AND charged > 0 AND created < ?",
                    (rid, peer, before),
                )
                if not rows:
                    continue
                charged = int(rows[0][0])
                self.store.execute(
                    "UPDATE receipts SET settlement = 'void' WHERE id = ?", (rid,)
                )
                reversal = [(f"void:{rid}", f"peer:{peer}", -charged, now),
                            (f"void:{rid}", "provided", charged, now)]
                self.store.executemany(
                    "INSERT INTO ledger(txn, account, amount, created) VALUES(?, ?, ?, ?)",
                    reversal,
                )
                written += reversal
                voided.append(rid)
        self._count(written)
        if voided:
            self._balances.pop(peer, None)
            self._voided.pop(peer, None)
        return voided

    def settlement_view(self, peer: str) -> tuple[int, bytes, list[str]]:
        """(balance with ``peer`` over unsettled receipts, their hash, their ids), read in
        one transaction so the three agree."""
        with self.store.transaction():
            ids = self.unsettled(peer)
            rows = self.store.execute(
                "SELECT COALESCE(SUM(CASE role WHEN 'provided' THEN charged ELSE -charged END),"
                " 0) FROM receipts WHERE peer = ? AND settlement IS NULL AND charged > 0",
                (peer,),
            )
        return int(rows[0][0]), receipts_hash(ids), ids

    def settle(self, statement: Statement, *, peer: str, our_sig: bytes,
               their_sig: bytes, we_are_creditor: bool, ids: list[str] | None = None) -> bool:
        """Book an agreed settlement: the peer's balance over the covered receipts goes to
        zero and the receipts are marked. False if already booked."""
        sid = statement.id.hex()
        now = self.clock()
        amount = statement.amount if we_are_creditor else -statement.amount
        with self.store.transaction():
            if self.store.execute("SELECT 1 FROM settlements WHERE id = ?", (sid,)):
                return False
            if ids is None:
                ids = self.unsettled(peer)
            if receipts_hash(ids) != statement.receipts:
                raise ValueError("the receipts changed since the settlement was agreed")
            self.store.execute(
                "INSERT INTO settlements(id, peer, amount, receipts, count, statement, our_sig,"
                " their_sig, created) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (sid, peer, amount, statement.receipts, statement.count, statement.encode(),
                 our_sig, their_sig, now),
            )
            rows = [(sid, f"peer:{peer}", -amount, now), (sid, f"settled:{peer}", amount, now)]
            self.store.executemany(
                "INSERT INTO ledger(txn, account, amount, created) VALUES(?, ?, ?, ?)", rows
            )
            self.store.executemany(
                "UPDATE receipts SET settlement = ? WHERE id = ?", [(sid, i) for i in ids]
            )
        self._count(rows)
        self._balances.pop(peer, None)
        return True

    def settlements(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self.store.execute(
            "SELECT id, peer, amount, count, created FROM settlements ORDER BY created DESC"
            " LIMIT ?", (limit,),
        )
        return [{"id": r[0], "peer": r[1], "amount": to_credits(r[2]), "receipts": r[3],
                 "created": r[4]} for r in rows]

    # ------------------------------------------------------------------ reputation

    def observe(self, provider: str, outcome: str, latency_ms: float = 0.0) -> None:
        """Count one call to ``provider``: ``completed``, ``failed`` or ``timeout``."""
        column = {"completed": "successes", "failed": "failures", "timeout": "timeouts"}[outcome]
        latency = latency_ms if outcome == "completed" else 0.0
        self.store.execute(
            f"INSERT INTO reputation(provider, {column}, latency, last_seen) VALUES(?, 1, ?, ?)"
            f" ON CONFLICT(provider) DO UPDATE SET {column} = {column} + 1,"
            " latency = latency + excluded.latency, last_seen = excluded.last_seen",
            (provider, latency, self.clock()),
        )

    def reputation(self) -> dict[str, ProviderStats]:
        rows = self.store.execute(
            "SELECT provider, successes, failures, timeouts, latency, last_seen FROM reputation"
        )
        return {str(r[0]): ProviderStats(str(r[0]), r[1], r[2], r[3], r[4], r[5]) for r in rows}

    # ------------------------------------------------------------------ demand

    def count_demand(self, kind: str, name: str) -> None:
        """A query for skill or tag ``name`` found no provider.

        The table holds at most :data:`MAX_DEMAND` names: anyone may ask for names nobody
        serves, and each asked-for name would otherwise be a row on disk for good. When
        it is full, the least-asked tenth (the oldest first among equals) makes room, so
        what many ask for stays while a flood of one-off names only churns among itself.
        """
        now = self.clock()
        store = self.store
        with store.transaction():
            store.execute(
                "UPDATE demand SET count = count + 1, last_seen = ? WHERE kind = ? AND name = ?",
                (now, kind, name),
            )
            if store.changes():
                return
            rows = self._demand_rows
            if rows is None:
                rows = int(store.execute("SELECT COUNT(*) FROM demand")[0][0])
            if rows >= MAX_DEMAND:
                store.execute(
                    "DELETE FROM demand WHERE rowid IN (SELECT rowid FROM demand"
                    " ORDER BY count, last_seen LIMIT ?)",
                    (rows - MAX_DEMAND + MAX_DEMAND // 10,),
                )
                rows -= store.changes()
            store.execute(
                "INSERT INTO demand(kind, name, count, first_seen, last_seen)"
                " VALUES(?, ?, 1, ?, ?)",
                (kind, name, now, now),
            )
        self._demand_rows = rows + 1  # only once committed

    def demand(self, limit: int = 1000) -> list[dict[str, Any]]:
        rows = self.store.execute(
            "SELECT kind, name, count, first_seen, last_seen FROM demand"
            " ORDER BY count DESC, last_seen DESC LIMIT ?", (limit,),
        )
        keys = ("kind", "name", "count", "first_seen", "last_seen")
        return [dict(zip(keys, r, strict=True)) for r in rows]


class CreditBooks:
    """The provider's side of the task server's :class:`Accounting`: credit holds for
    tasks in flight, so concurrent requests cannot overrun a requester's limit."""

    def __init__(
        self, ledger: Ledger, limit_for: Callable[[str], float],
        on_booked: Callable[[Receipt], object] | None = None,
    ) -> None:
        self.ledger = ledger
        self.limit_for = limit_for
        self.on_booked = on_booked
        self._held: dict[str, int] = {}

    def reserve(self, requester: bytes, price: int) -> None:
        peer = requester.hex()
        limit = to_micro(self.limit_for(peer))
        voided = self.ledger.voided(peer)
        owed = self.ledger.balance(peer) + voided + self._held.get(peer, 0)
        if price and owed + price > limit:
            disputed = (f" ({to_credits(voided):g} of it for results you said you never"
                        " received)") if voided else ""
            raise TaskRefusal(
                "credit_limit",
                f"credit limit reached: you owe {to_credits(owed):g}{disputed} of "
                f"{to_credits(limit):g} credits here; settle before calling again",
            )
        self._held[peer] = self._held.get(peer, 0) + price

    def release(self, requester: bytes, price: int) -> None:
        peer = requester.hex()
        left = self._held.get(peer, 0) - price
        if left > 0:
            self._held[peer] = left
        else:
            self._held.pop(peer, None)

    def book(self, receipts: Sequence[Receipt]) -> None:
        for receipt in self.ledger.record_many(receipts, role="provided"):
            if self.on_booked is not None:
                self.on_booked(receipt)
