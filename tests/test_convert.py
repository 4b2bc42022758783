"""`convert`: outputs that load, values bit-exact, dtypes, shards, and all-or-nothing writes."""

from __future__ import annotations

import gzip
import hashlib
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import load_file

from reformer_tools.dtypes import as_float32, cast, float32_to_bfloat16_bits
from reformer_tools.errors import UsageError
from reformer_tools.loader import load_checkpoint
from reformer_tools.mapper import plan
from reformer_tools.sizes import parse_size
from reformer_tools.spec import load_spec
from tests.conftest import CONVERTIBLE, TRAX_FIXTURES, fixture_checkpoints, invoke

COMPARABLE = ("hf2020_local_axial", "t124_local_axial", "t141_local_axial")  # no LSH: Trax's RNG is not ours


def expected_tensors(checkpoint: Path, config: Path) -> dict[str, np.ndarray]:
    """What each HF key must hold: the mapper's transform of the source array."""
    loaded = load_checkpoint(checkpoint)
    arrays = dict(loaded.iter_arrays())
    tensors = {}
    for assignment in plan(load_spec(config), loaded.leaves).assignments:
        value = assignment.slot.transform.apply(arrays[assignment.leaf])
        for key in assignment.slot.hf_keys:
            tensors[key] = value
    return tensors


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    shifted = x - x.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def hf_log_probs(model_dir: Path, ids: np.ndarray) -> np.ndarray:
    from transformers import ReformerModelWithLMHead

    model, info = ReformerModelWithLMHead.from_pretrained(model_dir, output_loading_info=True)
    assert not info["missing_keys"], info
    assert not info["unexpected_keys"], info
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(ids).long()).logits
    return log_softmax(logits.numpy())


@pytest.mark.parametrize(
    "checkpoint",
    [c for name in COMPARABLE for c in fixture_checkpoints(name)],
    ids=lambda p: str(p.relative_to(TRAX_FIXTURES)),
)
def test_every_real_trax_file_converts_to_trax_s_own_outputs(checkpoint: Path, tmp_path: Path) -> None:
    fixture = checkpoint.parent if (checkpoint.parent / "config.json").exists() else checkpoint.parent.parent
    out = tmp_path / "hf"
    result = invoke(["convert", checkpoint, "--config", fixture / "config.json", "-o", out])
    assert result.exit_code == 0, result.output + result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.json",
        "generation_config.json",
        "model.safetensors",
    ]
    trax = log_softmax(np.load(fixture / "logits.npy"))
    ours = hf_log_probs(out, np.load(fixture / "hf_input_ids.npy"))
    assert np.abs(ours - trax).max() <= 1e-4


@pytest.mark.parametrize("checkpoint", fixture_checkpoints("t141_mixed_axial"), ids=lambda p: p.parent.name)
def test_lsh_fixture_converts_and_loads_without_missing_keys(checkpoint: Path, tmp_path: Path) -> None:
    config = TRAX_FIXTURES / "t141_mixed_axial" / "config.json"
    out = tmp_path / "hf"
    assert invoke(["convert", checkpoint, "--config", config, "-o", out]).exit_code == 0
    written = load_file(str(out / "model.safetensors"))
    expected = expected_tensors(checkpoint, config)
    assert written.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_array_equal(written[key], value, err_msg=key)
    hf_log_probs(out, np.load(TRAX_FIXTURES / "t141_mixed_axial" / "hf_input_ids.npy"))


@pytest.mark.parametrize("checkpoint", fixture_checkpoints("t141_local_shareqk"), ids=lambda p: p.parent.name)
def test_shared_qk_local_attention_is_refused_with_exit_3(checkpoint: Path, tmp_path: Path) -> None:
    config = TRAX_FIXTURES / "t141_local_shareqk" / "config.json"
    result = invoke(["convert", checkpoint, "--config", config, "-o", tmp_path / "hf"])
    assert result.exit_code == 3
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert "shared query/key local attention" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
@pytest.mark.parametrize("name", CONVERTIBLE)
def test_single_file_outputs_hold_the_exact_transformed_values(name: str, suffix: str, tmp_path: Path) -> None:
    checkpoint = TRAX_FIXTURES / name / "model.pkl"
    config = TRAX_FIXTURES / name / "config.json"
    out = tmp_path / f"model{suffix}"
    assert invoke(["convert", checkpoint, "--config", config, "-o", out]).exit_code == 0
    if suffix == ".bin":
        written = {k: v.numpy() for k, v in torch.load(out, weights_only=True).items()}
    else:
        written = load_file(str(out))
    expected = expected_tensors(checkpoint, config)
    assert written.keys() == expected.keys()
    for key, value in expected.items():
        assert written[key].dtype == value.dtype
        np.testing.assert_array_equal(written[key], value, err_msg=key)


