"""`verify`: array health, converted outputs compared value by value, configs cross-checked."""

from __future__ import annotations

import gzip
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from reformer_tools.loader import load_checkpoint
from tests.conftest import FIXTURES, TRAX_FIXTURES, invoke

LOCAL = TRAX_FIXTURES / "t141_local_axial"
CONFIG = LOCAL / "config.json"


@pytest.fixture
def converted(tmp_path: Path) -> Path:
    out = tmp_path / "hf"
    assert invoke(["convert", LOCAL / "model.pkl", "--config", CONFIG, "-o", out, "-q"]).exit_code == 0
    return out


def verify_json(*args: object) -> tuple[int, dict[str, object]]:
    result = invoke(["verify", *args, "--json"])
    return result.exit_code, json.loads(result.stdout)


@pytest.mark.parametrize("source", ["model.pkl", "trainer_lib/model.pkl.gz", "loop_checkpoint/model.pkl.gz"])
def test_a_faithful_conversion_verifies_from_every_format(source: str, converted: Path) -> None:
    code, report = verify_json(LOCAL / source, converted)
    assert code == 0, report
    assert report["converted"]["compared"] == report["converted"]["equal"] == 32


def test_one_changed_value_is_found(converted: Path) -> None:
    tensors = load_file(str(converted / "model.safetensors"))
    tensors["reformer.encoder.layers.1.attention.self_attention.key.weight"][3, 4] += 1e-3
    save_file(tensors, str(converted / "model.safetensors"), metadata={"format": "pt"})
    code, report = verify_json(LOCAL / "model.pkl", converted)
    assert code == 1
    (difference,) = report["converted"]["differences"]
    assert difference["hf_key"] == "reformer.encoder.layers.1.attention.self_attention.key.weight"
    assert difference["trax_path"] == "weights[5][4][1][1]"
    assert difference["status"] == "different"
    assert difference["max_abs_diff"] == pytest.approx(1e-3, rel=1e-2)


def test_missing_and_unexpected_tensors_are_found(converted: Path) -> None:
    tensors = load_file(str(converted / "model.safetensors"))
    del tensors["lm_head.bias"]
    tensors["stray.weight"] = np.zeros(3, np.float32)
    save_file(tensors, str(converted / "model.safetensors"), metadata={"format": "pt"})
    code, report = verify_json(LOCAL / "model.pkl", converted)
    assert code == 1
    assert [d["hf_key"] for d in report["converted"]["differences"]] == ["lm_head.bias"]
    assert report["converted"]["differences"][0]["status"] == "missing"
    assert report["converted"]["unexpected"] == ["stray.weight"]


def test_the_old_script_s_stale_lm_head_bias_is_caught() -> None:
    fixture = TRAX_FIXTURES / "hf2020_local_axial"
    old_output = FIXTURES / "hf_script_output" / "hf2020_local_axial.bin"
    code, report = verify_json(fixture / "model.pkl", old_output, "--config", fixture / "config.json")
    assert code == 1
    assert [d["hf_key"] for d in report["converted"]["differences"]] == ["lm_head.bias"]


def test_converted_config_must_agree_with_the_verified_config(converted: Path, tmp_path: Path) -> None:
    config = json.loads((converted / "config.json").read_text())
    config["layer_norm_eps"] = 1e-12
    (converted / "config.json").write_text(json.dumps(config))
    code, report = verify_json(LOCAL / "model.pkl", converted, "--config", CONFIG)
    assert code == 1
    assert report["converted"]["config_differences"] == [
        "layer_norm_eps: 1e-12 in the output, 1e-06 in the verified config"
    ]
    # without --config the directory's own config.json is the one verified against, and against the
    # checkpoint's own sources: no config.gin here, so 1e-6 was only assumed and 1e-12 is a warning
    code, report = verify_json(LOCAL / "model.pkl", converted)
    assert code == 0
    assert report["config_source"].endswith("config.json")
    assert report["checkpoint_sources"]["conflicts"] == []
    warnings = {w["key"]: (w["verified"], w["checkpoint"]) for w in report["checkpoint_sources"]["warnings"]}
    assert warnings["layer_norm_eps"] == (1e-12, 1e-6)


def test_converted_config_that_contradicts_its_tensors(converted: Path) -> None:
    config = json.loads((converted / "config.json").read_text())
    config["feed_forward_size"] = 48
    (converted / "config.json").write_text(json.dumps(config))
    code, report = verify_json(LOCAL / "model.pkl", converted, "--config", CONFIG)
    assert code == 1
    assert any("feed_forward.dense.dense.weight is [48, 32]" in p for p in report["converted"]["config_problems"])


def write_flat_checkpoint(path: Path, arrays: list[np.ndarray]) -> None:
    with gzip.open(path, "wb") as f:
        pickle.dump({"flat_weights": arrays}, f)


