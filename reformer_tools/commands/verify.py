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
from reformer_tools.converted import open_converted
from reformer_tools.errors import ExitCode
from reformer_tools.loader import load_checkpoint
from reformer_tools.resolve import resolve_spec
from reformer_tools.verification import VerifyReport, verify_checkpoint


@click.command(epilog=EXIT_CODES_HELP)
@checkpoint_argument()
@click.argument("converted", required=False, type=click.Path(path_type=Path, exists=False), metavar="[CONVERTED]")
@config_option
@click.option("--gin", "gin_path", type=click.Path(path_type=Path, dir_okay=False), help="A config.gin to read.")
@json_option
@max_decompressed_option
@debug_option
def verify(
    checkpoint: Path,
    converted: Path | None,
    config_path: Path | None,
    gin_path: Path | None,
    as_json: bool,
    max_decompressed: int | None,
) -> None:
    """Check a checkpoint against its config, and a converted model against both.

    Reports in one go: every shape mismatch, every Hugging Face tensor with no
    array and every array with no tensor; layouts Hugging Face's Reformer cannot
    represent; arrays holding NaN or Inf, and all-zero weights. Given CONVERTED
    (a model directory, .safetensors or .bin), every tensor in it is compared
    with its source array value by value, and its config.json with the weights
    and with --config (without --config, a directory's own config.json is used).
    Exit code 1 if anything fails.

    \b
    Examples:
      reformer-tools verify model.pkl.gz --config config.json
      reformer-tools verify model.pkl.gz reformer-hf/ --config config.json
      reformer-tools verify model.pkl.gz --config config.json --json
    """
    loaded = load_checkpoint(checkpoint, max_decompressed=max_decompressed)
    output = open_converted(converted) if converted is not None else None
    if config_path is None and output is not None and output.config is not None:
        # The converted model runs with its own config.json: verify against exactly that.
        config_path = output.path / "config.json"
    resolved = resolve_spec(loaded, config_path, gin_path, required=True)
    assert resolved is not None
    for message in resolved.messages:
        note(message)
    report = verify_checkpoint(loaded, resolved.spec, resolved.source, output)
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
    _render_audits(report)
    if report.converted is not None:
        _render_converted(report)
    if report.ok:
        checks = f"all {len(alignment.assignments)} arrays match the config and are finite"
        if report.converted is not None:
            checks += f"; all {len(report.converted.comparisons)} converted tensors equal their source"
        out.print(f"[bold green]ok[/]: {checks}")
    else:
        out.print(
            f"[bold red]failed[/]: {len(alignment.mismatches)} shape mismatches, {len(alignment.missing)} missing, "
            f"{len(alignment.unused)} unused, {len(alignment.problems)} unsupported, "
            f"{len(report.failed_audits)} unhealthy arrays"
            + ("" if report.converted is None or report.converted.ok else ", converted output differs")
        )


def _render_audits(report: VerifyReport) -> None:
    dtypes = sorted({audit.dtype for audit in report.audits})
    out.print(f"arrays: {len(report.audits)}, dtype {', '.join(dtypes)}")
    for audit in report.audits:
        where = sanitize(audit.path) + (f" ({audit.hf_key})" if audit.hf_key else "")
        if audit.nan or audit.inf:
            out.print(f"  [red]non-finite[/] {where}: {audit.nan} NaN, {audit.inf} Inf")
        if audit.all_zero:
            verdict = "[red]all zero[/]" if audit.zero_is_suspicious else "all zero (a bias; normal before training)"
            out.print(f"  {verdict} {where}")


def _render_converted(report: VerifyReport) -> None:
    converted = report.converted
    assert converted is not None
    equal = sum(c.status == "equal" for c in converted.comparisons)
    out.print(f"converted model {sanitize(converted.path)}: {equal} of {len(converted.comparisons)} tensors equal")
    for comparison in converted.comparisons:
        if comparison.status != "equal":
            diff = "" if comparison.max_abs_diff is None else f", max abs diff {comparison.max_abs_diff:.3g}"
            detail = f" ({comparison.detail})" if comparison.detail else ""
            out.print(
                f"  [red]{comparison.status}[/] {comparison.hf_key} <- {sanitize(comparison.trax_path)}{diff}{detail}"
            )
    for key in converted.unexpected:
        out.print(f"  [red]unexpected[/] {sanitize(key)}")
    for problem in converted.config_problems:
        out.print(f"  [red]config[/] {sanitize(problem)}")
    for difference in converted.config_differences:
        out.print(f"  config differs: {sanitize(difference)}")
