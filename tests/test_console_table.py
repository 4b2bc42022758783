"""Tables print at their natural width without being measured twice (#12: inspect's speed)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from reformer_tools import _console


def _table(rows: int, key_width: int) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("path", no_wrap=True, overflow="ignore")
    table.add_column("shape", no_wrap=True)
    table.add_column("bytes", justify="right", no_wrap=True)
    table.add_column("note", overflow="fold")
    for i in range(rows):
        table.add_row(f"weights[{i}]" + "x" * (i % key_width), f"({i}, {i + 1})", str(i * 4), "a few words " * (i % 3))
    return table


def _measured_way(table: Table, width: int) -> str:
    """What print_table printed before: measure the natural width, then print at max(terminal, natural)."""
    console = Console(file=io.StringIO(), width=width, highlight=False, soft_wrap=False)
    natural = Measurement.get(console, console.options.update(width=1_000_000), table).maximum
    console.width = max(width, natural)
    console.print(table, crop=False)
    assert isinstance(console.file, io.StringIO)
    return console.file.getvalue()


@pytest.mark.parametrize("width", [40, 80, 200])
@pytest.mark.parametrize(("rows", "key_width"), [(3, 5), (50, 120), (200, 300)])
def test_print_table_prints_what_measuring_first_printed(
    monkeypatch: pytest.MonkeyPatch, width: int, rows: int, key_width: int
) -> None:
    console = _console._Console(file=io.StringIO(), width=width, highlight=False, soft_wrap=False)
    monkeypatch.setattr(_console, "out", console)
    _console.print_table(_table(rows, key_width))
    assert isinstance(console.file, io.StringIO)
    assert console.file.getvalue() == _measured_way(_table(rows, key_width), width)
    assert console.width == width  # restored
