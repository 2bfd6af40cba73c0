"""Detail views, opened with Enter: a peer (its skills and history), a skill (its schema
and providers), and a single record (a receipt, a recipe firing, a watchman event)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from knarr.tui.model import ConsoleModel, Row
from knarr.tui.widgets.panel import age, short_id


def _fields(pairs: Iterable[tuple[str, Any]]) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for name, value in pairs:
        table.add_row(name, Text(_plain(value)))
    return table


def _plain(value: Any) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) >= 1e5 else f"{value:g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _utc(when: Any) -> str:
    return datetime.fromtimestamp(float(when), tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _list(title: str, columns: Iterable[str], rows: list[list[str]], empty: str) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold", expand=False,
                  show_edge=False, box=None, header_style="bold dim", pad_edge=False)
    for column in columns:
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    if not rows:
        table.add_row(Text(empty, style="dim"))
    return table


class DetailScreen(Screen[None]):
    """A read-only view of one thing, kept current while it is open."""

    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="console.back",
                tooltip="Back to the panels"),
    ]

    def __init__(self, model: ConsoleModel, clock: Callable[[], float], key: str) -> None:
        super().__init__(classes="detail")
        self.model = model
        self.clock = clock
        self.key = key

    def compose(self) -> ComposeResult:
        yield Static(id="detail-title")
        with VerticalScroll(id="detail-scroll"):
            yield Static(id="detail-body")
        yield Footer()

    def on_mount(self) -> None:
        self.refresh_view()

    def refresh_view(self) -> None:
        title, body = self.describe()
        self.query_one("#detail-title", Static).update(Text(title))
        self.query_one("#detail-body", Static).update(body)

    def describe(self) -> tuple[str, RenderableType]:
        raise NotImplementedError

    def ago(self, when: Any) -> str:
        return "—" if not when else f"{age(self.clock() - float(when))} ago"


class PeerScreen(DetailScreen):
    """A peer: where it is, how it has served us, what it serves, what happened."""

    def describe(self) -> tuple[str, RenderableType]:
        m, node_id = self.model, self.key
        peer = m.rows["peers"].get(node_id, {})
        rep = m.rows["reputation"].get(node_id, {})
        balance = m.balances.get(node_id, {})
        facts = _fields([
            ("Node id", node_id),
            ("Address", peer.get("address") or "not in the routing table"),
            ("Bucket", peer.get("bucket")),
            ("Last seen", self.ago(peer.get("last_seen"))),
            ("RTT", f"{peer['rtt_ms']:.1f} ms" if peer.get("rtt_ms") is not None else None),
            ("Failures", peer.get("failures")),
            ("Reputation", f"{rep['score']:.2f} over {rep.get('calls', 0)} calls"
             if rep else "never called from here"),
            ("Balance", f"{float(balance['balance']):+.2f} credits over "
                        f"{balance.get('tasks', 0)} tasks" if balance else None),
        ])
        skills = _list("Skills", ("Skill", "Price", "Visibility", "Tags"), [
            [str(s["name"]), _plain(s.get("price")), str(s.get("visibility", "")),
             str(s.get("tags", ""))] for s in m.skills_of(node_id)
        ], "none known")
        receipts = _list("Receipts", ("When", "Role", "Skill", "Credits", "Outcome"), [
            [self.ago(r.get("created")), str(r.get("role", "")), str(r.get("skill", "")),
             f"{float(r.get('amount') or 0):+.2f}", str(r.get("outcome", ""))]
            for r in m.receipts_with(node_id)[:20]
        ], "no tasks with this peer")
        seen = m.history.get(node_id)
        history = _list("History (this session)", ("When", "What"), [
            [self.ago(when), text] for when, text in reversed(seen.entries)
        ] if seen else [], "nothing yet")
        title = f"Peer {short_id(node_id)}" + (" (this node)" if node_id == m.node_id else "")
        return title, Group(facts, Text(), skills, Text(), receipts, Text(), history)


class SkillScreen(DetailScreen):
    """A skill: what it takes and returns, and who serves it at what price."""

    def describe(self) -> tuple[str, RenderableType]:
        m, name = self.model, self.key
        providers = m.providers_of(name)
        info: Row = next((p for p in providers if p.get("description")), providers[0]
                         if providers else {})
        demand = m.rows["demand"].get(f"skill:{name}")
        facts = _fields([
            ("Skill", name),
            ("Version", info.get("version")),
            ("Description", info.get("description")),
            ("Tags", info.get("tags")),
            ("Unmet queries", demand.get("count") if demand else None),
        ])
        schema_in = _list("Input schema", ("Field", "Type"), [
            [k, str(v)] for k, v in sorted(dict(info.get("input_schema") or {}).items())
        ], "not published")
        schema_out = _list("Output schema", ("Field", "Type"), [
            [k, str(v)] for k, v in sorted(dict(info.get("output_schema") or {}).items())
        ], "not published")
        rows = []
        for p in providers:
            score = m.score_of(str(p["provider"]))
            address = f"{p['host']}:{p['port']}" if p.get("host") else "—"
            rows.append([short_id(str(p["provider"]), m.node_id), address, _plain(p.get("price")),
                         "—" if score is None else f"{score:.2f}", str(p.get("visibility", ""))])
        providers_table = _list("Providers (best first)",
                                ("Provider", "Address", "Price", "Score", "Visibility"),
                                rows, "none known: queries for it count as demand")
        return f"Skill {name}", Group(facts, Text(), schema_in, Text(), schema_out, Text(),
                                      providers_table)


class RecordScreen(DetailScreen):
    """Every field of one row: a receipt, a recipe firing or a watchman event."""

    def __init__(self, model: ConsoleModel, clock: Callable[[], float], key: str,
                 panel: str) -> None:
        super().__init__(model, clock, key)
        self.panel = panel

    def describe(self) -> tuple[str, RenderableType]:
        row = self.model.rows[self.panel].get(self.key)
        kind = {"ledger": "Receipt", "recipes": "Recipe firing", "watchman": "Watchman event",
                "demand": "Unmet demand"}.get(self.panel, "Record")
        if row is None:
            return f"{kind} {self.key[:16]}", Text("no longer shown by the node", style="dim")
        times = {"created", "time", "first_seen", "last_seen"}
        pairs = [
            (name, f"{self.ago(value)} ({_utc(value)})" if name in times and value else value)
            for name, value in sorted(row.items()) if name not in ("amount",)
        ]
        return f"{kind} {self.key[:16]}", _fields(pairs)
