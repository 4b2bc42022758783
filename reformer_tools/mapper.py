"""How Trax's flat leaves become ``ReformerModelWithLMHead`` tensors.

The mapping is data: ``EMBEDDING_RULES``, ``POSITION_RULES``, ``LAYER_RULES``
and ``HEAD_RULES`` list, in Trax's flat leaf order, each array's Hugging Face
key, its Trax shape in terms of the config, and the transform between the two.
``expected_slots`` expands the tables for one config; ``align`` pairs slots
with a checkpoint's leaves and reports every disagreement at once; ``plan``
insists on a perfect match and returns what ``convert`` executes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from reformer_tools.errors import MappingError, UnsupportedLayoutError
from reformer_tools.loader import Leaf
from reformer_tools.spec import ReformerSpec

Shape = tuple[int, ...]
Array = npt.NDArray[Any]


# ------------------------------------------------------------------ transforms


@dataclass(frozen=True)
class Transform:
    """How a Trax array becomes a Hugging Face tensor: a view, then (if needed) one copy.

    ``view`` shows the source in the target's element order without copying;
    ``apply`` makes it C-contiguous and gives it the target shape.
    """

    name: str
    description: str
    view: Callable[[Array], Array] = field(repr=False)
    target_shape: Callable[[Shape], Shape] = field(repr=False)

    def apply(self, source: Array, out: Array | None = None) -> Array:
        """The Hugging Face tensor. A copy, when one is needed, goes into ``out`` if given
        (a C-contiguous buffer of the target's size and the source's dtype)."""
        view = self.view(source)
        shape = self.target_shape(source.shape)
        if view.flags.c_contiguous:
            return view.reshape(shape)
        if out is None:
            return np.ascontiguousarray(view).reshape(shape)
        np.copyto(out.reshape(view.shape), view)
        return out.reshape(shape)


def _heads_in(w: Array) -> Array:
    # (heads, d_model, d_head) -> (heads, d_head, d_model), then (heads * d_head, d_model): nn.Linear's (out, in).
    return w.transpose(0, 2, 1)


def _heads_out(w: Array) -> Array:
    # (heads, d_head, d_model) -> (heads * d_head, d_model) -> (d_model, heads * d_head).
    h, dh, d = w.shape
    return w.reshape(h * dh, d).T


IDENTITY: Final = Transform("identity", "as is", lambda w: w, lambda s: s)
TRANSPOSE: Final = Transform("transpose", "transpose (in, out) -> (out, in)", lambda w: w.T, lambda s: s[::-1])
HEADS_IN: Final = Transform(
    "heads_in", "(h, d, dh) -> transpose(1, 2) -> (h*dh, d)", _heads_in, lambda s: (s[0] * s[2], s[1])
)
HEADS_OUT: Final = Transform(
    "heads_out", "(h, dh, d) -> (h*dh, d) -> transpose", _heads_out, lambda s: (s[2], s[0] * s[1])
)
DROP_LEADING_AXIS: Final = Transform(
    "drop_leading_axis", "drop the leading batch axis of 1", lambda w: w.reshape(w.shape[1:]), lambda s: s[1:]
)
POSITIONS: Final = Transform(
    "positions",
    "(1, max_len, d) or (max_len, d) -> (max_len, d)",
    lambda w: w.reshape(w.shape[-2:]),
    lambda s: s[-2:],
)

TRANSFORMS: Final = {t.name: t for t in (IDENTITY, TRANSPOSE, HEADS_IN, HEADS_OUT, DROP_LEADING_AXIS, POSITIONS)}


# ---------------------------------------------------------------- rule tables


@dataclass(frozen=True)
class Rule:
    """One Trax array: its role, its HF key template and its shape in config terms.

    ``shape`` names config dimensions: d (hidden), d2 (2*hidden), ff, vocab,
    h (heads), dh (head size), maxlen. Templates fill ``{layer}``.
    """

    role: str
    hf_key: str
    shape: tuple[str, ...]
    transform: Transform
    also: tuple[str, ...] = ()  # further HF keys holding the same tensor


EMBEDDING_RULES: Final = (Rule("embedding", "reformer.embeddings.word_embeddings.weight", ("vocab", "d"), IDENTITY),)
PLAIN_POSITION_RULE: Final = Rule(
    "positional encoding", "reformer.embeddings.position_embeddings.embedding.weight", ("maxlen", "d"), POSITIONS
)
# Axial positions depend on the number of axes; ``_axial_slots`` expands this.
AXIAL_POSITION_KEY: Final = "reformer.embeddings.position_embeddings.weights.{axis}"

_LAYER = "reformer.encoder.layers.{layer}"
LAYER_NORM_RULES: Final = (
    Rule("attention layer norm scale", f"{_LAYER}.attention.layer_norm.weight", ("d",), IDENTITY),
    Rule("attention layer norm bias", f"{_LAYER}.attention.layer_norm.bias", ("d",), IDENTITY),
)
ATTENTION_RULES: Final[dict[str, tuple[Rule, ...]]] = {
    "lsh": (
        Rule("LSH query/key", f"{_LAYER}.attention.self_attention.query_key.weight", ("h", "d", "dh"), HEADS_IN),
        Rule("LSH value", f"{_LAYER}.attention.self_attention.value.weight", ("h", "d", "dh"), HEADS_IN),
        Rule("LSH output", f"{_LAYER}.attention.output.dense.weight", ("h", "dh", "d"), HEADS_OUT),
    ),
    "local": (
        Rule("local query", f"{_LAYER}.attention.self_attention.query.weight", ("h", "d", "dh"), HEADS_IN),
        Rule("local key", f"{_LAYER}.attention.self_attention.key.weight", ("h", "d", "dh"), HEADS_IN),
        Rule("local value", f"{_LAYER}.attention.self_attention.value.weight", ("h", "d", "dh"), HEADS_IN),
        Rule("local output", f"{_LAYER}.attention.output.dense.weight", ("h", "dh", "d"), HEADS_OUT),
    ),
}
FEED_FORWARD_RULES: Final = (
    Rule("feed-forward layer norm scale", f"{_LAYER}.feed_forward.layer_norm.weight", ("d",), IDENTITY),
    Rule("feed-forward layer norm bias", f"{_LAYER}.feed_forward.layer_norm.bias", ("d",), IDENTITY),
    Rule("feed-forward dense 1", f"{_LAYER}.feed_forward.dense.dense.weight", ("d", "ff"), TRANSPOSE),
    Rule("feed-forward dense 1 bias", f"{_LAYER}.feed_forward.dense.dense.bias", ("ff",), IDENTITY),
    Rule("feed-forward dense 2", f"{_LAYER}.feed_forward.output.dense.weight", ("ff", "d"), TRANSPOSE),
    Rule("feed-forward dense 2 bias", f"{_LAYER}.feed_forward.output.dense.bias", ("d",), IDENTITY),
)
# The final norm and output act on the two reversible halves concatenated: 2*hidden.
HEAD_RULES: Final = (
    Rule("final layer norm scale", "reformer.encoder.layer_norm.weight", ("d2",), IDENTITY),
    Rule("final layer norm bias", "reformer.encoder.layer_norm.bias", ("d2",), IDENTITY),
    Rule("output dense", "lm_head.decoder.weight", ("d2", "vocab"), TRANSPOSE),
    # HF ties lm_head.bias to lm_head.decoder.bias; write both so neither is stale.
    Rule("output bias", "lm_head.decoder.bias", ("vocab",), IDENTITY, also=("lm_head.bias",)),
)


# ---------------------------------------------------------------------- slots


@dataclass(frozen=True)
class Slot:
    """A rule made concrete for one config: where one Trax leaf must go."""

    group: str  # "embeddings", "layer 3", "head"
    role: str
    hf_key: str
    source_shapes: tuple[Shape, ...]  # accepted Trax shapes (first is canonical)
    transform: Transform
    also: tuple[str, ...] = ()

    @property
    def source_shape(self) -> Shape:
        return self.source_shapes[0]

    @property
    def target_shape(self) -> Shape:
        return self.transform.target_shape(self.source_shape)

    @property
    def hf_keys(self) -> tuple[str, ...]:
        return (self.hf_key, *self.also)


def _dims(spec: ReformerSpec) -> dict[str, int]:
    return {
        "d": spec.hidden_size,
        "d2": 2 * spec.hidden_size,
        "ff": spec.feed_forward_size,
        "vocab": spec.vocab_size,
        "h": spec.num_attention_heads,
        "dh": spec.attention_head_size,
        "maxlen": spec.max_position_embeddings,
    }


def _slot(rule: Rule, group: str, dims: dict[str, int], layer: int | None = None) -> Slot:
    shape = tuple(dims[name] for name in rule.shape)
    key = rule.hf_key.format(layer=layer)
    shapes: tuple[Shape, ...] = (shape,)
    if rule.transform is POSITIONS:
        shapes = ((1, *shape), shape)  # Trax stored (1, max_len, d) until 2021, then (max_len, d)
    return Slot(group, rule.role, key, shapes, rule.transform, tuple(k.format(layer=layer) for k in rule.also))


def _axial_slots(spec: ReformerSpec) -> list[Slot]:
    slots = []
    axes = len(spec.axial_pos_shape)
    for axis, (size, depth) in enumerate(zip(spec.axial_pos_shape, spec.axial_pos_embds_dim, strict=True)):
        shape = (1, *(size if i == axis else 1 for i in range(axes)), depth)
        key = AXIAL_POSITION_KEY.format(axis=axis)
        slots.append(Slot("embeddings", f"axial position axis {axis}", key, (shape,), DROP_LEADING_AXIS))
    return slots


@dataclass(frozen=True)
class SlotLayout:
    """The expected leaf sequence for a config, grouped the way alignment needs."""

    front: list[Slot]
    layers: list[list[Slot]]  # per layer: norm, attention, feed-forward
    head: list[Slot]

    @property
    def slots(self) -> list[Slot]:
        return [*self.front, *(s for layer in self.layers for s in layer), *self.head]


def expected_slots(spec: ReformerSpec) -> SlotLayout:
    """Every Hugging Face tensor for ``spec``, in Trax's flat leaf order."""
    dims = _dims(spec)
    front = [_slot(r, "embeddings", dims) for r in EMBEDDING_RULES]
    front += _axial_slots(spec) if spec.axial_pos_embds else [_slot(PLAIN_POSITION_RULE, "embeddings", dims)]
    layers = []
    for i, kind in enumerate(spec.attn_layers):
        rules = (*LAYER_NORM_RULES, *ATTENTION_RULES[kind], *FEED_FORWARD_RULES)
        layers.append([_slot(r, f"layer {i}", dims, layer=i) for r in rules])
    head = [_slot(r, "head", dims) for r in HEAD_RULES]
    return SlotLayout(front, layers, head)


