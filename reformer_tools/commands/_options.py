"""Options and help text shared by the commands."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from reformer_tools.sizes import parse_size

EXIT_CODES_HELP = """\b
Exit codes:
  0  success
  1  verification failed: the checkpoint, config or output disagree
  2  usage error: bad option, bad config file, output exists without --force
  3  unreadable or unsupported checkpoint (missing, corrupt, truncated,
     not Trax, or a layout Hugging Face's Reformer cannot represent)
  4  unsafe content refused: the pickle references code outside the allow-list
  5  the output could not be written (nothing is left behind)
  70 internal error: a bug in reformer-tools (--debug shows where)
  130 interrupted (Ctrl-C or SIGTERM); nothing is left behind
"""


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

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout instead.")

gin_option = click.option(
    "--gin", "gin_path", type=click.Path(path_type=Path, dir_okay=False), help="A Trax config.gin to read."
)

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The model's config.json (transformers.ReformerConfig schema).",
)


def _size(_ctx: click.Context, _param: click.Parameter, value: str | None) -> int | None:
    return None if value is None else parse_size(value)


max_decompressed_option = click.option(
    "--max-decompressed-size",
    "max_decompressed",
    metavar="SIZE",
    callback=_size,
    help="Refuse gzip data that inflates beyond SIZE (default: 64x the file, at least 1 GiB).",
)


F = TypeVar("F", bound=Callable[..., Any])


def checkpoint_argument(required: bool = True) -> Callable[[F], F]:
    # readable=False: the loader reports an unreadable file itself, in one line with exit code 3.
    return click.argument(
        "checkpoint", type=click.Path(path_type=Path, readable=False), required=required, metavar="CKPT"
    )