def test_safetensors_metadata_records_source_digest_and_format(tmp_path: Path) -> None:
    checkpoint = TRAX_FIXTURES / "t141_local_axial" / "loop_checkpoint" / "model.pkl.gz"
    out = tmp_path / "model.safetensors"
    assert (
        invoke(["convert", checkpoint, "--config", checkpoint.parent.parent / "config.json", "-o", out]).exit_code == 0
    )
    with safe_open(str(out), "np") as handle:
        metadata = handle.metadata()
    assert metadata["format"] == "pt"
    assert metadata["trax_format"] == "npy-side-file"
    assert metadata["source_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    side = checkpoint.parent / "model.weights.npy.gz"
    assert metadata["weights_sha256:model.weights.npy.gz"] == hashlib.sha256(side.read_bytes()).hexdigest()
    assert metadata["converted_by"].startswith("reformer-tools ")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_dtype_casts_round_exactly_like_torch(dtype: str, tmp_path: Path) -> None:
    name = "t141_local_axial"
    out = tmp_path / "hf"
    args = ["convert", TRAX_FIXTURES / name / "model.pkl", "--config", TRAX_FIXTURES / name / "config.json"]
    assert invoke([*args, "-o", out, "--dtype", dtype]).exit_code == 0
    torch_dtype = getattr(torch, dtype)
    with safe_open(str(out / "model.safetensors"), "pt") as handle:
        written = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - safe_open has no iterator
    for key, value in expected_tensors(
        TRAX_FIXTURES / name / "model.pkl", TRAX_FIXTURES / name / "config.json"
    ).items():
        reference = torch.from_numpy(np.ascontiguousarray(value)).to(torch_dtype)
        assert written[key].dtype == torch_dtype
        assert torch.equal(written[key].view(torch.int16), reference.view(torch.int16)), key
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == dtype


def test_bfloat16_rounding_matches_torch_on_edge_values() -> None:
    specials = np.array([0.0, -0.0, 1.0, np.inf, -np.inf, np.nan, 1e-45, 3.4e38, 1.00390625, 1.01171875], np.float32)
    values = np.concatenate([specials, np.random.default_rng(0).standard_normal(10_000).astype(np.float32) * 1e3])
    ours = float32_to_bfloat16_bits(values)
    theirs = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    finite = ~np.isnan(values)
    np.testing.assert_array_equal(ours[finite], theirs[finite])
    assert np.isnan(as_float32(ours[~finite], "bfloat16")).all()


def write_bfloat16_checkpoint(path: Path, source: Path) -> None:
    """A late-2020 training.Loop style file: flat weights as (uint16 bits, 'bfloat16') pairs."""
    loaded = load_checkpoint(source)
    pairs = [(float32_to_bfloat16_bits(as_float32(a, leaf.dtype)), "bfloat16") for leaf, a in loaded.iter_arrays()]
    with gzip.open(path, "wb") as f:
        pickle.dump({"step": 7, "flat_weights": pairs, "version_timestamp": "Oct-28-2020"}, f)


def test_bfloat16_sources_stay_bfloat16_unless_asked(tmp_path: Path) -> None:
    source = TRAX_FIXTURES / "t141_local_axial" / "model.pkl"
    config = TRAX_FIXTURES / "t141_local_axial" / "config.json"
    checkpoint = tmp_path / "model.pkl.gz"
    write_bfloat16_checkpoint(checkpoint, source)
    assert invoke(["convert", checkpoint, "--config", config, "-o", tmp_path / "keep"]).exit_code == 0
    assert (
        invoke(["convert", checkpoint, "--config", config, "-o", tmp_path / "f32", "--dtype", "float32"]).exit_code == 0
    )
    with (
        safe_open(str(tmp_path / "keep" / "model.safetensors"), "pt") as keep,
        safe_open(str(tmp_path / "f32" / "model.safetensors"), "pt") as f32,
    ):
        for key in keep.keys():  # noqa: SIM118
            assert keep.get_tensor(key).dtype == torch.bfloat16
            # decoding bfloat16 to float32 is exact: the float32 output equals the bfloat16 values
            assert torch.equal(keep.get_tensor(key).float(), f32.get_tensor(key)), key


def test_sharded_output_has_an_index_and_loads(tmp_path: Path) -> None:
    name = "t141_mixed_axial"
    out = tmp_path / "hf"
    args = ["convert", TRAX_FIXTURES / name / "model.pkl", "--config", TRAX_FIXTURES / name / "config.json"]
    assert invoke([*args, "-o", out, "--max-shard-size", "50KB"]).exit_code == 0
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 1
    assert set(index["weight_map"].values()) == set(shards)
    for shard in shards:
        with safe_open(str(out / shard), "np") as handle:
            keys = list(handle.keys())
            data = sum(handle.get_tensor(k).nbytes for k in keys)
        # under the limit, or a single tensor that is larger than the limit on its own
        assert data <= 50_000 or len(keys) == 1
    hf_log_probs(out, np.load(TRAX_FIXTURES / name / "hf_input_ids.npy"))


def test_shard_size_parsing() -> None:
    assert parse_size("2GB") == 2_000_000_000
    assert parse_size("500MiB") == 500 * 2**20
    assert parse_size("1.5 kb") == 1500
    with pytest.raises(UsageError):
        parse_size("lots")


def test_cast_keeps_matching_dtypes_untouched() -> None:
    array = np.arange(4, dtype=np.float32)
    assert cast(array, "float32", "float32") is array


# ------------------------------------------------------------------ all or nothing


def convert_args(out: Path, *extra: Any) -> list[Any]:
    name = "t141_local_axial"
    return [
        "convert",
        TRAX_FIXTURES / name / "model.pkl",
        "--config",
        TRAX_FIXTURES / name / "config.json",
        "-o",
        out,
        *extra,
    ]


def test_existing_output_is_not_overwritten_without_force(tmp_path: Path) -> None:
    out = tmp_path / "model.safetensors"
    out.write_bytes(b"precious")
    result = invoke(convert_args(out))
    assert result.exit_code == 2
    assert "already exists" in result.stderr
    assert "--force" in result.stderr
    assert out.read_bytes() == b"precious"
    assert invoke(convert_args(out, "--force")).exit_code == 0
    assert load_file(str(out))


def test_force_replaces_a_previous_conversion_but_never_other_directories(tmp_path: Path) -> None:
    out = tmp_path / "hf"
    assert invoke(convert_args(out)).exit_code == 0
    assert invoke(convert_args(out, "--force")).exit_code == 0
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    result = invoke(convert_args(home, "--force"))
    assert result.exit_code == 2
    assert "refusing to delete it" in result.stderr
    assert (home / "thesis.tex").read_text() == "years of work"


def test_output_may_not_be_the_checkpoint(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.bin"
    checkpoint.write_bytes((TRAX_FIXTURES / "t141_local_axial" / "model.pkl").read_bytes())
    config = TRAX_FIXTURES / "t141_local_axial" / "config.json"
    result = invoke(["convert", checkpoint, "--config", config, "-o", checkpoint, "--force"])
    assert result.exit_code == 2
    assert "would overwrite the input" in result.stderr


def test_missing_parent_directories_are_created_only_on_success(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b" / "hf"
    assert invoke(convert_args(out)).exit_code == 0
    assert (out / "config.json").exists()
    bad_config = tmp_path / "bad.json"
    bad_config.write_text(
        json.dumps(
            {**json.loads((TRAX_FIXTURES / "t141_local_axial" / "config.json").read_text()), "feed_forward_size": 65}
        )
    )
    result = invoke(
        [
            "convert",
            TRAX_FIXTURES / "t141_local_axial" / "model.pkl",
            "--config",
            bad_config,
            "-o",
            tmp_path / "x" / "hf",
        ]
    )
    assert result.exit_code == 1
    assert "run `reformer-tools verify`" in result.stderr
    assert not (tmp_path / "x").exists()


def test_streamed_side_file_that_disagrees_with_the_config_leaves_nothing(tmp_path: Path) -> None:
    checkpoint = TRAX_FIXTURES / "t141_local_axial" / "loop_checkpoint" / "model.pkl.gz"
    config = tmp_path / "config.json"
    original = json.loads((TRAX_FIXTURES / "t141_local_axial" / "config.json").read_text())
    config.write_text(json.dumps({**original, "feed_forward_size": 65}))
    result = invoke(["convert", checkpoint, "--config", config, "-o", tmp_path / "hf"])
    assert result.exit_code == 1
    assert "shape mismatches" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_legacy_flags_of_the_old_script_work(tmp_path: Path) -> None:
    name = "hf2020_local_axial"
    out = tmp_path / "pytorch_model.bin"
    result = invoke(
        [
            "convert",
            "--trax_model_pkl_path", TRAX_FIXTURES / name / "model.pkl",
            "--config_file", TRAX_FIXTURES / name / "config.json",
            "--pytorch_dump_path", out,
        ]
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert (
        torch.load(out, weights_only=True).keys()
        == expected_tensors(TRAX_FIXTURES / name / "model.pkl", TRAX_FIXTURES / name / "config.json").keys()
    )


def test_dry_run_writes_nothing_and_lists_every_tensor(tmp_path: Path) -> None:
    checkpoint = TRAX_FIXTURES / "t141_mixed_axial" / "loop_checkpoint" / "model.pkl.gz"
    config = TRAX_FIXTURES / "t141_mixed_axial" / "config.json"
    result = invoke(["convert", checkpoint, "--config", config, "-o", tmp_path / "hf", "--dry-run", "--json"])
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["dry_run"] is True
    assert len(document["tensors"]) == 54
    first = document["tensors"][0]
    assert first == {
        "hf_key": "reformer.embeddings.word_embeddings.weight",
        "trax_path": "model.weights.npy.gz[0]",
        "transform": "identity",
        "source_shape": [320, 32],
        "target_shape": [320, 32],
        "dtype": "float32",
        "bytes": 320 * 32 * 4,
    }
    assert document["total_bytes"] == sum(t["bytes"] for t in document["tensors"])
    assert list(tmp_path.iterdir()) == []


def test_converting_while_loading_falls_back_when_the_weights_are_not_first(tmp_path: Path) -> None:
    # Adam's slots have exactly the weights' shapes: pickled before the weights, they stream in
    # first and pass every shape check. Only the identity check at the end of the load can tell,
    # and the conversion must then be redone from the weights.
    config = TRAX_FIXTURES / "t141_local_axial" / "config.json"
    weights = [np.array(a) for _, a in load_checkpoint(TRAX_FIXTURES / "t141_local_axial" / "model.pkl").iter_arrays()]
    slots = [np.full_like(w, 0.5) for w in weights]
    checkpoint = tmp_path / "model.pkl.gz"
    with gzip.open(checkpoint, "wb") as f:
        pickle.dump({"slots": slots, "flat_weights": weights, "version_timestamp": "Jun-18-2020"}, f)
    out = tmp_path / "model.safetensors"
    assert invoke(["convert", checkpoint, "--config", config, "-o", out]).exit_code == 0
    written = load_file(str(out))
    assert np.array_equal(written["reformer.embeddings.word_embeddings.weight"], weights[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pkl.gz", "model.safetensors"]


def test_converting_while_loading_reports_a_corrupt_file_and_leaves_nothing(tmp_path: Path) -> None:
    source = TRAX_FIXTURES / "t141_local_axial" / "trainer_lib" / "model.pkl.gz"
    checkpoint = tmp_path / "model.pkl.gz"
    checkpoint.write_bytes(source.read_bytes()[:-20])  # the last arrays and the gzip trailer are gone
    result = invoke(
        ["convert", checkpoint, "--config", TRAX_FIXTURES / "t141_local_axial" / "config.json", "-o", tmp_path / "hf"]
    )
    assert result.exit_code == 3
    assert "truncated" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pkl.gz"]