def hf_shapes(spec: ReformerSpec) -> dict[str, Shape]:
    """Every ``ReformerModelWithLMHead`` state_dict key and shape for ``spec``."""
    shapes: dict[str, Shape] = {}
    for slot in expected_slots(spec).slots:
        for key in slot.hf_keys:
            shapes[key] = slot.target_shape
    return shapes


# ------------------------------------------------------------------ alignment


@dataclass(frozen=True)
class Mismatch:
    hf_key: str
    trax_path: str
    expected: Shape
    actual: Shape


@dataclass(frozen=True)
class Assignment:
    """One planned tensor: a Trax leaf, its transform and its HF key(s)."""

    slot: Slot
    leaf: Leaf

    @property
    def target_shape(self) -> Shape:
        return self.slot.transform.target_shape(self.leaf.shape)


@dataclass
class Alignment:
    """Slots paired with leaves, and every way the two disagree."""

    spec: ReformerSpec
    assignments: list[Assignment]
    mismatches: list[Mismatch]
    missing: list[Slot]
    unused: list[Leaf]
    problems: list[str]  # layouts Hugging Face cannot represent, named
    notes: list[str]  # explanations of the other disagreements

    @property
    def ok(self) -> bool:
        return not (self.mismatches or self.missing or self.unused or self.problems)

    def hf_keys_for(self) -> dict[int, tuple[str, ...]]:
        """Leaf index -> HF key(s), for the leaves that found a slot."""
        return {a.leaf.index: a.slot.hf_keys for a in self.assignments}


