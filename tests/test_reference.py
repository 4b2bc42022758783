"""The NumPy reference of Trax's ReformerLM: against Trax's own outputs, and against Hugging Face with LSH.

Trax's outputs come from the real Trax-written fixtures (local attention: deterministic). LSH
depends on random rotations Trax draws from JAX's RNG, so LSH models are checked against the
converted Hugging Face model with both sides given the same rotations (``compare_numerics``).
"""

from __future__ import annotations

import gzip
import json
import pickle
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from reformer_tools import hf
from reformer_tools.convert import write_conversion
from reformer_tools.dtypes import as_float32
from reformer_tools.loader import load_checkpoint
from reformer_tools.numerics import (
    NumericsReport,
    choose_sequence_length,
    compare_numerics,
    hf_default_num_buckets,
)
from reformer_tools.reference import (
    _local_attention,
    _lsh_attention,
    log_softmax,
    lsh_rotation_shape,
    shift_right,
    trax_default_num_buckets,
    trax_hidden_states,
    trax_log_probs,
)
from reformer_tools.resolve import ResolvedConfig
from reformer_tools.spec import ReformerSpec, load_spec, spec_from_dict
from tests.conftest import TRAX_FIXTURES, fixture_checkpoints

LOCAL_FIXTURES = ("hf2020_local_axial", "t124_local_axial", "t141_local_axial")
ATOL = 1e-4


def float32_leaves(path: Path) -> list[np.ndarray]:
    return [as_float32(array, leaf.dtype) for leaf, array in load_checkpoint(path).iter_arrays()]


def trax_output(fixture: Path) -> np.ndarray:
    """Trax's stored output as log-probs, whichever kind it stored."""
    out = np.load(fixture / "logits.npy").astype(np.float64)
    kind = json.loads((fixture / "meta.json").read_text())["output_kind"]
    assert kind in ("log_softmax", "logits")
    return log_softmax(out)


def convert(checkpoint: Path, spec: ReformerSpec, out: Path) -> Path:
    write_conversion(load_checkpoint(checkpoint), ResolvedConfig.given(spec), out)
    return out


def converted_tensors(model_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(model_dir / "model.safetensors"))


# ------------------------------------------------------- against Trax's own outputs


@pytest.mark.parametrize(
    "checkpoint",
    [c for name in LOCAL_FIXTURES for c in fixture_checkpoints(name)],
    ids=lambda p: str(p.relative_to(TRAX_FIXTURES)),
)
def test_reference_reproduces_trax_s_own_log_probs(checkpoint: Path) -> None:
    fixture = checkpoint.parent if (checkpoint.parent / "config.json").exists() else checkpoint.parent.parent
    spec = load_spec(fixture / "config.json")
    ours = trax_log_probs(float32_leaves(checkpoint), spec, np.load(fixture / "input_ids.npy"))
    assert ours.shape == (2, 64, spec.vocab_size)
    assert np.abs(ours - trax_output(fixture)).max() <= ATOL  # measured ~1.3e-6


def test_float32_reference_also_reproduces_trax() -> None:
    fixture = TRAX_FIXTURES / "t141_local_axial"
    ours = trax_log_probs(
        float32_leaves(fixture / "model.pkl"),
        load_spec(fixture / "config.json"),
        np.load(fixture / "input_ids.npy"),
        precision="float32",
    )
    assert ours.dtype == np.float32
    assert np.abs(ours - trax_output(fixture)).max() <= ATOL


def test_reference_shifts_right_itself() -> None:
    """Fed Hugging Face's (already shifted) ids, the reference no longer matches Trax."""
    fixture = TRAX_FIXTURES / "t141_local_axial"
    ids = np.load(fixture / "input_ids.npy")
    np.testing.assert_array_equal(shift_right(ids), np.load(fixture / "hf_input_ids.npy"))
    leaves, spec = float32_leaves(fixture / "model.pkl"), load_spec(fixture / "config.json")
    assert np.abs(trax_log_probs(leaves, spec, shift_right(ids)) - trax_output(fixture)).max() > 0.01


