"""``reformer-tools verify``: does the checkpoint fit the config, and the output the checkpoint?"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from reformer_tools.commands._common import EXIT_CODES_HELP, CommonOptions, common_options, load, resolve

if TYPE_CHECKING:
    import numpy.typing as npt

    from reformer_tools.verification import VerifyReport


@click.command(epilog=EXIT_CODES_HELP, short_help="Check a checkpoint against its config, and an output against both.")
@common_options()
@click.argument("converted", required=False, type=click.Path(path_type=Path, exists=False), metavar="[CONVERTED]")
@click.option(
    "--numerics", is_flag=True, help="Also run the converted model against a NumPy reference of Trax's forward pass."
)
@click.option(
    "--atol",
    type=click.FloatRange(min=0),
    help="--numerics tolerance on log-probabilities (default: 1e-4; 16-bit weights are rounded alike for both sides).",
)
@click.option(
    "--input-ids",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="--numerics: a .npy of token ids (batch, length), as Trax would be fed (default: random, seeded).",
)
@click.option("--seed", type=int, help="--numerics: seed for the ids and LSH hashing (default: fixed, reported).")
@click.option(
    "--text",
    "text_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also check the converted tokenizer on this UTF-8 file: each line, and the whole file.",
)
def verify(
    common: CommonOptions,
    converted: Path | None,
    numerics: bool,
    atol: float | None,
    input_ids: Path | None,
    seed: int | None,
    text_file: Path | None,
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
    within --atol at every position. That proves the conversion computes what
    Trax computes *for this config*: values the config only assumed (reported)
    cannot be proved by any check on the weights. LSH layers hash with the
    rotations Hugging Face draws for a fixed hash_seed, fed to both sides.

    A converted directory's tokenizer is checked against an independent
    implementation of Trax's encoder (the vocabulary it was written from, or
    --vocab) on a built-in sample of texts and on --text: ids and decoding must
    be Trax's, except where a documented divergence predicts otherwise.

    \b
    Examples:
      reformer-tools verify model.pkl.gz --config config.json
      reformer-tools verify model.pkl.gz reformer-hf/ --config config.json
      reformer-tools verify model.pkl.gz --config config.json --json
      reformer-tools verify model.pkl.gz reformer-hf/ --numerics
    """
    from reformer_tools.converted import open_converted
    from reformer_tools.errors import UsageError
    from reformer_tools.verification import read_texts, verify_conversion

    assert common.checkpoint is not None
    needs_numerics = [
        name for name, value in (("--atol", atol), ("--input-ids", input_ids), ("--seed", seed)) if value is not None
    ]
    if needs_numerics and not numerics:
        raise UsageError(f"{', '.join(needs_numerics)} only apply to --numerics: add --numerics or leave them out")
    if text_file is not None and (converted is None or not converted.is_dir()):
        raise UsageError("--text checks a converted model directory's tokenizer: give CONVERTED, a directory")
    ids = _read_input_ids(input_ids) if input_ids is not None else None
    texts = read_texts(text_file) if text_file is not None else []
    checkpoint = load(common, common.checkpoint)
    output = open_converted(converted) if converted is not None else None
    own_sources = None
    if common.config_path is None and output is not None and output.config is not None:
        # The converted model runs with its own config.json: verify against exactly that, and that against
        # what the checkpoint's own sources (weights, config.gin, --set, Trax's defaults) say.
        from dataclasses import replace

        own_sources = common.sources()
        common = replace(common, config_path=output.path / "config.json")
    resolved = resolve(common, checkpoint, complete=numerics)
    assert resolved is not None
    if ids is not None and input_ids is not None:
        _check_ids(input_ids, ids, resolved.spec)
    report = verify_conversion(
        checkpoint,
        resolved,
        output,
        numerics=numerics,
        input_ids=ids,
        atol=atol,
        seed=seed,
        texts=texts,
        vocabulary=resolved.vocabulary.vocabulary if resolved.vocabulary is not None else None,
        own_sources=own_sources,
    )
    if common.as_json:
        from reformer_tools._console import emit_json

        emit_json(report.to_json())
    else:
        _render(report)
    if not report.ok:
        from reformer_tools.errors import ExitCode

        raise click.exceptions.Exit(int(ExitCode.VERIFICATION_FAILED))


def _read_input_ids(path: Path) -> npt.NDArray[Any]:
    import numpy as np

    from reformer_tools.errors import UsageError

    try:
        ids: npt.NDArray[Any] = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        raise UsageError(f"{path}: --input-ids must be a .npy file of integer token ids") from None
    if not isinstance(ids, np.ndarray) or ids.dtype.kind not in "iu" or ids.ndim not in (1, 2) or ids.size == 0:
        shown = f"{ids.dtype} {list(ids.shape)}" if isinstance(ids, np.ndarray) else type(ids).__name__
        raise UsageError(f"{path}: --input-ids must hold a non-empty (batch, length) integer array, not {shown}")
    return ids


def _check_ids(path: Path, ids: npt.NDArray[Any], spec: Any) -> None:
    from reformer_tools.errors import UsageError
    from reformer_tools.numerics import check_input_ids

    try:
        check_input_ids(spec, ids)
    except UsageError as error:
        raise UsageError(f"{path}: {error}") from None