def _rank(leaf: Leaf) -> int:
    return len(leaf.shape)


def layer_starts(leaves: Sequence[Leaf]) -> list[int]:
    """Where decoder layers begin: a layer norm (two vectors) then attention (rank 3)."""
    return [
        i
        for i in range(len(leaves) - 2)
        if _rank(leaves[i]) == 1 and _rank(leaves[i + 1]) == 1 and _rank(leaves[i + 2]) == 3
    ]


def align(spec: ReformerSpec, leaves: Sequence[Leaf]) -> Alignment:
    """Pair every expected slot with a leaf; collect all disagreements."""
    layout = expected_slots(spec)
    result = Alignment(spec, [], [], [], [], [], [])
    starts = layer_starts(leaves)
    if not starts:
        _pair(result, layout.slots, list(leaves))
        _explain_unsegmented(result, leaves, spec)
        return result
    head_size = len(layout.head)
    tail_start = max(len(leaves) - head_size, starts[-1] + 2)
    _pair(result, layout.front, list(leaves[: starts[0]]))
    bounds = [*starts, tail_start]
    segments = [list(leaves[bounds[i] : bounds[i + 1]]) for i in range(len(starts))]
    for i in range(max(len(segments), len(layout.layers))):
        if i >= len(layout.layers):
            result.unused.extend(segments[i])
            continue
        if i >= len(segments):
            result.missing.extend(layout.layers[i])
            continue
        _align_layer(result, spec, i, layout.layers[i], segments[i])
    if len(segments) != len(layout.layers):
        result.notes.append(f"the checkpoint has {len(segments)} decoder layers; the config has {len(layout.layers)}")
    _pair(result, layout.head, list(leaves[tail_start:]))
    _check_dtypes(result, leaves)
    return result


