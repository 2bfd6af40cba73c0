"""One panel: a keyed table of rows that live updates change in place.

Rows are added, changed and removed by key (``add_row(key=)``, ``update_cell``,
``remove_row``), and the cursor stays on the row it was on, so an operator reading a
row is never thrown back to the top by a refresh.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from itertools import count
from operator import attrgetter
from typing import Any, NamedTuple, Self

from rich.segment import Segment
from rich.style import Style
from rich.text import Text, TextType
from textual import on
from textual._two_way_dict import TwoWayDict
from textual._types import SegmentLines
from textual.app import ComposeResult
from textual.cache import LRUCache
from textual.containers import Vertical
from textual.coordinate import Coordinate
from textual.geometry import Region, Size
from textual.message import Message
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import DataTable, Static
from textual.widgets.data_table import CellDoesNotExist, CellKey, ColumnKey, RowKey
from textual.widgets.data_table import Row as TableRow

from knarr.tui.model import Column, ConsoleModel, Panel, Row, RowChange, matches


class Cell(Text):
    """A cell's text, which sorts by the value behind it rather than by its text."""

    def __init__(self, text: str, sort_value: Any, *, justify: str = "left",
                 style: str = "") -> None:
        super().__init__(text, style=style, justify=justify,  # type: ignore[arg-type]
                         no_wrap=True, end="")
        self.sort_value = sort_value

    def same_as(self, other: object) -> bool:
        return (isinstance(other, Cell) and other.plain == self.plain
                and other.style == self.style and other.sort_value == self.sort_value)


def age(seconds: float) -> str:
    """``42s``, ``5m``, ``3h``, ``2d``: how long ago, in at most four characters."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def duration(seconds: float) -> str:
    """An uptime: ``42s``, ``5m 02s``, ``3h 07m``, ``2d 04h``."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def short_id(node_id: str, own: str = "") -> str:
    if own and node_id == own:
        return "this node"
    return node_id[:12]


def cell(column: Column, value: Any, *, now: float, own: str) -> Cell:
    """How ``value`` shows in ``column``."""
    kind = column.kind
    if value is None or value == "":
        blank: Any = None
        return Cell("—" if kind != "text" else "", blank, style="dim",
                    justify="left" if kind in ("text", "id") else "right")
    if kind == "id":
        text = short_id(str(value), own)
        return Cell(text, str(value), style="bold" if text == "this node" else "")
    if kind == "age":
        return Cell(age(now - float(value)), float(value), justify="right")
    if kind == "int":
        return Cell(str(int(value)), int(value), justify="right")
    if kind == "score":
        return Cell(f"{float(value):.2f}", float(value), justify="right")
    if kind == "price":
        return Cell(f"{float(value):.2f}", float(value), justify="right")
    if kind == "credits":
        amount = float(value)
        style = "green" if amount > 0 else "red" if amount < 0 else ""
        return Cell(f"{amount:+.2f}" if amount else "0.00", amount, justify="right",
                    style=style)
    if kind == "ms":
        ms = float(value)
        return Cell(f"{ms:.0f}" if ms.is_integer() or ms >= 100 else f"{ms:.1f}", ms,
                    justify="right")
    text = str(value)
    style = "red" if column.key == "outcome" and text not in ("completed", "ok") else ""
    return Cell(text, text.lower(), style=style)


def _sort_key(value: Any) -> tuple[int, Any]:
    sort_value = value.sort_value if isinstance(value, Cell) else value
    return (1, 0) if sort_value is None else (0, sort_value)


class _RowOrder(TwoWayDict[RowKey, int]):
    """``DataTable._row_locations`` (row key ↔ row index) as a list of the keys in order.

    ``TwoWayDict`` holds two dicts keyed by ``RowKey``, whose hash is Python code: every
    re-sort or removal rebuilt both, at thousands of rows most of a burst's time. Here
    index → key is the list, and key → index a dict of the keys' strings (C hashing),
    built when first asked for after a change (appending keeps it)."""

    def __init__(self, keys: Iterable[RowKey] = ()) -> None:
        self.keys: list[RowKey] = list(keys)
        self._index: dict[Any, int] | None = None

    def _positions(self) -> dict[Any, int]:
        if self._index is None:
            self._index = dict(zip(map(attrgetter("value"), self.keys),
                                   range(len(self.keys)), strict=True))
        return self._index

    def changed(self) -> None:
        """The list was reordered or cut in place."""
        self._index = None

    def __setitem__(self, key: RowKey, index: int) -> None:
        if key in self:
            del self[key]
        if index == len(self.keys):
            self.keys.append(key)
            if self._index is not None:
                self._index[key.value] = index
        else:
            self.keys.insert(index, key)
            self._index = None

    def __delitem__(self, key: RowKey | str) -> None:
        del self.keys[self._positions()[_value(key)]]
        self._index = None

    def __iter__(self) -> Iterator[RowKey]:
        return iter(list(self.keys))

    def get(self, key: RowKey | str) -> int | None:
        return self._positions().get(_value(key))

    def get_key(self, value: int) -> RowKey | None:
        return self.keys[value] if 0 <= value < len(self.keys) else None

    def contains_value(self, value: int) -> bool:
        return 0 <= value < len(self.keys)

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, item: object) -> bool:
        return isinstance(item, RowKey | str) and _value(item) in self._positions()