def test_swapped_query_and_key_no_longer_match_trax() -> None:
    """The reference is sensitive to the wiring it is meant to check (layer 0: w_q is leaf 5, w_k leaf 6)."""
    fixture = TRAX_FIXTURES / "t141_local_axial"
    leaves, spec = float32_leaves(fixture / "model.pkl"), load_spec(fixture / "config.json")
    assert leaves[5].shape == leaves[6].shape == (2, 32, 8)
    leaves[5], leaves[6] = leaves[6], leaves[5]
    ours = trax_log_probs(leaves, spec, np.load(fixture / "input_ids.npy"))
    assert np.abs(ours - trax_output(fixture)).max() > 0.01


def test_leaves_that_do_not_fit_the_config_are_named() -> None:
    fixture = TRAX_FIXTURES / "t141_local_axial"
    leaves, spec = float32_leaves(fixture / "model.pkl"), load_spec(fixture / "config.json")
    ids = np.load(fixture / "input_ids.npy")
    with pytest.raises(ValueError, match=r"leaf 5 \(layer 0 local w_q\) has shape \(2, 8, 32\)"):
        trax_log_probs([*leaves[:5], leaves[5].transpose(0, 2, 1), *leaves[6:]], spec, ids)
    with pytest.raises(ValueError, match="32 weight arrays given; the config accounts for 31"):
        trax_log_probs([*leaves, leaves[-1]], spec, ids)
    with pytest.raises(ValueError, match=r"leaf 30 \(output bias\) is missing"):
        trax_log_probs(leaves[:-1], spec, ids)
    with pytest.raises(ValueError, match="do not split into chunks of 16"):
        trax_log_probs(leaves, spec, ids[:, :24])


# ---------------------------------------------------- against Hugging Face, with LSH


def test_mixed_lsh_fixture_matches_hugging_face_with_shared_rotations(tmp_path: Path) -> None:
    fixture = TRAX_FIXTURES / "t141_mixed_axial"
    spec = load_spec(fixture / "config.json")
    leaves = float32_leaves(fixture / "model.pkl")
    out = convert(fixture / "model.pkl", spec, tmp_path / "hf")
    report = compare_numerics(leaves, spec, out, np.load(fixture / "input_ids.npy"), seed=3)
    assert report.ok, report
    assert report.complete
    assert report.layers_compared == 4
    assert report.max_abs_diff <= ATOL  # measured ~9e-7
    assert "LSH layers 1, 3" in report.lsh
    assert "hash_seed=3" in report.lsh
    assert len(report.positions) == report.sequence_length == 64


def test_hugging_face_draws_exactly_the_rotations_the_reference_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Capture torch.randn inside HF's forward: every LSH layer draws hf.lsh_rotations(seed, shape)."""
    fixture = TRAX_FIXTURES / "t141_mixed_axial"
    spec = load_spec(fixture / "config.json")
    out = convert(fixture / "model.pkl", spec, tmp_path / "hf")
    config = {**spec.to_config_dict(), "hash_seed": 11}
    model = hf.reformer_lm(config, converted_tensors(out))
    drawn: list[torch.Tensor] = []
    randn = torch.randn

    def recording(*args: Any, **kwargs: Any) -> torch.Tensor:
        value = randn(*args, **kwargs)
        drawn.append(value)
        return value

    monkeypatch.setattr(torch, "randn", recording)
    hf.reformer_lm_log_probs(model, np.load(fixture / "hf_input_ids.npy"))
    monkeypatch.undo()
    assert len(drawn) == 2  # layers 1 and 3
    expected = hf.lsh_rotations(11, lsh_rotation_shape(spec, 64))
    for value in drawn:
        np.testing.assert_array_equal(value.numpy(), expected)


def test_other_rotations_do_not_match_hugging_face(tmp_path: Path) -> None:
    """The LSH comparison is only exact because the rotations are shared."""
    fixture = TRAX_FIXTURES / "t141_mixed_axial"
    spec = load_spec(fixture / "config.json")
    leaves = float32_leaves(fixture / "model.pkl")
    model = hf.reformer_lm(
        {**spec.to_config_dict(), "hash_seed": 5},
        converted_tensors(convert(fixture / "model.pkl", spec, tmp_path / "hf")),
    )
    ids = np.load(fixture / "input_ids.npy")
    theirs = hf.reformer_lm_log_probs(model, shift_right(ids))
    same = hf.lsh_rotations(5, lsh_rotation_shape(spec, 64))
    other = hf.lsh_rotations(6, lsh_rotation_shape(spec, 64))
    assert np.abs(trax_log_probs(leaves, spec, ids, lsh_rotations=lambda layer: same) - theirs).max() <= ATOL
    assert np.abs(trax_log_probs(leaves, spec, ids, lsh_rotations=lambda layer: other) - theirs).max() > 1e-3


