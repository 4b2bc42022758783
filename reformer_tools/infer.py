"""What the weight shapes show of a Reformer config, solved with the mapper's own rule shapes.

Shapes show the architecture: vocabulary, hidden size, the layers and their attention kinds
(3 projections = LSH, 4 = local), heads, head size, feed-forward size, and the positional
encoding (axial shape and depths, or the maximum length). Everything else (chunk lengths,
hashing, activation, epsilon) is not in the weights: see ``trax_defaults`` and ``resolve``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from reformer_tools.checkpoint import Leaf
from reformer_tools.errors import UnsupportedLayoutError
from reformer_tools.mapper import (
    EMBEDDING_RULE,
    HEAD_RULES,
    KIND_BY_PROJECTIONS,
    LAYER_RULES,
    PLAIN_POSITION_RULE,
    DimSolver,
    LayerLeaves,
    Rule,
    axial_position_rules,
    split_leaves,
)
from reformer_tools.spec import AttentionKind

#: How positions are encoded, as far as the weights tell: axial tables, one learned table, or no weights at all.
PositionKind = Literal["axial", "learned", "none"]


@dataclass(frozen=True)
class WeightShapes:
    """The config values the shapes prove, and how positions are stored."""

    values: dict[str, Any]  # Hugging Face config keys -> values read off the shapes
    positions: PositionKind

    @property
    def attention_kinds(self) -> tuple[AttentionKind, ...]:
        return tuple(self.values["attn_layers"])


def _fail(message: str) -> UnsupportedLayoutError:
    return UnsupportedLayoutError(f"cannot infer a Reformer config from the shapes: {message}")


def read_weight_shapes(leaves: Sequence[Leaf]) -> WeightShapes:
    """Solve the config's dimensions by matching the mapper's rules against ``leaves``."""
    layout = split_leaves(leaves)
    if not leaves or len(leaves[0].shape) != EMBEDDING_RULE.rank:
        raise _fail("the first array is not a (vocab, d_model) embedding")
    if layout is None:
        raise _fail("no decoder layer found (a layer norm followed by (heads, d_model, d_head) projections)")
    solver = DimSolver()
    _match(solver, (EMBEDDING_RULE,), layout.front[:1], "the embedding")
    positions, position_values = _positions(solver, layout.front[1:])
    kinds = [_layer(solver, i, layer) for i, layer in enumerate(layout.layers)]
    head = layout.head
    if len(head) != len(HEAD_RULES) or any(solver.first_fit(r, leaf) for r, leaf in zip(HEAD_RULES, head, strict=True)):
        first = head[0].path if head else leaves[-1].path
        raise _fail(f"the last {len(HEAD_RULES)} arrays are not the final layer norm and output layer (from {first})")
    sizes = solver.sizes
    values: dict[str, Any] = {
        "vocab_size": sizes["vocab"],
        "hidden_size": sizes["d"],
        "num_attention_heads": sizes["h"],
        "attention_head_size": sizes["dh"],
        "feed_forward_size": sizes["ff"],
        "attn_layers": kinds,
        **position_values,
    }
    return WeightShapes(values, positions)


def _match(solver: DimSolver, rules: Sequence[Rule], leaves: Sequence[Leaf], what: str) -> None:
    if len(rules) != len(leaves):
        raise _fail(f"{what} has {len(leaves)} arrays; expected {len(rules)}")
    for rule, leaf in zip(rules, leaves, strict=True):
        reason = solver.first_fit(rule, leaf)
        if reason is not None:
            raise _fail(f"{what} ({rule.role}): {reason}")


def _positions(solver: DimSolver, leaves: Sequence[Leaf]) -> tuple[PositionKind, dict[str, Any]]:
    if not leaves:
        return "none", {}
    if len(leaves) == 1 and solver.first_fit(PLAIN_POSITION_RULE, leaves[0]) is None:
        return "learned", {"axial_pos_embds": False, "max_position_embeddings": solver.sizes["maxlen"]}
    rules = axial_position_rules(len(leaves))
    for rule, leaf in zip(rules, leaves, strict=True):
        if solver.first_fit(rule, leaf) is not None:
            raise _fail(f"positional encoding array {leaf.path} {list(leaf.shape)} is neither axial nor plain")
    shape = [solver.sizes[f"axial{axis}"] for axis in range(len(leaves))]
    dims = [solver.sizes[f"axial_dim{axis}"] for axis in range(len(leaves))]
    if sum(dims) != solver.sizes["d"]:
        raise _fail(f"axial position depths {dims} do not add up to d_model {solver.sizes['d']}")
    return "axial", {
        "axial_pos_embds": True,
        "axial_pos_shape": shape,
        "axial_pos_embds_dim": dims,
        "max_position_embeddings": math.prod(shape),
    }


def _layer(solver: DimSolver, index: int, layer: LayerLeaves) -> AttentionKind:
    count = len(layer.attention)
    kind = KIND_BY_PROJECTIONS.get(count)
    if kind is None:
        expected = " or ".join(f"{n} ({k})" for n, k in sorted(KIND_BY_PROJECTIONS.items()))
        raise _fail(f"layer {index} has {count} attention projections; expected {expected}")
    if layer.attention_biases:
        raise UnsupportedLayoutError(
            f"layer {index}: attention with biases ({', '.join(b.path for b in layer.attention_biases)}); "
            "Hugging Face's Reformer attention has no biases"
        )
    rules = LAYER_RULES[kind]
    _match(solver, rules.norm, layer.norm, f"layer {index} attention norm")
    _match(solver, rules.attention, layer.attention, f"layer {index} attention")
    _match(solver, rules.feed_forward, layer.feed_forward, f"layer {index} feed-forward")
    return kind
