"""The README documents what the tool does: commands, options, exit codes, and CI runs its commands."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from reformer_tools.cli import cli
from reformer_tools.errors import ExitCode

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def fenced_commands(language: str) -> list[str]:
    blocks = re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line and not line.startswith("#")]


def test_ci_runs_the_readme_install_and_test_commands() -> None:
    install, test = fenced_commands("bash")[:2]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert install.startswith("pip install")
    assert '-e ".[test]"' in install
    assert "torch==2.13.0" in install
    assert test in ci.splitlines()
    assert "torch==2.13.0" in ci


def quick_start_commands() -> list[str]:
    return [line[2:] for line in fenced_commands("console") if line.startswith("$ ")]


def test_quick_start_uses_the_shipped_example() -> None:
    commands = quick_start_commands()
    assert any(c.startswith("reformer-tools convert examples/zen-reformer/model.pkl.gz") for c in commands)
    for command in commands:
        for path in re.findall(r"examples/\S+", command):
            assert (ROOT / path).exists(), path


def test_ci_runs_the_quick_start_as_written() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    for command in quick_start_commands():
        assert command in ci, command


def test_the_quick_start_generates_what_trax_generates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.conftest import invoke

    monkeypatch.chdir(tmp_path)
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    for command in quick_start_commands():
        result = invoke(command.split()[1:])
        assert result.exit_code == 0, (command, result.output)
    (snippet,) = [b for b in re.findall(r"```python\n(.*?)```", README, flags=re.S) if "generate(" in b]
    capsys.readouterr()
    exec(snippet, {})
    printed = capsys.readouterr().out
    import json

    trax = json.loads((ROOT / "examples" / "zen-reformer" / "trax_outputs.json").read_text(encoding="utf-8"))
    (first,) = [c for c in trax["greedy"]["continuations"] if c["prompt"] == "Beautiful is"]
    assert "Beautiful is" + first["continuation"] in printed  # exactly what Trax generated


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_every_option_of_every_command_is_documented(name: str) -> None:
    command = cli.commands[name]
    assert f"reformer-tools {name}" in README
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            for flag in param.opts:
                if flag.startswith("--") and flag not in ("--help", "--debug"):
                    assert flag in README, f"{name} {flag} is not in the README"


def test_exit_codes_table_lists_every_code() -> None:
    for code in ExitCode:
        assert re.search(rf"^\| {code.value} \|", README, flags=re.M), code


def test_python_api_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (snippet,) = [b for b in re.findall(r"```python\n(.*?)```", README, flags=re.S) if "write_conversion" in b]
    monkeypatch.chdir(tmp_path)
    exec(snippet.replace('"examples/', f'"{ROOT}/examples/'), {})
    assert (tmp_path / "tiny-reformer-hf" / "model.safetensors").is_file()


def test_the_module_table_names_every_module() -> None:
    table = README[README.index("| module | role |") :]
    modules = sorted(
        p.name for p in (ROOT / "reformer_tools").glob("*.py") if p.name not in ("__init__.py", "__main__.py")
    )
    missing = [name for name in modules if f"`{name}`" not in table]
    assert not missing, f"README's module table lacks {missing}"


def test_the_configuration_page_is_linked_and_matches_the_defaults_table() -> None:
    from reformer_tools.trax_defaults import DEFAULTS

    assert "docs/configuration.md" in README
    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    for default in DEFAULTS:
        assert f"`{default.key}`" in page, default.key
