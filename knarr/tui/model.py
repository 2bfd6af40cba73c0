"""What the console knows about the node, and how cockpit data becomes keyed rows.

The model turns snapshots and events into :class:`RowChange` lists (a row added or
changed under its key, or removed); the widgets only apply them. Snapshots are diffed
against what is already shown, so a refresh changes only the cells that differ. Pure:
no Textual, no I/O, no clock.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Column:
    """A table column: the row field it shows, its header, and how to render it.

    ``kind``: ``text``, ``id`` (a node id, shortened; "this node" for our own),
    ``age`` (a time, shown as how long ago), ``int``, ``score``, ``price``, ``credits``
    (signed), ``ms``.
    """

    key: str
    label: str
    kind: str = "text"
    width: int | None = None


@dataclass(frozen=True, slots=True)
class Panel:
    id: str
    title: str
    columns: tuple[Column, ...]
    sort: str
    """The column sorted by at start."""
    descending: bool
    empty: str
    """What the panel says when it has no rows."""
    tab: str = ""
    """The name on its tab (the title if empty)."""


PANELS: tuple[Panel, ...] = (
    Panel("peers", "Peers", (
        Column("node_id", "Node", "id", 12),
        Column("address", "Address", "text", 21),
        Column("bucket", "Bkt", "int", 4),
        Column("last_seen", "Seen", "age", 5),
        Column("rtt_ms", "RTT ms", "ms", 7),
        Column("failures", "Fail", "int", 5),
    ), "bucket", False, "no peers yet: the node has not joined a network"),
    Panel("skills", "Skills", (
        Column("name", "Skill", "text", 18),
        Column("provider", "Provider", "id", 12),
        Column("price", "Price", "price", 6),
        Column("visibility", "Vis", "text", 8),
        Column("tags", "Tags", "text", 16),
    ), "name", False, "no skills yet: none served here or discovered"),
    Panel("demand", "Demand", (
        Column("kind", "Kind", "text", 5),
        Column("name", "Wanted", "text", 26),
        Column("count", "Count", "int", 6),
        Column("first_seen", "First", "age", 6),
        Column("last_seen", "Last", "age", 5),
    ), "count", True, "none yet: every query so far found a provider"),
    Panel("reputation", "Reputation", (
        Column("provider", "Provider", "id", 12),
        Column("score", "Score", "score", 6),
        Column("calls", "Calls", "int", 6),
        Column("successes", "OK", "int", 5),
        Column("failures", "Fail", "int", 5),
        Column("timeouts", "T/O", "int", 5),
        Column("mean_latency_ms", "Lat ms", "ms", 7),
        Column("last_seen", "Seen", "age", 5),
    ), "score", True, "none yet: no provider has been called from here"),
    Panel("ledger", "Ledger", (
        Column("created", "When", "age", 5),
        Column("role", "Role", "text", 8),
        Column("peer", "Peer", "id", 12),
        Column("skill", "Skill", "text", 13),
        Column("amount", "Credits", "credits", 8),
        Column("outcome", "Outcome", "text", 9),
        Column("duration_ms", "ms", "ms", 6),
    ), "created", True, "none yet: no task was provided or consumed"),
    Panel("recipes", "Recipe firings", (
        Column("time", "When", "age", 5),
        Column("recipe", "Recipe", "text", 16),
        Column("event", "Event", "text", 8),
        Column("action", "Action", "text", 8),
        Column("detail", "Detail", "text", 30),
    ), "time", True, "none yet: no recipe has fired", "Recipes"),
    Panel("watchman", "Watchman restarts", (
        Column("time", "When", "age", 5),
        Column("event", "Event", "text", 16),
        Column("detail", "Detail", "text", 44),
    ), "time", True, "none yet: watchman has not restarted this node", "Watchman"),
)
PANEL_IDS = tuple(p.id for p in PANELS)
PANEL_BY_ID = {p.id: p for p in PANELS}

# Which snapshots an event makes stale (re-fetched to keep aggregates exact).
_STALE: dict[str, tuple[str, ...]] = {
    "peer.added": ("peers", "status"),
    "peer.removed": ("peers", "status"),
    "skill.announced": ("skills", "status"),
    "skill.withdrawn": ("skills", "status"),
    "skill.discovered": (),
    "demand": ("demand",),
    "task.provided": ("ledger", "status"),
    "task.consumed": ("ledger", "reputation", "status"),
    "settlement": ("ledger",),
    "recipe": ("recipes",),
    "watchman": ("watchman",),
}
ROWS_FROM_EVENTS = frozenset({"peers", "ledger"})
"""Snapshots whose rows the events already carry (a peer with its bucket, a receipt):
re-fetched only now and then, for what events lack (RTTs, failures, the ledger's totals
and balances), since at thousands of rows a re-fetch costs the node and the console far
more than the event did."""
_JOURNAL_FIELDS = frozenset({"id", "time", "event", "recipe", "action", "detail"})


LEDGER_ROWS = 500
"""The receipts the ledger panel holds: the newest, as many as ``GET /v1/ledger`` returns
by default, so that a re-fetch and the events agree on which rows are shown."""


def stale_after(event_type: str) -> tuple[str, ...]:
    """The snapshots to re-fetch after an event of this type."""
    if event_type == "node.started":
        return ("status", "peers", "skills", "demand", "reputation", "ledger", "recipes",
                "watchman")
    return _STALE.get(event_type, ())


@dataclass(frozen=True, slots=True)
class RowChange:
    """Row ``key`` of ``panel`` is now ``row`` (``None``: it is gone)."""

    panel: str
    key: str
    row: Row | None


@dataclass
class History:
    """What the console has seen happen with one peer (newest last)."""

    entries: deque[tuple[float, str]] = field(default_factory=lambda: deque(maxlen=50))


class ConsoleModel:
    """Rows per panel, the node's status and the ledger's totals."""

    def __init__(self) -> None:
        self.status: dict[str, Any] = {}
        self.rows: dict[str, dict[str, Row]] = {p: {} for p in PANEL_IDS}
        self.totals: dict[str, Any] = {}
        self.balances: dict[str, dict[str, Any]] = {}
        self.history: dict[str, History] = {}
        self.updated_at: float | None = None
        self.seq = 0
        self._receipt_ages: list[tuple[float, str]] = []
        """A heap of (created, key) of the ledger rows, oldest first (may hold keys since
        dropped or re-dated: checked when popped)."""

    @property
    def node_id(self) -> str:
        return str(self.status.get("node_id", ""))

    # ------------------------------------------------------------------ snapshots

    def sync(self, snapshots: Mapping[str, Any], *, at: float, seq: int) -> list[RowChange]:
        """Apply a full set of snapshots."""
        changes = []
        if "status" in snapshots:
            self.sync_one("status", snapshots["status"], at=at)
        for name, data in snapshots.items():
            if name != "status":
                changes += self.sync_one(name, data, at=at)
        self.seq = max(self.seq, seq)
        return changes

    def sync_one(self, name: str, data: Any, *, at: float | None = None) -> list[RowChange]:
        """Apply one snapshot: the panel's rows become exactly what it holds."""
        if at is not None:
            self.touch(at)
        if name == "status":
            if isinstance(data, dict):
                self.status = dict(data)
            return []
        if name not in self.rows:
            return []
        if name == "ledger" and isinstance(data, dict):
            self.totals = dict(data.get("totals") or {})
            self.balances = {str(b["peer"]): dict(b) for b in data.get("balances") or []}
        fresh = dict(self._rows_of(name, data))
        if name == "ledger":
            self._receipt_ages = [(_created(r), k) for k, r in fresh.items()]
            heapq.heapify(self._receipt_ages)
        return self._replace(name, fresh)

    def _replace(self, panel: str, fresh: dict[str, Row]) -> list[RowChange]:
        current = self.rows[panel]
        changes = [RowChange(panel, key, None) for key in current if key not in fresh]
        for key, row in fresh.items():
            if current.get(key) != row:
                changes.append(RowChange(panel, key, row))
        self.rows[panel] = fresh
        return changes

    def _rows_of(self, name: str, data: Any) -> Iterable[tuple[str, Row]]:
        if name == "peers":
            for p in data or []:
                yield str(p["node_id"]), peer_row(p)
        elif name == "skills":
            yield from self._skill_rows(data or {})
        elif name == "demand":
            for d in data or []:
                yield f"{d['kind']}:{d['name']}", dict(d)
        elif name == "reputation":
            for r in data or []:
                yield str(r["provider"]), dict(r)
        elif name == "ledger":
            for r in (data or {}).get("receipts") or []:
                yield str(r["id"]), receipt_row(r)
        elif name in ("recipes", "watchman"):
            for j in data or []:
                yield str(j["id"]), journal_row(j)

    def _skill_rows(self, data: Mapping[str, Any]) -> Iterable[tuple[str, Row]]:
        rows: dict[str, Row] = {}
        for record in data.get("discovered") or []:
            row = skill_row(record)
            rows[f"{row['provider']}/{row['name']}"] = row
        own = self.node_id
        for local in data.get("local") or []:
            key = f"{own}/{local['name']}"
            known = {k: v for k, v in skill_row({**local, "provider": own}).items()
                     if v not in ("", None, {}, [])}
            rows[key] = {**rows.get(key, skill_row({"provider": own})), **known, "local": True}
        return rows.items()

    def touch(self, at: float) -> None:
        self.updated_at = at if self.updated_at is None else max(self.updated_at, at)

    # ------------------------------------------------------------------ events

    def apply(self, event_type: str, data: Mapping[str, Any], *, at: float,
              seq: int = 0) -> list[RowChange]:
        """Apply one event; returns the rows it changed."""
        self.touch(at)
        self.seq = max(self.seq, seq)
        if event_type == "peer.added":
            node_id = str(data["node_id"])
            old = self.rows["peers"].get(node_id, {})
            row = {**old, **peer_row({"rtt_ms": None, "failures": 0, **old, **data,
                                      "last_seen": at})}
            self._note(node_id, at, "joined the routing table")
            return self._set("peers", node_id, row)
        if event_type == "peer.removed":
            node_id = str(data["node_id"])
            self._note(node_id, at, "left the routing table")
            return self._drop("peers", node_id)
        if event_type == "skill.announced":
            key = f"{self.node_id}/{data['name']}"
            old = self.rows["skills"].get(key, {})
            row = {**skill_row({"name": data["name"], "provider": self.node_id}), **old,
                   "visibility": data.get("visibility", old.get("visibility", "")),
                   "price": data.get("price", old.get("price")), "local": True}
            return self._set("skills", key, row)
        if event_type == "skill.withdrawn":
            return self._drop("skills", f"{self.node_id}/{data['name']}")
        if event_type == "skill.discovered":
            row = skill_row(data)
            key = f"{row['provider']}/{row['name']}"
            return self._set("skills", key, {**self.rows["skills"].get(key, {}), **row})
        if event_type == "demand":
            key = f"{data['kind']}:{data['name']}"
            wanted = self.rows["demand"].get(key)
            row = ({**wanted, "count": int(wanted.get("count", 0)) + 1, "last_seen": at}
                   if wanted else {"kind": data["kind"], "name": data["name"], "count": 1,
                                   "first_seen": at, "last_seen": at})
            return self._set("demand", key, row)
        if event_type in ("task.provided", "task.consumed"):
            role = event_type.removeprefix("task.")
            peer = str(data.get("requester" if role == "provided" else "provider", ""))
            row = receipt_row({**data, "role": role, "peer": peer, "created": at})
            verb = "called" if role == "provided" else "served"
            self._note(peer, at, f"{verb} {data.get('skill', '?')} "
                                 f"({data.get('outcome', '?')}, {row['amount']:+g} credits)")
            key = str(data["id"])
            changes = self._set("ledger", key, {**self.rows["ledger"].get(key, {}), **row})
            if changes:
                heapq.heappush(self._receipt_ages, (_created(row), key))
                changes += self._drop_oldest_receipts()
            return changes
        if event_type == "settlement":
            peer = str(data.get("peer", ""))
            self._note(peer, at, f"settled {abs(float(data.get('amount', 0))):g} credits")
        return []

    def _set(self, panel: str, key: str, row: Row) -> list[RowChange]:
        if self.rows[panel].get(key) == row:
            return []
        self.rows[panel][key] = row
        return [RowChange(panel, key, row)]

    def _drop(self, panel: str, key: str) -> list[RowChange]:
        if self.rows[panel].pop(key, None) is None:
            return []
        return [RowChange(panel, key, None)]

    def _drop_oldest_receipts(self) -> list[RowChange]:
        """Keep the newest :data:`LEDGER_ROWS` receipts."""
        rows, ages = self.rows["ledger"], self._receipt_ages
        changes = []
        while len(rows) > LEDGER_ROWS and ages:
            created, key = heapq.heappop(ages)
            row = rows.get(key)
            if row is not None and _created(row) == created:
                changes += self._drop("ledger", key)
        return changes

    def _note(self, peer: str, at: float, text: str) -> None:
        if peer:
            self.history.setdefault(peer, History()).entries.append((at, text))

    # ------------------------------------------------------------------ queries

    def skills_of(self, provider: str) -> list[Row]:
        return sorted((r for r in self.rows["skills"].values() if r.get("provider") == provider),
                      key=lambda r: str(r.get("name")))

    def providers_of(self, skill: str) -> list[Row]:
        return sorted((r for r in self.rows["skills"].values() if r.get("name") == skill),
                      key=lambda r: -float(self.score_of(str(r.get("provider"))) or 0.0))

    def receipts_with(self, peer: str) -> list[Row]:
        return sorted((r for r in self.rows["ledger"].values() if r.get("peer") == peer),
                      key=lambda r: -float(r.get("created") or 0.0))

    def score_of(self, provider: str) -> float | None:
        row = self.rows["reputation"].get(provider)
        return None if row is None else float(row.get("score") or 0.0)


