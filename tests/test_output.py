"""The output never replaces what it did not check: races at commit time, --force, empty directories."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reformer_tools import output
from reformer_tools.errors import OutputError, UsageError
from reformer_tools.output import OUTPUT_FILE_PATTERNS, AtomicOutput, previous_output
from tests.conftest import TRAX_FIXTURES, invoke
from tests.test_hostile import check_line, files_under

LOCAL = TRAX_FIXTURES / "t141_local_axial"


@pytest.fixture(params=["renameat2", "without-renameat2"])
def rename_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs with renameat2 and with the fallback for systems that lack it."""
    if request.param == "without-renameat2":
        monkeypatch.setattr(output, "_renameat2", None)
    return str(request.param)


def written(target: Path, *, directory: bool = True, force: bool = False) -> AtomicOutput:
    """An output with its files written, not yet committed."""
    out = AtomicOutput(target, directory=directory, force=force)
    if directory:
        out.open("config.json").write(b'{"new": true}')
        out.open("model.safetensors").write(b"new weights")
    else:
        out.open(target.name).write(b"new")
    return out


def previous_conversion(target: Path) -> None:
    target.mkdir()
    (target / "config.json").write_bytes(b'{"old": true}')
    (target / "model.safetensors").write_bytes(b"old weights")


def hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_a_new_directory(tmp_path: Path, rename_mode: str) -> None:
    with written(tmp_path / "out") as out:
        out.commit()
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == b"new weights"
    assert hidden(tmp_path) == []


def test_a_directory_that_appears_after_the_check_is_left_alone(tmp_path: Path, rename_mode: str) -> None:
    target = tmp_path / "out"
    with written(target) as out:
        target.mkdir()  # another process, between the check and the commit
        (target / "mine.txt").write_text("keep me")
        with pytest.raises(UsageError, match="appeared while converting; left as it is"):
            out.commit()
    assert sorted(p.name for p in target.iterdir()) == ["mine.txt"]
    assert (target / "mine.txt").read_text() == "keep me"
    assert hidden(tmp_path) == []


def test_an_empty_directory_that_appears_after_the_check_is_left_alone(tmp_path: Path, rename_mode: str) -> None:
    target = tmp_path / "out"
    with written(target) as out:
        target.mkdir()
        with pytest.raises(UsageError, match="appeared while converting"):
            out.commit()
    assert list(target.iterdir()) == []
    assert hidden(tmp_path) == []


def test_an_existing_empty_directory_is_used_without_force(tmp_path: Path, rename_mode: str) -> None:
    target = tmp_path / "out"
    target.mkdir()
    with written(target) as out:
        out.commit()
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors"]
    assert hidden(tmp_path) == []


def test_an_empty_directory_filled_before_the_commit_is_left_alone(tmp_path: Path, rename_mode: str) -> None:
    target = tmp_path / "out"
    target.mkdir()
    with written(target) as out:
        (target / "mine.txt").write_text("keep me")
        with pytest.raises(UsageError, match="changed while converting; left as it is"):
            out.commit()
    assert sorted(p.name for p in target.iterdir()) == ["mine.txt"]
    assert hidden(tmp_path) == []


def test_an_empty_directory_as_output_through_the_cli(tmp_path: Path) -> None:
    target = tmp_path / "hf"
    target.mkdir()
    result = invoke(["convert", LOCAL / "model.pkl", "--config", LOCAL / "config.json", "-o", target])
    assert result.exit_code == 0, result.stderr
    assert {"config.json", "model.safetensors"} <= {p.name for p in target.iterdir()}
    (target.parent / "full").mkdir()
    (target.parent / "full" / "notes.txt").write_text("x")
    refused = invoke(["convert", LOCAL / "model.pkl", "--config", LOCAL / "config.json", "-o", target.parent / "full"])
    assert refused.exit_code == 2
    assert "already exists; pass --force" in refused.stderr


def test_force_replaces_a_previous_conversion(tmp_path: Path, rename_mode: str) -> None:
    target = tmp_path / "out"
    previous_conversion(target)
    with written(target, force=True) as out:
        out.commit()
    assert (target / "config.json").read_bytes() == b'{"new": true}'
    assert hidden(tmp_path) == []


def test_force_keeps_a_previous_conversion_someone_added_to(tmp_path: Path, rename_mode: str) -> None:
    target = tmp_path / "out"
    previous_conversion(target)
    with written(target, force=True) as out:
        (target / "mine.txt").write_text("keep me")  # after the check
        with pytest.raises(UsageError, match="changed while converting; left as it is"):
            out.commit()
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "mine.txt", "model.safetensors"]
    assert (target / "config.json").read_bytes() == b'{"old": true}'
    assert hidden(tmp_path) == []


def test_force_replaces_only_the_directory_it_checked(tmp_path: Path, rename_mode: str) -> None:
    target = tmp_path / "out"
    previous_conversion(target)
    with written(target, force=True) as out:
        os.rename(target, tmp_path / "moved")  # another directory, holding the same names, takes its place
        previous_conversion(target)
        with pytest.raises(UsageError, match="changed while converting"):
            out.commit()
    assert (target / "config.json").read_bytes() == b'{"old": true}'
    assert (tmp_path / "moved" / "config.json").exists()
    assert hidden(tmp_path) == []


def test_a_file_that_appears_after_the_check_is_left_alone(tmp_path: Path, rename_mode: str) -> None:
    target = tmp_path / "model.safetensors"
    with written(target, directory=False) as out:
        target.write_text("mine")
        with pytest.raises(UsageError, match="appeared while converting"):
            out.commit()
    assert target.read_text() == "mine"
    assert hidden(tmp_path) == []