def _pair(result: Alignment, slots: Sequence[Slot], leaves: Sequence[Leaf]) -> None:
    for slot, leaf in zip(slots, leaves, strict=False):
        if leaf.shape in slot.source_shapes:
            result.assignments.append(Assignment(slot, leaf))
        else:
            result.mismatches.append(Mismatch(slot.hf_key, leaf.path, slot.source_shape, leaf.shape))
    result.missing.extend(slots[len(leaves) :])
    result.unused.extend(leaves[len(slots) :])


def _align_layer(result: Alignment, spec: ReformerSpec, index: int, slots: list[Slot], leaves: list[Leaf]) -> None:
    kind = spec.attn_layers[index]
    n_attention = len(ATTENTION_RULES[kind])
    norm, attention, feed_forward = slots[:2], slots[2 : 2 + n_attention], slots[2 + n_attention :]
    found = 0
    while 2 + found < len(leaves) and _rank(leaves[2 + found]) == 3:
        found += 1
    _pair(result, norm, leaves[:2])
    attention_leaves = leaves[2 : 2 + found]
    rest = leaves[2 + found :]
    biases = []
    while rest and _rank(rest[0]) == 2 and rest[0].shape[0] == spec.num_attention_heads:
        biases.append(rest.pop(0))
    if biases:
        result.problems.append(
            f"layer {index}: attention with biases ({', '.join(b.path for b in biases)}); "
            "Hugging Face's Reformer attention has no biases"
        )
        result.unused.extend(biases)
    if found == n_attention:
        _pair(result, attention, attention_leaves)
    else:
        result.missing.extend(attention)
        result.unused.extend(attention_leaves)
        if kind == "local" and found == 3:
            result.problems.append(
                f"layer {index}: shared query/key local attention (trax SelfAttention(share_qk=True), "
                f"3 arrays from {attention_leaves[0].path}); Hugging Face's LocalSelfAttention needs separate query "
                "and key, and Trax's shared-QK attention normalizes keys and masks self-attention"
            )
        else:
            other = "lsh" if kind == "local" else "local"
            expected = f"{n_attention} projection arrays ({kind})"
            result.notes.append(
                f"layer {index}: the config says {kind} attention ({expected}); the checkpoint has {found}"
                + (f", which is {other} attention" if found == len(ATTENTION_RULES[other]) else "")
            )
    if len(rest) > len(feed_forward):
        matches = all(leaf.shape in slot.source_shapes for slot, leaf in zip(feed_forward, rest, strict=False))
        extra = rest[len(feed_forward) :]
        variant = "SRU layers (ff_use_sru)" if matches else "a sparse or otherwise non-standard feed-forward"
        result.problems.append(
            f"layer {index}: the feed-forward block has {len(rest)} arrays instead of {len(feed_forward)} "
            f"(from {rest[0].path}); it looks like {variant}, which Hugging Face's Reformer cannot represent"
        )
        _pair(result, feed_forward, rest[: len(feed_forward)])
        result.unused.extend(extra)
    else:
        _pair(result, feed_forward, rest)


