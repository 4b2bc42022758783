"""``reformer-tools verify``: does the checkpoint fit the config, and the output the checkpoint?"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import numpy as np
import numpy.typing as npt
from rich.table import Table

from reformer_tools._console import emit_json, note, out, sanitize
from reformer_tools.commands._options import (
    EXIT_CODES_HELP,
    checkpoint_argument,
    config_option,
    debug_option,
    gin_option,
    json_option,
    max_decompressed_option,
)
from reformer_tools.converted import open_converted
from reformer_tools.errors import ExitCode, UsageError
from reformer_tools.loader import Leaf, as_float32, load_checkpoint
from reformer_tools.resolve import resolve_spec
from reformer_tools.verification import VerifyReport, verify_checkpoint, verify_numerics


@click.command(epilog=EXIT_CODES_HELP)
@checkpoint_argument()
@click.argument("converted", required=False, type=click.Path(path_type=Path, exists=False), metavar="[CONVERTED]")
@config_option
@gin_option
@click.option(
    "--numerics", is_flag=True, help="Also run the converted model against a NumPy reference of Trax's forward pass."
)
@click.option("--atol", type=click.FloatRange(min=0), default=1e-4, show_default=True, help="--numerics tolerance.")
@click.option(
    "--input-ids",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="--numerics: a .npy of token ids (batch, length), as Trax would be fed (default: random, seeded).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="--numerics: seed for the ids and LSH hashing.")
@json_option
@max_decompressed_option
@debug_option
def verify(
    checkpoint: Path,
    converted: Path | None,
    config_path: Path | None,
    gin_path: Path | None,
    numerics: bool,
    atol: float,
    input_ids: Path | None,
    seed: int,
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

    With --numerics, the converted model (or, without CONVERTED, the mapped
    tensors in memory) runs as ReformerModelWithLMHead on a fixed batch of
    tokens, beside an independent NumPy implementation of Trax's ReformerLM
    that reads the checkpoint's arrays directly; log-probabilities must agree
    within --atol at every position. LSH layers hash with the rotations
    Hugging Face draws for a fixed hash_seed, fed to both sides.

    \b
    Examples:
      reformer-tools verify model.pkl.gz --config config.json
      reformer-tools verify model.pkl.gz reformer-hf/ --config config.json
      reformer-tools verify model.pkl.gz --config config.json --json
      reformer-tools verify model.pkl.gz reformer-hf/ --numerics
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
    float32_leaves: list[npt.NDArray[np.float32]] = []

    def keep_float32(leaf: Leaf, array: npt.NDArray[Any]) -> None:
        float32_leaves.append(as_float32(array, leaf.dtype))

    report = verify_checkpoint(
        loaded, resolved.spec, resolved.source, output, on_array=keep_float32 if numerics else None
    )
    if numerics:
        ids = _read_input_ids(input_ids) if input_ids is not None else None
        verify_numerics(report, float32_leaves, resolved.spec, converted, ids, atol=atol, seed=seed)
    if as_json:
        emit_json(report.to_json())
    else:
        _render(report)
    if not report.ok:
        raise click.exceptions.Exit(int(ExitCode.VERIFICATION_FAILED))


def _read_input_ids(path: Path) -> npt.NDArray[Any]:
    try:
        ids: npt.NDArray[Any] = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise UsageError(f"{path}: not a .npy array of token ids ({error})") from None
    return ids


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
    _render_numerics(report)
    if report.ok:
        checks = f"all {len(alignment.assignments)} arrays match the config and are finite"
        if report.converted is not None:
            checks += f"; all {len(report.converted.comparisons)} converted tensors equal their source"
        if report.numerics is not None:
            what = "log-probabilities" if report.numerics.complete else "hidden states"
            checks += f"; {what} agree within {report.numerics.atol:g}"
        out.print(f"[bold green]ok[/]: {checks}")
    else:
        out.print(
            f"[bold red]failed[/]: {len(alignment.mismatches)} shape mismatches, {len(alignment.missing)} missing, "
            f"{len(alignment.unused)} unused, {len(alignment.problems)} unsupported, "
            f"{len(report.failed_audits)} unhealthy arrays"
            + ("" if report.converted is None or report.converted.ok else ", converted output differs")
            + ("" if report.numerics is None or report.numerics.passed else ", numerics differ")
            + ("" if report.numerics_skipped is None else ", numerics not run")
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


def _render_numerics(report: VerifyReport) -> None:
    if report.numerics_skipped is not None:
        out.print(f"[red]numerics not run[/]: {report.numerics_skipped}")
        return
    numerics = report.numerics
    if numerics is None:
        return
    what = "log-probabilities" if numerics.complete else f"hidden states entering layer {numerics.layers_compared}"
    verdict = "[green]agree[/]" if numerics.passed else "[red]differ[/]"
    out.print(
        f"numerics: {what} {verdict} on {numerics.batch_size} x {numerics.sequence_length} tokens: "
        f"max abs diff {numerics.max_abs_diff:.3g} (tolerance {numerics.atol:g}) at position "
        f"{numerics.worst_position}, max rel diff {numerics.max_rel_diff:.3g}"
    )
    out.print(f"  {sanitize(numerics.lsh)}")
    for text in numerics.notes:
        out.print(f"  note: {sanitize(text)}")