def test_nan_inf_and_zero_weights_fail_but_zero_biases_do_not(tmp_path: Path) -> None:
    arrays = [np.array(a) for _, a in load_checkpoint(LOCAL / "model.pkl").iter_arrays()]
    arrays[0][0, 0] = np.nan
    arrays[0][1, 1] = np.inf
    arrays[5][:] = 0  # layer 0 query: a weight matrix
    arrays[14][:] = 0  # layer 0 second feed-forward bias
    checkpoint = tmp_path / "model.pkl.gz"
    write_flat_checkpoint(checkpoint, arrays)
    code, report = verify_json(checkpoint, "--config", CONFIG)
    assert code == 1
    health = report["arrays"]
    assert health["nan"] == [
        {"path": "flat_weights[0]", "hf_key": "reformer.embeddings.word_embeddings.weight", "count": 1}
    ]
    assert health["inf"][0]["count"] == 1
    assert {(z["path"], z["suspicious"]) for z in health["all_zero"]} == {
        ("flat_weights[5]", True),
        ("flat_weights[14]", False),
    }
    arrays[0][0, 0] = arrays[0][1, 1] = 0.5
    arrays[5][:] = 0.25
    write_flat_checkpoint(checkpoint, arrays)
    code, _ = verify_json(checkpoint, "--config", CONFIG)
    assert code == 0  # a zero bias alone is normal for an untrained model


def test_bfloat16_output_is_compared_after_the_same_cast(converted: Path, tmp_path: Path) -> None:
    out = tmp_path / "bf16"
    assert invoke(["convert", LOCAL / "model.pkl", "--config", CONFIG, "-o", out, "--dtype", "bfloat16"]).exit_code == 0
    code, report = verify_json(LOCAL / "model.pkl", out)
    assert code == 0, report
    # verify reads bfloat16 safetensors without torch: check the header really says BF16
    raw = (out / "model.safetensors").read_bytes()
    header = json.loads(raw[8 : 8 + struct.unpack("<Q", raw[:8])[0]])
    assert header["lm_head.bias"]["dtype"] == "BF16"


def test_human_report_names_the_difference(converted: Path) -> None:
    tensors = load_file(str(converted / "model.safetensors"))
    tensors["lm_head.decoder.weight"] *= 2
    save_file(tensors, str(converted / "model.safetensors"), metadata={"format": "pt"})
    result = invoke(["verify", LOCAL / "model.pkl", converted])
    assert result.exit_code == 1
    assert "different lm_head.decoder.weight <- weights[9][1][0]" in result.stdout
    assert "converted output differs" in result.stdout


def test_numerics_agree_for_a_faithful_conversion(converted: Path) -> None:
    code, report = verify_json(LOCAL / "model.pkl", converted, "--numerics", "--input-ids", LOCAL / "input_ids.npy")
    assert code == 0, report
    numerics = report["numerics"]
    assert numerics["complete"] is True
    assert numerics["max_abs_diff"] <= 1e-4
    assert numerics["sequence_length"] == 64
    assert len(numerics["positions"]) == 64


def test_numerics_run_on_the_mapped_tensors_without_a_converted_model() -> None:
    mixed = TRAX_FIXTURES / "t141_mixed_axial"
    code, report = verify_json(mixed / "model.pkl", "--config", mixed / "config.json", "--numerics")
    assert code == 0, report
    assert "hash_seed" in report["numerics"]["lsh"]


def test_numerics_catch_a_wrong_value_that_keeps_every_shape(converted: Path) -> None:
    tensors = load_file(str(converted / "model.safetensors"))
    key = "reformer.encoder.layers.0.feed_forward.output.dense.weight"
    tensors[key] = tensors[key][::-1].copy()  # same shape, rows reversed
    save_file(tensors, str(converted / "model.safetensors"), metadata={"format": "pt"})
    code, report = verify_json(LOCAL / "model.pkl", converted, "--numerics")
    assert code == 1
    assert report["numerics"]["ok"] is False
    assert report["numerics"]["max_abs_diff"] > 1e-3


def test_numerics_are_skipped_with_a_reason_when_shapes_disagree(tmp_path: Path) -> None:
    config = json.loads(CONFIG.read_text())
    config["feed_forward_size"] = 48
    bad = tmp_path / "config.json"
    bad.write_text(json.dumps(config))
    code, report = verify_json(LOCAL / "model.pkl", "--config", bad, "--numerics")
    assert code == 1
    assert report["numerics"] is None
    assert "does not match the config" in report["numerics_skipped"]


def test_numerics_options_without_numerics_are_a_usage_error() -> None:
    for option in (["--atol", "0"], ["--seed", "0"]):
        result = invoke(["verify", LOCAL / "model.pkl", "--config", LOCAL / "config.json", *option])
        assert result.exit_code == 2
        assert f"{option[0]} only apply to --numerics" in result.stderr
