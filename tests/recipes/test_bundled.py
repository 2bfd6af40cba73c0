"""Every bundled recipe, fed the events a node really emits (with an injected clock)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from knarr.config import ThrallConfig, ThrallTrustTiers
from knarr.node.contact import Contact
from knarr.node.economy import to_micro
from knarr.node.events import Event
from knarr.node.identity import Identity
from knarr.node.node import Node
from knarr.node.routing import RoutingTable
from knarr.recipes.engine import Thrall
from tests.node.test_ledger import make_receipt
from tests.recipes.conftest import KNOWN, PEER, TEAM, Clock


class Bench:
    """A node with only the bundled recipes, and ways to poke it."""

    def __init__(self, thrall: Thrall, clock: Clock) -> None:
        self.thrall = thrall
        self.node = thrall.node
        self.clock = clock
        self._mail = 0

    def firings(self, recipe: str) -> list[dict[str, Any]]:
        return [j for j in reversed(self.node.journal("recipe", limit=10_000))
                if j.get("recipe") == recipe and j["event"] == "fired"]

    def actions(self, recipe: str) -> list[str]:
        return [f["action"] for f in self.firings(recipe)]

    def notices(self, kind: str) -> list[dict[str, Any]]:
        return [e.data for e in self.node.events.since(0) or [] if e.type == f"thrall.{kind}"]

    async def emit(self, event_type: str, /, **data: Any) -> None:
        self.node.events.emit(event_type, **data)
        await self.thrall.idle()

    async def mail(self, body: str, *, sender: str = PEER, msg_type: str = "text") -> None:
        self._mail += 1
        await self.emit("mail.received", id=f"{self._mail:032x}", sender=sender,
                        type=msg_type, body=body)

    async def tick(self, seconds: float) -> None:
        self.clock.advance(seconds)
        await self.thrall.tick()


@pytest.fixture
async def bench(tmp_path: Path) -> AsyncIterator[Bench]:
    clock = Clock()
    node = Node("127.0.0.1", 0, clock=clock)
    config = ThrallConfig(enabled=True, trust_tiers=ThrallTrustTiers(team=(TEAM[:16],)))
    thrall = Thrall(node, config, base_dir=tmp_path, clock=clock,
                    credit_limit_for=lambda _: 10.0)
    await thrall.start()
    yield Bench(thrall, clock)
    await thrall.stop()
    await node.stop()


async def test_all_bundled_recipes_are_running(bench: Bench) -> None:
    assert len(bench.thrall.recipes) >= 10
    [start] = [j for j in bench.node.journal("recipe") if j["event"] == "start"]
    assert start["ok"] is True and start["rejected"] == {}


async def test_mail_triage(bench: Bench) -> None:
    await bench.mail("hello from the team", sender=TEAM)
    assert bench.actions("mail-triage") == ["wake"]
    assert bench.firings("mail-triage")[0]["evaluation"] == "bypass"
    await bench.mail("weekly numbers")  # no model configured: buffered, never lost
    [_, firing] = bench.firings("mail-triage")
    assert (firing["evaluation"], firing["action"]) == ("fallback", "compile")
    for i in range(5):
        await bench.mail(f"more {i}")
    assert bench.firings("mail-triage")[-1]["evaluation"] == "rate_limit"
    await bench.mail("URGENT: relay down", sender=KNOWN)
    assert bench.firings("mail-triage")[-1]["detail"].startswith(
        "flushed digest 'mail-digest'")
    assert bench.notices("summon")[-1]["trigger"] == "keyword 'URGENT'"


async def test_mail_digest(bench: Bench) -> None:
    await bench.mail("delivered 3 files", msg_type="delivery")
    await bench.mail("FATAL: disk gone", msg_type="error")
    assert bench.actions("mail-digest") == ["compile", "wake"]
    for i in range(19):
        await bench.mail(f"status {i}", msg_type="status")
    assert bench.notices("summon")[-1]["count"] == 20


async def test_health_check(bench: Bench) -> None:
    await bench.tick(300)
    assert bench.firings("health-check") == []  # healthy checks are not recorded
    for _ in range(3):
        bench.node.dht.stats.timeouts += 60
        await bench.tick(300)
    assert bench.actions("health-check") == ["compile", "compile", "compile"]
    assert bench.notices("summon")[-1]["buffer"] == "health-alerts"
    for i in range(50):
        bench.node.send_mail(PEER, f"stuck {i}")
    await bench.tick(300)
    assert bench.actions("health-check")[-1] == "wake"
    assert bench.notices("wake")[-1]["summary"] == "50 mails are waiting for delivery"


async def test_isolation_alert(bench: Bench) -> None:
    table = bench.node.dht.table
    for i in range(3):
        table.add(Contact(Identity.from_seed(bytes([i + 1]) * 32).node_id, "127.0.0.1",
                          9000 + i), 0.0)
    await bench.emit("peer.removed", node_id=PEER, host="127.0.0.1", port=9)
    assert bench.firings("isolation-alert") == []  # 3 peers left: quiet
    bench.node.dht.table = RoutingTable(bench.node.identity.node_id)  # the last ones left
    await bench.emit("peer.removed", node_id=PEER, host="127.0.0.1", port=9)
    assert bench.actions("isolation-alert") == ["wake"]
    assert "only 0 peers left" in bench.notices("wake")[-1]["summary"]
    await bench.emit("peer.removed", node_id=PEER, host="127.0.0.1", port=9)
    assert len(bench.firings("isolation-alert")) == 1  # 15 minutes of cooldown
    bench.clock.advance(900)
    await bench.emit("peer.removed", node_id=PEER, host="127.0.0.1", port=9)
    assert len(bench.firings("isolation-alert")) == 2


def owed(node: Node, requester: Identity, credits: float) -> dict[str, Any]:
    receipt = make_receipt(requester=requester, price=to_micro(credits),
                           task=requester.node_id[:16])
    node.ledger.record(receipt, role="provided")
    return receipt.to_dict()


async def test_credit_warning(bench: Bench) -> None:
    heavy = Identity.from_seed(b"h" * 32)
    light = Identity.from_seed(b"l" * 32)
    await bench.emit("task.provided", **owed(bench.node, heavy, 9.5))
    await bench.emit("task.provided", **owed(bench.node, light, 8.0))
    assert bench.actions("credit-warning") == ["wake", "compile"]
    assert bench.notices("wake")[-1]["summary"] == \
        f"{heavy.node_id_hex} owes 9.5 credits, 95 % of its limit"
    await bench.emit("task.provided", **owed(bench.node, Identity.from_seed(b"z" * 32), 1))
    assert len(bench.firings("credit-warning")) == 2  # 10 % is no news


async def test_task_failures(bench: Bench) -> None:
    for outcome in ("completed", "failed", "timeout", "failed", "completed", "failed",
                    "timeout"):
        await bench.emit("task.consumed", provider=PEER, skill="ocr", outcome=outcome)
    assert bench.actions("task-failures") == ["compile"] * 5
    assert bench.notices("summon")[-1]["buffer"] == "task-errors"
    assert bench.notices("summon")[-1]["count"] == 5


async def test_settlement_proposal(bench: Bench) -> None:
    bench.node.ledger.record(make_receipt(requester=Identity.from_seed(b"s" * 32),
                                          price=to_micro(3)), role="provided")
    await bench.tick(3600)
    assert bench.firings("settlement-proposal") == []  # 3 credits: below the threshold
    bench.node.ledger.record(make_receipt(requester=Identity.from_seed(b"t" * 32),
                                          price=to_micro(12)), role="provided")
    await bench.tick(3600)
    [firing] = bench.firings("settlement-proposal")
    assert firing["action"] == "settle" and firing["ok"] is False
    assert "no delegate key at" in firing["detail"]  # the key is issued by the operator


async def test_settlement_review(bench: Bench) -> None:
    base = {"peer": PEER, "id": "00" * 16, "delegated": True, "direction": "in"}
    await bench.emit("settlement.inbound", **base, amount=2.0, ok=False,
                     why="delegate certificate signature does not verify")
    await bench.emit("settlement.inbound", **base, amount=2.0, ok=False,
                     why="books differ: we see 2 credits over 2 receipts")
    await bench.emit("settlement.inbound", **base, amount=150.0, ok=True, why="")
    await bench.emit("settlement.inbound", **base, amount=2.5, ok=True, why="")
    assert bench.actions("settlement-review") == ["wake", "compile", "wake", "log"]


async def test_security_alert(bench: Bench) -> None:
    stats = bench.node.dht.stats
    await bench.tick(60)
    stats.invalid += 3  # a few a minute is the noise of an open network
    await bench.tick(60)
    stats.invalid += 25
    await bench.tick(60)
    assert bench.actions("security-alert") == ["wake"]
    assert bench.notices("wake")[-1]["summary"] == \
        "25 datagrams rejected and 0 rate-limited in the last minute"
    stats.invalid += 25
    await bench.tick(60)
    assert len(bench.firings("security-alert")) == 1  # 30 minutes of cooldown
    stats.rate_limited += 5000
    bench.clock.advance(1800)
    await bench.tick(60)
    assert bench.actions("security-alert") == ["wake", "wake"]


async def test_queue_backpressure(bench: Bench) -> None:
    def pressure(depth: int, rate: int) -> Event:
        return bench.node.events.emit("thrall.backpressure", queue_depth=depth, dropped=0,
                                      bus_drop_rate=rate, event_queue=0)

    await bench.thrall.dispatch(pressure(1, 0))
    bench.clock.advance(300)
    await bench.thrall.dispatch(pressure(9, 0))
    bench.clock.advance(300)
    await bench.thrall.dispatch(pressure(0, 40))
    assert bench.actions("queue-backpressure") == ["compile", "wake", "wake"]


async def test_watchman_alert(bench: Bench) -> None:
    bench.node.record_journal("watchman", "WATCHMAN_CRASH", {"exit_code": -9})
    bench.node.record_journal("watchman", "WATCHMAN_GIVE_UP", {"restarts": 10,
                                                              "detail": "restarts=10"})
    await bench.thrall.idle()
    assert bench.actions("watchman-alert") == ["compile", "wake"]
    assert bench.notices("wake")[-1]["summary"] == "watchman: WATCHMAN_GIVE_UP restarts=10"


async def test_demand_digest(bench: Bench) -> None:
    for name in ("ocr", "ocr", "translate"):
        await bench.emit("demand", kind="skill", name=name)
    assert bench.actions("demand-digest") == ["compile", "compile"]  # one per skill an hour
    bench.clock.advance(86400)
    await bench.thrall.housekeeping()
    [digest] = [j for j in bench.node.journal("recipe") if j["event"] == "digest"]
    assert digest["recipe"] == "demand-digest" and digest["digest"]["count"] == 2