def _value(key: RowKey | str) -> Any:
    """What a row is kept by: its key's string (``DataTable`` takes either)."""
    return key.value if isinstance(key, RowKey) else key


class _OneLineOffsets:
    """``DataTable._y_offsets`` for a table whose rows are all one line high: line ``y``
    is row ``y``, looked up when asked instead of listed after every change."""

    def __init__(self, table: PanelTable) -> None:
        self._locations = table._row_locations

    def __len__(self) -> int:
        return len(self._locations)

    def __getitem__(self, y: int) -> tuple[RowKey, int]:
        row_key = self._locations.get_key(y)
        if row_key is None:
            raise IndexError(y)
        return row_key, 0

    def __iter__(self) -> Iterator[tuple[RowKey, int]]:
        return (self[y] for y in range(len(self)))

    def __eq__(self, other: object) -> bool:
        return list(self) == list(other) if isinstance(other, (list, _OneLineOffsets)) \
            else NotImplemented

    def clear(self) -> None:
        """Nothing is kept (``DataTable.clear`` clears its list)."""


_Drawn = tuple[str, Style | None, Any, tuple[int, bool] | None]
"""A segment without its mouse meta: text, style, control, and (column, out of bounds)
if the meta is to be stamped."""


class _DrawnLine(NamedTuple):
    """A row's line as drawn at ``row_index``, and its segments without their mouse
    meta, to stamp it at another index."""

    strip: Strip
    row_index: int
    segments: list[_Drawn]


