"""Output streams: results on stdout, everything else on stderr; untrusted text escaped."""

from __future__ import annotations

import json
import math
import os
import sys
from typing import TYPE_CHECKING, Any, Final

import click
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from reformer_tools.untrusted import printable

if TYPE_CHECKING:
    from reformer_tools.mapper import Alignment

# No ``file=``: rich resolves sys.stdout/sys.stderr on each write, which lets
# click's CliRunner capture both streams.
# Piped output is not wrapped at 80 columns: tables of long keys stay one row each.
_PIPE_WIDTH = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 200


class _Console(Console):
    def on_broken_pipe(self) -> None:
        # rich would exit with 1 ("verification failed" here); the command line says how the run ended.
        raise BrokenPipeError


out = _Console(highlight=False, soft_wrap=False, width=_PIPE_WIDTH)
err = _Console(stderr=True, highlight=False)


def sanitize(text: str, limit: int = 300) -> str:
    """Make text from a checkpoint safe for a terminal: no control characters, no markup."""
    return escape(printable(text, limit))


def error(message: str) -> None:
    """One line on stderr."""
    err.print(f"[bold red]error:[/] {sanitize(message, 2000)}", soft_wrap=True)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {sanitize(message, 2000)}", soft_wrap=True)


def note(message: str) -> None:
    err.print(f"[dim]{sanitize(message, 2000)}[/]", soft_wrap=True)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def emit_json(payload: dict[str, Any]) -> None:
    """Print one JSON document on stdout and nothing else."""
    document = {"schema_version": 1, **payload}
    click.echo(json.dumps(_json_safe(document), indent=2, allow_nan=False))


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


_UNBOUNDED: Final = 1_000_000  # columns: wider than any table


def print_table(table: Table) -> None:
    """A table at its natural width, even past the terminal's: a key or path cut short cannot be copied."""
    # A table that does not expand renders at its natural width when given room for it: measuring it
    # first (as long as rendering it, for thousands of rows) only to set that width is not needed.
    width = out.width
    if table.expand:
        out.width = max(width, Measurement.get(out, out.options.update(width=_UNBOUNDED), table).maximum)
    else:
        out.width = _UNBOUNDED
    try:
        out.print(table, crop=False)
    finally:
        out.width = width


def render_problems(alignment: Alignment) -> None:
    """Every way a checkpoint disagrees with its config, as one table plus named unsupported layouts."""
    if alignment.mismatches or alignment.missing or alignment.unused:
        table = Table(box=None, pad_edge=False, header_style="bold")
        for column in ("problem", "Hugging Face key", "Trax path", "expected", "actual"):
            wide = column in ("Hugging Face key", "Trax path")
            table.add_column(column, no_wrap=wide, overflow="ignore" if wide else "fold")
        for m in alignment.mismatches:
            table.add_row("[red]shape[/]", m.hf_key, sanitize(m.trax_path), str(m.expected), str(m.actual))
        for slot in alignment.missing:
            table.add_row("[red]missing[/]", slot.hf_key, "-", str(slot.source_shape), "-")
        for leaf in alignment.unused:
            table.add_row("[red]unused[/]", "-", sanitize(leaf.path), "-", str(leaf.shape))
        print_table(table)
    for problem in alignment.problems:
        out.print(f"[bold red]unsupported:[/] {sanitize(problem)}")
    for text in alignment.notes:
        out.print(f"note: {sanitize(text)}")
