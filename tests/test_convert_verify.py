"""``convert --verify``: the output is checked before it is put in place, and never put there if it differs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from reformer_tools import convert as convert_module
from tests.conftest import TRAX_FIXTURES, invoke
from tests.test_hostile import check_line, files_under

LOCAL = TRAX_FIXTURES / "t141_local_axial"
ZEN = Path(__file__).parent.parent / "examples" / "zen-reformer" / "model.pkl.gz"


def test_a_verified_directory_says_what_was_proved(tmp_path: Path) -> None:
    out = tmp_path / "hf"
    result = invoke(["convert", ZEN, "-o", out, "--verify", "--json"])
    assert result.exit_code == 0, result.stderr
    verification = json.loads(result.stdout)["verification"]
    assert verification["ok"] is True
    assert verification["converted"]["path"] == str(out)  # not the hidden name it was checked under
    assert verification["numerics"]["complete"] is True
    assert verification["numerics"]["max_abs_diff"] <= 1e-4
    assert verification["tokenizer"]["ids_equal"] == verification["tokenizer"]["texts"] > 0
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "## Verification" in card
    assert verification["converted"]["equal"] == verification["converted"]["compared"] > 0
    assert f"all {verification['converted']['compared']} tensors" in card
    assert "Proved: the converted model's log-probabilities equal Trax's" in card
    # The card states what a separate `verify` confirms.
    check = invoke(["verify", ZEN, out])
    assert check.exit_code == 0, check.stdout


def test_without_verify_the_card_claims_no_verification(tmp_path: Path) -> None:
    result = invoke(["convert", ZEN, "-o", tmp_path / "hf"])
    assert result.exit_code == 0, result.stderr
    assert "## Verification" not in (tmp_path / "hf" / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("output", ["model.safetensors", "legacy.pt"])
def test_single_files_are_verified_too(output: str, tmp_path: Path) -> None:
    option = "--pytorch_dump_path" if output.endswith(".pt") else "-o"
    result = invoke(["convert", LOCAL / "model.pkl", "--config", LOCAL / "config.json", option, tmp_path / output])
    assert result.exit_code == 0, result.stderr
    (tmp_path / output).unlink()
    result = invoke(
        ["convert", LOCAL / "model.pkl", "--config", LOCAL / "config.json", option, tmp_path / output, "--verify"]
    )
    assert result.exit_code == 0, result.stderr
    assert "verified before writing: all" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == [output]


def test_an_output_that_differs_is_never_put_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    transform = convert_module._transform
    calls: list[int] = []

    def off_by_a_little(planned: Any, array: Any, scratch: Any) -> Any:
        calls.append(1)
        out = transform(planned, array, scratch)
        return out + np.float32(1e-3) if len(calls) == 3 else out  # one tensor, slightly wrong

    monkeypatch.setattr(convert_module, "_transform", off_by_a_little)
    out = tmp_path / "hf"
    before = files_under(tmp_path)
    result = invoke(["convert", LOCAL / "model.pkl", "--config", LOCAL / "config.json", "-o", out, "--verify"])
    assert result.exit_code == 1, result.stderr
    check_line(result.stderr, str(out), "not written", "converted output differs: 1 tensors")
    assert result.stdout == ""
    assert files_under(tmp_path) == before  # no output, no staging directory
    # Unverified, the same fault goes unnoticed: that is what --verify is for.
    calls.clear()
    result = invoke(["convert", LOCAL / "model.pkl", "--config", LOCAL / "config.json", "-o", out])
    assert result.exit_code == 0
    assert invoke(["verify", LOCAL / "model.pkl", out, "--config", LOCAL / "config.json"]).exit_code == 1


def test_dry_run_and_verify_do_not_go_together(tmp_path: Path) -> None:
    result = invoke(["convert", ZEN, "-o", tmp_path / "hf", "--verify", "--dry-run"])
    assert result.exit_code == 2
    check_line(result.stderr, "--verify checks what is written")


def test_a_gzip_pickle_converted_while_it_loads_is_verified_before_it_is_put_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    streamed: list[int] = []
    as_built = convert_module._tensors_as_built

    def counting(*args: Any) -> Any:
        streamed.append(1)
        return as_built(*args)

    monkeypatch.setattr(convert_module, "_tensors_as_built", counting)
    checkpoint = LOCAL / "trainer_lib" / "model.pkl.gz"
    result = invoke(["convert", checkpoint, "--config", LOCAL / "config.json", "-o", tmp_path / "hf", "--verify"])
    assert result.exit_code == 0, result.stderr
    assert streamed  # the streaming path, whose output is checked as any other
    assert "verified before writing" in result.stdout
    assert "## Verification" in (tmp_path / "hf" / "README.md").read_text(encoding="utf-8")
