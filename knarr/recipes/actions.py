"""The action stage: what a verdict does on the node.

``drop`` and ``log`` only record; ``compile`` buffers into a digest that is flushed (and
the operator summoned) at a threshold, on a keyword or after ``flush_seconds``; ``wake`` /
``summon`` notify the operator (a log line and a ``thrall.wake`` / ``thrall.summon``
event on the cockpit stream, beside the firing record); ``reply`` mails the sender;
``act`` calls a skill; ``settle`` proposes netting settlements signed by the delegate key.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from knarr.errors import KnarrError
from knarr.node.economy import to_credits
from knarr.recipes import delegate
from knarr.recipes.pipeline import Envelope
from knarr.recipes.recipe import Action, Recipe, render

if TYPE_CHECKING:
    from knarr.node.node import Node

log = logging.getLogger("knarr.thrall")
DIGEST_PREVIEW = 20


@dataclass(slots=True)
class Outcome:
    """What an action did: ``detail`` for the operator, ``extra`` for the record."""

    detail: str
    ok: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _Buffer:
    entries: list[dict[str, Any]] = field(default_factory=list)
    flush_seconds: float = 0.0
    recipe: str = ""


class Actions:
    """Carries out verdicts on one node."""

    def __init__(
        self,
        node: Node,
        *,
        clock: Callable[[], float],
        delegate_key: Path | None = None,
    ) -> None:
        self.node = node
        self.clock = clock
        self.delegate_key = delegate_key
        self.buffers: dict[str, _Buffer] = {}

    async def run(self, recipe: Recipe, action: Action, env: Envelope, reason: str) -> Outcome:
        kind = action.kind
        if kind == "drop":
            return Outcome("dropped")
        if kind == "log":
            log.info("THRALL %s: %s (%s)", recipe.name, env.summary(), reason)
            return Outcome("logged")
        if kind == "compile":
            return self.compile(recipe, action, env, reason)
        if kind in ("wake", "summon"):
            return self.wake(recipe, action, env, reason)
        if kind == "reply":
            return self.reply(action, env)
        if kind == "act":
            return await self.act(recipe, action, env, reason)
        if kind == "settle":
            return await self.settle(action, env)
        raise AssertionError(f"unknown action kind {kind}")

    # ------------------------------------------------------------------ notify

    def notify(self, kind: str, recipe: str, summary: str, **data: Any) -> None:
        """Tell the operator: a warning log line and an event on the cockpit stream."""
        log.warning("THRALL %s from %s: %s", kind.upper(), recipe, summary)
        self.node.events.emit(f"thrall.{kind}", recipe=recipe, summary=summary, **data)

    def wake(self, recipe: Recipe, action: Action, env: Envelope, reason: str) -> Outcome:
        message = render(action.opt("message", ""), env.lookup) or env.summary()
        self.notify("wake", recipe.name, message, reason=reason, from_node=env.sender,
                    source=env.source)
        return Outcome(f"operator notified: {message}"[:200])

    # ------------------------------------------------------------------ compile

    def compile(self, recipe: Recipe, action: Action, env: Envelope, reason: str) -> Outcome:
        name = action.opt("buffer") or recipe.name
        buffer = self.buffers.setdefault(name, _Buffer())
        buffer.flush_seconds = action.opt("flush_seconds", 0.0)
        buffer.recipe = recipe.name
        buffer.entries.append({
            "time": self.clock(), "from_node": env.sender, "source": env.source,
            "msg_type": env.get("msg_type"), "summary": env.summary(), "reason": reason,
        })
        count = len(buffer.entries)
        keyword_re = action.opt("keyword_re")
        text = env.get("body_text") or env.summary()
        hit = keyword_re.search(text) if keyword_re is not None else None
        threshold = action.opt("summon_threshold", 0)
        if hit is not None:
            return self.flush(name, f"keyword {hit.group(0)!r}")
        if threshold and count >= threshold:
            return self.flush(name, f"threshold {count}/{threshold}")
        return Outcome(f"added to digest {name!r} ({count} waiting)")

    def flush(self, name: str, why: str) -> Outcome:
        """Empty a digest buffer and summon the operator with it."""
        buffer = self.buffers.pop(name, _Buffer())
        items = buffer.entries
        senders = sorted({e["from_node"][:16] for e in items if e["from_node"]})
        preview = [e["summary"] for e in items[-DIGEST_PREVIEW:]]
        summary = f"digest {name!r}: {len(items)} items ({why})"
        self.notify("summon", buffer.recipe, summary, buffer=name, count=len(items),
                    trigger=why, senders=senders, items=preview)
        return Outcome(f"flushed {summary}; operator summoned",
                       extra={"digest": {"buffer": name, "recipe": buffer.recipe,
                                         "count": len(items), "trigger": why,
                                         "items": preview}})

    def due_flushes(self) -> list[str]:
        """Buffers whose oldest entry waited ``flush_seconds``."""
        now = self.clock()
        return [
            name for name, b in self.buffers.items()
            if b.entries and b.flush_seconds > 0 and now - b.entries[0]["time"] >= b.flush_seconds
        ]

    # ------------------------------------------------------------------ reply

    def reply(self, action: Action, env: Envelope) -> Outcome:
        to = render(action.opt("to"), env.lookup).strip().lower()
        body = render(action.opt("template"), env.lookup)
        if not to:
            return Outcome("no one to reply to (the trigger has no sender)", ok=False)
        try:
            mail_id = self.node.send_mail(to, body, action.opt("msg_type"))
        except KnarrError as exc:
            return Outcome(f"reply not sent: {exc}", ok=False)
        return Outcome(f"replied to {to[:16]}…: {body[:80]!r}", extra={"mail_id": mail_id})

    # ------------------------------------------------------------------ act

    async def act(self, recipe: Recipe, action: Action, env: Envelope, reason: str) -> Outcome:
        skill = action.opt("skill")
        data = render_value(action.opt("input", {}), env.lookup)
        assert isinstance(data, dict)
        try:
            if action.opt("local"):
                output = await self.node.call_local(skill, data)
            else:
                output = await self.node.request(skill, data, timeout=action.opt("timeout"))
        except KnarrError as exc:
            error_buffer = action.opt("error_buffer")
            if error_buffer:
                buffer = self.buffers.setdefault(error_buffer, _Buffer(recipe=recipe.name))
                buffer.entries.append({
                    "time": self.clock(), "from_node": env.sender, "source": env.source,
                    "msg_type": "", "summary": f"{skill} failed: {exc}", "reason": reason,
                })
            return Outcome(f"{skill} failed: {exc}"[:200], ok=False)
        shown = json.dumps(output, default=str)
        return Outcome(f"{skill} answered {shown[:120]}",
                       extra={"output": output if len(shown) <= 2000 else shown[:2000]})

    # ------------------------------------------------------------------ settle

    async def settle(self, action: Action, env: Envelope) -> Outcome:
        """Propose netting settlements signed by the delegate key, within its daily
        ceiling: with ``peer`` (a template) to that peer, otherwise to the peers with
        the largest unsettled balances of at least ``threshold`` credits."""
        node = self.node
        if self.delegate_key is None:
            return Outcome("no delegate key configured ([thrall] delegate_key)", ok=False)
        try:
            delegation = delegate.load(self.delegate_key, node.identity)
        except delegate.DelegateError as exc:
            return Outcome(str(exc), ok=False)
        if delegation is None:
            return Outcome(f"no delegate key at {self.delegate_key} (revoked, or never issued: "
                           "run `knarr thrall delegate`)", ok=False)
        cert = delegation.certificate
        now = self.clock()
        if now >= cert.expires:
            return Outcome("the delegate certificate has expired; run `knarr thrall delegate`",
                           ok=False)
        threshold = action.opt("threshold", 1.0)
        target = render(action.opt("peer", ""), env.lookup).strip().lower()
        peers = [target] if target else [
            b.peer for b in node.ledger.balances()
            if abs(to_credits(b.amount)) >= threshold and b.amount
        ][: action.opt("max_peers", 5)]
        if not peers:
            return Outcome(f"no unsettled balance of {threshold:g} credits or more")
        day_start = now - now % 86400
        spent = delegate.spent_since(node.store, day_start)
        results: list[str] = []
        settled = paid = 0
        ok = True
        for peer in peers:
            balance, _, _ = node.ledger.settlement_view(peer)
            if balance == 0 or abs(to_credits(balance)) < threshold:
                results.append(f"{peer[:12]}: below threshold")
                continue
            cost = -balance if balance < 0 else 0
            if cost and spent + paid + cost > cert.ceiling:
                ok = False
                results.append(
                    f"{peer[:12]}: would pay {to_credits(cost):g}, past the daily ceiling "
                    f"({to_credits(spent + paid):g} of {to_credits(cert.ceiling):g} spent today)"
                )
                continue
            try:
                statement = await node.settle(peer, timeout=action.opt("timeout"),
                                              delegation=delegation)
            except KnarrError as exc:
                ok = False
                results.append(f"{peer[:12]}: {exc}"[:200])
                continue
            if statement is None:
                results.append(f"{peer[:12]}: nothing owed")
                continue
            settled += 1
            if statement.debtor == node.identity.node_id:
                paid += statement.amount
            results.append(f"{peer[:12]}: settled {to_credits(statement.amount):g}")
        extra: dict[str, Any] = {"settled": settled, "delegate": cert.key.hex()[:16]}
        if paid:
            extra["spent"] = to_credits(paid)
        return Outcome("; ".join(results), ok=ok, extra=extra)


def render_value(value: Any, lookup: Callable[[str], str | None]) -> Any:
    if isinstance(value, str):
        return render(value, lookup)
    if isinstance(value, Mapping):
        return {k: render_value(v, lookup) for k, v in value.items()}
    if isinstance(value, list):
        return [render_value(v, lookup) for v in value]
    return value
