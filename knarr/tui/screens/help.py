"""``?``: every key the console answers to, from the bindings themselves."""

from __future__ import annotations

from collections.abc import Iterable

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

# Keys that belong to widgets rather than to the console's own bindings.
EXTRA_KEYS: tuple[tuple[str, str], ...] = (
    ("↑ ↓ PgUp PgDn", "Move through the rows (Home, End too)"),
    ("click header", "Sort by that column (again: reverse)"),
    ("ctrl+p", "Palette: jump to a peer or skill, call a skill"),
    ("esc", "Back from a detail view; clear the filter"),
)
_PANELS_ROW = ("1 … 7", "Show that panel (numbered on the tab bar)")


def _bindings(sources: Iterable[Iterable[BindingType]]) -> list[Binding]:
    seen: set[str] = set()
    out = []
    for source in sources:
        for item in source:
            binding = item if isinstance(item, Binding) else Binding(*item)
            if (binding.action in seen or not binding.description
                    or binding.key == "escape" or binding.action.startswith("show_panel")):
                continue
            seen.add(binding.action)
            out.append(binding)
    return out


class HelpScreen(ModalScreen[None]):
    """A list of every key."""

    BINDINGS = [
        Binding("escape,question_mark,q", "dismiss", "Close", id="console.close_help",
                tooltip="Close the help"),
    ]

    def __init__(self, sources: Iterable[Iterable[BindingType]]) -> None:
        super().__init__(id="help")
        self.sources = [list(s) for s in sources]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):
            yield Static(self._table())

    def _table(self) -> Table:
        table = Table(title="Keys", title_style="bold", box=None, show_header=False,
                      pad_edge=False, padding=(0, 2))
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        table.add_row(Text(_PANELS_ROW[0]), Text(_PANELS_ROW[1]))
        for binding in _bindings(self.sources):
            keys = " ".join(self.app.get_key_display(Binding(k, binding.action))
                            for k in binding.key.split(","))
            what = binding.tooltip or binding.description
            table.add_row(Text(keys), Text(what))
        for keys, what in EXTRA_KEYS:
            table.add_row(Text(keys), Text(what))
        table.caption = "esc or ? closes"
        return table
