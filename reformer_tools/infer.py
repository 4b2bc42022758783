"""Derive a Reformer config from the weight shapes alone.

Shapes show the architecture: vocabulary, hidden size, layers and their
attention kinds (3 projections = LSH, 4 = local), heads, head size,
feed-forward size, axial shape and depths or the maximum length. Settings
the weights cannot show (chunk lengths, hashing, activation, epsilon) take
Trax's defaults and are reported as defaulted, so a ``config.gin`` or a
hand-written ``config.json`` can supply them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from reformer_tools.errors import UnsupportedLayoutError
from reformer_tools.loader import Leaf
from reformer_tools.mapper import layer_starts
from reformer_tools.spec import HF_DEFAULTS, ReformerSpec, spec_from_dict

#: Defaults for settings the weights do not show: Trax's where they differ from
#: transformers' (LayerNorm epsilon 1e-6; FastGelu, which is HF's gelu_new).
TRAX_DEFAULTS: Final[dict[str, Any]] = {
    "hidden_act": "gelu_new",
    "layer_norm_eps": 1e-6,
    "local_attn_chunk_length": HF_DEFAULTS["local_attn_chunk_length"],
    "local_num_chunks_before": HF_DEFAULTS["local_num_chunks_before"],
    "local_num_chunks_after": 0,
    "lsh_attn_chunk_length": HF_DEFAULTS["lsh_attn_chunk_length"],
    "lsh_num_chunks_before": 1,
    "lsh_num_chunks_after": 0,
    "num_hashes": 1,
    "num_buckets": None,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
    "local_attention_probs_dropout_prob": 0.0,
    "lsh_attention_probs_dropout_prob": 0.0,
    "is_decoder": True,
    "tie_word_embeddings": False,
    "pad_token_id": 0,
    "eos_token_id": None,
    "use_cache": False,
}


@dataclass(frozen=True)
class InferredConfig:
    spec: ReformerSpec
    inferred: dict[str, Any]  # read off the shapes
    defaulted: dict[str, Any]  # not visible in the weights
    caveats: tuple[str, ...] = ()

    @property
    def config(self) -> dict[str, Any]:
        return self.spec.to_config_dict()


def _fail(message: str) -> UnsupportedLayoutError:
    return UnsupportedLayoutError(f"cannot infer a Reformer config from the shapes: {message}")


def infer_config(
    leaves: Sequence[Leaf], overrides: dict[str, Any] | None = None, *, kinds_confirmed: bool = False
) -> InferredConfig:
    """The config the shapes imply; ``overrides`` (from config.gin) fill what they cannot show.

    ``kinds_confirmed`` says the attention types are known from config.gin, so
    three projections need no shared-QK caveat.
    """
    starts = layer_starts(leaves)
    if not leaves or len(leaves[0].shape) != 2:
        raise _fail("the first array is not a (vocab, d_model) embedding")
    if not starts:
        raise _fail("no decoder layer found (a layer norm followed by (heads, d_model, d_head) projections)")
    vocab, d_model = leaves[0].shape
    inferred: dict[str, Any] = {"vocab_size": vocab, "hidden_size": d_model}
    inferred.update(_positions(leaves[1 : starts[0]], d_model))

    head = leaves[-4:]
    if [leaf.shape for leaf in head] != [(2 * d_model,), (2 * d_model,), (2 * d_model, vocab), (vocab,)]:
        raise _fail(f"the last four arrays are not the final layer norm and output layer (from {head[0].path})")
    bounds = [*starts, len(leaves) - 4]
    kinds = []
    for i, start in enumerate(starts):
        segment = leaves[start : bounds[i + 1]]
        kinds.append(_layer(segment, i, inferred))
    inferred["attn_layers"] = kinds

    defaulted = {k: v for k, v in TRAX_DEFAULTS.items() if k not in (overrides or {})}
    config = {**TRAX_DEFAULTS, **(overrides or {}), **inferred}
    if "lsh" not in kinds:
        defaulted = {k: v for k, v in defaulted.items() if not k.startswith(("lsh_", "num_hashes", "num_buckets"))}
    caveats = []
    if "lsh" in kinds and not kinds_confirmed:
        layers = ", ".join(str(i) for i, kind in enumerate(kinds) if kind == "lsh")
        caveats.append(
            f"layers {layers}: 3 attention projections read as LSH attention; shared-QK local attention has the "
            "same shapes and cannot be told apart without config.gin (pass --gin or --config to be sure)"
        )
    return InferredConfig(spec_from_dict(config), inferred, defaulted, tuple(caveats))


def _positions(leaves: Sequence[Leaf], d_model: int) -> dict[str, Any]:
    if not leaves:
        raise UnsupportedLayoutError(
            "the checkpoint has no positional-encoding weights (sin-cos, fixed-base or none); "
            "Hugging Face's Reformer only has learned (axial or plain) positions"
        )
    shapes = [leaf.shape for leaf in leaves]
    if len(shapes) == 1 and len(shapes[0]) in (2, 3) and shapes[0][-1] == d_model and shapes[0][:-2] in ((), (1,)):
        max_len = shapes[0][-2]
        return {"axial_pos_embds": False, "max_position_embeddings": max_len}
    axes = len(shapes)
    axial_shape, axial_dims = [], []
    for axis, shape in enumerate(shapes):
        expected_rank = axes + 2
        others = [shape[1 + i] for i in range(axes) if i != axis] if len(shape) == expected_rank else [0]
        if len(shape) != expected_rank or shape[0] != 1 or any(size != 1 for size in others):
            raise _fail(f"positional encoding array {leaves[axis].path} {list(shape)} is neither axial nor plain")
        axial_shape.append(shape[1 + axis])
        axial_dims.append(shape[-1])
    if sum(axial_dims) != d_model:
        raise _fail(f"axial position depths {axial_dims} do not add up to d_model {d_model}")
    return {
        "axial_pos_embds": True,
        "axial_pos_shape": axial_shape,
        "axial_pos_embds_dim": axial_dims,
        "max_position_embeddings": math.prod(axial_shape),
    }


def _layer(segment: Sequence[Leaf], index: int, inferred: dict[str, Any]) -> str:
    d_model = inferred["hidden_size"]
    projections = [leaf for leaf in segment[2:] if len(leaf.shape) == 3]
    n = len(projections)
    if n not in (3, 4):
        raise _fail(f"layer {index} has {n} attention projections; expected 3 (LSH) or 4 (local)")
    heads, d_in, d_head = projections[0].shape
    if d_in != d_model:
        raise _fail(f"layer {index} attention {projections[0].path} {list(projections[0].shape)} does not read d_model")
    for key, value in (("num_attention_heads", heads), ("attention_head_size", d_head)):
        if inferred.setdefault(key, value) != value:
            raise _fail(f"layer {index} has {key} {value}, earlier layers {inferred[key]}")
    feed_forward = segment[2 + n :]
    if len(feed_forward) != 6 or len(feed_forward[2].shape) != 2:
        raise _fail(f"layer {index} feed-forward has {len(feed_forward)} arrays; expected 6")
    d_ff = feed_forward[2].shape[1]
    if inferred.setdefault("feed_forward_size", d_ff) != d_ff:
        raise _fail(f"layer {index} has feed-forward size {d_ff}, earlier layers {inferred['feed_forward_size']}")
    return "lsh" if n == 3 else "local"