# --------------------------------------------------------- synthetic random models


def synthetic_spec(**overrides: Any) -> ReformerSpec:
    config: dict[str, Any] = {
        "vocab_size": 40,
        "hidden_size": 16,
        "num_attention_heads": 2,
        "attention_head_size": 4,
        "feed_forward_size": 24,
        "attn_layers": ["lsh", "local", "lsh"],
        "axial_pos_embds": False,
        "max_position_embeddings": 64,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-6,
        "local_attn_chunk_length": 8,
        "local_num_chunks_before": 1,
        "local_num_chunks_after": 0,
        "lsh_attn_chunk_length": 8,
        "lsh_num_chunks_before": 2,
        "lsh_num_chunks_after": 0,  # ReformerModelWithLMHead refuses look-ahead
        "num_hashes": 3,
        "num_buckets": [2, 4],
        "is_decoder": True,
    }
    config.update(overrides)
    return spec_from_dict(config)


def random_leaves(spec: ReformerSpec, seed: int) -> list[np.ndarray]:
    """Random weights in Trax's flat leaf order, scaled so attention is far from uniform."""
    rng = np.random.default_rng(seed)
    d, h, dh, ff, v = (
        spec.hidden_size,
        spec.num_attention_heads,
        spec.attention_head_size,
        spec.feed_forward_size,
        spec.vocab_size,
    )

    def normal(*shape: int, scale: float = 1.0) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def norm(width: int) -> list[np.ndarray]:
        return [1 + normal(width, scale=0.2), normal(width, scale=0.2)]

    leaves = [normal(v, d)]
    if spec.axial_pos_embds:
        axes = len(spec.axial_pos_shape)
        for axis, (size, depth) in enumerate(zip(spec.axial_pos_shape, spec.axial_pos_embds_dim, strict=True)):
            leaves.append(normal(1, *(size if i == axis else 1 for i in range(axes)), depth, scale=0.5))
    else:
        leaves.append(normal(1, spec.max_position_embeddings, d, scale=0.5))
    for kind in spec.attn_layers:
        leaves += norm(d)
        leaves += [normal(h, d, dh, scale=2 / np.sqrt(d)) for _ in range(2 if kind == "lsh" else 3)]
        leaves += [normal(h, dh, d, scale=1 / np.sqrt(dh)), *norm(d)]
        leaves += [normal(d, ff, scale=1 / np.sqrt(d)), normal(ff, scale=0.1)]
        leaves += [normal(ff, d, scale=1 / np.sqrt(ff)), normal(d, scale=0.1)]
    leaves += [*norm(2 * d), normal(2 * d, v, scale=1 / np.sqrt(2 * d)), normal(v, scale=0.1)]
    return leaves


def write_checkpoint(leaves: Sequence[np.ndarray], path: Path) -> Path:
    """A Layer.save_to_file-style gzip pickle: {'flat_weights': [...]}."""
    with gzip.open(path, "wb") as file:
        pickle.dump({"flat_weights": list(leaves)}, file, protocol=4)
    return path


def synthetic_report(spec: ReformerSpec, tmp_path: Path, *, seed: int = 0, miswire: bool = False) -> NumericsReport:
    leaves = random_leaves(spec, seed)
    written = list(leaves)
    if miswire:  # layer 0's w_qk and w_v swapped in the file the converter reads
        written[4], written[5] = written[5], written[4]
    checkpoint = write_checkpoint(written, tmp_path / "model.pkl.gz")
    out = convert(checkpoint, spec, tmp_path / "hf")
    return compare_numerics(leaves, spec, out, seed=seed)


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({}, id="3-hashes-factorized-buckets-look-back-2-gelu"),
        pytest.param(
            {
                "attn_layers": ["lsh", "lsh"],
                "axial_pos_embds": True,
                "axial_pos_shape": [4, 8],
                "axial_pos_embds_dim": [8, 8],
                "max_position_embeddings": 32,
                "lsh_attn_chunk_length": 4,
                "lsh_num_chunks_before": 1,
                "num_hashes": 2,
                "num_buckets": None,
                "hidden_act": "gelu_new",
            },
            id="2-hashes-default-buckets-axial",
        ),
        pytest.param({"num_hashes": 4, "num_buckets": 8, "hidden_act": "relu"}, id="4-hashes-8-buckets"),
    ],
)
def test_random_lsh_models_match_hugging_face(overrides: dict[str, Any], tmp_path: Path) -> None:
    report = synthetic_report(synthetic_spec(**overrides), tmp_path)
    assert report.ok, report
    assert report.complete
    assert report.max_abs_diff <= ATOL
    assert report.sequence_length > 8  # several LSH chunks, so hashing matters


