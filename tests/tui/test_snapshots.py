"""Snapshots of every panel, the detail views, help, the filter, the palette, the
disconnected state, and the light theme on a larger terminal, from the recorded feed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from textual.command import CommandList, CommandPalette
from textual.pilot import Pilot

from knarr.tui.feed import RecordedFeed
from tests.tui.conftest import demo_items, recorded_console, settle, until

SMALL = (80, 24)
Before = Callable[[Pilot[Any]], Awaitable[None]]


def pressing(*keys: str) -> Before:
    async def before(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        for key in keys:
            await pilot.press(key)
        await pilot.pause()

    return before


@pytest.mark.parametrize(
    "key", ["1", "2", "3", "4", "5", "6", "7"],
    ids=["peers", "skills", "demand", "reputation", "ledger", "recipes", "watchman"],
)
def test_panel(snap_compare: Any, key: str) -> None:
    """Each panel at 80×24, the smallest terminal the console promises to fit."""
    assert snap_compare(recorded_console(), run_before=pressing(key), terminal_size=SMALL)


def test_empty_panel_says_none_yet(snap_compare: Any) -> None:
    """A recording without journal entries: the watchman panel says "none yet"."""
    items = [i for i in demo_items() if not (
        i.get("kind") == "event" and i["event"]["type"] == "watchman")]
    items = [
        {**i, "data": []} if i.get("kind") == "snapshot" and i["name"] == "watchman" else i
        for i in items
    ]
    assert snap_compare(recorded_console(items), run_before=pressing("7"),
                        terminal_size=SMALL)


def test_peer_detail(snap_compare: Any) -> None:
    assert snap_compare(recorded_console(), run_before=pressing("4", "enter"),
                        terminal_size=SMALL)


def test_skill_detail(snap_compare: Any) -> None:
    assert snap_compare(recorded_console(), run_before=pressing("2", "down", "down", "enter"),
                        terminal_size=SMALL)


def test_receipt_detail(snap_compare: Any) -> None:
    assert snap_compare(recorded_console(), run_before=pressing("5", "down", "enter"),
                        terminal_size=SMALL)


def test_help(snap_compare: Any) -> None:
    assert snap_compare(recorded_console(), run_before=pressing("question_mark"),
                        terminal_size=SMALL)


def test_filter(snap_compare: Any) -> None:
    """The filter line open, and the filter in the panel's title."""
    assert snap_compare(recorded_console(), run_before=pressing("5", "slash", "u", "p"),
                        terminal_size=SMALL)


def test_command_palette(snap_compare: Any) -> None:
    async def before(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        await pilot.press("ctrl+p")
        await until(pilot, lambda: CommandPalette.is_open(pilot.app))
        await pilot.press(*"call")

        def listed() -> bool:
            screen = pilot.app.screen
            running = any(w.is_running for w in pilot.app.workers if w.node is screen)
            return not running and screen.query_one(CommandList).option_count > 0

        await until(pilot, listed)
        await pilot.pause()

    assert snap_compare(recorded_console(), run_before=before, terminal_size=SMALL)


def test_disconnected(snap_compare: Any) -> None:
    """The node went away: the banner says so, and how old the data shown is."""
    items = demo_items()
    lost = RecordedFeed(items).until + 12
    items.append({"kind": "link", "state": "reconnecting", "detail": "connection refused",
                  "retry_in": 4.0, "time": lost})
    assert snap_compare(recorded_console(items), run_before=pressing("1"),
                        terminal_size=SMALL)


def test_light_theme_wide(snap_compare: Any) -> None:
    assert snap_compare(recorded_console(theme="light"), run_before=pressing("5"),
                        terminal_size=(120, 32))
