"""The gather stage: node state, recent mail and static text, as envelope fields.

Counters since start come with a ``_delta`` since the recipe last looked, so a rule can
fire on "more than N rejected datagrams since last time" (``dht_invalid_delta``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING

from knarr.node.economy import to_credits
from knarr.recipes.pipeline import Envelope, as_text
from knarr.recipes.recipe import Gather

if TYPE_CHECKING:
    from knarr.node.node import Node

_DELTAS = ("dht_invalid", "dht_rate_limited", "dht_timeouts")


class Gatherer:
    """Reads one node's state for recipes."""

    def __init__(self, node: Node, credit_limit_for: Callable[[str], float]) -> None:
        self.node = node
        self.credit_limit_for = credit_limit_for
        self._baselines: dict[str, dict[str, int]] = {}

    def counters(self) -> dict[str, int]:
        node = self.node
        stats = node.dht.stats
        pending = node.store.execute("SELECT COUNT(*) FROM mail_out WHERE delivered IS NULL"
                                     " AND next_try < 1e17")
        return {
            "peer_count": len(node.dht.table),
            "skill_count": len(node.skills),
            "tasks_inflight": node.tasks.inflight,
            "tasks_completed": node.tasks.completed,
            "tasks_failed": node.tasks.failed,
            "tasks_refused": node.tasks.refused,
            "dht_invalid": stats.invalid,
            "dht_rate_limited": stats.rate_limited,
            "dht_timeouts": stats.timeouts,
            "mail_outbox_pending": int(pending[0][0]),
        }

    def node_state(self, reader: str = "") -> dict[str, str]:
        """Every node field except the per-peer ones. The ``_delta`` fields count since
        the previous call by the same ``reader`` (a recipe name)."""
        now = self.counters()
        state = {k: str(v) for k, v in now.items()}
        baseline = self._baselines.get(reader, now)
        self._baselines[reader] = now
        for key in _DELTAS:
            state[f"{key}_delta"] = str(now[key] - baseline[key])
        balances = self.node.ledger.balances()
        amounts = [b.amount for b in balances if b.amount]
        state["net_position"] = as_text(to_credits(sum(amounts)))
        state["largest_debt"] = as_text(to_credits(max([-a for a in amounts if a < 0],
                                                       default=0)))
        state["largest_credit"] = as_text(to_credits(max([a for a in amounts if a > 0],
                                                         default=0)))
        state["settlement_candidates"] = str(len(amounts))
        return state

    def peer_fields(self, peer: str) -> dict[str, str]:
        balance = to_credits(self.node.ledger.balance(peer)) if peer else 0.0
        limit = self.credit_limit_for(peer) if peer else 0.0
        used = int(balance * 100 // limit) if balance > 0 and limit > 0 else 0
        return {"peer_balance": as_text(balance), "peer_credit_used_pct": str(used)}

    def recent_mail(self, sender: str, limit: int) -> str:
        where, params = ("WHERE sender = ?", (sender, limit)) if sender else ("", (limit,))
        rows = self.node.store.execute(
            f"SELECT type, body FROM mail_in {where} ORDER BY received DESC LIMIT ?", params
        )
        lines = []
        for msg_type, body in reversed(rows):
            value = json.loads(body)
            lines.append(f"[{msg_type}] {value if isinstance(value, str) else body}")
        return "\n".join(lines)

    def fill(self, env: Envelope, gather: Gather, state: dict[str, str] | None = None) -> None:
        """Add what ``gather`` asks for to ``env`` (trigger fields win over gathered)."""
        fields = env.fields
        if gather.node:
            values = state if state is not None else self.node_state()
            if {"peer_balance", "peer_credit_used_pct"} & set(gather.node):
                values = {**values, **self.peer_fields(env.sender)}
            for name in gather.node:
                fields.setdefault(name, values.get(name, ""))
        if gather.mail:
            fields.setdefault("recent_mail", self.recent_mail(env.sender, gather.mail))
        if gather.text:
            fields.setdefault("static_text", gather.text)
