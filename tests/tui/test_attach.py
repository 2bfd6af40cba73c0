"""The console against real nodes on loopback: it attaches to a cockpit socket and
shows a peer joining and a skill call as they happen, pauses, calls skills through the
node, shows the node going away and comes back by itself."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Input

from knarr.node.node import Node
from knarr.tui.app import KnarrConsole
from knarr.tui.feed import CockpitFeed, LinkState
from knarr.tui.messages import EventArrived
from knarr.tui.screens.call import CallScreen
from knarr.tui.widgets.header import Banner
from tests.conftest import NodeFactory, sheet
from tests.tui.conftest import until

pytestmark = pytest.mark.slow


async def upper(data: dict[str, Any]) -> dict[str, Any]:
    return {"text": str(data["text"]).upper()}


@pytest.fixture
async def hub(tmp_path: Path, make_node: NodeFactory) -> AsyncIterator[Node]:
    node = await make_node(cockpit_dir=tmp_path)
    node.register_handler("upper", upper)
    await node.announce(sheet("upper"))
    yield node


def console_for(path: Path) -> tuple[KnarrConsole, CockpitFeed]:
    feed = CockpitFeed(socket_path=path / "cockpit.sock", heartbeat=0.2,
                       backoff_base=0.02, backoff_cap=0.2)
    app = KnarrConsole(feed, tick=None, blink=False, resync_interval=0,
                       resync_rows_interval=0)
    return app, feed


async def test_a_peer_joining_and_a_call_appear_live(tmp_path: Path, hub: Node,
                                                     make_node: NodeFactory) -> None:
    app, feed = console_for(tmp_path)
    try:
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.link.state is LinkState.CONNECTED
                        and app.model.node_id == hub.node_id)
            peers = app.main.panel("peers").table
            ledger = app.main.panel("ledger").table
            assert peers.row_count == 0

            second = await make_node()
            await second.join([f"127.0.0.1:{hub.port}"])
            await until(pilot, lambda: second.node_id in peers.rows)

            await second.request("upper", {"text": "ahoy"})
            await until(pilot, lambda: any(r.get("skill") == "upper" and r["role"] == "provided"
                                           for r in app.model.rows["ledger"].values()))
            receipt = next(k for k, r in app.model.rows["ledger"].items()
                           if r["role"] == "provided")
            # A hidden panel's table catches up when it is shown.
            await pilot.press("5")
            assert receipt in ledger.rows
            assert app.model.rows["ledger"][receipt]["peer"] == second.node_id
            # Toasts for the new peer (nothing restarted, nothing fired).
            await until(pilot, lambda: any("New peer" in n.message
                                           for n in app._notifications))
    finally:
        await feed.close()


async def test_pause_holds_live_updates(tmp_path: Path, hub: Node) -> None:
    app, feed = console_for(tmp_path)
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: app.link.state is LinkState.CONNECTED
                        and app.model.node_id == hub.node_id)
            watchman = app.main.panel("watchman").table
            await pilot.press("7", "p")
            hub.record_journal("watchman", "restart", {"attempt": 1, "reason": "test"})
            await until(pilot, lambda: len(app._held) >= 1 and app._inflight == 0
                        and not app._stale)
            assert watchman.row_count == 0  # held, not shown
            assert "paused (1 held)" in str(app.main.query_one("#header").render())
            await pilot.press("p")
            await until(pilot, lambda: watchman.row_count == 1)
            key = next(iter(watchman.rows))
            # Paused again, space still fetches a fresh view, which supersedes what
            # was held; the existing row stays put under its key.
            await pilot.press("p")
            hub.record_journal("watchman", "restart", {"attempt": 2, "reason": "test"})
            await until(pilot, lambda: len(app._held) >= 1)
            await pilot.press("space")
            await until(pilot, lambda: watchman.row_count == 2)
            assert app.paused and key in watchman.rows
            assert not any(isinstance(h, EventArrived) for h in app._held)
    finally:
        await feed.close()


async def test_palette_calls_a_skill_through_the_node(tmp_path: Path, hub: Node,
                                                      make_node: NodeFactory) -> None:
    provider = await make_node()
    await provider.join([f"127.0.0.1:{hub.port}"])
    provider.register_handler("shout", upper)
    await provider.announce(sheet("shout"))
    app, feed = console_for(tmp_path)
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: app.link.state is LinkState.CONNECTED)
            app.open_call("shout")
            await until(pilot, lambda: isinstance(app.screen, CallScreen)
                        and bool(app.screen.query("#call-input")))
            app.screen.query_one("#call-input", Input).value = '{"text": "fair winds"}'
            await pilot.press("enter")
            result = app.screen.query_one("#call-result")
            await until(pilot, lambda: "FAIR WINDS" in str(result.render()))
            # The call was the node's: its receipt reaches the ledger panel.
            await until(pilot, lambda: any(r.get("skill") == "shout"
                                           for r in app.model.rows["ledger"].values()))
    finally:
        await feed.close()


async def test_node_going_away_and_coming_back(tmp_path: Path) -> None:
    first = Node("127.0.0.1", 0, cockpit_dir=tmp_path)
    await first.start()
    app, feed = console_for(tmp_path)
    second = Node("127.0.0.1", 0, cockpit_dir=tmp_path)
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: app.link.state is LinkState.CONNECTED)
            banner = app.main.query_one(Banner)
            assert banner.has_class("-hidden")
            await first.stop()
            await until(pilot, lambda: app.link.state is LinkState.RECONNECTING)
            assert not banner.has_class("-hidden")
            assert "Node not reachable" in str(banner.render())
            await second.start()
            await until(pilot, lambda: app.link.state is LinkState.CONNECTED
                        and app.model.node_id == second.node_id)
            assert banner.has_class("-hidden")
    finally:
        await feed.close()
        await second.stop()


async def test_console_with_a_wrong_token_says_refused(tmp_path: Path,
                                                       make_node: NodeFactory) -> None:
    node = await make_node(cockpit_dir=tmp_path, cockpit_port=0)
    assert node.cockpit is not None
    feed = CockpitFeed(host="127.0.0.1", port=node.cockpit.port, token="wrong")
    app = KnarrConsole(feed, tick=None, blink=False, toasts=False)
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: app.link.state is LinkState.REFUSED)
            assert "refused the token" in str(app.main.query_one(Banner).render())
    finally:
        await feed.close()
