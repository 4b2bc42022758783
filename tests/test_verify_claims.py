"""`verify` on outputs that were changed after the conversion: it must say exactly what holds, never crash.

Built from the zen-reformer example (config.gin beside it, a char vocabulary), converted once per module.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from tests.conftest import invoke

ZEN = Path(__file__).parent.parent / "examples" / "zen-reformer" / "model.pkl.gz"
FF_KEY = "reformer.encoder.layers.0.feed_forward.dense.dense.weight"


@pytest.fixture(scope="module")
def zen_output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("zen") / "zen-hf"
    result = invoke(["convert", ZEN, "-o", out, "-q"])
    assert result.exit_code == 0, result.stderr
    return out


@pytest.fixture
def output(zen_output: Path, tmp_path: Path) -> Path:
    """A fresh copy of the converted zen model, to edit."""
    copy = tmp_path / "out"
    shutil.copytree(zen_output, copy)
    return copy


def verify_json(*args: object) -> tuple[int, dict[str, Any]]:
    result = invoke(["verify", *args, "--json"])
    assert result.exit_code in (0, 1), result.stderr
    return result.exit_code, json.loads(result.stdout)


def edit_config(directory: Path, change: Any) -> None:
    config = json.loads((directory / "config.json").read_text())
    change(config)
    (directory / "config.json").write_text(json.dumps(config))


# ------------------------------------------------------------------ #11: never an internal error


def test_a_bin_that_is_no_state_dict_is_unreadable_in_one_line(tmp_path: Path) -> None:
    import torch

    cases = {
        "list.bin": [torch.zeros(3)],
        "nested.bin": {"state_dict": {"a": torch.zeros(3)}},
        "intkey.bin": {1: torch.zeros(3)},
        "sparse.bin": {"a": torch.zeros(3).to_sparse()},
    }
    for name, content in cases.items():
        torch.save(content, tmp_path / name)
        result = invoke(["verify", ZEN, tmp_path / name])
        assert result.exit_code == 3, (name, result.stderr)
        assert result.stderr.startswith(f"error: {tmp_path / name}: cannot read the converted model (")
        assert len(result.stderr.strip().splitlines()) == 1


def test_a_tensor_of_an_unknown_dtype_is_a_dtype_difference(tmp_path: Path) -> None:
    import torch

    out = tmp_path / "zen.bin"
    assert invoke(["convert", ZEN, "-o", out, "-q"]).exit_code == 0
    state = torch.load(out, weights_only=True)
    state[FF_KEY] = state[FF_KEY].to(torch.float8_e4m3fn)
    state["reformer.encoder.layers.0.attention.output.dense.weight"] = torch.nn.Parameter(
        state["reformer.encoder.layers.0.attention.output.dense.weight"]
    )  # a parameter (requires_grad) is read like any tensor
    torch.save(state, out)
    code, report = verify_json(ZEN, out, "--numerics")
    assert code == 1
    (difference,) = report["converted"]["differences"]
    assert (difference["hf_key"], difference["status"]) == (FF_KEY, "dtype")
    assert difference["detail"] == "float8_e4m3fn instead of float32"
    assert report["numerics"] is None
    assert "stored as float8_e4m3fn" in report["numerics_skipped"]


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"reserved_ids": "two"}, "reserved_ids is 'two', not an integer"),
        ({"extra_ids": 1.5}, "extra_ids is 1.5, not an integer"),
        ({"reserved_ids": -3}, "reserved ids must be between 0 and"),
        ({"type": "words"}, "names the type 'words', not one of"),
        ({"type": "subword"}, "vocab.subword: no such vocabulary file"),
        ("char", "is a str, not a record"),
    ],
)
def test_a_bad_vocabulary_record_skips_the_tokenizer_with_the_reason(
    output: Path, record: Any, reason: str, tmp_path: Path
) -> None:
    # Without config.gin beside the checkpoint, the output's own record is the only word on its vocabulary.
    checkpoint = tmp_path / "alone" / ZEN.name
    checkpoint.parent.mkdir()
    shutil.copy(ZEN, checkpoint)

    def change(config: dict[str, Any]) -> None:
        vocabulary = config["reformer_tools"]["vocabulary"]
        if isinstance(record, dict):
            vocabulary.update(record)
        else:
            config["reformer_tools"]["vocabulary"] = record

    edit_config(output, change)
    code, report = verify_json(checkpoint, output)
    assert code == 0, report
    assert report["tokenizer"] is None
    assert reason in report["tokenizer_skipped"]
    assert report["tokenizer_skipped"].endswith("give --vocab to check the tokenizer")


# ------------------------------------------------------------------ #8: a cast only where it is declared


def store_one_tensor_as_float16(directory: Path) -> None:
    tensors = load_file(str(directory / "model.safetensors"))
    tensors[FF_KEY] = tensors[FF_KEY].astype(np.float16)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})


def test_one_tensor_silently_stored_in_float16_is_a_dtype_difference(output: Path) -> None:
    store_one_tensor_as_float16(output)
    code, report = verify_json(ZEN, output)
    assert code == 1
    (difference,) = report["converted"]["differences"]
    assert (difference["hf_key"], difference["status"]) == (FF_KEY, "dtype")
    assert "a cast the output does not declare" in difference["detail"]
    assert "several dtypes (1 float16, 31 float32)" in difference["detail"]
    assert report["converted"]["stored_dtypes"] == {"float16": 1, "float32": 31}
    assert report["converted"]["declared_dtype"] is None


def test_numerics_round_each_array_as_its_own_tensor_is_stored(output: Path) -> None:
    store_one_tensor_as_float16(output)
    code, report = verify_json(ZEN, output, "--numerics")
    assert code == 1  # the undeclared cast still fails
    numerics = report["numerics"]
    assert numerics["ok"] is True  # the model computes what its stored weights compute
    assert numerics["weights_dtype"] == "mixed (float16, float32)"
    (note,) = [n for n in numerics["notes"] if "dtype" in n]
    assert "stored in several dtypes: float16 (1), float32 (31)" in note
    assert "rounded each of its arrays to the dtype its own tensor is stored in" in note
    assert "the converted weights are float16" not in json.dumps(report)


def test_every_tensor_cast_alike_must_match_torch_dtype(output: Path) -> None:
    tensors = load_file(str(output / "model.safetensors"))
    save_file(
        {k: v.astype(np.float16) for k, v in tensors.items()},
        str(output / "model.safetensors"),
        metadata={"format": "pt"},
    )
    code, report = verify_json(ZEN, output)  # config.json still says torch_dtype float32
    assert code == 1
    details = {d["detail"] for d in report["converted"]["differences"]}
    assert details == {
        "float16 instead of float32, a cast the output does not declare: its config.json says torch_dtype "
        "'float32', every tensor is float16"
    }
    edit_config(output, lambda config: config.update(torch_dtype="float16"))
    code, report = verify_json(ZEN, output)
    assert code == 0, report
    assert report["converted"]["equal_after_cast"] == {"float16": 32}
    assert report["converted"]["declared_dtype"] == "float16"
    result = invoke(["verify", ZEN, output])
    assert "32 of 32 tensors equal (32 after a cast to float16, as the output declares)" in result.stdout


# ------------------------------------------------------------------ #8: the output's config.json against the checkpoint


def test_an_output_config_that_contradicts_config_gin_fails(output: Path) -> None:
    # config.gin beside the checkpoint binds relu and 1e-6; the edited output says gelu and 1e-12 (and still
    # records config.gin as their source). Both sides of --numerics run with the output's values and agree.
    edit_config(output, lambda config: config.update(hidden_act="gelu", layer_norm_eps=1e-12))
    code, report = verify_json(ZEN, output, "--numerics")
    assert code == 1
    sources = report["checkpoint_sources"]
    assert sources["ok"] is False
    gin = str(ZEN.parent / "config.gin")
    assert [(c["key"], c["verified"], c["checkpoint"], c["source"], c["where"]) for c in sources["conflicts"]] == [
        ("hidden_act", "gelu", "relu", "config.gin", gin),
        ("layer_norm_eps", 1e-12, 1e-6, "config.gin", gin),
    ]
    assert sources["conflicts"][0]["message"] == f'hidden_act: "gelu" in {output}/config.json, "relu" from {gin}'
    assert report["numerics"]["ok"] is True
    assert not any("unless config.gin binds" in note for note in report["numerics"]["notes"])
    result = invoke(["verify", ZEN, output])
    assert result.exit_code == 1
    assert f'config hidden_act: "gelu" in {output}/config.json, "relu" from {gin}' in result.stdout
    assert "failed: 2 config values contradict the checkpoint's own sources" in result.stdout


def test_an_output_value_the_checkpoint_only_assumes_is_a_warning_and_not_proved(output: Path, tmp_path: Path) -> None:
    # Without config.gin, the checkpoint's sources give no activation: Trax's default (FastGelu) would be
    # assumed, the output says relu. That is no failure, but it is not proved either.
    checkpoint = tmp_path / "alone" / ZEN.name
    checkpoint.parent.mkdir()
    shutil.copy(ZEN, checkpoint)
    code, report = verify_json(checkpoint, output, "--numerics")
    assert code == 0, report
    warnings = {w["key"]: w for w in report["checkpoint_sources"]["warnings"]}
    assert set(warnings) == {"hidden_act", "local_attn_chunk_length", "local_num_chunks_before"}
    hidden_act = warnings["hidden_act"]
    assert (hidden_act["verified"], hidden_act["checkpoint"], hidden_act["source"]) == ("relu", "gelu_fast", "assumed")
    assert hidden_act["message"].startswith(
        f'hidden_act: "relu" in {output}/config.json; the checkpoint\'s sources do not give it and would assume '
        '"gelu_fast" ('
    )
    assert hidden_act["message"].endswith("): not proved")
    numerics = report["numerics"]
    # the output records nothing as assumed, yet nothing of the checkpoint gives these: not proved
    assert numerics["assumed"] == {
        "hidden_act": "relu",
        "layer_norm_eps": 1e-6,
        "local_attn_chunk_length": 64,
        "local_num_chunks_before": 1,
        "local_num_chunks_after": 0,
    }
    assert "values no source of the checkpoint gives (hidden_act, layer_norm_eps" in numerics["proved"]
    # with the checkpoint's own config.gin, the same output is proved as it is
    code, report = verify_json(ZEN, output, "--numerics")
    assert code == 0, report
    assert report["checkpoint_sources"]["warnings"] == report["checkpoint_sources"]["conflicts"] == []
    assert report["numerics"]["assumed"] == {}
    assert "not proved" not in report["numerics"]["proved"]


def test_a_set_override_at_conversion_must_be_given_again(tmp_path: Path) -> None:
    out = tmp_path / "gelu"
    assert invoke(["convert", ZEN, "-o", out, "-q", "--set", "hidden_act=gelu"]).exit_code == 0
    code, report = verify_json(ZEN, out)
    assert code == 1
    (conflict,) = report["checkpoint_sources"]["conflicts"]
    assert conflict["recorded_source"] == "--set"
    assert conflict["message"].endswith("(it records --set as its source: give the same --set to verify that override)")
    code, report = verify_json(ZEN, out, "--set", "hidden_act=gelu")
    assert code == 0, report
    assert report["checkpoint_sources"]["conflicts"] == []


def test_with_config_or_without_an_output_config_nothing_more_is_compared(output: Path) -> None:
    edit_config(output, lambda config: config.update(hidden_act="gelu"))
    # --config says what the model is: verified against it as given
    _, report = verify_json(ZEN, output, "--config", output / "config.json")
    assert report["checkpoint_sources"] is None
    _, report = verify_json(ZEN)
    assert report["checkpoint_sources"] is None


def test_weightless_positions_are_taken_as_the_output_says_and_the_rest_compared(tmp_path: Path) -> None:
    sincos = Path(__file__).parent / "fixtures" / "trax_defaults" / "lm_sincos" / "layer_save_to_file" / "model.pkl.gz"
    out = tmp_path / "sincos"
    assert invoke(["convert", sincos, "-o", out, "-q", "--set", "trax_pos_type=sin-cos"]).exit_code == 0
    edit_config(out, lambda config: config.update(hidden_act="relu"))
    code, report = verify_json(sincos, out)
    assert code == 0, report
    sources = report["checkpoint_sources"]
    assert sources["not_resolved"] is None
    assert [(w["key"], w["verified"], w["checkpoint"]) for w in sources["warnings"]] == [
        ("hidden_act", "relu", "gelu_fast")
    ]
