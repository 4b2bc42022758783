"""``reformer-tools inspect``: the weight tree, totals, format and metadata."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from reformer_tools.commands._common import EXIT_CODES_HELP, CommonOptions, common_options, load, resolve

if TYPE_CHECKING:
    from reformer_tools.checkpoint import Leaf
    from reformer_tools.inspection import Inspection


@click.command(epilog=EXIT_CODES_HELP, short_help="Show a checkpoint's arrays and their Hugging Face keys.")
@common_options()
@click.option("--depth", type=click.IntRange(min=1), help="Collapse the tree below this many levels.")
@click.option("--globals", "list_globals", is_flag=True, help="List every global the pickle references; load nothing.")
@click.option(
    "--config-out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the config.json inferred from the checkpoint (shapes, config.gin, --set, Trax's defaults) to FILE.",
)
@click.option("--force", is_flag=True, help="Replace an existing file at --config-out.")
def inspect(common: CommonOptions, depth: int | None, list_globals: bool, config_out: Path | None, force: bool) -> None:
    """Show a checkpoint's weight arrays and what each becomes in Hugging Face.

    Lists every array with its path in the file, shape, dtype and size, and, when
    the layout is recognized, its Hugging Face state_dict key. The config comes
    from --config, else from the shapes (plus config.gin when one sits beside the
    checkpoint or is given with --gin, and --set); settings neither shows take
    Trax's defaults and are reported as assumed. Nothing is converted; torch is
    not imported. With --config, arrays that do not fit it are listed and the
    exit code is 1.

    \b
    Examples:
      reformer-tools inspect model.pkl.gz
      reformer-tools inspect model.pkl.gz --json
      reformer-tools inspect model.pkl.gz --config-out config.json
      reformer-tools inspect untrusted.pkl --globals
    """
    assert common.checkpoint is not None
    if list_globals:
        _show_globals(common)
        return
    checkpoint = load(common, common.checkpoint, data=False)
    resolved = resolve(common, checkpoint, complete=config_out is not None, required=config_out is not None)
    if config_out is not None:
        inferred = resolved
        if common.config_path is not None:  # --config-out writes what the checkpoint says, not what --config says
            from dataclasses import replace

            inferred = replace(common.sources(), config_path=None).resolve(checkpoint)
        assert inferred is not None
        inputs = (checkpoint.path, *checkpoint.weight_files, common.config_path, common.gin_path, common.vocab_path)
        _write_config(config_out, inferred.config_dict(), force, tuple(p for p in inputs if p is not None))
    from reformer_tools.inspection import inspect_checkpoint

    inspection = inspect_checkpoint(checkpoint, resolved)
    if common.as_json:
        from reformer_tools._console import emit_json

        emit_json(inspection.to_json())
    else:
        _render(inspection, depth)
    if not inspection.ok:
        from reformer_tools.errors import ExitCode

        raise click.exceptions.Exit(int(ExitCode.VERIFICATION_FAILED))


def _write_config(path: Path, config: dict[str, Any], force: bool, inputs: tuple[Path, ...]) -> None:
    from reformer_tools._console import note
    from reformer_tools.output import AtomicOutput

    with AtomicOutput(path, directory=False, force=force, protected=inputs) as target:
        target.open(path.name).write((json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
        target.commit()
    note(f"wrote {path}")


@dataclass
class _Row:
    path: str
    shape: str
    dtype: str
    nbytes: int
    hf_key: str


def _rows(inspection: Inspection, depth: int | None) -> list[_Row]:
    from reformer_tools.inspection import collapse_paths

    keys = inspection.hf_keys

    def single(leaf: Leaf) -> _Row:
        return _Row(leaf.path, str(tuple(leaf.shape)), leaf.dtype, leaf.nbytes, ", ".join(keys.get(leaf.index, ())))

    def group(name: str, members: list[Leaf]) -> _Row:
        dtypes = ", ".join(sorted({m.dtype for m in members}))
        return _Row(name, f"{len(members)} arrays", dtypes, sum(m.nbytes for m in members), "")

    leaves = inspection.leaves
    if depth is None:
        return [single(leaf) for leaf in leaves]
    if all(leaf.path.count("[") <= 1 for leaf in leaves):
        # A flat list (trax >= 1.3): its levels are the model's parts (embeddings, layers, head).
        return [single(m[0]) if len(m) == 1 else group(name, m) for name, m in inspection.groups()]
    return [
        single(members[0]) if len(members) == 1 and members[0].path == prefix else group(prefix, members)
        for prefix, members in collapse_paths(leaves, depth)
    ]


def _render(inspection: Inspection, depth: int | None) -> None:
    from rich.table import Table

    from reformer_tools._console import out, print_table, render_problems, sanitize
    from reformer_tools.sizes import format_size

    checkpoint = inspection.checkpoint
    out.print(f"[bold]{sanitize(str(checkpoint.path))}[/]")
    out.print(f"  {sanitize(checkpoint.description)}")
    facts = [f"format {checkpoint.format.value}"]
    if checkpoint.step is not None:
        facts.append(f"step {checkpoint.step}")
    if checkpoint.version_timestamp:
        facts.append(f"version {sanitize(checkpoint.version_timestamp)}")
    if inspection.resolved is not None:
        facts.append(sanitize(str(inspection.resolved.releases)))
    out.print("  " + " · ".join(facts))
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("path", no_wrap=True, overflow="ignore")
    table.add_column("shape", no_wrap=True)
    table.add_column("dtype", no_wrap=True)
    table.add_column("bytes", justify="right", no_wrap=True)
    show_keys = bool(inspection.hf_keys)
    if show_keys:
        # Keys are never broken: a wrapped key cannot be copied.
        table.add_column("Hugging Face key", no_wrap=True, overflow="ignore")
    for row in _rows(inspection, depth):
        cells = [sanitize(row.path), row.shape, row.dtype, format_size(row.nbytes)]
        table.add_row(*cells, *([sanitize(row.hf_key) or "[dim]-[/]"] if show_keys else []))
    print_table(table)
    leaves = inspection.leaves
    out.print(
        f"[bold]{len(leaves)} arrays, {inspection.total_parameters:,} parameters, "
        f"{format_size(inspection.total_bytes)}[/]"
    )
    if inspection.resolved is not None:
        source = sanitize(inspection.resolved.description)
        out.print(f"Hugging Face keys from {source}: {len(inspection.hf_keys)} of {len(leaves)} arrays mapped")
    if inspection.alignment is not None and not inspection.alignment.ok:
        render_problems(inspection.alignment)
    if checkpoint.metadata:
        out.print("[bold]other contents[/]")
        for item in checkpoint.metadata:
            out.print(f"  {sanitize(item.key)}: {sanitize(item.summary)}")
    if checkpoint.weight_files:
        out.print("weights read from " + ", ".join(sanitize(p.name) for p in checkpoint.weight_files))


def _show_globals(common: CommonOptions) -> None:
    from rich.table import Table

    from reformer_tools._console import emit_json, out, print_table, sanitize, warn
    from reformer_tools.allowlist import describe_global
    from reformer_tools.errors import ExitCode, UnreadableCheckpointError
    from reformer_tools.global_scan import globals_document, scan_globals
    from reformer_tools.sizes import format_size

    assert common.checkpoint is not None
    results = scan_globals(common.checkpoint, max_decompressed=common.max_decompressed)
    refused = [ref for result in results for ref in result.references if not ref.allowed]
    unscanned = sum(len(result.unscanned) for result in results)
    complete = unscanned == 0
    if common.as_json:
        emit_json(globals_document(common.checkpoint, results))
    else:
        for result in results:
            where = " (offsets in the inflated data)" if result.compressed else ""
            out.print(f"[bold]{sanitize(str(result.file))}[/]: {len(result.pickles)} pickles{where}")
            for found in result.pickles:
                ended = "ran to STOP" if found.problem is None else f"ended early: {sanitize(found.problem)}"
                out.print(f"  pickle at bytes {found.start}-{found.end}: {found.opcodes:,} opcodes, {ended}")
            for gap in result.unscanned:
                end = "the end" if gap.end is None else str(gap.end)
                out.print(f"  [yellow]not scanned[/]: bytes {gap.start}-{end}: {sanitize(gap.reason)}")
            table = Table(box=None, pad_edge=False, header_style="bold")
            for column in ("global", "opcode", "pickle", "at opcode #", "times", "verdict"):
                table.add_column(column, no_wrap=True, overflow="ignore" if column == "global" else "fold")
            for ref in result.references:
                reason = describe_global(ref.module, ref.name)
                verdict = f"[green]allowed[/] ({reason})" if ref.allowed else "[bold red]refused[/]"
                row = (str(ref.opcode), str(ref.pickle), str(ref.opcode_index), f"x{ref.count}", verdict)
                table.add_row(sanitize(ref.label), *row)
            if result.references:
                print_table(table)
        total = sum(len(result.references) for result in results)
        out.print(
            f"{total} global references, {len(refused)} refused"
            + ("" if complete else f"; {unscanned} stretches not scanned")
            + f" ({format_size(sum(p.end - p.start for r in results for p in r.pickles))} of pickle read)"
        )
    if refused:
        first = refused[0]
        warn(f"{common.checkpoint}: references {first.refusal}")
        raise click.exceptions.Exit(int(ExitCode.UNSAFE))
    if not complete:
        # A listing with holes proves nothing about the holes: not a pass.
        raise UnreadableCheckpointError(
            f"{common.checkpoint}: {unscanned} {'stretch' if unscanned == 1 else 'stretches'} of bytes"
            " could not be scanned; they may reference anything"
        )
