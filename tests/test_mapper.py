"""The mapping tables: exact coverage of HF's state_dict, transforms, and every diagnosis."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reformer_tools.checkpoint import Leaf
from reformer_tools.errors import MappingError, UnsupportedLayoutError
from reformer_tools.infer import read_weight_shapes
from reformer_tools.mapper import (
    HEADS_IN,
    HEADS_OUT,
    TRANSPOSE,
    align,
    expected_slots,
    hf_shapes,
    plan,
)
from reformer_tools.spec import ReformerSpec, spec_from_dict


@st.composite
def reformer_configs(draw: st.DrawFn) -> dict[str, Any]:
    """Valid ReformerConfig dicts across the shapes that matter for the mapping."""
    heads = draw(st.integers(1, 4))
    head_size = draw(st.integers(1, 8))
    axial = draw(st.booleans())
    if axial:
        axes = draw(st.integers(2, 3))
        dims = draw(st.lists(st.integers(1, 6), min_size=axes, max_size=axes))
        hidden = sum(dims)
        shape = draw(st.lists(st.integers(1, 5), min_size=axes, max_size=axes))
    else:
        hidden = draw(st.integers(1, 12))
        dims, shape = [hidden], [1]
    return {
        "vocab_size": draw(st.integers(1, 40)),
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "attention_head_size": head_size,
        "feed_forward_size": draw(st.integers(1, 16)),
        "attn_layers": draw(st.lists(st.sampled_from(["local", "lsh"]), min_size=1, max_size=4)),
        "axial_pos_embds": axial,
        "axial_pos_shape": shape,
        "axial_pos_embds_dim": dims,
        "max_position_embeddings": math.prod(shape) if axial else draw(st.integers(1, 32)),
        "is_decoder": True,
    }


def hf_state_dict_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    import torch
    from transformers import ReformerConfig, ReformerModelWithLMHead

    with torch.device("meta"):
        model = ReformerModelWithLMHead(ReformerConfig(**config))
    return {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}


@settings(max_examples=60, deadline=None)
@given(reformer_configs())
def test_targets_equal_hf_state_dict_for_any_config(config: dict[str, Any]) -> None:
    assert hf_shapes(spec_from_dict(config)) == hf_state_dict_shapes(config)


def leaves_for(spec: ReformerSpec) -> list[Leaf]:
    """Leaves with the canonical Trax shapes for ``spec``."""
    return [Leaf(i, f"flat_weights[{i}]", s.source_shape, "float32") for i, s in enumerate(expected_slots(spec).slots)]


@settings(max_examples=60, deadline=None)
@given(reformer_configs())
def test_plan_uses_every_leaf_once_and_fills_every_key_once(config: dict[str, Any]) -> None:
    spec = spec_from_dict(config)
    leaves = leaves_for(spec)
    result = plan(spec, leaves)
    assert sorted(a.leaf.index for a in result.assignments) == list(range(len(leaves)))
    keys = result.hf_keys
    assert len(keys) == len(set(keys)) == len(hf_shapes(spec))
    for assignment in result.assignments:
        assert assignment.target_shape == hf_shapes(spec)[assignment.slot.hf_key]


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(1, 6), st.integers(1, 6), st.randoms(use_true_random=False))
def test_attention_transforms_match_the_hf_script_arithmetic(h: int, d: int, dh: int, rnd: Any) -> None:
    import torch

    w = np.random.default_rng(rnd.randint(0, 2**31)).standard_normal((h, d, dh)).astype(np.float32)
    expected_in = torch.tensor(w).transpose(1, 2).contiguous().view(-1, d).numpy()
    np.testing.assert_array_equal(HEADS_IN.apply(w), expected_in)
    o = w.transpose(0, 2, 1).copy()  # (h, dh, d)
    expected_out = torch.tensor(o).view(-1, d).contiguous().transpose(0, 1).numpy()
    np.testing.assert_array_equal(HEADS_OUT.apply(o), expected_out)
    assert HEADS_IN.target_shape(w.shape) == expected_in.shape
    assert HEADS_OUT.target_shape(o.shape) == expected_out.shape


def test_transpose_is_a_contiguous_copy() -> None:
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = TRANSPOSE.apply(w)
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, w.T)


# ------------------------------------------------------------------ diagnoses


def tiny(**overrides: Any) -> ReformerSpec:
    config = {
        "vocab_size": 11,
        "hidden_size": 6,
        "num_attention_heads": 2,
        "attention_head_size": 3,
        "feed_forward_size": 5,
        "attn_layers": ["local", "lsh"],
        "axial_pos_shape": [2, 4],
        "axial_pos_embds_dim": [2, 4],
        "max_position_embeddings": 8,
        "is_decoder": True,
    }
    return spec_from_dict({**config, **overrides})


def reindex(leaves: list[Leaf]) -> list[Leaf]:
    return [Leaf(i, f"flat_weights[{i}]", leaf.shape, leaf.dtype) for i, leaf in enumerate(leaves)]


def test_wrong_hidden_size_reports_every_mismatch_at_once() -> None:
    leaves = leaves_for(tiny())
    result = align(tiny(hidden_size=8, axial_pos_embds_dim=[4, 4]), leaves)
    assert not result.ok
    assert not result.missing
    assert not result.unused
    # every array that involves d_model disagrees, not only the first
    assert len(result.mismatches) > 20
    assert result.mismatches[0].hf_key == "reformer.embeddings.word_embeddings.weight"
    assert result.mismatches[0].expected == (11, 8)
    assert result.mismatches[0].actual == (11, 6)


def test_extra_layer_in_checkpoint_is_reported_as_unused_and_layers_stay_aligned() -> None:
    spec3 = tiny(attn_layers=["local", "lsh", "local"])
    result = align(tiny(), leaves_for(spec3))
    assert [leaf.path for leaf in result.unused][:2] == ["flat_weights[26]", "flat_weights[27]"]
    assert not result.mismatches  # the head is still matched from the end
    assert "3 decoder layers" in result.notes[0]


def test_missing_layer_is_reported_as_missing_keys() -> None:
    result = align(tiny(attn_layers=["local", "lsh", "local"]), leaves_for(tiny()))
    assert all(slot.group == "layer 2" for slot in result.missing)
    assert len(result.missing) == 12
    with pytest.raises(MappingError, match="12 tensors missing"):
        plan(tiny(attn_layers=["local", "lsh", "local"]), leaves_for(tiny()))


def test_attention_kind_swap_is_named() -> None:
    result = align(tiny(attn_layers=["lsh", "local"]), leaves_for(tiny()))
    assert not result.ok
    assert any("layer 0: the config says lsh attention" in n and "which is local attention" in n for n in result.notes)


def test_shared_qk_local_attention_is_refused_by_name() -> None:
    lsh_shapes = leaves_for(tiny(attn_layers=["lsh", "lsh"]))
    with pytest.raises(UnsupportedLayoutError, match="shared query/key local attention"):
        plan(tiny(attn_layers=["local", "lsh"]), lsh_shapes)


def test_attention_biases_are_refused_by_name() -> None:
    leaves = leaves_for(tiny())
    biased = [*leaves[:9], Leaf(0, "", (2, 3), "float32"), Leaf(0, "", (2, 3), "float32"), *leaves[9:]]
    with pytest.raises(UnsupportedLayoutError, match="attention with biases"):
        plan(tiny(), reindex(biased))


def test_sru_feed_forward_is_refused_by_name() -> None:
    leaves = leaves_for(tiny())
    sru = [Leaf(0, "", (6,), "float32"), Leaf(0, "", (6,), "float32"), Leaf(0, "", (6, 32), "float32")]
    with pytest.raises(UnsupportedLayoutError, match="SRU"):
        plan(tiny(), reindex([*leaves[:15], *sru, *leaves[15:]]))


def test_early_2020_attention_is_refused_by_name() -> None:
    spec = tiny(attn_layers=["local"])
    v1 = [
        Leaf(0, "", (11, 6), "float32"),
        Leaf(0, "", (1, 2, 1, 2), "float32"),
        Leaf(0, "", (1, 1, 4, 4), "float32"),
        Leaf(0, "", (6,), "float32"),
        Leaf(0, "", (6,), "float32"),
        Leaf(0, "", (6, 6), "float32"),
        Leaf(0, "", (6, 6), "float32"),
    ]
    with pytest.raises(UnsupportedLayoutError, match="ComputeAttentionHeads"):
        plan(spec, reindex(v1))


def test_integer_weights_are_refused() -> None:
    leaves = leaves_for(tiny())
    leaves[0] = Leaf(0, "flat_weights[0]", leaves[0].shape, "int32")
    with pytest.raises(UnsupportedLayoutError, match="must be floating point"):
        plan(tiny(), leaves)


def test_plain_positions_accept_both_trax_shapes() -> None:
    spec = tiny(axial_pos_embds=False, max_position_embeddings=16)
    leaves = leaves_for(spec)
    assert leaves[1].shape == (1, 16, 6)
    assert plan(spec, leaves)
    leaves[1] = Leaf(1, "flat_weights[1]", (16, 6), "float32")  # trax >= 2021 drops the batch axis
    assert plan(spec, leaves).assignments[1].slot.hf_key == "reformer.embeddings.position_embeddings.embedding.weight"


def test_lm_head_bias_is_written_with_the_decoder_bias() -> None:
    result = plan(tiny(), leaves_for(tiny()))
    last = result.assignments[-1]
    assert last.slot.hf_keys == ("lm_head.decoder.bias", "lm_head.bias")


def test_a_last_layer_cut_short_by_the_head_is_a_mismatch_not_a_crash() -> None:
    """Found by the CLI fuzzer on a mutated side file: a layer opening inside the last four leaves."""
    leaves = leaves_for(tiny())
    cut = reindex(
        [*leaves[:-4], Leaf(0, "", (6,), "float32"), Leaf(0, "", (6,), "float32"), Leaf(0, "", (2, 6, 3), "float32")]
    )
    result = align(tiny(), cut)
    assert not result.ok
    with pytest.raises(MappingError):
        plan(tiny(), cut)
    with pytest.raises(UnsupportedLayoutError):
        read_weight_shapes(cut)
