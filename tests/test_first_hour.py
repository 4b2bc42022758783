"""What a newcomer met in a first hour with the tool (issue 11), each pinned by a test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from reformer_tools.errors import ExitCode
from tests.conftest import TRAX_FIXTURES, invoke

LOCAL = TRAX_FIXTURES / "t141_local_axial"
CONFIG = LOCAL / "config.json"
EXAMPLE = Path(__file__).parent.parent / "examples" / "tiny-reformer"


def test_a_bin_output_is_reported_under_its_own_name(tmp_path: Path) -> None:
    out = tmp_path / "out" / "m.bin"
    result = invoke(["convert", LOCAL / "model.pkl", "--config", CONFIG, "-o", out, "--json"])
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert [f["name"] for f in document["files"]] == ["m.bin"]
    human = invoke(["convert", LOCAL / "model.pkl", "--config", CONFIG, "-o", tmp_path / "h" / "m.bin"])
    assert "m.bin" in human.stdout
    assert "model.bin" not in human.stdout


def test_the_legacy_dump_path_is_a_torch_file_whatever_its_name(tmp_path: Path) -> None:
    """The old script wrote torch.save(state_dict) at --pytorch_dump_path; recipes relying on it keep working."""
    out = tmp_path / "reformer_dump"
    result = invoke(
        ["convert", "--trax_model_pkl_path", LOCAL / "model.pkl", "--config_file", CONFIG, "--pytorch_dump_path", out]
    )
    assert result.exit_code == 0, result.stderr
    assert out.is_file()
    state_dict = torch.load(out, weights_only=True)
    assert "lm_head.decoder.weight" in state_dict


def test_convert_json_lists_the_digest_of_every_written_file(tmp_path: Path) -> None:
    import hashlib

    out = tmp_path / "hf"
    result = invoke(["convert", LOCAL / "model.pkl", "--config", CONFIG, "-o", out, "--json"])
    assert result.exit_code == 0, result.stderr
    files = json.loads(result.stdout)["files"]
    assert {f["name"] for f in files} >= {"model.safetensors", "config.json"}
    for entry in files:
        data = (out / entry["name"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["bytes"] == len(data)


def test_dry_run_refuses_where_the_real_run_would(tmp_path: Path) -> None:
    out = tmp_path / "hf"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = invoke(["convert", LOCAL / "model.pkl", "--config", CONFIG, "-o", out, "--dry-run"])
    assert result.exit_code == ExitCode.USAGE
    assert "would refuse" in result.stdout
    assert "would be written" not in result.stdout
    document = json.loads(
        invoke(["convert", LOCAL / "model.pkl", "--config", CONFIG, "-o", out, "--dry-run", "--json"]).stdout
    )
    assert document["ok"] is False
    assert "already exists" in document["refusal"]


def test_dry_run_shows_the_shards_and_where_the_config_came_from(tmp_path: Path) -> None:
    args = ["convert", LOCAL / "model.pkl", "--config", CONFIG, "-o", tmp_path / "hf", "--dry-run", "--json"]
    document = json.loads(invoke([*args, "--max-shard-size", "20KB"]).stdout)
    assert document["config_source"] == str(CONFIG)
    names = [f["name"] for f in document["files"]]
    assert len(names) > 1
    assert all(name.startswith("model-") for name in names)
    assert not (tmp_path / "hf").exists()


def test_closing_the_pipe_stops_quietly(tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "200"}
    with subprocess.Popen(
        [sys.executable, "-m", "reformer_tools", "inspect", str(LOCAL / "model.pkl")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    ) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        process.stdout.readline()
        process.stdout.close()  # what `| head -1` does
        stderr = process.stderr.read().decode()
        assert process.wait(timeout=60) == ExitCode.STDOUT_CLOSED
    assert "Traceback" not in stderr
    assert "error" not in stderr


def test_errors_about_input_ids_name_the_file(tmp_path: Path) -> None:
    big = tmp_path / "ids.npy"
    np.save(big, np.full((1, 16), 10_000, dtype=np.int32))
    result = invoke(["verify", LOCAL / "model.pkl", "--config", CONFIG, "--numerics", "--input-ids", big])
    assert result.exit_code == ExitCode.USAGE
    assert str(big) in result.stderr
    not_npy = invoke(["verify", LOCAL / "model.pkl", "--config", CONFIG, "--numerics", "--input-ids", CONFIG])
    assert not_npy.exit_code == ExitCode.USAGE
    assert str(CONFIG) in not_npy.stderr
    assert "allow_pickle" not in not_npy.stderr


def test_a_directory_given_as_config_is_one_line(tmp_path: Path) -> None:
    result = invoke(["inspect", LOCAL / "model.pkl", "--config", tmp_path])
    assert result.exit_code == ExitCode.USAGE
    assert "Usage:" not in result.stderr
    assert result.stderr.count("\n") == 1
    assert "is a directory" in result.stderr


def test_keys_are_never_broken_at_80_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    result = invoke(["inspect", LOCAL / "trainer_lib" / "model.pkl.gz", "--config", CONFIG])
    assert result.exit_code == 0, result.stderr
    assert "reformer.encoder.layers.1.feed_forward.output.dense.weight" in result.stdout
    assert "flat_weights[30]" in result.stdout  # nor paths, shapes or dtypes
    assert "(2, 32, 8)" in result.stdout
    assert "…" not in result.stdout
    verify = invoke(["verify", LOCAL / "model.pkl", "--config", CONFIG])
    assert verify.exit_code == 0


def test_group_help_shows_whole_command_descriptions() -> None:
    result = invoke(["--help"])
    commands = result.stdout[result.stdout.index("Commands:") :]
    assert "Show a checkpoint's arrays and their Hugging Face keys." in commands
    assert "Convert a checkpoint for ReformerModelWithLMHead." in commands
    assert "..." not in commands


def test_config_out_writes_what_the_checkpoint_says_even_with_config(tmp_path: Path) -> None:
    given = json.loads(CONFIG.read_text())
    edited = tmp_path / "given.json"
    edited.write_text(json.dumps({**given, "hidden_act": "gelu"}))
    out = tmp_path / "inferred.json"
    result = invoke(["inspect", LOCAL / "model.pkl", "--config", edited, "--config-out", out])
    assert result.exit_code == 0, result.stderr
    written = json.loads(out.read_text())
    assert written["hidden_act"] == "gelu_fast"  # Trax's FastGelu, assumed: not --config's "gelu"
    assert "hidden_act" in written["reformer_tools"]["assumed"]


def test_depth_groups_a_flat_checkpoint_by_model_part() -> None:
    result = invoke(["inspect", LOCAL / "trainer_lib" / "model.pkl.gz", "--depth", "1"])
    assert result.exit_code == 0, result.stderr
    assert "layer 0" in result.stdout
    assert "12 arrays" in result.stdout
    assert "flat_weights[5]" not in result.stdout


def test_force_is_described_one_way() -> None:
    helps = [invoke([command, "--help"]).stdout for command in ("convert", "inspect")]
    assert "previous conversion" in helps[0]
    assert "Replace an existing file at --config-out" in helps[1]


def test_shell_completion_is_documented() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    assert "_REFORMER_TOOLS_COMPLETE" in readme


def test_the_quick_start_output_is_ignored_by_git() -> None:
    ignored = (Path(__file__).parent.parent / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert "zen-hf/" in ignored


def test_bfloat16_outputs_say_how_to_load_them_and_verify_at_the_default_tolerance(tmp_path: Path) -> None:
    mixed = TRAX_FIXTURES / "t141_mixed_axial"
    out = tmp_path / "hf"
    converted = invoke(
        ["convert", mixed / "model.pkl", "--config", mixed / "config.json", "-o", out, "--dtype", "bfloat16"]
    )
    assert converted.exit_code == 0, converted.stderr
    assert "dtype=torch.float32" in (out / "README.md").read_text(encoding="utf-8")
    from transformers import ReformerModelWithLMHead

    model = ReformerModelWithLMHead.from_pretrained(out, dtype=torch.float32)  # what the card says works on a CPU
    assert model(torch.tensor([[0, 5, 6, 7]])).logits.shape == (1, 4, 320)
    result = invoke(["verify", mixed / "model.pkl", out, "--numerics", "--json"])
    assert result.exit_code == 0, result.stdout
    numerics = json.loads(result.stdout)["numerics"]
    assert numerics["atol"] == 1e-4
    assert numerics["weights_dtype"] == "bfloat16"
    assert any("rounded alike" in note for note in numerics["notes"])


def test_config_out_never_replaces_an_input_even_with_force(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.pkl"
    checkpoint.write_bytes((LOCAL / "model.pkl").read_bytes())
    config = tmp_path / "config.json"
    config.write_text(CONFIG.read_text())
    for target, extra in ((checkpoint, []), (config, ["--config", config])):
        before = target.read_bytes()
        result = invoke(["inspect", checkpoint, *extra, "--config-out", target, "--force"])
        assert result.exit_code == 2, result.stderr
        assert "the output would overwrite the input" in result.stderr
        assert target.read_bytes() == before


def test_config_out_with_config_keeps_the_vocabulary_options(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.pkl.gz"  # the example without its config.gin: the options name the vocabulary
    checkpoint.write_bytes((Path(__file__).parent.parent / "examples" / "zen-reformer" / "model.pkl.gz").read_bytes())
    options = ["--vocab-type", "char", "--reserved-ids", "2"]
    assert invoke(["inspect", checkpoint, "--config-out", tmp_path / "a.json", *options]).exit_code == 0
    result = invoke(
        ["inspect", checkpoint, "--config", tmp_path / "a.json", "--config-out", tmp_path / "b.json", *options]
    )
    assert result.exit_code == 0, result.stderr
    written = json.loads((tmp_path / "b.json").read_text())
    assert (written["pad_token_id"], written["eos_token_id"]) == (0, 1)
    assert written["reformer_tools"]["sources"]["pad_token_id"] == "vocabulary"