def test_force_replaces_only_the_file_it_checked(tmp_path: Path, rename_mode: str) -> None:
    target = tmp_path / "model.safetensors"
    target.write_text("old")
    with written(target, directory=False, force=True) as out:
        target.unlink()
        target.write_text("someone else's")  # a new inode at the same name
        with pytest.raises(UsageError, match="changed while converting"):
            out.commit()
    assert target.read_text() == "someone else's"
    assert hidden(tmp_path) == []
    with written(target, directory=False, force=True) as out:
        out.commit()
    assert target.read_text() == "new"
    assert hidden(tmp_path) == []


def test_output_patterns_cover_a_complete_model_directory(tmp_path: Path) -> None:
    names = [
        "config.json",
        "generation_config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "spiece.model",
        "vocab.txt",
        "README.md",
    ]
    for name in names:
        (tmp_path / name).write_text("x")
    assert previous_output(tmp_path) == tuple(sorted(names))
    assert "*.model" in OUTPUT_FILE_PATTERNS
    (tmp_path / "notes.txt").write_text("x")
    assert previous_output(tmp_path) is None
    (tmp_path / "notes.txt").unlink()
    (tmp_path / "sub").mkdir()
    assert previous_output(tmp_path) is None


def test_force_refuses_a_directory_holding_anything_else(tmp_path: Path) -> None:
    target = tmp_path / "out"
    previous_conversion(target)
    (target / "train.log").write_text("x")
    before = files_under(tmp_path)
    with pytest.raises(UsageError, match="holds files other than a converted model"):
        AtomicOutput(target, directory=True, force=True)
    assert files_under(tmp_path) == before


class Refused(Exception):
    pass


@pytest.mark.parametrize("kind", ["new directory", "new file", "previous directory", "previous file"])
def test_a_check_sees_the_finished_output_and_can_stop_it(kind: str, tmp_path: Path, rename_mode: str) -> None:
    directory = "directory" in kind
    target = tmp_path / ("out" if directory else "out.safetensors")
    if kind == "previous directory":
        previous_conversion(target)
    elif kind == "previous file":
        target.write_bytes(b"old")
    before = {p.name: p.read_bytes() for p in target.iterdir()} if directory and target.exists() else None
    seen: list[Path] = []

    def refuse(staged: Path) -> None:
        seen.append(staged)
        assert staged.name.endswith(target.name)  # readers that go by the suffix read it alike
        assert staged.parent == tmp_path
        assert (staged / "model.safetensors" if directory else staged).exists()
        raise Refused

    with written(target, directory=directory, force="previous" in kind) as out, pytest.raises(Refused):
        out.commit(refuse)
    assert len(seen) == 1
    assert hidden(tmp_path) == []
    if kind.startswith("new"):
        assert not target.exists()
    elif directory:
        assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    else:
        assert target.read_bytes() == b"old"

    def accept(staged: Path) -> None:  # and may change files before they are put in place
        (staged / "config.json").write_bytes(b'{"checked": true}') if directory else staged.write_bytes(b"checked")

    with written(target, directory=directory, force="previous" in kind) as out:
        out.commit(accept)
    assert (target / "config.json" if directory else target).read_bytes() in (b'{"checked": true}', b"checked")
    assert hidden(tmp_path) == []


def dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    return int(child.stdout)


def test_a_staging_copy_left_by_a_killed_process_is_removed_by_the_next_commit(tmp_path: Path) -> None:
    target = tmp_path / "out"
    abandoned = tmp_path / f".staging-{dead_pid()}-0123abcd-out"
    abandoned.mkdir()
    (abandoned / "model.safetensors").write_bytes(b"from a run killed with SIGKILL")
    foreign = tmp_path / f".staging-{dead_pid()}-0123abcd-out.d"  # another target's name: not ours
    foreign.mkdir()
    someone_elses = tmp_path / f".staging-{dead_pid()}-4567abcd-out"
    someone_elses.mkdir()
    (someone_elses / "notes.txt").write_text("not a conversion's file")
    running = tmp_path / f".staging-{os.getppid()}-89abcdef-out"  # its process still runs
    running.mkdir()
    with written(target) as out:
        out.commit()
    assert not abandoned.exists()
    assert foreign.exists()
    assert someone_elses.exists()
    assert running.exists()


def test_parents_made_for_a_refused_output_are_removed(tmp_path: Path) -> None:
    def refuse(staged: Path) -> None:
        raise Refused

    with written(tmp_path / "a" / "b" / "out") as out, pytest.raises(Refused):
        out.commit(refuse)
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_inside_an_output_is_an_output_error(tmp_path: Path) -> None:
    def output() -> AtomicOutput:
        return AtomicOutput(tmp_path / "out", directory=True, force=False)

    with pytest.raises(OutputError, match="out: could not write the output"), output():
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(OSError, match="Input/output error"), output():
        raise OSError(errno.EIO, "Input/output error")  # may be the input's: left as it is


def test_a_file_size_limit_while_converting_is_exit_5_and_leaves_nothing(tmp_path: Path) -> None:
    limit = 100_000  # bytes; the example's model.safetensors is 310 KB
    script = (
        f"import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}));"
        "from reformer_tools.cli import main; sys.argv[0] = 'reformer-tools'; main()"
    )
    example = Path(__file__).parent.parent / "examples" / "zen-reformer" / "model.pkl.gz"
    result = subprocess.run(
        [sys.executable, "-c", script, "convert", str(example), "-o", str(tmp_path / "out"), "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 5, result.stderr
    check_line(result.stderr, str(tmp_path / "out"), "could not write the output")
    assert list(tmp_path.iterdir()) == []