def _render(report: VerifyReport) -> None:
    from reformer_tools._console import out, render_problems, sanitize

    alignment = report.alignment
    out.print(f"[bold]{sanitize(report.checkpoint)}[/] against {sanitize(report.config_source)}")
    render_problems(alignment)
    _render_sources(report)
    _render_audits(report)
    if report.converted is not None:
        _render_converted(report)
    _render_numerics(report)
    _render_tokenizer(report)
    if report.ok:
        checks = f"all {len(alignment.assignments)} arrays match the config and are finite"
        if report.converted is not None:
            checks += f"; all {len(report.converted.comparisons)} converted tensors equal their source"
        if report.numerics is not None:
            what = "log-probabilities" if report.numerics.complete else "hidden states"
            checks += f"; {what} agree within {report.numerics.atol:g}"
        out.print(f"[bold green]ok[/]: {checks}")
    else:
        out.print(f"[bold red]failed[/]: {sanitize(', '.join(report.failures()))}")


def _render_sources(report: VerifyReport) -> None:
    from reformer_tools._console import out, sanitize

    check = report.sources
    if check is None:
        return
    if check.refused is not None:
        out.print(f"  [red]config[/] the checkpoint's own sources: {sanitize(check.refused)}")
    elif check.not_resolved is not None:
        out.print(
            f"  note: the checkpoint's own config could not be resolved ({sanitize(check.not_resolved)}); "
            f"{sanitize(check.verified_from)} was verified as it is"
        )
    for difference in check.conflicts:
        out.print(f"  [red]config[/] {sanitize(difference.message(check.verified_from))}")
    for difference in check.warnings:
        out.print(f"  [yellow]warning[/]: {sanitize(difference.message(check.verified_from))}")


def _render_audits(report: VerifyReport) -> None:
    from reformer_tools._console import out, sanitize

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
    from reformer_tools._console import out, sanitize

    converted = report.converted
    assert converted is not None
    equal = sum(c.status == "equal" for c in converted.comparisons)
    cast = converted.equal_after_cast
    after = "; ".join(f"{n} after a cast to {dtype}, as the output declares" for dtype, n in sorted(cast.items()))
    out.print(
        f"converted model {sanitize(converted.path)}: {equal} of {len(converted.comparisons)} tensors equal"
        + (f" ({after})" if after else "")
    )
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
    from reformer_tools._console import out, sanitize

    if report.numerics_skipped is not None:
        out.print(f"[red]numerics not run[/]: {report.numerics_skipped}")
        return
    numerics = report.numerics
    if numerics is None:
        return
    what = "log-probabilities" if numerics.complete else f"hidden states entering layer {numerics.layers_compared}"
    verdict = "[green]agree[/]" if numerics.ok else "[red]differ[/]"
    out.print(
        f"numerics: {what} {verdict} on {numerics.batch_size} x {numerics.sequence_length} tokens: "
        f"max abs diff {numerics.max_abs_diff:.3g} (tolerance {numerics.atol:g} for {numerics.weights_dtype} "
        f"weights) at position {numerics.worst_position}, max rel diff {numerics.max_rel_diff:.3g}"
    )
    out.print(f"  {sanitize(numerics.lsh)}")
    for text in numerics.notes:
        out.print(f"  note: {sanitize(text)}")
    if numerics.ok:
        out.print(f"  proved: {sanitize(numerics.proved)}")


def _render_tokenizer(report: VerifyReport) -> None:
    from reformer_tools._console import out, sanitize

    if report.tokenizer_skipped is not None:
        out.print(f"tokenizer not checked: {sanitize(report.tokenizer_skipped)}")
        return
    check = report.tokenizer
    if check is None:
        return
    if check.load_error is not None:
        out.print(f"[red]tokenizer does not load[/]: {sanitize(check.load_error)}")
        return
    verdict = "[green]as Trax[/]" if check.ok else "[red]differs from Trax[/]"
    out.print(
        f"tokenizer ({check.vocab_type}) {verdict}: {check.ids_equal} of {check.texts} texts give Trax's ids, "
        f"{check.decodings_equal} decode as Trax decodes"
    )
    if check.not_compared:
        out.print(
            f"  {check.not_compared} texts not compared: they differ where a documented divergence of this "
            f"vocabulary has no exact prediction ({sanitize(check.not_compared_reason or '')})"
        )
    if check.documented:
        out.print(
            f"  {check.documented} texts differ as documented for this vocabulary "
            f"({sanitize(check.documented_reason or '')})"
        )
    if check.first_id_mismatch is not None:
        what = " than its documented divergence predicts" if check.predicted_ids is not None else ""
        out.print(f"  first text with other ids{what}: {sanitize(repr(check.first_id_mismatch), 200)}")
    if check.first_decoding_mismatch is not None:
        out.print(f"  first text decoded otherwise: {sanitize(repr(check.first_decoding_mismatch), 200)}")
    if check.first_start_mismatch is not None:
        out.print(
            f"  with special tokens, {check.texts - check.starts_with_zero} texts do not start with id 0 (Trax's "
            f"ReformerLM feeds 0 first), the first: {sanitize(repr(check.first_start_mismatch), 200)}"
        )