# ---------------------------------------------------------------------- rows


def peer_row(p: Mapping[str, Any]) -> Row:
    return {
        "node_id": str(p["node_id"]),
        "host": p.get("host", ""),
        "port": p.get("port", 0),
        "address": f"{p.get('host', '')}:{p.get('port', '')}",
        "bucket": p.get("bucket"),
        "last_seen": p.get("last_seen"),
        "rtt_ms": p.get("rtt_ms"),
        "failures": p.get("failures", 0),
    }


def skill_row(s: Mapping[str, Any]) -> Row:
    tags = s.get("tags") or []
    return {
        "name": str(s.get("name", "")),
        "provider": str(s.get("provider", "")),
        "price": s.get("price"),
        "visibility": s.get("visibility", ""),
        "tags": ", ".join(str(t) for t in tags),
        "version": s.get("version", ""),
        "description": s.get("description", ""),
        "input_schema": dict(s.get("input_schema") or {}),
        "output_schema": dict(s.get("output_schema") or {}),
        "host": s.get("host", ""),
        "port": s.get("port"),
        "local": bool(s.get("local", False)),
    }


def receipt_row(r: Mapping[str, Any]) -> Row:
    charged = float(r.get("charged") or 0.0)
    row = dict(r)
    row["amount"] = charged if r.get("role") == "provided" or not charged else -charged
    return row


def journal_row(j: Mapping[str, Any]) -> Row:
    rest = {k: v for k, v in j.items() if k not in _JOURNAL_FIELDS}
    detail = j.get("detail") or " ".join(f"{k}={v}" for k, v in sorted(rest.items()))
    return {
        **j,
        "recipe": j.get("recipe", j.get("name", "")),
        "action": j.get("action", ""),
        "detail": str(detail),
    }


def _created(receipt: Row) -> float:
    return float(receipt.get("created") or 0.0)


def matches(panel: Panel, row: Row, needle: str) -> bool:
    """Does ``row`` match the filter text (case-insensitive, any shown column)?"""
    if not needle:
        return True
    needle = needle.lower()
    return any(needle in str(row.get(c.key, "")).lower() for c in panel.columns)
