"""``reformer-tools verify``: does the checkpoint fit the config, and the output the checkpoint?"""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from reformer_tools._console import emit_json, note, out, sanitize
from reformer_tools.commands._options import (
    EXIT_CODES_HELP,
    checkpoint_argument,
    config_option,
    debug_option,
    json_option,
    max_decompressed_option,
)
from reformer_tools.errors import ExitCode
from reformer_tools.loader import load_checkpoint
from reformer_tools.resolve import resolve_spec
from reformer_tools.verification import VerifyReport, verify_checkpoint


@click.command(epilog=EXIT_CODES_HELP)
@checkpoint_argument()
@config_option
@click.option("--gin", "gin_path", type=click.Path(path_type=Path, dir_okay=False), help="A config.gin to read.")
@json_option
@max_decompressed_option
@debug_option
def verify(
    checkpoint: Path, config_path: Path | None, gin_path: Path | None, as_json: bool, max_decompressed: int | None
) -> None:
    """Check every array of a checkpoint against a config, all at once.

    Reports every shape mismatch, every Hugging Face tensor with no array and
    every array with no tensor in one table, and names layouts Hugging Face's
    Reformer cannot represent. Exit code 1 if anything disagrees.

    \b
    Examples:
      reformer-tools verify model.pkl.gz --config config.json
      reformer-tools verify model.pkl.gz --config config.json --json
    """
    loaded = load_checkpoint(checkpoint, max_decompressed=max_decompressed)
    resolved = resolve_spec(loaded, config_path, gin_path, required=True)
    assert resolved is not None
    for message in resolved.messages:
        note(message)
    report = verify_checkpoint(loaded, resolved.spec, resolved.source)
    if as_json:
        emit_json(report.to_json())
    else:
        _render(report)
    if not report.ok:
        raise click.exceptions.Exit(int(ExitCode.VERIFICATION_FAILED))


def _render(report: VerifyReport) -> None:
    alignment = report.alignment
    out.print(f"[bold]{sanitize(report.checkpoint)}[/] against {sanitize(report.config_source)}")
    if alignment.mismatches or alignment.missing or alignment.unused:
        table = Table(box=None, pad_edge=False, header_style="bold")
        for column in ("problem", "Hugging Face key", "Trax path", "expected", "actual"):
            table.add_column(column, overflow="fold")
        for m in alignment.mismatches:
            table.add_row("[red]shape[/]", m.hf_key, sanitize(m.trax_path), str(m.expected), str(m.actual))
        for slot in alignment.missing:
            table.add_row("[red]missing[/]", slot.hf_key, "-", str(slot.source_shape), "-")
        for leaf in alignment.unused:
            table.add_row("[red]unused[/]", "-", sanitize(leaf.path), "-", str(leaf.shape))
        out.print(table)
    for problem in alignment.problems:
        out.print(f"[bold red]unsupported:[/] {sanitize(problem)}")
    for text in alignment.notes:
        out.print(f"note: {sanitize(text)}")
    if report.ok:
        out.print(
            f"[bold green]ok[/]: all {len(alignment.assignments)} arrays match the config "
            f"({report.tensor_count} Hugging Face tensors)"
        )
    else:
        out.print(
            f"[bold red]failed[/]: {len(alignment.mismatches)} shape mismatches, {len(alignment.missing)} missing, "
            f"{len(alignment.unused)} unused, {len(alignment.problems)} unsupported"
        )
