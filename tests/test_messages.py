"""What the tool tells people to type must exist."""

from __future__ import annotations

import re
from pathlib import Path

import click

from reformer_tools.cli import cli

PACKAGE = Path(__file__).parent.parent / "reformer_tools"


def every_option() -> set[str]:
    options = {"--help"}
    assert isinstance(cli, click.Group)
    for command in cli.commands.values():
        for param in command.params:
            options.update(opt for opt in param.opts if opt.startswith("--"))
    return options


def test_every_option_a_message_names_exists() -> None:
    known = every_option()
    named: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        for option in re.findall(r"(?<![\w-])--[a-z][a-z0-9_]*(?:-[a-z0-9_]+)*", path.read_text(encoding="utf-8")):
            named.setdefault(option, set()).add(path.name)
    unknown = {option: files for option, files in named.items() if option not in known}
    assert not unknown, unknown
