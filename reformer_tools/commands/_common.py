"""What the three commands share: one option stack, and one way to load a checkpoint with its config."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from reformer_tools.vocab import VOCAB_TYPES

if TYPE_CHECKING:
    from reformer_tools.checkpoint import TraxCheckpoint
    from reformer_tools.resolve import ConfigSources, ResolvedConfig

EXIT_CODES_HELP = """\b
Exit codes:
  0  success
  1  verification failed: the checkpoint, config or output disagree
  2  usage error: bad option, bad config file, output exists without
     --force, or a setting Trax's defaults cannot supply (see --set)
  3  unreadable or unsupported checkpoint (missing, corrupt, truncated,
     not Trax, or a layout Hugging Face's Reformer cannot represent)
  4  unsafe content refused: the pickle references code outside the allow-list
  5  the output could not be written (nothing is left behind)
  70 internal error: a bug in reformer-tools (--debug shows where)
  130 interrupted (Ctrl-C or SIGTERM); nothing is left behind
  141 stdout was closed early (e.g. piped into head); nothing else failed
"""

F = TypeVar("F", bound=Callable[..., Any])


def _set_debug(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.find_root().meta["debug"] = True


debug_option = click.option(
    "--debug",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_set_debug,
    help="Show a traceback when something fails.",
)


def _size(_ctx: click.Context, _param: click.Parameter, value: str | None) -> int | None:
    from reformer_tools.sizes import parse_size

    return None if value is None else parse_size(value)


@dataclass(frozen=True)
class CommonOptions:
    """The options every command takes: where the checkpoint and its config come from, and output form."""

    checkpoint: Path | None
    config_path: Path | None
    gin_path: Path | None
    settings: dict[str, Any] = field(default_factory=dict)  # --set, parsed
    as_json: bool = False
    max_decompressed: int | None = None
    quiet: bool = False
    vocab_path: Path | None = None
    vocab_type: str | None = None
    reserved_ids: int | None = None

    def sources(self) -> ConfigSources:
        """Where the config and vocabulary come from."""
        from reformer_tools.resolve import ConfigSources, VocabularySources

        vocabulary = VocabularySources(self.vocab_path, self.vocab_type, self.reserved_ids)
        return ConfigSources(self.config_path, self.gin_path, self.settings, vocabulary)


_COMMON = (
    "checkpoint",
    "config_path",
    "gin_path",
    "settings",
    "as_json",
    "max_decompressed",
    "vocab_path",
    "vocab_type",
    "reserved_ids",
)


def common_options(*, checkpoint_required: bool = True) -> Callable[[F], F]:
    """CKPT, --config, --gin, --set, --json, --max-decompressed-size and --debug, handed over as ``common``."""

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            from reformer_tools.resolve import parse_settings

            values = {name: kwargs.pop(name) for name in _COMMON}
            values["settings"] = parse_settings(values["settings"])
            return command(common=CommonOptions(**values, quiet=kwargs.get("quiet", False)), **kwargs)

        options = [
            # readable=False: the loader reports an unreadable file itself, in one line with exit code 3.
            click.argument(
                "checkpoint",
                type=click.Path(path_type=Path, readable=False),
                required=checkpoint_required,
                metavar="CKPT",
            ),
            # Directories are accepted here so that the error is ours (one line, exit 2), not click's usage block.
            click.option(
                "--config",
                "config_path",
                type=click.Path(path_type=Path),
                help="The model's config.json (transformers.ReformerConfig schema).",
            ),
            click.option("--gin", "gin_path", type=click.Path(path_type=Path), help="A Trax config.gin to read."),
            click.option(
                "--set",
                "settings",
                metavar="KEY=VALUE",
                multiple=True,
                help="Set one config value (JSON, or a plain string), e.g. --set num_buckets=64. Repeatable.",
            ),
            click.option(
                "--vocab",
                "vocab_path",
                type=click.Path(path_type=Path),
                help="The model's vocabulary file (Trax subword, SentencePiece .model or WordPiece vocab.txt).",
            ),
            click.option(
                "--vocab-type",
                type=click.Choice(VOCAB_TYPES),
                help="The vocabulary's type (default: detected from the file; char needs no file).",
            ),
            click.option(
                "--reserved-ids",
                type=click.IntRange(min=0),
                help="Ids reserved before the vocabulary (Trax's n_reserved_ids; default: config.gin's, else 0).",
            ),
            click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout instead."),
            click.option(
                "--max-decompressed-size",
                "max_decompressed",
                metavar="SIZE",
                callback=_size,
                help="Refuse gzip data that inflates beyond SIZE (default: 64x the file, at least 1 GiB).",
            ),
            debug_option,
        ]
        decorated: Any = wrapper
        for option in reversed(options):
            decorated = option(decorated)
        return decorated  # type: ignore[no-any-return]

    return decorate


def load(common: CommonOptions, path: Path, *, data: bool = True) -> TraxCheckpoint:
    from reformer_tools.loader import load_checkpoint

    return load_checkpoint(path, max_decompressed=common.max_decompressed, data=data)


def resolve(
    common: CommonOptions, checkpoint: TraxCheckpoint, *, complete: bool, required: bool = True
) -> ResolvedConfig | None:
    """The checkpoint's config; notes on stderr (not with --quiet), assumptions always.

    ``required`` False: a checkpoint whose config cannot be inferred gives None (``inspect`` still
    lists its arrays).
    """
    from reformer_tools.errors import UnsupportedLayoutError, WeightlessPositionsError

    try:
        resolved = common.sources().resolve(checkpoint, complete=complete)
    except UnsupportedLayoutError as error:
        # Unnamed weightless positions stop every command: there is no way to say which encoding it was.
        if required or common.config_path is not None or common.settings or isinstance(error, WeightlessPositionsError):
            raise
        from reformer_tools._console import note

        note(f"no Hugging Face keys: {error}")
        return None
    report_resolution(resolved, quiet=common.quiet)
    return resolved


def report_resolution(resolved: ResolvedConfig, *, quiet: bool) -> None:
    from reformer_tools._console import note, warn
    from reformer_tools.resolve import describe_assumed

    if not quiet:
        for message in resolved.notes:
            note(message)
    assumed = describe_assumed(resolved)
    if assumed is not None:
        warn(assumed)  # even with --quiet: a model that may differ from Trax's is never handed over silently
    for key, why in resolved.unresolved.items():
        warn(f"{key} is not known ({why}); Hugging Face's default shown")
    for message in resolved.warnings:
        warn(message)
    if not quiet and resolved.vocabulary is not None:
        note(f"vocabulary: {resolved.vocabulary.vocabulary.describe()}, from {resolved.vocabulary.source}")
