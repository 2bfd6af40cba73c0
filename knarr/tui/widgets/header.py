"""The console's top lines: who we watch, whether we are connected, how fresh the data is,
and which panel is showing."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.widgets import Static

from knarr.tui.feed import Link, LinkState
from knarr.tui.model import PANELS
from knarr.tui.widgets.panel import age, duration, short_id


@dataclass(frozen=True, slots=True)
class HeaderState:
    node_id: str
    uptime: float | None
    link: Link
    updated_ago: float | None
    paused: bool
    held: int
    source: str


_LINK_TEXT = {
    LinkState.CONNECTING: ("◌ connecting…", "yellow"),
    LinkState.CONNECTED: ("● connected", "green"),
    LinkState.RECONNECTING: ("○ node not reachable — reconnecting…", "bold red"),
    LinkState.REFUSED: ("✕ refused", "bold red"),
    LinkState.RECORDED: ("● recorded feed", "cyan"),
}


class ConsoleHeader(Static):
    """One line: node id, uptime, connection state, freshness, pause."""

    _shown: Text | None = None

    def show(self, state: HeaderState) -> None:
        line = Text(no_wrap=True, overflow="ellipsis")
        line.append(" knarr ", style="bold reverse")
        line.append(" node ")
        line.append(short_id(state.node_id) if state.node_id else "—", style="bold")
        if state.uptime is not None and state.link.live:
            line.append(f"  up {duration(state.uptime)}")
        text, style = _LINK_TEXT[state.link.state]
        line.append("  ")
        line.append(text, style=style)
        if state.paused:
            line.append("  ⏸ paused", style="bold yellow")
            if state.held:
                line.append(f" ({state.held} held)", style="yellow")
        if state.updated_ago is not None:
            line.append(f"  updated {age(state.updated_ago)} ago", style="dim")
        if line != self._shown:
            self._shown = line
            self.update(line, layout=False)  # one line, always


class Banner(Static):
    """The unmistakable "not connected" line, shown only when the link is down."""

    def show(self, link: Link, source: str, updated_ago: float | None) -> None:
        live = link.live or link.state is LinkState.CONNECTING
        self.set_class(live, "-hidden")
        if live:
            return
        if link.state is LinkState.REFUSED:
            message = f"The cockpit refused the console: {link.detail}"
        else:
            retry = f" in {link.retry_in:.0f}s" if link.retry_in else ""
            why = f" ({link.detail})" if link.detail else ""
            message = f"Node not reachable at {source} — reconnecting{retry}…{why}"
        if updated_ago is not None:
            message += f" Showing data from {age(updated_ago)} ago."
        self.update(Text(message))


class PanelBar(Static):
    """The panel tabs, by number key; the current one highlighted; clickable."""

    def show(self, current: str) -> None:
        parts = []
        for number, panel in enumerate(PANELS, start=1):
            name = panel.tab or panel.title
            style = "reverse bold" if panel.id == current else ""
            label = f" {number} {name} "
            parts.append(
                f"[{style} @click=screen.show_panel('{panel.id}')]{label}[/]" if style
                else f"[@click=screen.show_panel('{panel.id}')]{label}[/]"
            )
        self.update("".join(parts))