def test_sequence_length_is_chosen_where_trax_and_hf_pick_the_same_bucket_count() -> None:
    spec = synthetic_spec(
        attn_layers=["lsh"], max_position_embeddings=32, lsh_attn_chunk_length=4, num_buckets=None, num_hashes=2
    )
    # 32 tokens: Trax would use 16 buckets, HF factorizes into [4, 4]; at 16 both use 8.
    assert trax_default_num_buckets(32, 4) == 16
    assert hf_default_num_buckets(spec, 32) == (4, 4)
    assert choose_sequence_length(spec) == 16
    assert trax_default_num_buckets(16, 4) == hf_default_num_buckets(spec, 16) == 8
    assert trax_default_num_buckets(64 * 128, 64) == (16, 16)  # above 128 buckets Trax factorizes
    assert trax_default_num_buckets(64 * 130, 64) == (32, 8)


def test_miswired_conversion_fails_the_comparison(tmp_path: Path) -> None:
    report = synthetic_report(synthetic_spec(), tmp_path, miswire=True)
    assert not report.ok
    assert report.max_abs_diff > 100 * ATOL


def test_miswired_state_dict_fails_the_comparison(tmp_path: Path) -> None:
    """One attention output projection wired wrongly in an otherwise correct state_dict."""
    fixture = TRAX_FIXTURES / "t141_local_axial"
    spec = load_spec(fixture / "config.json")
    tensors = converted_tensors(convert(fixture / "model.pkl", spec, tmp_path / "hf"))
    leaves = float32_leaves(fixture / "model.pkl")
    assert compare_numerics(leaves, spec, tensors).ok
    key = "reformer.encoder.layers.1.attention.output.dense.weight"
    bad = {**tensors, key: tensors[key][::-1].copy()}  # rows reversed: same shape, wrong wiring
    report = compare_numerics(leaves, spec, bad)
    assert not report.ok
    assert report.max_abs_diff > 100 * ATOL


def test_only_layers_before_the_first_lsh_layer_are_compared_when_buckets_cannot_agree(tmp_path: Path) -> None:
    # Lengths must be multiples of 12; at every one of them HF's default bucket count differs from Trax's.
    spec = synthetic_spec(
        attn_layers=["local", "lsh"],
        max_position_embeddings=48,
        local_attn_chunk_length=12,
        lsh_attn_chunk_length=4,
        num_buckets=None,
        num_hashes=2,
    )
    report = synthetic_report(spec, tmp_path)
    assert report.ok, report
    assert not report.complete
    assert report.compared == "hidden_states"
    assert report.layers_compared == 1
    assert "verified only up to the first LSH layer (layer 1)" in report.lsh


def test_partial_comparison_still_catches_miswiring(tmp_path: Path) -> None:
    spec = synthetic_spec(
        attn_layers=["local", "lsh"],
        max_position_embeddings=48,
        local_attn_chunk_length=12,
        lsh_attn_chunk_length=4,
        num_buckets=None,
    )
    leaves = random_leaves(spec, 0)
    written = list(leaves)
    written[5], written[6] = written[6], written[5]  # layer 0's w_k and w_v
    out = convert(write_checkpoint(written, tmp_path / "model.pkl.gz"), spec, tmp_path / "hf")
    report = compare_numerics(leaves, spec, out)
    assert not report.complete
    assert not report.ok


# ------------------------------------------------- the reference's attention alone


def naive_causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, *, exclude_self: bool) -> np.ndarray:
    """Plain causal softmax attention per (batch, head), no chunking."""
    seq_len = q.shape[-2]
    dots = q @ np.swapaxes(k, -1, -2)
    future = np.triu(np.ones((seq_len, seq_len), dtype=bool), 1)
    dots = np.where(future, -np.inf, dots)
    if exclude_self:  # only where something else is allowed
        eye = np.eye(seq_len, dtype=bool)
        dots = np.where(eye & (np.arange(seq_len) > 0)[:, None], -np.inf, dots)
    weights = np.exp(dots - dots.max(-1, keepdims=True))
    return (weights / weights.sum(-1, keepdims=True)) @ v


