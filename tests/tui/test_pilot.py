"""Driving the console with keys and clicks: navigation, filter, sort, drill-down,
palette, theme (pausing is tested against a live node in test_attach)."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

from textual.command import CommandPalette
from textual.widgets import Input

from knarr.tui.app import FULL_COLLECTION_AFTER, KnarrConsole, run_console_async
from knarr.tui.feed import RecordedFeed
from knarr.tui.model import RowChange
from knarr.tui.screens.call import CallScreen
from knarr.tui.screens.detail import PeerScreen, RecordScreen, SkillScreen
from knarr.tui.screens.help import HelpScreen
from knarr.tui.widgets.panel import PanelView
from tests.tui.conftest import recorded_console, settle, until


def panel(app: KnarrConsole, panel_id: str | None = None) -> PanelView:
    return app.main.panel(panel_id)


def shown_keys(view: PanelView) -> list[str]:
    table = view.table
    return [str(table.coordinate_to_cell_key((i, 0)).row_key.value)
            for i in range(table.row_count)]


async def test_number_keys_and_tab_switch_panels() -> None:
    app = recorded_console()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert app.main.current == "peers"
        await pilot.press("5")
        assert app.main.current == "ledger"
        assert app.focused is panel(app, "ledger").table
        await pilot.press("tab")
        assert app.main.current == "recipes"
        await pilot.press("tab", "tab")
        assert app.main.current == "peers"  # wraps around
        await pilot.press("shift+tab")
        assert app.main.current == "watchman"
        await pilot.click("#panelbar", offset=(11, 0))  # " 2 Skills "
        assert app.main.current == "skills"


async def test_rows_come_from_the_recording() -> None:
    app = recorded_console()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        model = app.model
        for number, panel_id in enumerate(("peers", "skills", "demand", "reputation",
                                           "ledger", "recipes", "watchman"), start=1):
            view = panel(app, panel_id)
            if panel_id != "peers":  # only the panel on screen keeps its table current
                assert view.table.row_count == 0
                await pilot.press(str(number))
            assert view.table.row_count == len(model.rows[panel_id]) > 0
        # The live part of the recording reached the tables: the peer that joined, the
        # second watchman restart, the settled balance.
        assert len(model.rows["peers"]) == 5
        assert len(model.rows["watchman"]) == 2
        assert model.totals["settled"] != 0


async def test_filter_narrows_rows_and_shows_in_title() -> None:
    app = recorded_console()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("5", "slash", *"ocr")
        ledger = panel(app)
        ocr = [k for k, r in app.model.rows["ledger"].items() if r["skill"] == "ocr"]
        assert sorted(shown_keys(ledger)) == sorted(ocr)
        assert "filter: ocr" in str(ledger.border_title)
        await pilot.press("enter")  # keep it, back to the table
        assert app.focused is ledger.table
        assert app.main.query_one("#filterbar").has_class("-hidden")
        assert ledger.filter == "ocr"
        await pilot.press("escape")  # clear it
        assert ledger.filter == ""
        assert ledger.table.row_count == len(app.model.rows["ledger"])
        await pilot.press("slash", *"no such thing")
        assert ledger.table.row_count == 0
        assert ledger.has_class("-empty")


async def test_sort_by_key_and_by_header_click() -> None:
    app = recorded_console()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("4")  # reputation: by score, best first
        reputation = panel(app)
        scores = [app.model.rows["reputation"][k]["score"] for k in shown_keys(reputation)]
        assert scores == sorted(scores, reverse=True)
        await pilot.press("r")
        scores = [app.model.rows["reputation"][k]["score"] for k in shown_keys(reputation)]
        assert scores == sorted(scores)
        await pilot.press("s")  # the next column: calls, most first
        assert reputation.sort_column == "calls" and reputation.descending
        calls = [app.model.rows["reputation"][k]["calls"] for k in shown_keys(reputation)]
        assert calls == sorted(calls, reverse=True)
        await pilot.click("#table-reputation", offset=(3, 0))  # the Provider header
        assert reputation.sort_column == "provider" and not reputation.descending
        assert shown_keys(reputation) == sorted(shown_keys(reputation))
        await pilot.click("#table-reputation", offset=(3, 0))  # again: reversed
        assert reputation.descending
        assert shown_keys(reputation) == sorted(shown_keys(reputation), reverse=True)
        assert "Provider▾" in str(reputation.table.columns[
            next(c for c in reputation.table.columns if c.value == "provider")].label)


async def test_enter_opens_details_and_escape_returns() -> None:
    app = recorded_console()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("1", "enter")
        assert isinstance(app.screen, PeerScreen)
        first_peer = shown_keys(panel(app, "peers"))[0]
        assert app.screen.key == first_peer
        await pilot.press("escape")
        assert app.screen is app.main
        await pilot.press("2", "enter")
        assert isinstance(app.screen, SkillScreen)
        await pilot.press("escape", "5", "down", "enter")
        assert isinstance(app.screen, RecordScreen)
        assert app.screen.key == shown_keys(panel(app, "ledger"))[1]
        await pilot.press("escape", "question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert app.screen is app.main


async def test_cursor_stays_on_its_row_when_rows_arrive() -> None:
    app = recorded_console()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("5", "down", "down")
        ledger = panel(app)
        chosen = ledger.cursor_key()

        newest = {"id": "new", "role": "provided", "peer": "ab" * 32, "skill": "echo",
                  "charged": 0.25, "amount": 0.25, "outcome": "completed",
                  "duration_ms": 1, "created": app.clock() + 1}
        app.model.rows["ledger"]["new"] = newest
        ledger.apply([RowChange("ledger", "new", newest)])
        await until(pilot, lambda: not ledger.behind)  # applied with the rest of its burst
        assert shown_keys(ledger)[0] == "new"  # sorted newest first
        assert ledger.cursor_key() == chosen  # the cursor moved with its row


async def test_palette_jumps_and_calls() -> None:
    app = recorded_console()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+p")
        await until(pilot, lambda: CommandPalette.is_open(app))
        await pilot.press(*"show ledger")
        await until(pilot, lambda: _palette_ready(app))
        await pilot.press("enter")
        await until(pilot, lambda: app.main.current == "ledger")
        peer = sorted(app.model.rows["peers"])[2]
        await pilot.press("ctrl+p")
        await until(pilot, lambda: CommandPalette.is_open(app))
        await pilot.press(*f"peer {peer[:12]}")
        await until(pilot, lambda: _palette_ready(app))
        await pilot.press("enter")
        await until(pilot, lambda: app.main.current == "peers")
        assert panel(app).cursor_key() == peer
        await pilot.press("ctrl+p")
        await until(pilot, lambda: CommandPalette.is_open(app))
        await pilot.press(*'call upper {"text": "hi"}')
        await until(pilot, lambda: _palette_ready(app))
        await pilot.press("enter")
        feed = app.feed
        assert isinstance(feed, RecordedFeed)
        await until(pilot, lambda: feed.calls == [("upper", {"text": "hi"})])


async def test_call_dialog_checks_json() -> None:
    app = recorded_console()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        app.open_call("ocr")
        await until(pilot, lambda: isinstance(app.screen, CallScreen)
                    and bool(app.screen.query("#call-input")))
        field = app.screen.query_one("#call-input", Input)
        assert field.value == '{"image": "", "lang": ""}'
        field.value = "{not json"
        await pilot.press("enter")
        assert "not JSON" in str(app.screen.query_one("#call-result").render())
        field.value = '{"image": "x.png", "lang": "en"}'
        await pilot.press("enter")
        await until(pilot, lambda: "failed" in str(app.screen.query_one("#call-result")
                                                    .render()))


async def test_theme_key_switches_dark_and_light() -> None:
    app = recorded_console()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert app.theme == "textual-dark"
        await pilot.press("t")
        assert app.theme == "textual-light"
        await pilot.press("t")
        assert app.theme == "textual-dark"


def _palette_ready(app: Any) -> bool:
    from textual.command import CommandList

    screen = app.screen
    if not CommandPalette.is_open(app):
        return False
    running = any(w.is_running for w in app.workers if w.node is screen)
    return not running and screen.query_one(CommandList).option_count > 0


async def test_toasts_for_restarts_recipes_and_new_peers() -> None:
    app = KnarrConsole(RecordedFeed.demo(), tick=None, blink=False, resync_interval=0,
                       resync_rows_interval=0)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        titles = lambda: {n.title for n in app._notifications}  # noqa: E731
        await until(pilot, lambda: {"Watchman", "Recipe fired", "Peers"} <= titles())
        messages = " | ".join(n.message for n in app._notifications)
        assert "restart" in messages and "pay-debts → settle" in messages


async def test_ctrl_c_leaves_the_console() -> None:
    """As in every operator console (Textual's default only says which key quits)."""
    app = recorded_console()
    async with app.run_test() as pilot:
        await settle(pilot)
        await pilot.press("ctrl+c")
        assert not app.is_running
    assert app.return_code == 0


async def test_the_console_leaves_when_its_stop_event_is_set() -> None:
    """``knarr demo --seconds`` and its signal handlers stop the console this way."""
    stop = asyncio.Event()
    stop.set()
    feed = RecordedFeed(list(RecordedFeed.demo().items))
    await asyncio.wait_for(run_console_async(feed=feed, stop=stop, headless=True), 10)


async def test_what_is_drawn_follows_live_changes() -> None:
    """The screen itself (not only the widgets): a new peer's row and the new count in
    the panel's border, drawn from kept lines and a repainted border line."""
    app = recorded_console()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        peers = panel(app)

        def screen() -> list[str]:
            return [strip.text for strip in app.screen._compositor.render_strips()]

        count = len(app.model.rows["peers"])
        assert any(f"Peers · {count}" in line for line in screen())
        newcomer = "00" + "ab" * 31
        app._show(app.model.apply("peer.added", {"node_id": newcomer, "host": "10.1.2.3",
                                                 "port": 4000, "bucket": 0},
                                  at=app.clock()))
        await until(pilot, lambda: not peers.behind)
        await pilot.pause()
        drawn = screen()
        assert any(f"Peers · {count + 1}" in line for line in drawn)
        assert any(newcomer[:12] in line and "10.1.2.3:4000" in line for line in drawn)


async def test_full_collections_are_rare_while_the_console_runs() -> None:
    """What a sync brought in is frozen out of the collector and full collections wait
    longer, while the console runs; both are undone when it exits."""
    before = gc.get_threshold()
    app = recorded_console()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await until(pilot, lambda: gc.get_freeze_count() > 0)
        assert gc.get_threshold()[2] >= FULL_COLLECTION_AFTER
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
