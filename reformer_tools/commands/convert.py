"""``reformer-tools convert``: a checkpoint to a Hugging Face directory, .safetensors or .bin."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from reformer_tools.commands._common import EXIT_CODES_HELP, CommonOptions, common_options, load, report_resolution

if TYPE_CHECKING:
    from reformer_tools.convert import Conversion, ConversionOptions, DryRun, ProgressCallback
    from reformer_tools.resolve import ResolvedConfig

# dtypes.OUTPUT_DTYPES, spelled out so that `--help` does not import numpy (a test keeps them equal).
OUTPUT_DTYPES = ("float32", "float16", "bfloat16")


def _pick(name: str, new: Any, legacy: Any, legacy_name: str) -> Any:
    if new is not None and legacy is not None and new != legacy:
        from reformer_tools.errors import UsageError

        raise UsageError(f"{name} and {legacy_name} disagree; give one of them")
    return new if new is not None else legacy


@click.command(epilog=EXIT_CODES_HELP, short_help="Convert a checkpoint for ReformerModelWithLMHead.")
@common_options(checkpoint_required=False)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="OUT.bin: torch state_dict; OUT.safetensors: one file; anything else: a model directory.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace OUT if it exists: a file, or a directory holding only a previous conversion's files.",
)
@click.option("--dtype", type=click.Choice(OUTPUT_DTYPES), help="Cast the weights (default: keep the source dtype).")
@click.option(
    "--max-shard-size", metavar="SIZE", help="Split model.safetensors into shards of at most SIZE (e.g. 2GB)."
)
@click.option("--dry-run", is_flag=True, help="Print the full plan and write nothing.")
@click.option(
    "--verify",
    "verify_output",
    is_flag=True,
    help="Check OUT as `verify --numerics` does before putting it in place; write nothing if it differs.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no notes on stderr (warnings still show).")
@click.option("--trax_model_pkl_path", "legacy_checkpoint", type=click.Path(path_type=Path), help="Legacy: CKPT.")
@click.option("--config_file", "legacy_config", type=click.Path(path_type=Path), help="Legacy: --config.")
@click.option(
    "--pytorch_dump_path",
    "legacy_output",
    type=click.Path(path_type=Path),
    help="Legacy: a torch.save state_dict file at this path, as the old script wrote.",
)
def convert(
    common: CommonOptions,
    output: Path | None,
    force: bool,
    dtype: str | None,
    max_shard_size: str | None,
    dry_run: bool,
    verify_output: bool,
    quiet: bool,
    legacy_checkpoint: Path | None,
    legacy_config: Path | None,
    legacy_output: Path | None,
) -> None:
    """Convert a Trax Reformer checkpoint for ReformerModelWithLMHead.

    The output is written all at once or not at all. A directory gets config.json
    and model.safetensors (sharded with an index when --max-shard-size is given)
    and loads with ReformerModelWithLMHead.from_pretrained(OUT). Without --config,
    the config comes from the shapes and config.gin (see `inspect`); every value
    neither shows takes Trax's default for the checkpoint's release and is
    reported as assumed (stderr, --json, and the output's config.json and
    metadata); where Trax's releases disagree on a value, convert stops and names
    it: give it with --set KEY=VALUE, --gin or --config.

    The flags of Hugging Face's old convert_reformer_trax_checkpoint_to_pytorch.py
    (--trax_model_pkl_path, --config_file, --pytorch_dump_path) are accepted and
    write what it wrote: a torch.save state_dict at --pytorch_dump_path.

    With --verify, the finished output is checked before it is put in place,
    against a second read of the checkpoint: every tensor read back and compared,
    the model run beside an independent NumPy implementation of Trax's ReformerLM,
    a directory's tokenizer against Trax's encoder. If anything differs, nothing
    is written (exit 1); otherwise the model card records the figures.

    \b
    Examples:
      reformer-tools convert model.pkl.gz --config config.json -o reformer-hf/
      reformer-tools convert model.pkl.gz -o reformer-hf/ --set num_buckets=64
      reformer-tools convert model.pkl.gz --config config.json -o model.safetensors --dtype bfloat16
      reformer-tools convert model.pkl.gz -o reformer-hf/ --dry-run
      reformer-tools convert model.pkl.gz -o reformer-hf/ --verify
    """
    from reformer_tools.convert import ConversionOptions, convert_checkpoint
    from reformer_tools.errors import UsageError
    from reformer_tools.sizes import parse_size

    source = _pick("CKPT", common.checkpoint, legacy_checkpoint, "--trax_model_pkl_path")
    config_path = _pick("--config", common.config_path, legacy_config, "--config_file")
    target = _pick("--output", output, legacy_output, "--pytorch_dump_path")
    if source is None:
        raise UsageError("missing the checkpoint: give CKPT (or --trax_model_pkl_path)")
    if target is None:
        raise UsageError("missing the output: give -o OUT (or --pytorch_dump_path)")
    if dry_run and verify_output:
        raise UsageError("--verify checks what is written, and --dry-run writes nothing: give one of them")
    sources = replace(common.sources(), config_path=config_path)
    progress = _progress(enabled=not quiet and not common.as_json and not dry_run and _stderr_is_terminal())
    with progress as on_progress:
        options = ConversionOptions(
            dtype=dtype,
            max_shard_size=parse_size(max_shard_size) if max_shard_size is not None else None,
            force=force,
            max_decompressed=common.max_decompressed,
            legacy_bin=legacy_output is not None and output is None,
            verify=verify_output,
            on_progress=on_progress,
        )
        if dry_run:
            checkpoint = load(common, source)
            resolved = sources.resolve(checkpoint)
            report_resolution(resolved, quiet=quiet)
            _dry_run(checkpoint, resolved, target, options, common.as_json)
            return
        conversion = convert_checkpoint(source, target, sources, options)
    report_resolution(conversion.resolved, quiet=quiet)
    _show_result(conversion, common.as_json)


def _stderr_is_terminal() -> bool:
    from reformer_tools._console import stderr_is_terminal

    return stderr_is_terminal()


@contextmanager
def _progress(*, enabled: bool) -> Iterator[ProgressCallback | None]:
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from reformer_tools._console import err, sanitize
    from reformer_tools.sizes import format_size

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[written]}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task("converting", total=None, written="")

        def update(event: Any) -> None:
            progress.update(
                task,
                total=event.tensors_total,
                completed=event.tensors_done,
                description=sanitize(event.key, 60),
                written=format_size(event.bytes_done),
            )

        yield update


def _dry_run(
    checkpoint: Any, resolved: ResolvedConfig, output: Path, options: ConversionOptions, as_json: bool
) -> None:
    from reformer_tools.convert import dry_run

    planned = dry_run(checkpoint, resolved, output, options)
    if as_json:
        from reformer_tools._console import emit_json

        emit_json(planned.to_json(checkpoint, resolved, output))
    else:
        _show_plan(planned, output)
    if planned.refusal is not None:
        raise click.exceptions.Exit(int(planned.refusal.exit_code))


def _show_plan(planned: DryRun, output: Path) -> None:
    from rich.table import Table

    from reformer_tools._console import out, print_table, sanitize
    from reformer_tools.sizes import format_size

    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("Trax path", "Hugging Face key", "transform", "shape", "dtype", "bytes"):
        wide = column in ("Trax path", "Hugging Face key")
        table.add_column(
            column,
            no_wrap=wide,
            overflow="ignore" if wide else "fold",
            justify="right" if column == "bytes" else "left",
        )
    plan = planned.plan
    for t in plan.tensors:
        shapes = f"{tuple(t.source_shapes[0])} -> {tuple(t.target_shape)}"
        table.add_row(
            sanitize(t.trax_path or "?"), t.hf_key, t.transform, shapes, t.dtype or "?", format_size(t.nbytes)
        )
    print_table(table)
    files = ", ".join(f"{name} ({format_size(size)})" for name, size in planned.files)
    where = f"{sanitize(str(output))} ({plan.kind.value})"
    if planned.refusal is not None:
        out.print(
            f"[bold]dry run:[/] {len(plan.tensors)} tensors; [red]the real run would refuse[/]: "
            f"{sanitize(str(planned.refusal))}"
        )
    else:
        out.print(
            f"[bold]dry run:[/] {len(plan.tensors)} tensors would be written to {where}: {files}; nothing was written"
        )


def _show_result(conversion: Conversion, as_json: bool) -> None:
    from reformer_tools._console import emit_json, out, sanitize
    from reformer_tools.sizes import format_size

    if as_json:
        emit_json(conversion.to_json())
        return
    result = conversion.result
    out.print(
        f"[bold green]converted[/] {sanitize(str(conversion.checkpoint.path))} -> {sanitize(str(result.output))} "
        f"({result.kind.value}): {result.tensors} tensors in {conversion.seconds:.2f} s"
    )
    for file in result.files:
        out.print(f"  {sanitize(file.name)}  {format_size(file.bytes)}  sha256 {file.sha256[:16]}…")
    report = result.verification
    if report is not None:
        checks = [f"all {len(report.converted.comparisons) if report.converted else 0} tensors equal their source"]
        if report.numerics is not None:
            numerics = report.numerics
            what = "log-probabilities" if numerics.complete else "hidden states"
            checks.append(f"{what} agree with Trax's within {numerics.atol:g} (max {numerics.max_abs_diff:.3g})")
        if report.tokenizer is not None:
            checks.append(
                f"tokenizer gives Trax's ids on {report.tokenizer.ids_equal} of {report.tokenizer.texts} texts"
            )
        out.print(f"[bold green]verified[/] before writing: {'; '.join(checks)}")
        if report.numerics is not None:
            out.print(f"  proved: {sanitize(report.numerics.proved)}")
