"""``reformer-tools inspect``: the weight tree, totals, format and metadata."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from reformer_tools._console import emit_json, note, out, sanitize, warn
from reformer_tools.commands._options import (
    EXIT_CODES_HELP,
    checkpoint_argument,
    config_option,
    debug_option,
    gin_option,
    json_option,
    max_decompressed_option,
)
from reformer_tools.errors import ExitCode, UsageError
from reformer_tools.loader import Leaf, TraxCheckpoint, load_checkpoint, scan_globals
from reformer_tools.resolve import resolve_spec
from reformer_tools.sizes import format_size


@click.command(epilog=EXIT_CODES_HELP)
@checkpoint_argument()
@config_option
@gin_option
@json_option
@click.option("--depth", type=click.IntRange(min=1), help="Collapse the tree below this many levels.")
@click.option("--globals", "list_globals", is_flag=True, help="List every global the pickle references; load nothing.")
@click.option(
    "--config-out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the config.json inferred from the shapes (and config.gin) to this file.",
)
@click.option("--force", is_flag=True, help="With --config-out: replace an existing file.")
@max_decompressed_option
@debug_option
def inspect(
    checkpoint: Path,
    config_path: Path | None,
    gin_path: Path | None,
    as_json: bool,
    depth: int | None,
    list_globals: bool,
    config_out: Path | None,
    force: bool,
    max_decompressed: int | None,
) -> None:
    """Show a checkpoint's weight arrays and what each becomes in Hugging Face.

    Lists every array with its path in the file, shape, dtype and size, and, when
    the layout is recognized, its Hugging Face state_dict key. The config comes
    from --config, else from the shapes (plus config.gin when one sits beside the
    checkpoint or is given with --gin). Nothing is converted; torch is not imported.

    \b
    Examples:
      reformer-tools inspect model.pkl.gz
      reformer-tools inspect model.pkl.gz --json
      reformer-tools inspect model.pkl.gz --config-out config.json
      reformer-tools inspect untrusted.pkl --globals
    """
    if list_globals:
        _show_globals(checkpoint, as_json, max_decompressed)
        return
    loaded = load_checkpoint(checkpoint, max_decompressed=max_decompressed, data=False)
    leaves = loaded.leaves
    resolved = resolve_spec(loaded, config_path, gin_path, required=config_out is not None)
    hf_keys: dict[int, tuple[str, ...]] = {}
    if resolved is not None:
        from reformer_tools.mapper import align

        hf_keys = align(resolved.spec, leaves).hf_keys_for()
        for message in resolved.messages:
            note(message)
    if config_out is not None:
        assert resolved is not None
        _write_config(config_out, resolved.spec.to_config_dict(), force)
    if as_json:
        emit_json(_document(loaded, leaves, hf_keys, resolved.source if resolved else None))
    else:
        _render(loaded, leaves, hf_keys, depth, resolved.source if resolved else None)


def _write_config(path: Path, config: dict[str, Any], force: bool) -> None:
    if path.exists() and not force:
        raise UsageError(f"{path}: already exists; pass --force to replace it")
    from reformer_tools.output import AtomicOutput

    with AtomicOutput(path, directory=False, force=force) as target:
        target.open(path.name).write((json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
        target.commit()
    note(f"wrote {path}")


def _document(
    checkpoint: TraxCheckpoint, leaves: Sequence[Leaf], hf_keys: dict[int, tuple[str, ...]], config_source: str | None
) -> dict[str, Any]:
    return {
        "file": str(checkpoint.path),
        "format": checkpoint.format.value,
        "description": checkpoint.description,
        "step": checkpoint.step,
        "version_timestamp": checkpoint.version_timestamp,
        "config_source": config_source,
        "total_parameters": sum(leaf.size for leaf in leaves),
        "total_bytes": sum(leaf.nbytes for leaf in leaves),
        "arrays": [
            {
                "path": leaf.path,
                "shape": list(leaf.shape),
                "dtype": leaf.dtype,
                "bytes": leaf.nbytes,
                "hf_key": hf_keys[leaf.index][0] if leaf.index in hf_keys else None,
                "hf_keys": list(hf_keys.get(leaf.index, ())),
            }
            for leaf in leaves
        ],
        "metadata": {item.key: item.summary for item in checkpoint.metadata},
        "weight_files": [str(p) for p in checkpoint.weight_files],
        "sha256": checkpoint.digests(),
    }


@dataclass
class _Row:
    path: str
    shape: str
    dtype: str
    nbytes: int
    hf_key: str


_INDEX = re.compile(r"\[[^\]]*\]")


def _collapse(leaves: Sequence[Leaf], hf_keys: dict[int, tuple[str, ...]], depth: int | None) -> list[_Row]:
    rows: list[_Row] = []
    groups: dict[str, list[Leaf]] = {}
    for leaf in leaves:
        parts = _INDEX.findall(leaf.path)
        root = leaf.path[: len(leaf.path) - len("".join(parts))]
        if depth is None or len(parts) <= depth:
            keys = ", ".join(hf_keys.get(leaf.index, ()))
            rows.append(_Row(leaf.path, str(tuple(leaf.shape)), leaf.dtype, leaf.nbytes, keys))
            continue
        prefix = root + "".join(parts[:depth])
        if prefix not in groups:
            groups[prefix] = []
            rows.append(_Row(prefix, "", "", 0, ""))
        groups[prefix].append(leaf)
    for row in rows:
        members = groups.get(row.path)
        if members is not None and not row.shape:
            row.shape = f"{len(members)} arrays"
            row.dtype = ", ".join(sorted({m.dtype for m in members}))
            row.nbytes = sum(m.nbytes for m in members)
    return rows


def _render(
    checkpoint: TraxCheckpoint,
    leaves: Sequence[Leaf],
    hf_keys: dict[int, tuple[str, ...]],
    depth: int | None,
    config_source: str | None,
) -> None:
    out.print(f"[bold]{sanitize(str(checkpoint.path))}[/]")
    out.print(f"  {sanitize(checkpoint.description)}")
    facts = [f"format {checkpoint.format.value}"]
    if checkpoint.step is not None:
        facts.append(f"step {checkpoint.step}")
    if checkpoint.version_timestamp:
        facts.append(f"version {sanitize(checkpoint.version_timestamp)}")
    out.print("  " + " · ".join(facts))
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("path", overflow="fold")
    table.add_column("shape")
    table.add_column("dtype")
    table.add_column("bytes", justify="right")
    show_keys = bool(hf_keys)
    if show_keys:
        table.add_column("Hugging Face key", overflow="fold")
    for row in _collapse(leaves, hf_keys, depth):
        cells = [sanitize(row.path), row.shape, row.dtype, format_size(row.nbytes)]
        table.add_row(*cells, *([sanitize(row.hf_key) or "[dim]-[/]"] if show_keys else []))
    out.print(table)
    total = sum(leaf.size for leaf in leaves)
    nbytes = sum(leaf.nbytes for leaf in leaves)
    out.print(f"[bold]{len(leaves)} arrays, {total:,} parameters, {format_size(nbytes)}[/]")
    if config_source:
        mapped = len(hf_keys)
        source = sanitize(config_source)
        out.print(f"Hugging Face keys from {source}: {mapped} of {len(leaves)} arrays mapped")
    if checkpoint.metadata:
        out.print("[bold]other contents[/]")
        for item in checkpoint.metadata:
            out.print(f"  {sanitize(item.key)}: {sanitize(item.summary)}")
    if checkpoint.weight_files:
        out.print("weights read from " + ", ".join(sanitize(p.name) for p in checkpoint.weight_files))


def _show_globals(checkpoint: Path, as_json: bool, max_decompressed: int | None) -> None:
    results = scan_globals(checkpoint, max_decompressed=max_decompressed)
    from reformer_tools.safe_pickle import describe_global

    entries = [
        {
            "file": str(result.file),
            "module": ref.module,
            "name": ref.name,
            "opcode": ref.opcode,
            "opcode_index": ref.opcode_index,
            "allowed": ref.allowed,
            "reason": describe_global(ref.module, ref.name),
        }
        for result in results
        for ref in result.references
    ]
    refused = [e for e in entries if not e["allowed"]]
    if as_json:
        emit_json({"file": str(checkpoint), "globals": entries, "refused": len(refused)})
    else:
        table = Table(box=None, pad_edge=False, header_style="bold")
        for column in ("global", "opcode", "at opcode #", "verdict"):
            table.add_column(column, overflow="fold")
        for e in entries:
            verdict = f"[green]allowed[/] ({e['reason']})" if e["allowed"] else "[bold red]refused[/]"
            table.add_row(sanitize(f"{e['module']}.{e['name']}"), str(e["opcode"]), str(e["opcode_index"]), verdict)
        out.print(table)
        out.print(f"{len(entries)} global references, {len(refused)} refused")
    if refused:
        first = refused[0]
        warn(f"{checkpoint}: references {first['module']}.{first['name']}, which is not on the allow-list")
        raise click.exceptions.Exit(int(ExitCode.UNSAFE))