class PanelTable(DataTable[Cell]):
    """The table of one panel, with the batch operations a live panel needs.

    ``DataTable`` renumbers every row for each ``remove_row``, calls a Python key
    function per row for each ``sort``, and draws every visible line again through
    Rich after any change: at thousands of rows and 200 changes a second that was most
    of the console's time. Here a batch of rows goes in one pass (:meth:`remove_rows`);
    the row order is a list (:class:`_RowOrder`) in which new rows are put in place
    by each row's kept sort key, or all rows sorted by one C-level ``sorted``
    (:meth:`sort_by_column`); a row's drawn line is kept by its key and content and
    only stamped with its new index when rows move (:meth:`_render_line`). All of it
    works on ``DataTable``'s private state; ``textual`` is pinned exactly and
    ``tests/tui/test_panel_table.py`` checks order and drawn lines against
    ``DataTable``'s own.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._key_column: ColumnKey | None = None
        self._sort_keys: dict[Any, tuple[int, Any]] = {}
        """Each row's sort key in the key column, by the row key's string."""
        self._added: dict[Any, RowKey] = {}
        """The rows by their key's string, in the order they were added (ties in a
        sort keep it, as in ``DataTable.sort``)."""
        self._unplaced: dict[Any, None] = {}
        """Rows added since the last sort: the last ones in the order."""
        self._sorted_as: tuple[ColumnKey, bool] | None = None
        """The sort the order follows, but for :attr:`_unplaced`."""
        self._drawn_cells: LRUCache[tuple[Any, ...], list[list[tuple[Segment, bool]]]] = (
            LRUCache(4096))  # before DataTable's init: its watchers clear caches
        self._one_line_rows = True
        self._drawn_lines: LRUCache[tuple[Any, ...], _DrawnLine] = LRUCache(1024)
        self._cell_templates: LRUCache[tuple[Any, ...],
                                       list[tuple[str, Style | None, Any, bool]]] = (
            LRUCache(4096))
        self._row_versions: dict[RowKey, int] = {}
        self._versions = count()
        self._where: dict[tuple[int, int, bool], Style] = {}
        self._row_styles: dict[tuple[int, Style], Style] = {}
        self._widths: tuple[int, tuple[int, ...]] = (-1, ())
        self._order = _RowOrder()
        self._frame_style = Style()
        super().__init__(*args, **kwargs)

    @property
    def _row_locations(self) -> _RowOrder:
        """``DataTable``'s row index, kept as :class:`_RowOrder` whatever it is set to."""
        return self._order

    @_row_locations.setter
    def _row_locations(self, locations: TwoWayDict[RowKey, int]) -> None:
        if not isinstance(locations, _RowOrder):
            keys = map(locations.get_key, range(len(locations)))
            locations = _RowOrder(k for k in keys if k is not None)
        self._order = locations

    def _stamp(self, row_index: int, column_index: int, outside: bool = False) -> Style:
        """The mouse meta ``DataTable`` puts in a cell's style (which row and column)."""
        where = self._where
        mark = where.get((row_index, column_index, outside))
        if mark is None:
            if len(where) > 4096:
                where.clear()
            meta: dict[str, Any] = {"row": row_index, "column": column_index}
            if outside:
                meta["out_of_bounds"] = True
            mark = where[(row_index, column_index, outside)] = Style.from_meta(meta)
        return mark

    def _column_widths(self) -> tuple[int, ...]:
        """Each column's width with its padding, in order (kept until the table changes)."""
        if self._widths[0] != self._update_count:
            self._widths = (self._update_count,
                            tuple(c.get_render_width(self) for c in self.ordered_columns))
        return self._widths[1]

    def _plain_rows(self) -> bool:
        """Every row is one line, with no label, fixed row or fixed column: the rows
        this table draws itself."""
        return (self._one_line_rows and not self.fixed_rows and not self.fixed_columns
                and not (self._labelled_row_exists and self.show_row_labels))

    def _render_cell(self, row_index: int, column_index: int, base_style: Style, width: int,
                     cursor: bool = False, hover: bool = False) -> SegmentLines:
        """A cell drawn as ``DataTable`` draws it, reused by content rather than by
        position: ``DataTable`` keys its cache by row index and by its change counter,
        so a row arriving on top redraws every visible cell (with Rich: most of a frame's
        time). The row and column stamped in the styles, for the mouse, are redone."""
        if (row_index < max(0, self.fixed_rows) or column_index < max(0, self.fixed_columns)
                or (row_key := self._row_locations.get_key(row_index)) is None):
            return super()._render_cell(row_index, column_index, base_style, width,
                                        cursor, hover)
        column_key = self._column_locations.get_key(column_index)
        value = None if column_key is None else self._data[row_key].get(column_key)
        if not isinstance(value, Cell) or self.rows[row_key].height != 1:
            return super()._render_cell(row_index, column_index, base_style, width,
                                        cursor, hover)
        key = (value.plain, value.style, value.justify, tuple(value.spans), width,
               base_style, cursor, hover, self._show_hover_cursor, self._pseudo_class_state)
        drawn = self._drawn_cells.get(key)
        if drawn is None:
            lines = super()._render_cell(row_index, column_index, base_style, width,
                                         cursor, hover)
            drawn = [[(Segment(seg.text, seg.style.clear_meta_and_links(), seg.control), True)
                      if seg.style is not None and seg.style._meta else (seg, False)
                      for seg in line] for line in lines]
            self._drawn_cells.set(key, drawn)
            return lines
        where = self._stamp(row_index, column_index)
        return [[Segment(seg.text, (seg.style or Style()) + where, seg.control) if stamped
                 else seg for seg, stamped in line] for line in drawn]

    def _get_row_style(self, row_index: int, base_style: Style) -> Style:
        """``DataTable._get_row_style``, kept per zebra stripe (it computes the component
        style from every ancestor's styles each time)."""
        if row_index < max(0, self.fixed_rows):
            return super()._get_row_style(row_index, base_style)
        key = (row_index % 2 if self.zebra_stripes else 0, base_style)
        style = self._row_styles.get(key)
        if style is None:
            style = self._row_styles[key] = super()._get_row_style(row_index, base_style)
        return style

    def _render_line_in_row(self, row_key: RowKey, line_no: int, base_style: Style,
                            cursor_location: Coordinate, hover_location: Coordinate,
                            ) -> tuple[SegmentLines, SegmentLines]:
        """``DataTable._render_line_in_row`` for a plain row with a row cursor, without
        its per-call style and column lookups."""
        row_index = self._row_locations.get(row_key)
        if (row_index is None or line_no or self.cursor_type != "row"
                or not self._plain_rows()):
            return super()._render_line_in_row(row_key, line_no, base_style,
                                               cursor_location, hover_location)
        row_style = self._get_row_style(row_index, base_style)
        cursor = cursor_location.row == row_index
        hover = hover_location.row == row_index
        render_cell = self._render_cell
        widths = self._column_widths()
        scrollable = [render_cell(row_index, column_index, row_style, width, cursor, hover)[0]
                      for column_index, width in enumerate(widths)]
        remaining = max(0, self.size.width - sum(widths) - self._row_label_column_width)
        extend_style, _ = self._get_styles_to_render_cell(
            False, False, False, hover, cursor, self.show_cursor, self._show_hover_cursor,
            False, False)
        extend_style = row_style + extend_style + self._stamp(row_index, 0, True)
        scrollable.append([Segment(" " * remaining, extend_style)])
        return [], scrollable

    def _render_line(self, y: int, x1: int, x2: int, base_style: Style) -> Strip:
        """A line drawn as ``DataTable`` draws it, reused by row rather than by position.

        ``DataTable`` keys its drawn lines by ``y`` and by its change counter, so a row
        arriving on top (or any change) draws every visible line again through Rich.
        Here a row's line is kept by the row's key and content version, and by what
        else styles it (zebra parity, cursor, hover, focus, widths); a row drawn at
        another place gets only its mouse meta (the row index) stamped again."""
        header = self.header_height if self.show_header else 0
        row_index = y - header
        if row_index < 0 or not self._plain_rows():
            return super()._render_line(y, x1, x2, base_style)
        row_key = self._row_locations.get_key(row_index)
        if row_key is None:
            return Strip.blank(self.size.width, base_style)
        cursor, hover = self.cursor_coordinate, self.hover_coordinate
        key = (row_key, self._row_versions.get(row_key), row_index % 2 if self.zebra_stripes
               else 0, cursor.row == row_index, hover.row == row_index, x1, x2,
               self.size.width, base_style, self.cursor_type, self.show_cursor,
               self._show_hover_cursor, self._pseudo_class_state,
               self.cursor_foreground_priority, self.cursor_background_priority,
               self._column_widths(), self._row_label_column_width)
        drawn = self._drawn_lines.get(key)
        if drawn is None:
            width = self.size.width
            if x1 == 0 and x2 == width and self.cursor_type == "row":
                drawn = self._draw_row(row_index, row_key, base_style, width,
                                       cursor.row == row_index, hover.row == row_index)
            if drawn is None:
                drawn = self._parse(super()._render_line(y, x1, x2, base_style), row_index)
            if drawn is None:
                return super()._render_line(y, x1, x2, base_style)
            self._drawn_lines.set(key, drawn)
        if drawn.row_index == row_index:
            return drawn.strip
        return self._stamped(drawn.segments, row_index, drawn.strip.cell_length)

    def _stamped(self, segments: list[_Drawn], row_index: int, width: int) -> Strip:
        """The line of ``segments`` with the mouse meta of row ``row_index``."""
        stamp = self._stamp
        return Strip([Segment(text, style, control) if meta is None
                      else Segment(text, (style or Style()) + stamp(row_index, *meta), control)
                      for text, style, control, meta in segments], width)

    def _parse(self, strip: Strip, row_index: int) -> _DrawnLine | None:
        """A line ``DataTable`` drew, kept with its segments' mouse meta taken out."""
        segments: list[_Drawn] = []
        for text, style, control in strip:
            if style is None or not style._meta:
                segments.append((text, style, control, None))
                continue
            meta = style.meta
            if meta.keys() - {"row", "column", "out_of_bounds"}:
                return None  # a meta this cannot stamp again
            segments.append((text, style.clear_meta_and_links(), control,
                             (meta.get("column", 0), bool(meta.get("out_of_bounds")))))
        return _DrawnLine(strip, row_index, segments)

    def _draw_row(self, row_index: int, row_key: RowKey, base_style: Style, width: int,
                  cursor: bool, hover: bool) -> _DrawnLine | None:
        """Row ``row_index``'s line, put together as ``DataTable._render_line`` does from
        its cells (kept by content) and the space right of them, without drawing it
        with its mouse meta and taking that out again. ``None`` if the columns do not
        fit (``DataTable`` crops the line then)."""
        widths = self._column_widths()
        remaining = width - sum(widths) - self._row_label_column_width
        if remaining < 0:
            return None
        row_style = self._get_row_style(row_index, base_style)
        data = self._data[row_key]
        column_key = self._column_locations.get_key
        segments: list[_Drawn] = []
        for column_index, column_width in enumerate(widths):
            value = data.get(column_key(column_index))  # type: ignore[arg-type]
            cell = self._cell_template(row_index, column_index, value, row_style,
                                       column_width, cursor, hover)
            segments += [(text, style, control, (column_index, False) if mark else None)
                         for text, style, control, mark in cell]
        extend_style, _ = self._get_styles_to_render_cell(
            False, False, False, hover, cursor, self.show_cursor, self._show_hover_cursor,
            False, False)
        segments.append((" " * remaining, row_style + extend_style, None, (0, True)))
        return _DrawnLine(self._stamped(segments, row_index, width), row_index, segments)

    def _cell_template(self, row_index: int, column_index: int, value: Any, row_style: Style,
                       width: int, cursor: bool, hover: bool,
                       ) -> list[tuple[str, Style | None, Any, bool]]:
        """A cell drawn by ``DataTable._render_cell`` (its segments merged as a line's
        are), kept by content, without its mouse meta (``True`` where it had one)."""
        key = None
        if isinstance(value, Cell):
            key = (value.plain, value.style, value.justify, tuple(value.spans), width,
                   row_style, cursor, hover, self._show_hover_cursor, self.show_cursor,
                   self._pseudo_class_state, self.cursor_foreground_priority,
                   self.cursor_background_priority, self.cell_padding)
            kept = self._cell_templates.get(key)
            if kept is not None:
                return kept
        lines = DataTable._render_cell(self, row_index, column_index, row_style, width,
                                       cursor, hover)
        template = [(text, style.clear_meta_and_links(), control, True)
                    if style is not None and style._meta else (text, style, control, False)
                    for text, style, control in Segment.simplify(lines[0])]
        if key is not None:
            self._cell_templates.set(key, template)
        return template

    def render_lines(self, crop: Region) -> list[Strip]:
        self._frame_style = self.rich_style  # the same for every line of a frame
        return super().render_lines(crop)

    def render_line(self, y: int) -> Strip:
        """``DataTable.render_line`` for plain rows, without its per-line look-ups of
        the fixed rows' heights and of the widget's style."""
        if not self._plain_rows():
            return super().render_line(y)
        scroll_x, scroll_y = self.scroll_offset
        if y >= (self.header_height if self.show_header else 0):
            y += scroll_y
        return self._render_line(y, scroll_x, scroll_x + self.size.width, self._frame_style)

    def _clear_caches(self) -> None:
        super()._clear_caches()
        self._forget_drawn()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._forget_drawn()

    def _forget_drawn(self) -> None:
        self._drawn_cells.clear()
        self._cell_templates.clear()
        self._drawn_lines.clear()
        self._row_styles.clear()

    def _changed(self, row_key: RowKey) -> None:
        """Row ``row_key``'s content changed: its kept line is stale."""
        self._row_versions[row_key] = next(self._versions)

    @property
    def ordered_rows(self) -> list[TableRow]:
        """``DataTable.ordered_rows``, rebuilt after every change, in one comprehension."""
        cache_key = (self.row_count, self._update_count)
        ordered = self._ordered_row_cache.get(cache_key)
        if ordered is None:
            rows = self.rows
            ordered = [rows[k] for k in self._row_locations.keys]
            self._ordered_row_cache[cache_key] = ordered
        return ordered

    @property
    def _y_offsets(self) -> Any:
        """``DataTable._y_offsets`` (each line's row and line in it): here every row is
        one line."""
        if not self._one_line_rows:
            return super()._y_offsets
        return _OneLineOffsets(self)

    @property
    def _total_row_height(self) -> int:
        return self.row_count if self._one_line_rows else super()._total_row_height

    def _get_row_region(self, row_index: int) -> Region:
        """``DataTable._get_row_region`` without summing the heights of the rows above."""
        if not self._one_line_rows or not self.is_valid_row_index(row_index):
            return super()._get_row_region(row_index)
        width = (sum(column.get_render_width(self) for column in self.columns.values())
                 + self._row_label_column_width)
        return Region(0, row_index + (self.header_height if self.show_header else 0),
                      max(self.size.width, width), 1)

    def _get_cell_region(self, coordinate: Coordinate) -> Region:
        """``DataTable._get_cell_region`` without summing the heights of the rows above."""
        if not self._one_line_rows or not self.is_valid_coordinate(coordinate):
            return super()._get_cell_region(coordinate)
        row_index, column_index = coordinate
        columns = self.ordered_columns
        x = (sum(column.get_render_width(self) for column in columns[:column_index])
             + self._row_label_column_width)
        return Region(x, row_index + (self.header_height if self.show_header else 0),
                      columns[column_index].get_render_width(self), 1)

    def _update_dimensions(self, new_rows: Iterable[RowKey]) -> None:
        """``DataTable._update_dimensions``, without measuring every new cell when each
        column has a set width, and without laying out the screen when only the number
        of rows changed: the stylesheet sets the table's height, so more or fewer rows
        change only how far it scrolls (each peer joining or leaving laid out the whole
        screen)."""
        rows = self.rows
        if (not self._plain_rows() or any(c.auto_width for c in self.columns.values())
                or any(rows[k].label is not None for k in new_rows if k in rows)):
            super()._update_dimensions(new_rows)  # measures the new rows' cells
            return
        size = Size(sum(self._column_widths()) + self._row_label_column_width,
                    self.row_count + (self.header_height if self.show_header else 0))
        if size == self.virtual_size:
            return
        height = self.styles.height
        if size.width != self.virtual_size.width or height is None or height.is_auto:
            self.virtual_size = size
            return
        self.set_reactive(Widget.virtual_size, size)
        self._scroll_update(size)
        self.refresh()

    def add_row(self, *cells: Cell, height: int | None = 1, key: str | None = None,
                label: TextType | None = None) -> RowKey:
        """``DataTable.add_row``; the row goes last until the next sort places it."""
        if key is None:
            key = f"\0row{next(self._versions)}"  # the order keeps keys by their string
        self._one_line_rows = self._one_line_rows and height == 1
        row_key = super().add_row(*cells, height=height, key=key, label=label)
        self._changed(row_key)
        self._added[key] = row_key
        self._unplaced[key] = None
        if self._key_column is not None:
            self._sort_keys[key] = _sort_key(self._data[row_key][self._key_column])
        return row_key

    def update_cell(self, row_key: RowKey | str, column_key: ColumnKey | str, value: Cell,
                    *, update_width: bool = False) -> None:
        super().update_cell(row_key, column_key, value, update_width=update_width)
        row_key = RowKey(row_key) if isinstance(row_key, str) else row_key
        self._changed(row_key)
        if self._key_column is not None and column_key == self._key_column:
            self._set_sort_key(row_key, value)

    def _set_sort_key(self, row_key: RowKey, value: Cell) -> None:
        sort_key = _sort_key(value)
        if self._sort_keys.get(row_key.value) != sort_key:
            self._sort_keys[row_key.value] = sort_key
            if row_key.value not in self._unplaced:
                self._sorted_as = None  # a placed row may be out of place now

    def clear(self, columns: bool = False) -> Self:
        self._sort_keys.clear()
        self._row_versions.clear()
        self._added.clear()
        self._unplaced.clear()
        self._sorted_as = None
        self._one_line_rows = True
        return super().clear(columns)

    def remove_row(self, row_key: RowKey | str) -> None:
        """``DataTable.remove_row``, through :meth:`remove_rows` (it keeps the order)."""
        self.remove_rows([_value(row_key)])

    def sort(self, *columns: ColumnKey | str, key: Callable[[Any], Any] | None = None,
             reverse: bool = False) -> Self:
        """``DataTable.sort``, keeping the order as this table keeps it."""
        super().sort(*columns, key=key, reverse=reverse)
        self._unplaced.clear()
        self._sorted_as = None
        return self

    def remove_rows(self, keys: Iterable[str], *,
                    then_sort: tuple[str, bool] | None = None) -> None:
        """Remove these rows (those present) in one pass over the table; with
        ``then_sort`` (column, reverse), sort in the same pass."""
        added = self._added
        gone = {k for k in keys if k in added}
        if not gone:
            if then_sort is not None:
                self.sort_by_column(then_sort[0], reverse=then_sort[1])
            return
        for value in gone:
            row_key = added.pop(value)
            for column_key in self._data[row_key]:
                self._updated_cells.discard(CellKey(row_key, column_key))
            del self.rows[row_key]
            del self._data[row_key]
            self._sort_keys.pop(value, None)
            self._unplaced.pop(value, None)
            self._row_versions.pop(row_key, None)
            self._new_rows.discard(row_key)
        order = self._row_locations
        order.keys = [k for k in order.keys if k.value not in gone]
        order.changed()
        if then_sort is not None:
            self._order_by(*then_sort)
        self._require_update_dimensions = True
        # Re-set only when off the end now: each set redraws the cell, which walks
        # every row's offset.
        if not self.is_valid_coordinate(self.cursor_coordinate):
            self.cursor_coordinate = self.cursor_coordinate
        if not self.is_valid_coordinate(self.hover_coordinate):
            self.hover_coordinate = self.hover_coordinate
        self._update_count += 1
        self.refresh()  # the idle pass resizes the table, laying out only if that changed
        self.check_idle()

    def redraw_cells(self, cells: Iterable[tuple[RowKey, str, Cell]]) -> None:
        """Set these cells and redraw only their places (``update_cell`` redraws the
        whole table: every visible line, written to the terminal again)."""
        places = []
        for row_key, column, value in cells:
            column_key = ColumnKey(column)
            self._data[row_key][column_key] = value
            self._changed(row_key)
            if column_key == self._key_column:
                self._set_sort_key(row_key, value)
            places.append((row_key, column_key))
        if not places:
            return
        self._update_count += 1  # the drawing caches are keyed by it
        for row_key, column_key in places:
            row_index = self._row_locations.get(row_key)
            if row_index is not None:
                self.refresh_coordinate(
                    Coordinate(row_index, self.get_column_index(column_key)))

    class Scrolled(Message):
        """Other rows are on screen now."""

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        if round(old_value) != round(new_value):
            self.post_message(self.Scrolled())

    def keys_on_screen(self) -> list[RowKey]:
        """The rows the table shows now (all one line high)."""
        first = max(0, round(self.scroll_y))
        return self._row_locations.keys[first:first + max(0, self.size.height)]

    def sort_by_column(self, column: str, *, reverse: bool) -> None:
        """``sort(column, key=_sort_key, reverse=reverse)``, from the kept keys."""
        self._order_by(column, reverse)
        self._update_count += 1
        self.refresh()

    def _order_by(self, column: str, reverse: bool) -> None:
        """Sort by ``column``: all rows when the sort or a placed row's sort key changed
        (or many rows are new), else only the new rows, each put in its place."""
        column_key = ColumnKey(column)
        order, added, sort_keys = self._row_locations, self._added, self._sort_keys
        if column_key != self._key_column:
            self._key_column = column_key
            data = self._data
            self._sort_keys = sort_keys = {value: _sort_key(data[row_key][column_key])
                                           for value, row_key in added.items()}
            self._sorted_as = None
        new = list(self._unplaced)
        self._unplaced.clear()
        keys = order.keys
        if (self._sorted_as != (column_key, reverse) or len(new) > max(16, len(added) // 32)
                or [k.value for k in keys[len(keys) - len(new):]] != new):
            order.keys = [added[v] for v in sorted(added, key=sort_keys.__getitem__,
                                                   reverse=reverse)]
            order.changed()
            self._sorted_as = (column_key, reverse)
            return
        if not new:
            return
        del keys[len(keys) - len(new):]  # added last, in this order
        for value in new:
            # After every row with the same sort key, as a stable sort of the rows in
            # the order they were added puts it.
            wanted, low, high = sort_keys[value], 0, len(keys)
            while low < high:
                middle = (low + high) // 2
                here = sort_keys[keys[middle].value]
                if (here < wanted) if reverse else (wanted < here):
                    high = middle
                else:
                    low = middle + 1
            keys.insert(low, added[value])
        order.changed()


class PanelView(Vertical):
    """A panel: its table, its title (count, sort, filter) and its empty state.

    Changes are noted per row (the latest wins) and applied together: on screen
    (``live``), once the burst of messages being handled is done; hidden, when the panel
    is shown (:meth:`catch_up`), so thousands of rows changing behind another panel cost
    nothing until they are seen.
    """

    def __init__(self, panel: Panel, model: ConsoleModel, clock: Callable[[], float],
                 *, live: bool = True, **kwargs: Any) -> None:
        super().__init__(id=f"panel-{panel.id}", classes="panel", **kwargs)
        self.panel = panel
        self.model = model
        self.clock = clock
        self.filter = ""
        self.sort_column = panel.sort
        self.descending = panel.descending
        self.live = live
        self._behind: dict[str, RowChange] = {}
        self._catching_up = False
        self._titles: tuple[str, str, str] | None = None

    def compose(self) -> ComposeResult:
        table = PanelTable(id=f"table-{self.panel.id}", cursor_type="row",
                           zebra_stripes=True)
        for column in self.panel.columns:
            table.add_column(self._label(column), key=column.key, width=column.width)
        yield table
        yield Static(self.panel.empty, classes="empty")

    def on_mount(self) -> None:
        self.update_title()

    @property
    def table(self) -> PanelTable:
        return self.query_one(PanelTable)

    # ------------------------------------------------------------------ rows

    def _cells(self, row: Row) -> list[Cell]:
        now, own = self.clock(), self.model.node_id
        return [cell(c, row.get(c.key), now=now, own=own) for c in self.panel.columns]

    def cursor_key(self) -> str | None:
        table = self.table
        if table.row_count == 0:
            return None
        try:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        except CellDoesNotExist:
            return None
        return None if key.value is None else str(key.value)

    def _anchor(self) -> str | None:
        """The row the cursor should stay on through a change (``None``: the top)."""
        return None if self.table.cursor_row == 0 else self.cursor_key()

    def _keep_cursor(self, key: str | None) -> None:
        """Keep the cursor on row ``key``; a cursor on the top row stays on top (it
        follows the head of the table, e.g. the newest receipt)."""
        table = self.table
        if key is not None and key in table.rows:
            index = table.get_row_index(key)
            if index != table.cursor_row:
                table.move_cursor(row=index, scroll=False)

    def apply(self, changes: Iterable[RowChange]) -> None:
        """Change, add and remove rows by key; re-sort if needed; keep the cursor. While
        the panel is hidden, only note the changes."""
        rows = self.table.rows
        for change in changes:
            if change.row is None and change.key not in rows:
                self._behind.pop(change.key, None)  # never shown: nothing to remove
            else:
                self._behind[change.key] = change
        if self.live and self._behind and not self._catching_up:
            # A burst of events (each its own message) is applied, and sorted, once.
            self._catching_up = True
            self.call_later(self.catch_up)

    @property
    def behind(self) -> bool:
        """Changes are waiting to reach the table."""
        return bool(self._behind)

    def show(self) -> None:
        """The panel is on screen: bring its table up to date and keep it so."""
        self.live = True
        self.catch_up()

    def hide(self) -> None:
        self.live = False

    def catch_up(self) -> None:
        """Apply the changes noted since the table was last current (the latest of each
        row)."""
        self._catching_up = False
        if self._behind:
            changes, self._behind = list(self._behind.values()), {}
            self._apply(changes)

    def _apply(self, changes: list[RowChange]) -> None:
        table = self.table
        keep = self._anchor()
        resort = False
        shown: list[tuple[str, Row]] = []
        gone: list[str] = []
        for change in changes:
            if change.row is None or not matches(self.panel, change.row, self.filter):
                gone.append(change.key)
            else:
                shown.append((change.key, change.row))
        for key, row in shown:
            present = key in table.rows
            cells = self._cells(row)
            if present:
                old = table.get_row(key)
                for column, before, after in zip(self.panel.columns, old, cells, strict=True):
                    if not after.same_as(before):
                        table.update_cell(key, column.key, after)
                        resort = resort or column.key == self.sort_column
            else:
                table.add_row(*cells, key=key)
                resort = True
        # One pass over the table for the removals and the sort together.
        table.remove_rows(gone, then_sort=(self.sort_column, self.descending) if resort
                          else None)
        self._keep_cursor(keep)
        self.update_title()

    def rebuild(self) -> None:
        """Show exactly the model's rows that pass the filter (after the filter changed)."""
        self.catch_up()
        table = self.table
        keep = self._anchor()
        rows = self.model.rows[self.panel.id]
        wanted = {k for k, r in rows.items() if matches(self.panel, r, self.filter)}
        shown = {str(k.value) for k in table.rows}
        table.remove_rows(shown - wanted)
        for key in wanted - shown:
            table.add_row(*self._cells(rows[key]), key=key)
        self._sort()
        self._keep_cursor(keep)
        self.update_title()

    def refresh_ages(self) -> None:
        """Re-render the "how long ago" cells of the rows on screen against the clock.

        Only those: at thousands of rows the rest cost the most and show nothing; a row
        scrolled into view is refreshed then (:class:`PanelTable.Scrolled`). Rows are
        sorted by the time behind an age, never by its text."""
        ages = [c for c in self.panel.columns if c.kind == "age"]
        if not ages:
            return
        now, own = self.clock(), self.model.node_id
        rows = self.model.rows[self.panel.id]
        table = self.table
        changed = []
        for row_key in table.keys_on_screen():
            row = rows.get(str(row_key.value))
            if row is None:
                continue
            for column in ages:
                after = cell(column, row.get(column.key), now=now, own=own)
                if not after.same_as(table.get_cell(row_key, column.key)):
                    changed.append((row_key, column.key, after))
        table.redraw_cells(changed)

    # ------------------------------------------------------------------ sort and filter

    def _sort(self) -> None:
        self.table.sort_by_column(self.sort_column, reverse=self.descending)

    def _label(self, column: Column) -> Text:
        if column.key != self.sort_column:
            return Text(column.label)
        return Text(column.label + ("▾" if self.descending else "▴"), style="bold")

    def sort_by(self, column_key: str) -> None:
        """Sort by ``column_key``; again on the same column reverses the order."""
        if column_key == self.sort_column:
            self.descending = not self.descending
        else:
            self.sort_column = column_key
            kind = next(c.kind for c in self.panel.columns if c.key == column_key)
            self.descending = kind in ("age", "int", "score", "ms", "credits", "price")
        keep = self._anchor()
        table = self.table
        for column in self.panel.columns:
            table.columns[_column_key(table, column.key)].label = self._label(column)
        table.refresh()
        self._sort()
        self._keep_cursor(keep)
        self.update_title()

    def cycle_sort(self) -> None:
        keys = [c.key for c in self.panel.columns]
        following = keys[(keys.index(self.sort_column) + 1) % len(keys)]
        self.sort_by(following)

    def set_filter(self, text: str) -> None:
        self.filter = text.strip()
        self.rebuild()

    @on(PanelTable.Scrolled)
    def _scrolled(self, event: PanelTable.Scrolled) -> None:
        event.stop()
        self.refresh_ages()

    @on(DataTable.HeaderSelected)
    def _header_clicked(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        if event.column_key.value is not None:
            self.sort_by(str(event.column_key.value))

    # ------------------------------------------------------------------ title

    def update_title(self) -> None:
        """The border: row count, filter, sort, and the ledger's totals."""
        table = self.table
        total = len(self.model.rows[self.panel.id])
        shown = table.row_count
        count = f"{shown}" if not self.filter else f"{shown} of {total}"
        title = f"{self.panel.title} · {count}"
        if self.filter:
            title += f" · filter: {self.filter}"
        sort_label = next(c.label for c in self.panel.columns if c.key == self.sort_column)
        subtitle = f"{self._summary()}sort: {sort_label} {'▾' if self.descending else '▴'}"
        if shown == 0 and self.filter:
            empty = f"nothing matches “{self.filter}” (Esc clears the filter)"
        else:
            empty = self.panel.empty
        # Static.update lays the screen out again even for the same text, so the empty
        # state is set only when its own text changes (not with each row count).
        before = self._titles
        if (title, subtitle, empty) != before:
            if before is None or empty != before[2]:
                self.query_one(".empty", Static).update(empty)
            self._titles = (title, subtitle, empty)
            self._set_border(title if before is None or title != before[0] else None,
                             subtitle if before is None or subtitle != before[1] else None)
        self.set_class(shown == 0, "-empty")

    def _set_border(self, title: str | None, subtitle: str | None) -> None:
        """Set the border's title and subtitle (``None``: unchanged), repainting only
        the border line each is on. Setting ``border_title`` repaints the whole panel,
        and the screen then composes every line of the table under it again: with the
        peers panel, once per burst, since each peer joining or leaving changes the
        count."""
        width, height = self.outer_size
        if not self.is_mounted or height < 2:
            if title is not None:
                self.border_title = title
            if subtitle is not None:
                self.border_subtitle = subtitle
            return
        left, top = self.content_offset  # refresh regions are in content coordinates
        if title is not None:
            # What the border_title descriptor stores.
            self._border_title = self.render_str(title).expand_tabs(4).split()[0]
            self.refresh(Region(-left, -top, width, 1))
        if subtitle is not None:
            self._border_subtitle = self.render_str(subtitle).expand_tabs(4).split()[0]
            self.refresh(Region(-left, height - 1 - top, width, 1))

    def _summary(self) -> str:
        if self.panel.id != "ledger" or not self.model.totals:
            return ""
        t = self.model.totals
        earned = -float(t.get("provided", 0) or 0)
        spent = float(t.get("consumed", 0) or 0)
        owed = float(t.get("outstanding", 0) or 0)
        return f"earned {earned:.2f} · spent {spent:.2f} · net {owed:+.2f} · "


def _column_key(table: DataTable[Any], key: str) -> Any:
    for column_key in table.columns:
        if column_key.value == key:
            return column_key
    raise KeyError(key)


