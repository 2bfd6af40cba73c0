"""The panel table's batch operations leave the table exactly as ``DataTable``'s own
``remove_row`` and ``sort`` would (they rebuild its private row index)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from textual.app import App, ComposeResult
from textual.widgets import DataTable
from textual.widgets.data_table import RowKey

from knarr.tui.widgets.panel import Cell, PanelTable, _sort_key

COLUMNS = ("name", "score")


class TwoTables(App[None]):
    def compose(self) -> ComposeResult:
        yield PanelTable(id="batch")
        yield DataTable(id="plain")


def fill(table: DataTable[Cell], rows: list[tuple[str, str, float | None]]) -> None:
    for column in COLUMNS:
        table.add_column(column, key=column)
    for key, name, score in rows:
        table.add_row(Cell(name, name), Cell(str(score), score), key=key)


def order(table: DataTable[Cell]) -> list[Any]:
    return [(row.key.value, *table.get_row(row.key)) for row in table.ordered_rows]


async def test_batch_removal_and_kept_sort_keys_match_datatable() -> None:
    rng = random.Random(7)
    rows = [(f"r{i}", rng.choice("abcde"), rng.choice([None, 1.0, 2.0, 2.5, 3.0]))
            for i in range(300)]
    app = TwoTables()
    async with app.run_test() as pilot:
        batch = app.query_one("#batch", PanelTable)
        plain: DataTable[Cell] = app.query_one("#plain", DataTable)
        fill(batch, rows)
        fill(plain, rows)
        for step in range(12):
            column, reverse = COLUMNS[step % 2], step % 3 == 0
            batch.sort_by_column(column, reverse=reverse)
            plain.sort(column, key=_sort_key, reverse=reverse)
            assert order(batch) == order(plain)  # ties keep the order rows were added in

            gone = rng.sample([str(r.key.value) for r in plain.ordered_rows], 20)
            batch.remove_rows([*gone, "never-there"],
                              then_sort=(column, reverse) if step % 2 else None)
            for key in gone:
                plain.remove_row(key)
            if step % 2:
                plain.sort(column, key=_sort_key, reverse=reverse)
            assert order(batch) == order(plain)
            assert [batch.get_row_index(r.key) for r in batch.ordered_rows] == list(
                range(batch.row_count))
            assert batch._y_offsets == plain._y_offsets

            changed = rng.sample([str(r.key.value) for r in plain.ordered_rows], 10)
            for key in changed:
                score = rng.choice([None, 0.5, 4.0])
                batch.update_cell(key, "score", Cell(str(score), score))
                plain.update_cell(key, "score", Cell(str(score), score))
            for i in range(5):
                key, name = f"n{step}-{i}", rng.choice("abcde")
                batch.add_row(Cell(name, name), Cell("1.0", 1.0), key=key)
                plain.add_row(Cell(name, name), Cell("1.0", 1.0), key=key)
        await pilot.pause()


async def test_cells_drawn_from_the_content_cache_match_datatable() -> None:
    app = TwoTables()
    async with app.run_test() as pilot:
        table = app.query_one("#batch", PanelTable)
        table.zebra_stripes = True
        fill(table, [(f"r{i}", "abc"[i % 3], [1.0, None, 2.5][i % 3]) for i in range(12)])
        table.add_row(Cell("left", "x", style="red"), Cell("7", 7, justify="right",
                                                           style="dim"), key="styled")
        table.sort_by_column("score", reverse=True)  # rows move: same content, new places
        table.move_cursor(row=3)
        await pilot.pause()
        for row_index in range(table.row_count):
            style = table._get_row_style(row_index, table.rich_style)
            for column_index in range(len(COLUMNS)):
                for cursor in (False, True):
                    args = (row_index, column_index, style, 9, cursor, False)
                    first = table._render_cell(*args)  # drawn, then kept by content
                    again = table._render_cell(*args)
                    assert again == first == DataTable._render_cell(table, *args)


async def test_keys_on_screen_follow_the_scroll() -> None:
    app = TwoTables()
    async with app.run_test(size=(40, 24)) as pilot:
        table = app.query_one("#batch", PanelTable)
        fill(table, [(f"r{i}", "a", float(i)) for i in range(100)])
        await pilot.pause()
        shown = table.keys_on_screen()
        assert shown[0].value == "r0" and 0 < len(shown) <= table.size.height
        table.scroll_to(y=50, animate=False)
        await pilot.pause()
        assert table.keys_on_screen()[0].value == "r50"


async def test_redrawn_cells_read_back_and_sort_like_updated_ones() -> None:
    app = TwoTables()
    async with app.run_test() as pilot:
        batch = app.query_one("#batch", PanelTable)
        plain: DataTable[Cell] = app.query_one("#plain", DataTable)
        rows = [(f"r{i}", "a", float(i)) for i in range(10)]
        fill(batch, rows)
        fill(plain, rows)
        batch.sort_by_column("score", reverse=False)
        batch.redraw_cells([(RowKey("r3"), "score", Cell("99", 99.0))])
        plain.update_cell("r3", "score", Cell("99", 99.0))
        batch.sort_by_column("score", reverse=False)
        plain.sort("score", key=_sort_key)
        assert order(batch) == order(plain)
        await pilot.pause()



class BesideDataTable(App[None]):
    """A panel table and Textual's own table, the same size, side by side."""

    def compose(self) -> ComposeResult:
        yield PanelTable(id="batch", cursor_type="row", zebra_stripes=True)
        yield DataTable(id="plain", cursor_type="row", zebra_stripes=True)

    CSS = "DataTable { height: 12; }"


