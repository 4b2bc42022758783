"""``reformer-tools convert``: a checkpoint to a Hugging Face directory, .safetensors or .bin."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from reformer_tools._console import emit_json, err, note, out, sanitize, stderr_is_terminal
from reformer_tools.commands._options import (
    EXIT_CODES_HELP,
    checkpoint_argument,
    config_option,
    debug_option,
    gin_option,
    json_option,
    max_decompressed_option,
)
from reformer_tools.convert import (
    OUTPUT_DTYPES,
    ConversionPlan,
    ConversionResult,
    ProgressCallback,
    ProgressEvent,
    convert_while_loading,
    output_kind_for,
    plan_conversion,
    run_conversion,
)
from reformer_tools.errors import UsageError
from reformer_tools.loader import TraxCheckpoint, load_checkpoint
from reformer_tools.resolve import resolve_spec
from reformer_tools.sizes import format_size, parse_size
from reformer_tools.spec import load_spec


def _pick(name: str, new: Any, legacy: Any, legacy_name: str) -> Any:
    if new is not None and legacy is not None and new != legacy:
        raise UsageError(f"{name} and {legacy_name} disagree; give one of them")
    return new if new is not None else legacy


@click.command(epilog=EXIT_CODES_HELP)
@checkpoint_argument(required=False)
@config_option
@gin_option
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="OUT.bin: torch state_dict; OUT.safetensors: one file; anything else: a model directory.",
)
@click.option("--force", is_flag=True, help="Replace OUT if it exists (only a previous conversion's directory).")
@click.option("--dtype", type=click.Choice(OUTPUT_DTYPES), help="Cast the weights (default: keep the source dtype).")
@click.option(
    "--max-shard-size", metavar="SIZE", help="Split model.safetensors into shards of at most SIZE (e.g. 2GB)."
)
@click.option("--dry-run", is_flag=True, help="Print the full plan and write nothing.")
@json_option
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no notes on stderr.")
@max_decompressed_option
@click.option("--trax_model_pkl_path", "legacy_checkpoint", type=click.Path(path_type=Path), help="Legacy: CKPT.")
@click.option("--config_file", "legacy_config", type=click.Path(path_type=Path), help="Legacy: --config.")
@click.option("--pytorch_dump_path", "legacy_output", type=click.Path(path_type=Path), help="Legacy: --output.")
@debug_option
def convert(
    checkpoint: Path | None,
    config_path: Path | None,
    gin_path: Path | None,
    output: Path | None,
    force: bool,
    dtype: str | None,
    max_shard_size: str | None,
    dry_run: bool,
    as_json: bool,
    quiet: bool,
    max_decompressed: int | None,
    legacy_checkpoint: Path | None,
    legacy_config: Path | None,
    legacy_output: Path | None,
) -> None:
    """Convert a Trax Reformer checkpoint for ReformerModelWithLMHead.

    The output is written all at once or not at all. A directory gets config.json
    and model.safetensors (sharded with an index when --max-shard-size is given)
    and loads with ReformerModelWithLMHead.from_pretrained(OUT). Without --config,
    the config is inferred from the shapes and config.gin (see `inspect`).

    The flags of Hugging Face's old convert_reformer_trax_checkpoint_to_pytorch.py
    (--trax_model_pkl_path, --config_file, --pytorch_dump_path) are accepted.

    \b
    Examples:
      reformer-tools convert model.pkl.gz --config config.json -o reformer-hf/
      reformer-tools convert model.pkl.gz --config config.json -o model.safetensors --dtype bfloat16
      reformer-tools convert model.pkl.gz -o reformer-hf/ --dry-run
    """
    source = _pick("CKPT", checkpoint, legacy_checkpoint, "--trax_model_pkl_path")
    config_path = _pick("--config", config_path, legacy_config, "--config_file")
    output = _pick("--output", output, legacy_output, "--pytorch_dump_path")
    if source is None:
        raise UsageError("missing the checkpoint: give CKPT (or --trax_model_pkl_path)")
    if output is None:
        raise UsageError("missing the output: give -o OUT (or --pytorch_dump_path)")
    shard_bytes = parse_size(max_shard_size) if max_shard_size is not None else None
    progress = _progress(enabled=not quiet and not as_json and not dry_run and stderr_is_terminal())
    started = time.perf_counter()
    if config_path is not None and not dry_run:
        # The config is known before the checkpoint is read: convert while it loads.
        spec = load_spec(config_path)
        with progress as on_progress:
            loaded, result = convert_while_loading(
                source,
                spec,
                output,
                dtype=dtype,
                max_shard_size=shard_bytes,
                force=force,
                max_decompressed=max_decompressed,
                on_progress=on_progress,
            )
        _show_result(loaded, result, time.perf_counter() - started, as_json, str(config_path))
        return
    loaded = load_checkpoint(source, max_decompressed=max_decompressed)
    resolved = resolve_spec(loaded, config_path, gin_path, required=True)
    assert resolved is not None
    if not quiet:
        for message in resolved.messages:
            note(message)
    if dry_run:
        kind = output_kind_for(output)
        loaded.leaves  # noqa: B018 - read side-file headers so the plan shows every path
        conversion = plan_conversion(loaded, resolved.spec, kind, dtype=dtype)
        _show_plan(loaded, output, conversion, as_json)
        return
    with progress as on_progress:
        result = run_conversion(
            loaded,
            resolved.spec,
            output,
            dtype=dtype,
            max_shard_size=shard_bytes,
            force=force,
            on_progress=on_progress,
        )
    _show_result(loaded, result, time.perf_counter() - started, as_json, resolved.source)


@contextmanager
def _progress(*, enabled: bool) -> Iterator[ProgressCallback | None]:
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

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

        def update(event: ProgressEvent) -> None:
            progress.update(
                task,
                total=event.tensors_total,
                completed=event.tensors_done,
                description=sanitize(event.key, 60),
                written=format_size(event.bytes_done),
            )

        yield update


def _show_plan(checkpoint: TraxCheckpoint, output: Path, conversion: ConversionPlan, as_json: bool) -> None:
    if as_json:
        emit_json(
            {
                "dry_run": True,
                "source": str(checkpoint.path),
                "format": checkpoint.format.value,
                "output": str(output),
                "kind": conversion.kind.value,
                "tensors": [
                    {
                        "hf_key": t.hf_key,
                        "trax_path": t.trax_path,
                        "transform": t.transform,
                        "source_shape": list(t.source_shapes[0]),
                        "target_shape": list(t.target_shape),
                        "dtype": t.dtype,
                        "bytes": t.nbytes,
                    }
                    for t in conversion.tensors
                ],
                "total_bytes": conversion.total_bytes,
            }
        )
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("Trax path", "Hugging Face key", "transform", "shape", "dtype", "bytes"):
        table.add_column(column, overflow="fold", justify="right" if column == "bytes" else "left")
    for t in conversion.tensors:
        shapes = f"{tuple(t.source_shapes[0])} -> {tuple(t.target_shape)}"
        table.add_row(
            sanitize(t.trax_path or "?"), t.hf_key, t.transform, shapes, t.dtype or "?", format_size(t.nbytes)
        )
    out.print(table)
    out.print(
        f"[bold]dry run:[/] {len(conversion.tensors)} tensors, {format_size(conversion.total_bytes)} "
        f"would be written to {sanitize(str(output))} ({conversion.kind.value}); nothing was written"
    )


def _show_result(
    checkpoint: TraxCheckpoint, result: ConversionResult, seconds: float, as_json: bool, config_source: str
) -> None:
    if as_json:
        emit_json(
            {
                "source": str(checkpoint.path),
                "format": checkpoint.format.value,
                "config_source": config_source,
                "output": str(result.output),
                "kind": result.kind.value,
                "files": [{"name": name, "bytes": size} for name, size in result.files],
                "tensors": result.tensors,
                "seconds": round(seconds, 3),
                "sha256": checkpoint.digests(),
            }
        )
        return
    out.print(
        f"[bold green]converted[/] {sanitize(str(checkpoint.path))} -> {sanitize(str(result.output))} "
        f"({result.kind.value}): {result.tensors} tensors in {seconds:.2f} s"
    )
    for name, size in result.files:
        out.print(f"  {sanitize(name)}  {format_size(size)}")
