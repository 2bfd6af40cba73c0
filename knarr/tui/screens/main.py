"""The main screen: the header, the panel tabs, one panel at a time, the filter line."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, cast

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import ContentSwitcher, DataTable, Footer, Input, Label

from knarr.tui.model import PANEL_IDS, PANELS, ConsoleModel, RowChange
from knarr.tui.widgets.header import Banner, ConsoleHeader, HeaderState, PanelBar
from knarr.tui.widgets.panel import PanelView

if TYPE_CHECKING:
    from knarr.tui.app import KnarrConsole


def _panel_bindings() -> list[BindingType]:
    return [
        Binding(str(number), f"show_panel('{panel.id}')", panel.tab or panel.title,
                show=False, id=f"console.panel.{panel.id}",
                tooltip=f"Show the {panel.title.lower()} panel")
        for number, panel in enumerate(PANELS, start=1)
    ]


class MainScreen(Screen[None]):
    """Panels of live node state."""

    BINDINGS = [
        *_panel_bindings(),
        Binding("tab", "next_panel", "Next panel", show=False, priority=True,
                id="console.next_panel", tooltip="Show the next panel"),
        Binding("shift+tab", "previous_panel", "Previous panel", show=False, priority=True,
                id="console.previous_panel", tooltip="Show the previous panel"),
        Binding("slash", "filter", "Filter", id="console.filter",
                tooltip="Filter the rows (the filter shows in the title)"),
        Binding("s", "cycle_sort", "Sort", id="console.sort",
                tooltip="Sort by the next column"),
        Binding("r", "reverse_sort", "Reverse", show=False, id="console.reverse_sort",
                tooltip="Reverse the sort order"),
        Binding("enter", "open", "Open", id="console.open",
                tooltip="Open the selected row's detail view"),
        Binding("escape", "clear_filter", "Clear filter", show=False,
                id="console.clear_filter", tooltip="Clear the filter"),
    ]

    def __init__(self, model: ConsoleModel, clock: Callable[[], float]) -> None:
        super().__init__(id="main")
        self.model = model
        self.clock = clock
        self.current = PANEL_IDS[0]

    def compose(self) -> ComposeResult:
        yield ConsoleHeader(id="header")
        yield Banner(id="banner", classes="-hidden")
        yield PanelBar(id="panelbar")
        with ContentSwitcher(initial=f"panel-{self.current}", id="panels"):
            for panel in PANELS:
                yield PanelView(panel, self.model, self.clock, live=panel.id == self.current)
        with Horizontal(id="filterbar", classes="-hidden"):
            yield Label("filter /", id="filter-label")
            yield Input(id="filter", placeholder="text in any column; Enter keeps it, Esc clears")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(PanelBar).show(self.current)
        self.panel().table.focus()
        self.console.attach()

    @property
    def console(self) -> KnarrConsole:
        return cast("KnarrConsole", self.app)

    def panel(self, panel_id: str | None = None) -> PanelView:
        return self.query_one(f"#panel-{panel_id or self.current}", PanelView)

    # ------------------------------------------------------------------ data

    def apply(self, changes: Iterable[RowChange]) -> None:
        grouped: dict[str, list[RowChange]] = defaultdict(list)
        for change in changes:
            grouped[change.panel].append(change)
        for panel_id, panel_changes in grouped.items():
            self.panel(panel_id).apply(panel_changes)

    def refresh_summary(self) -> None:
        """The ledger's totals line (totals can change without any row changing)."""
        self.panel("ledger").update_title()

    def show_state(self, state: HeaderState) -> None:
        self.query_one(ConsoleHeader).show(state)
        self.query_one(Banner).show(state.link, state.source, state.updated_ago)

    def refresh_ages(self) -> None:
        self.panel().refresh_ages()

    # ------------------------------------------------------------------ navigation

    def action_show_panel(self, panel_id: str) -> None:
        if panel_id not in PANEL_IDS:
            return
        if panel_id != self.current:
            self.panel().hide()
        self.current = panel_id
        self.query_one(ContentSwitcher).current = f"panel-{panel_id}"
        self.query_one(PanelBar).show(panel_id)
        panel = self.panel()
        panel.show()
        panel.refresh_ages()
        bar = self.query_one("#filterbar")
        if bar.has_class("-hidden"):
            panel.table.focus()
        else:
            self.query_one("#filter", Input).value = panel.filter

    def action_next_panel(self) -> None:
        index = PANEL_IDS.index(self.current)
        self.action_show_panel(PANEL_IDS[(index + 1) % len(PANEL_IDS)])

    def action_previous_panel(self) -> None:
        index = PANEL_IDS.index(self.current)
        self.action_show_panel(PANEL_IDS[(index - 1) % len(PANEL_IDS)])

    def jump_to(self, panel_id: str, key: str) -> None:
        """Show ``panel_id`` with the cursor on row ``key`` (clearing a filter hiding it)."""
        self.action_show_panel(panel_id)
        panel = self.panel()
        if key not in panel.table.rows and panel.filter:
            panel.set_filter("")
        if key in panel.table.rows:
            panel.table.move_cursor(row=panel.table.get_row_index(key))
        panel.table.focus()

    # ------------------------------------------------------------------ sort and filter

    def action_cycle_sort(self) -> None:
        self.panel().cycle_sort()

    def action_reverse_sort(self) -> None:
        panel = self.panel()
        panel.sort_by(panel.sort_column)

    def action_filter(self) -> None:
        bar = self.query_one("#filterbar")
        bar.remove_class("-hidden")
        field = self.query_one("#filter", Input)
        field.value = self.panel().filter
        field.focus()

    def action_clear_filter(self) -> None:
        self.query_one("#filter", Input).value = ""
        self.query_one("#filterbar").add_class("-hidden")
        self.panel().set_filter("")
        self.panel().table.focus()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.panel().set_filter(event.value)

    @on(Input.Submitted, "#filter")
    def _filter_kept(self, event: Input.Submitted) -> None:
        self.query_one("#filterbar").add_class("-hidden")
        self.panel().table.focus()

    # ------------------------------------------------------------------ detail

    def action_open(self) -> None:
        key = self.panel().cursor_key()
        if key is not None:
            self.console.open_detail(self.current, key)

    @on(DataTable.RowSelected)
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        if event.row_key.value is not None:
            self.console.open_detail(self.current, str(event.row_key.value))
