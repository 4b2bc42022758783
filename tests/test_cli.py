"""The command line: human and JSON output, streams, exit codes, help text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reformer_tools.loader import load_checkpoint
from tests.conftest import TRAX_FIXTURES, fixture_checkpoints, invoke

LOCAL = TRAX_FIXTURES / "t141_local_axial"


@pytest.mark.parametrize("checkpoint", fixture_checkpoints("t141_mixed_axial"), ids=lambda p: p.parent.name)
def test_inspect_json_is_one_document_with_the_documented_fields(checkpoint: Path) -> None:
    result = invoke(["inspect", checkpoint, "--config", TRAX_FIXTURES / "t141_mixed_axial" / "config.json", "--json"])
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert {"format", "total_parameters", "total_bytes", "arrays"} <= document.keys()
    assert document["total_parameters"] == 55872  # meta.json's n_params
    assert len(document["arrays"]) == 53
    assert all(set(a) >= {"path", "shape", "dtype", "hf_key"} for a in document["arrays"])
    assert all(a["hf_key"] for a in document["arrays"])
    assert document["total_bytes"] == 4 * document["total_parameters"]


def test_inspect_human_output_lists_every_array_and_totals() -> None:
    result = invoke(["inspect", LOCAL / "trainer_lib" / "model.pkl.gz"])
    assert result.exit_code == 0
    assert "gzip-flat-weights" in result.stdout
    assert "flat_weights[30]" in result.stdout
    assert "lm_head.decoder.bias" in result.stdout  # keys from the inferred config
    assert "31 arrays, 19,328 parameters" in result.stdout
    assert "input signature (2, 64) int32" in result.stdout
    # what was inferred goes to stderr, never into the result
    assert "inferred from the weight shapes" in result.stderr
    assert "defaulted (not visible" not in result.stdout


def test_inspect_depth_collapses_the_nested_tree() -> None:
    result = invoke(["inspect", TRAX_FIXTURES / "t124_local_axial" / "model.pkl", "--depth", "1"])
    assert result.exit_code == 0
    assert "weights[5]" in result.stdout
    assert "24 arrays" in result.stdout  # two decoder layers of 12 arrays each
    assert "weights[5][0]" not in result.stdout


def test_inspect_config_out_writes_a_loadable_config(tmp_path: Path) -> None:
    out = tmp_path / "config.json"
    result = invoke(["inspect", LOCAL / "model.pkl", "--config-out", out])
    assert result.exit_code == 0, result.stderr
    config = json.loads(out.read_text())
    given = json.loads((LOCAL / "config.json").read_text())
    for key in ("vocab_size", "hidden_size", "num_attention_heads", "attention_head_size", "feed_forward_size"):
        assert config[key] == given[key]
    assert config["attn_layers"] == given["attn_layers"]
    assert config["layer_norm_eps"] == 1e-6
    assert invoke(["inspect", LOCAL / "model.pkl", "--config-out", out]).exit_code == 2  # no silent overwrite


def test_inspect_globals_lists_what_the_pickle_references() -> None:
    result = invoke(["inspect", LOCAL / "trainer_lib" / "model.pkl.gz", "--globals", "--json"])
    assert result.exit_code == 0, result.stderr
    names = {f"{g['module']}.{g['name']}" for g in json.loads(result.stdout)["globals"]}
    assert {"trax.supervised.history.History", "trax.shapes.ShapeDtype", "jax._src.array._reconstruct_array"} <= names
    assert all(g["allowed"] for g in json.loads(result.stdout)["globals"])


def test_verify_passes_with_the_right_config() -> None:
    result = invoke(["verify", LOCAL / "loop_checkpoint" / "model.pkl.gz", "--config", LOCAL / "config.json", "--json"])
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["ok"] is True
    assert document["mismatches"] == []
    assert document["missing"] == []
    assert document["unused"] == []


def test_verify_reports_every_disagreement_at_once(tmp_path: Path) -> None:
    config = json.loads((LOCAL / "config.json").read_text())
    config.update(feed_forward_size=48, attn_layers=["local", "local", "local"])
    bad = tmp_path / "config.json"
    bad.write_text(json.dumps(config))
    result = invoke(["verify", LOCAL / "model.pkl", "--config", bad, "--json"])
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert document["ok"] is False
    assert len(document["mismatches"]) == 6  # W1, b1 and W2 of both layers: every array with d_ff in its shape
    assert {m["trax_path"] for m in document["mismatches"]} >= {"weights[5][2][0][1][0]", "weights[5][6][0][1][0]"}
    assert len(document["missing"]) == 12  # the third layer
    assert document["unused"] == []
    human = invoke(["verify", LOCAL / "model.pkl", "--config", bad])
    assert human.exit_code == 1
    assert "failed" in human.stdout
    assert "missing" in human.stdout


def test_help_documents_exit_codes_on_every_command() -> None:
    for args in ([], ["inspect"], ["convert"], ["verify"]):
        result = invoke([*args, "--help"])
        assert result.exit_code == 0
        assert "Exit codes:" in result.stdout
        assert "4  unsafe content refused" in result.stdout


def test_errors_are_one_line_on_stderr_and_debug_adds_the_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pkl"
    result = invoke(["inspect", missing])
    assert result.exit_code == 3
    assert result.stdout == ""
    assert result.stderr.strip() == f"error: {missing}: no such file"
    debug = invoke(["--debug", "inspect", missing])
    assert debug.exit_code == 3
    assert "Traceback" in debug.stderr
    assert invoke(["inspect", missing, "--debug"]).stderr.count("Traceback") == 1


def test_usage_errors_exit_2() -> None:
    assert invoke(["convert", LOCAL / "model.pkl"]).exit_code == 2
    assert invoke(["inspect", LOCAL / "model.pkl", "--depth", "0"]).exit_code == 2
    result = invoke(["convert", LOCAL / "model.pkl", "-o", "x", "--max-shard-size", "huge"])
    assert result.exit_code == 2


def test_loader_and_cli_agree_on_leaf_count() -> None:
    for checkpoint in fixture_checkpoints("t141_local_axial"):
        leaves = load_checkpoint(checkpoint).leaves
        document = json.loads(invoke(["inspect", checkpoint, "--json"]).stdout)
        assert [a["path"] for a in document["arrays"]] == [leaf.path for leaf in leaves]