def test_one_chunk_local_attention_is_plain_causal_attention() -> None:
    rng = np.random.default_rng(0)
    spec = synthetic_spec(local_attn_chunk_length=16, local_num_chunks_before=0)
    x = rng.standard_normal((2, 16, 16))
    w_q, w_k, w_v = (rng.standard_normal((2, 16, 4)) for _ in range(3))
    w_o = rng.standard_normal((2, 4, 16))
    q, k, v = (np.einsum("bld,hde->bhle", x, w) for w in (w_q, w_k, w_v))
    expected = np.einsum("bhle,hed->bld", naive_causal_attention(q, k / 2, v, exclude_self=False), w_o)
    np.testing.assert_allclose(_local_attention(x, (w_q, w_k, w_v, w_o), spec), expected, atol=1e-10)


def test_one_chunk_lsh_attention_is_shared_qk_causal_attention_whatever_the_rotations() -> None:
    rng = np.random.default_rng(1)
    spec = synthetic_spec(
        lsh_attn_chunk_length=16, lsh_num_chunks_before=0, lsh_num_chunks_after=0, num_hashes=1, num_buckets=4
    )
    x = rng.standard_normal((2, 16, 16))
    w_qk, w_v = rng.standard_normal((2, 16, 4)), rng.standard_normal((2, 16, 4))
    w_o = rng.standard_normal((2, 4, 16))
    qk, v = np.einsum("bld,hde->bhle", x, w_qk), np.einsum("bld,hde->bhle", x, w_v)
    keys = qk / np.sqrt((qk**2).mean(-1, keepdims=True) + 1e-6) / 2
    expected = np.einsum("bhle,hed->bld", naive_causal_attention(qk, keys, v, exclude_self=True), w_o)
    for seed in range(3):
        rotations = np.random.default_rng(seed).standard_normal((2, 2, 4, 1, 2))
        actual = _lsh_attention(x, (w_qk, w_v, w_o), spec, rotations)
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)  # scores are float32, as in Trax


def test_rotations_of_the_wrong_shape_are_refused() -> None:
    fixture = TRAX_FIXTURES / "t141_mixed_axial"
    spec = load_spec(fixture / "config.json")
    leaves, ids = float32_leaves(fixture / "model.pkl"), np.load(fixture / "input_ids.npy")
    with pytest.raises(ValueError, match=r"layer 1: rotations have shape \(8, 2, 3\)"):
        trax_log_probs(leaves, spec, ids, lsh_rotations=lambda layer: np.zeros((8, 2, 3)))
    with pytest.raises(ValueError, match="one per layer"):
        trax_log_probs(leaves, spec, ids, lsh_rotations=[np.zeros((8, 2, 2))])
    with pytest.raises(ValueError, match="no LSH rotations given for layer 1"):
        trax_log_probs(leaves, spec, ids, lsh_rotations=[None] * 4)
    # Per example and head is accepted too (Trax draws per example and head).
    per_example = np.random.default_rng(0).standard_normal((2, 2, 8, 2, 2))
    assert trax_log_probs(leaves, spec, ids, lsh_rotations=lambda layer: per_example).shape == (2, 64, 320)


def test_hidden_states_after_all_layers_feed_the_output_layer() -> None:
    fixture = TRAX_FIXTURES / "t141_local_axial"
    leaves, spec = float32_leaves(fixture / "model.pkl"), load_spec(fixture / "config.json")
    ids = np.load(fixture / "input_ids.npy")
    states = trax_hidden_states(leaves, spec, ids, spec.num_layers)
    scale, bias, w, b = leaves[-4:]
    centered = states - states.mean(-1, keepdims=True)
    normed = centered / np.sqrt((centered**2).mean(-1, keepdims=True) + 1e-6) * scale + bias
    np.testing.assert_allclose(log_softmax(normed @ w + b), trax_log_probs(leaves, spec, ids), atol=1e-12)


def test_reference_is_independent_of_the_mapping_it_checks() -> None:
    code = (
        "import sys, reformer_tools.reference\n"
        "loaded = {'reformer_tools.mapper', 'reformer_tools.convert', 'torch', 'transformers'} & set(sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