def _explain_unsegmented(result: Alignment, leaves: Sequence[Leaf], spec: ReformerSpec) -> None:
    if any(_rank(leaf) == 3 for leaf in leaves):
        return
    d = spec.hidden_size
    if any(_rank(leaf) == 2 and leaf.shape[0] == d and leaf.shape[1] == spec.all_head_size for leaf in leaves[2:]):
        result.problems.append(
            "the attention weights are (d_model, heads*d_head) matrices: trax's early-2020 attention "
            "(ComputeAttentionHeads), which Hugging Face's Reformer cannot represent"
        )
    else:
        result.notes.append("no decoder layer found: no layer norm followed by (heads, d_model, d_head) projections")


_FLOAT_DTYPES: Final = ("float16", "bfloat16", "float32", "float64")


def _check_dtypes(result: Alignment, leaves: Sequence[Leaf]) -> None:
    for leaf in leaves:
        if leaf.dtype not in _FLOAT_DTYPES:
            result.problems.append(f"{leaf.path} is {leaf.dtype}; weights must be floating point")


# ------------------------------------------------------------------------ plan


@dataclass(frozen=True)
class Plan:
    """A checked mapping: every HF key from exactly one leaf, every leaf used once."""

    spec: ReformerSpec
    assignments: tuple[Assignment, ...]  # in leaf order

    @property
    def hf_keys(self) -> list[str]:
        return [key for a in self.assignments for key in a.slot.hf_keys]


def plan(spec: ReformerSpec, leaves: Sequence[Leaf], *, source: str = "checkpoint") -> Plan:
    """The conversion plan, or an error that names what does not fit."""
    alignment = align(spec, leaves)
    if alignment.problems:
        raise UnsupportedLayoutError(f"{source}: {alignment.problems[0]}")
    if not alignment.ok:
        raise MappingError(f"{source}: {summarize_disagreement(alignment)}")
    assignments = sorted(alignment.assignments, key=lambda a: a.leaf.index)
    _check_coverage(spec, assignments)
    return Plan(spec, tuple(assignments))


def summarize_disagreement(alignment: Alignment) -> str:
    """One line: how many arrays disagree and the first of them."""
    parts = []
    if alignment.mismatches:
        first = alignment.mismatches[0]
        parts.append(
            f"{len(alignment.mismatches)} shape mismatches (first: {first.trax_path} is {list(first.actual)}, "
            f"{first.hf_key} needs {list(first.expected)})"
        )
    if alignment.missing:
        parts.append(f"{len(alignment.missing)} tensors missing (first: {alignment.missing[0].hf_key})")
    if alignment.unused:
        parts.append(f"{len(alignment.unused)} arrays unused (first: {alignment.unused[0].path})")
    text = "the checkpoint does not match the config: " + "; ".join(parts)
    if alignment.notes:
        text += f" ({alignment.notes[0]})"
    return text + "; run `reformer-tools verify` for the full table"


def _check_coverage(spec: ReformerSpec, assignments: Sequence[Assignment]) -> None:
    # Defence in depth: the tables must cover each key exactly once.
    keys = [key for a in assignments for key in a.slot.hf_keys]
    expected = set(hf_shapes(spec))
    if len(keys) != len(set(keys)) or set(keys) != expected:
        raise AssertionError("mapping tables do not cover the model exactly once")  # a bug, not bad input
