"""``knarr console``: a live operator console for one node, attached through its cockpit.

Data flows one way: the :class:`~knarr.tui.feed.Feed` is read by a worker, which posts
messages; handlers apply them to the :class:`~knarr.tui.model.ConsoleModel`, whose row
changes update the panels' tables in place by key.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from textual import events, on, work
from textual.app import App
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Input

from knarr.errors import KnarrError
from knarr.tui import messages as msg
from knarr.tui.commands import ConsoleCommands
from knarr.tui.feed import SNAPSHOTS, CockpitFeed, Feed, FeedEvent, Link, Synced
from knarr.tui.model import ROWS_FROM_EVENTS, ConsoleModel, RowChange, stale_after
from knarr.tui.screens.call import CallScreen
from knarr.tui.screens.detail import DetailScreen, PeerScreen, RecordScreen, SkillScreen
from knarr.tui.screens.help import HelpScreen
from knarr.tui.screens.main import MainScreen
from knarr.tui.widgets.header import HeaderState
from knarr.tui.widgets.panel import short_id

THEMES = {"dark": "textual-dark", "light": "textual-light"}
FULL_COLLECTION_AFTER = 100
"""Younger garbage collections between two full ones while the console runs (CPython's
default: 10); see :meth:`KnarrConsole._spare_the_collector`."""


class KnarrConsole(App[None]):
    """Panels of one node's live state: peers, skills, demand, reputation, ledger, recipe
    firings and watchman restarts."""

    CSS_PATH = "knarr.tcss"
    TITLE = "Knarr console"
    COMMANDS = App.COMMANDS | {ConsoleCommands}
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("question_mark", "help", "Help", id="console.help",
                tooltip="List every key"),
        Binding("p", "pause", "Pause", id="console.pause",
                tooltip="Pause live updates (again: resume)"),
        Binding("space", "refresh", "Refresh", id="console.refresh",
                tooltip="Fetch everything from the node again now"),
        Binding("t", "toggle_theme", "Theme", show=False, id="console.theme",
                tooltip="Switch between the dark and light themes"),
        Binding("q", "quit", "Quit", id="console.quit", tooltip="Leave the console"),
    ]

    def action_help_quit(self) -> None:
        """Ctrl-C leaves, as in every operator console people know (Textual's default
        only says which key quits). A focused input keeps Ctrl-C for copying."""
        self.exit()

    def __init__(
        self,
        feed: Feed,
        *,
        clock: Callable[[], float] | None = None,
        theme: str = "dark",
        tick: float | None = 1.0,
        ages_every: int = 5,
        blink: bool = True,
        toasts: bool = True,
        resync_interval: float = 0.25,
        resync_rows_interval: float = 2.0,
        stop: asyncio.Event | None = None,
    ) -> None:
        """``clock``: what ages and "updated Ns ago" are measured against (default: the
        feed's). ``tick``: seconds between header refreshes (``None``: never, for
        snapshots). ``blink``: let input cursors blink. ``resync_interval``: the least
        time between re-fetches of what events made stale; ``resync_rows_interval``:
        the same for :data:`~knarr.tui.model.ROWS_FROM_EVENTS`. ``stop``: the console
        leaves when it is set (a signal, a time limit)."""
        super().__init__()
        self.feed = feed
        self.clock = clock or feed.clock
        self.model = ConsoleModel()
        self.link: Link = feed.link
        self.paused = False
        self.tick, self.ages_every = tick, ages_every
        self.blink, self.toasts = blink, toasts
        self.resync_interval = resync_interval
        self.resync_rows_interval = resync_rows_interval
        self.feed_done = False
        self.theme = THEMES.get(theme, theme)
        self._held: list[Message] = []
        self._stale: set[str] = set()
        self._stale_signal = asyncio.Event()
        self._inflight = 0
        self._ticks = 0
        self._new_peers: list[str] = []
        self._next_peers_toast = 0.0
        self._views_due = False
        self._main = MainScreen(self.model, self.clock)
        self._attached = False
        self._stop = stop
        self._frozen = False
        self._gc_thresholds: tuple[int, int, int] | None = None

    def get_default_screen(self) -> Screen[Any]:
        return self._main

    @property
    def main(self) -> MainScreen:
        return self._main

    def attach(self) -> None:
        """Start reading the feed (once the main screen can show what arrives)."""
        if self._attached:
            return
        self._attached = True
        self._spare_the_collector()
        self.refresh_header()
        self.follow_feed()
        self.resync_stale()
        if self._stop is not None:
            self.exit_on_stop(self._stop)
        if self.tick:
            self.set_interval(self.tick, self._on_tick)

    @property
    def settled(self) -> bool:
        """Everything the feed delivered is applied and nothing is being re-fetched
        (for tests and screenshots, with a feed that ends)."""
        return (self.feed_done and not self._stale and self._inflight == 0
                and not self._stale_signal.is_set() and not self._views_due
                and not self._main.panel().behind)

    # ------------------------------------------------------------------ workers

    @work(exclusive=True, group="feed")
    async def follow_feed(self) -> None:
        """Read the feed and post what arrives."""
        async for item in self.feed.follow():
            if isinstance(item, Link):
                self.post_message(msg.LinkChanged(item))
            elif isinstance(item, Synced):
                self.post_message(msg.SnapshotsArrived(item))
            elif isinstance(item, FeedEvent):
                self.post_message(msg.EventArrived(item))
            else:
                self.post_message(msg.StillConnected(item.at))
        self.post_message(msg.FeedEnded())

    @work(exclusive=True, group="resync")
    async def resync_stale(self) -> None:
        """Re-fetch the snapshots that events made stale, coalescing bursts; those in
        :data:`ROWS_FROM_EVENTS` at most every ``resync_rows_interval``."""
        loop = asyncio.get_running_loop()
        due: dict[str, float] = {}  # snapshot → when it may be fetched again
        while True:
            now = loop.time()
            later = [due[n] for n in self._stale if due.get(n, now) > now]
            if len(later) == len(self._stale):  # nothing to fetch yet
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(later) - now if later else None):
                        await self._stale_signal.wait()
                self._stale_signal.clear()
                continue
            wanted = [n for n in SNAPSHOTS if n in self._stale and due.get(n, now) <= now]
            self._stale.difference_update(wanted)
            self._inflight += len(wanted)
            for name in wanted:
                if name in ROWS_FROM_EVENTS:
                    due[name] = now + self.resync_rows_interval
                try:
                    data, taken = await self.feed.fetch_dated(name)
                except KnarrError:
                    self._inflight -= 1
                    continue
                self.post_message(msg.PanelFetched(name, data, taken))
            if self.resync_interval > 0:
                await asyncio.sleep(self.resync_interval)

    @work(exclusive=True, group="stop")
    async def exit_on_stop(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self.exit()

    @work(exclusive=True, group="refresh")
    async def refresh_all(self) -> None:
        try:
            synced = await self.feed.fetch_all()
        except KnarrError as exc:
            self.notify(str(exc), title="Refresh failed", severity="error")
            return
        self.post_message(msg.SnapshotsArrived(synced, refresh=True))

    @work(group="call")
    async def call_skill(self, skill: str, data: Mapping[str, Any]) -> None:
        """Run ``skill`` on the network through the node and report the answer."""
        try:
            answer = await self.feed.call(skill, data)
        except KnarrError as exc:
            answer = {"status": "failed", "error": str(exc)}
        self.post_message(msg.SkillCalled(skill, answer))

    # ------------------------------------------------------------------ handlers

    @on(msg.LinkChanged)
    def _link_changed(self, message: msg.LinkChanged) -> None:
        self.link = message.link
        self.refresh_header()

    @on(msg.SnapshotsArrived)
    def _snapshots_arrived(self, message: msg.SnapshotsArrived) -> None:
        if message.refresh:
            seq = message.synced.seq
            self._held = [h for h in self._held
                          if isinstance(h, msg.EventArrived) and h.event.seq > seq]
        elif self.paused:
            self._hold(message)
            return
        synced = message.synced
        self._show(self.model.sync(synced.snapshots, at=synced.at, seq=synced.seq))
        self.call_later(self._settle_heap)  # after the shown table took the rows

    def _settle_heap(self) -> None:
        """Collect garbage once, then keep everything alive now out of the collector's
        sight (see :meth:`_spare_the_collector`). Objects made later are collected as
        usual."""
        gc.collect()
        gc.freeze()
        self._frozen = True

    def _spare_the_collector(self) -> None:
        """Make full garbage collections rare while the console runs.

        The console holds a few hundred thousand long-lived objects (thousands of rows
        and their cells, widgets, drawn lines); a full collection walks them all, 150-
        200 ms at 5,000 peers, and CPython runs one every few seconds while 200 events
        a second stream in: the screen stood still for each, the largest part of an
        event's p95 way to the screen. So full collections wait for
        :data:`FULL_COLLECTION_AFTER` younger ones instead of 10, and what a sync
        brought in is frozen out of them (:meth:`_settle_heap`). Both are undone when
        the console exits."""
        young, middle, full = self._gc_thresholds = gc.get_threshold()
        gc.set_threshold(young, middle, max(full, FULL_COLLECTION_AFTER))

    def on_unmount(self) -> None:
        if self._gc_thresholds is not None:
            gc.set_threshold(*self._gc_thresholds)
        if self._frozen:
            gc.unfreeze()  # what the console held becomes collectable again

    @on(msg.EventArrived)
    def _event_arrived(self, message: msg.EventArrived) -> None:
        event = message.event
        self._toast(event)
        self._mark_stale(stale_after(event.type))
        if self.paused:
            self._hold(message)
            return
        self._show(self.model.apply(event.type, event.data, at=event.time, seq=event.seq))

    @on(msg.PanelFetched)
    def _panel_fetched(self, message: msg.PanelFetched) -> None:
        self._inflight -= 1
        if self.paused:
            self._hold(message)
            return
        self._show(self.model.sync_one(message.name, message.data, at=message.at))

    @on(msg.StillConnected)
    def _still_connected(self, message: msg.StillConnected) -> None:
        if not self.paused:
            self.model.touch(message.at)
        self.refresh_header()

    @on(msg.FeedEnded)
    def _feed_ended(self, message: msg.FeedEnded) -> None:
        self.feed_done = True

    @on(msg.SkillCalled)
    def _skill_called(self, message: msg.SkillCalled) -> None:
        answer = message.result
        if isinstance(self.screen, CallScreen) and self.screen.skill == message.skill:
            self.screen.show_result(answer)
        elif answer.get("status") == "completed":
            self.notify(f"{message.skill} completed", title="Call")
        else:
            self.notify(f"{message.skill}: {answer.get('error', 'failed')}", title="Call",
                        severity="error")

    def _hold(self, message: Message) -> None:
        self._held.append(message)
        self.refresh_header()

    def _mark_stale(self, names: tuple[str, ...]) -> None:
        if names:
            self._stale.update(names)
            self._stale_signal.set()

    def _show(self, changes: list[RowChange]) -> None:
        self._main.apply(changes)
        if not self._views_due:
            # Once per burst of messages, not once per event.
            self._views_due = True
            self.call_later(self._refresh_views)

    def _refresh_views(self) -> None:
        self._views_due = False
        self._main.refresh_summary()
        self.refresh_header()
        if isinstance(self.screen, DetailScreen):
            self.screen.refresh_view()

    def _on_tick(self) -> None:
        self._ticks += 1
        self.refresh_header()
        if self._ticks % self.ages_every == 0:
            self._main.refresh_ages()

    def refresh_header(self) -> None:
        if not self._main.is_mounted:
            return
        now = self.clock()
        started = self.model.status.get("started")
        updated = self.model.updated_at
        self._main.show_state(HeaderState(
            node_id=self.model.node_id,
            uptime=None if started is None else now - float(started),
            link=self.link,
            updated_ago=None if updated is None else now - updated,
            paused=self.paused,
            held=sum(isinstance(h, msg.EventArrived) for h in self._held),
            source=self.feed.label,
        ))

    # ------------------------------------------------------------------ toasts

    def _toast(self, event: FeedEvent) -> None:
        if not self.toasts:
            return
        data = event.data
        if event.type == "peer.added":
            self._new_peers.append(f"{short_id(str(data.get('node_id', '')))} "
                                   f"({data.get('host')}:{data.get('port')})")
            if len(self._new_peers) == 1:
                # One "new peers" toast on screen at a time: a busy network joins
                # dozens a second, and every toast lays the screen out.
                wait = self._next_peers_toast - asyncio.get_running_loop().time()
                self.set_timer(max(0.5, wait), self._peers_toast)
        elif event.type == "watchman":
            detail = ", ".join(f"{k}={v}" for k, v in sorted(data.items()) if k != "event")
            self.notify(f"{data.get('event', 'event')}: {detail}"[:200], title="Watchman",
                        severity="warning")
        elif event.type == "recipe":
            recipe = data.get("recipe", data.get("name", "a recipe"))
            action = data.get("action", data.get("event", "fired"))
            self.notify(f"{recipe} → {action}", title="Recipe fired")

    def _peers_toast(self) -> None:
        self._next_peers_toast = asyncio.get_running_loop().time() + self.NOTIFICATION_TIMEOUT
        peers, self._new_peers = self._new_peers, []
        if len(peers) == 1:
            self.notify(f"New peer {peers[0]}", title="Peers")
        elif peers:
            self.notify(f"{len(peers)} new peers: {', '.join(peers[:3])}"
                        + ("…" if len(peers) > 3 else ""), title="Peers")

    # ------------------------------------------------------------------ actions

    def action_pause(self) -> None:
        self.paused = not self.paused
        if not self.paused:
            held, self._held = self._held, []
            for message in held:
                if isinstance(message, msg.SnapshotsArrived):
                    s = message.synced
                    self._show(self.model.sync(s.snapshots, at=s.at, seq=s.seq))
                elif isinstance(message, msg.EventArrived):
                    e = message.event
                    self._show(self.model.apply(e.type, e.data, at=e.time, seq=e.seq))
                elif isinstance(message, msg.PanelFetched):
                    self._show(self.model.sync_one(message.name, message.data, at=message.at))
        self.refresh_header()

    def action_refresh(self) -> None:
        self.refresh_all()

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen([self.BINDINGS, MainScreen.BINDINGS,
                                         DetailScreen.BINDINGS]))

    def action_toggle_theme(self) -> None:
        self.theme = "textual-light" if self.current_theme.dark else "textual-dark"

    def show_panel(self, panel_id: str) -> None:
        self._close_overlays()
        self._main.action_show_panel(panel_id)

    def jump_to(self, panel_id: str, key: str) -> None:
        self._close_overlays()
        self._main.jump_to(panel_id, key)

    def _close_overlays(self) -> None:
        while len(self.screen_stack) > 1 and self.screen is not self._main:
            self.pop_screen()

    def open_detail(self, panel_id: str, key: str) -> None:
        """The detail view of row ``key`` of ``panel_id`` (for skills, also a skill name)."""
        model, clock = self.model, self.clock
        screen: DetailScreen
        if panel_id in ("peers", "reputation"):
            screen = PeerScreen(model, clock, key)
        elif panel_id == "skills":
            row = model.rows["skills"].get(key)
            screen = SkillScreen(model, clock, str(row["name"]) if row else key)
        elif panel_id == "demand" and key.startswith("skill:"):
            screen = SkillScreen(model, clock, key.removeprefix("skill:"))
        else:
            screen = RecordScreen(model, clock, key, panel_id)
        self.push_screen(screen)

    def open_call(self, skill: str) -> None:
        providers = self.model.providers_of(skill)
        schema = dict(providers[0].get("input_schema") or {}) if providers else {}
        self.push_screen(CallScreen(skill, schema))

    # ------------------------------------------------------------------ determinism

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        if not self.blink and isinstance(event.widget, Input):
            event.widget.cursor_blink = False


async def run_console_async(
    *,
    feed: Feed | None = None,
    socket_path: str | Path | None = None,
    host: str | None = None,
    port: int | None = None,
    token: str | None = None,
    theme: str = "dark",
    stop: asyncio.Event | None = None,
    headless: bool = False,
) -> None:
    """Run the console in the current event loop until the operator quits, or ``stop``
    is set (e.g. by a signal or a time limit): on ``feed``, or on the cockpit at
    ``socket_path`` (or ``host``:``port`` with ``token``). ``headless``: draw nothing
    (scripts and tests)."""
    if feed is None:
        feed = CockpitFeed(socket_path=socket_path, host=host, port=port, token=token)
    try:
        await KnarrConsole(feed, theme=theme, stop=stop).run_async(headless=headless)
    finally:
        await feed.close()