@pytest.mark.parametrize("width", [None, 9])
async def test_lines_match_datatable_as_rows_shift(width: int | None) -> None:
    """Lines kept by row (and stamped again for the mouse when the row moved) are what
    ``DataTable`` draws, with set column widths (drawn here) and measured ones."""
    app = BesideDataTable()
    async with app.run_test(size=(60, 30)) as pilot:
        batch = app.query_one("#batch", PanelTable)
        plain: DataTable[Cell] = app.query_one("#plain", DataTable)
        for table in (batch, plain):
            for column in COLUMNS:
                table.add_column(column, key=column, width=width)
        app.set_focus(None)

        def add(key: str, name: Cell, score: Cell) -> None:
            batch.add_row(name, score, key=key)
            plain.add_row(name, score, key=key)

        def sort(column: str) -> None:
            reverse = column == "score"
            batch.sort_by_column(column, reverse=reverse)
            plain.sort(column, key=_sort_key, reverse=reverse)

        async def lines_match() -> None:
            await pilot.pause()
            assert batch.size == plain.size and batch.virtual_size == plain.virtual_size
            for table in (batch, plain):
                table._pseudo_class_state = table.get_pseudo_class_state()
            for y in range(batch.size.height):
                drawn = batch._render_line(y, 0, batch.size.width, batch.rich_style)
                assert list(drawn) == list(plain._render_line(y, 0, plain.size.width,
                                                              plain.rich_style))

        for i in range(20):
            add(f"r{i}", Cell("abc"[i % 3], "abc"[i % 3]), Cell(str(i), float(i)))
        sort("score")
        await lines_match()
        for i in range(20, 25):  # rows arrive on top, moving every row down
            add(f"r{i}", Cell("new", "new", style="red"),
                Cell(str(i), float(i), justify="right", style="dim"))
            sort("score")
            await lines_match()
        for table in (batch, plain):
            table.update_cell("r10", "name", Cell("changed", "changed"))
            table.move_cursor(row=4)
            table.hover_coordinate = table.cursor_coordinate
        await lines_match()
        batch.remove_rows(["r24", "r23", "r0"])
        for key in ("r24", "r23", "r0"):
            plain.remove_row(key)
        await lines_match()
        sort("name")
        await lines_match()


@pytest.mark.parametrize("reverse", [False, True])
async def test_new_rows_placed_one_by_one_match_a_full_sort(reverse: bool) -> None:
    """A few rows added between sorts are each put in place (after their ties) instead
    of sorting the table again: the order is the one ``DataTable.sort`` makes."""
    rng = random.Random(11)
    app = TwoTables()
    async with app.run_test() as pilot:
        batch = app.query_one("#batch", PanelTable)
        plain: DataTable[Cell] = app.query_one("#plain", DataTable)
        rows = [(f"r{i}", "a", rng.choice([None, 1.0, 2.0, 3.0])) for i in range(200)]
        fill(batch, rows)
        fill(plain, rows)
        for step in range(30):
            batch.sort_by_column("score", reverse=reverse)
            plain.sort("score", key=_sort_key, reverse=reverse)
            assert order(batch) == order(plain)
            for i in range(rng.randint(0, 6)):
                score = rng.choice([None, 0.5, 1.0, 2.0, 3.0, 9.0])
                cells = (Cell("b", "b"), Cell(str(score), score))
                batch.add_row(*cells, key=f"n{step}-{i}")
                plain.add_row(*cells, key=f"n{step}-{i}")
            gone = rng.sample([str(r.key.value) for r in plain.ordered_rows], 3)
            batch.remove_rows(gone)
            for key in gone:
                plain.remove_row(key)
        await pilot.pause()
