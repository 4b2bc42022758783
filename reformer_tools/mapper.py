"""The one table: how Trax's flat leaves become ``ReformerModelWithLMHead`` tensors.

Each :class:`Rule` names one Trax array's Hugging Face key, its Trax shape in terms of
named dimensions (``("h", "d", "dh")``) and the transform between the two. The tables
list them in Trax's flat leaf order. Everything else is derived from them:

- ``expected_slots`` fills the dimensions from a config: what a checkpoint must hold;
- ``split_leaves`` cuts a checkpoint's leaves into embeddings, layers and head, using the
  rank pattern the rules give (a layer opens with its norm, then attention);
- ``align`` pairs slots with leaves and reports every disagreement at once; ``plan``
  insists on a perfect match and returns what ``convert`` executes;
- :class:`DimSolver` reads the dimensions off leaf shapes by matching rule shapes, which is
  how ``infer`` learns a config from the weights.

Adding a rule here changes all of them together.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from reformer_tools.checkpoint import Leaf
from reformer_tools.dtypes import WEIGHT_DTYPES
from reformer_tools.errors import MappingError, UnsupportedLayoutError
from reformer_tools.spec import AttentionKind, ReformerSpec
from reformer_tools.transpose import contiguous, copy_into

Shape = tuple[int, ...]
#: A dimension in a rule's shape: a name solved from the config or the leaves, or a literal size.
Dim = str | int
Pattern = tuple[Dim, ...]
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
            return contiguous(view).reshape(shape)
        # Blocked: numpy's strided copy of a transposed view misses the cache on every element.
        return copy_into(out.reshape(view.shape), view).reshape(shape)


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


# ---------------------------------------------------------------- dimensions

#: What each dimension name means, in config terms. ``axial{i}``/``axial_dim{i}`` are axis i's size and depth.
DIMENSIONS: Final[dict[str, str]] = {
    "vocab": "vocab_size",
    "d": "hidden_size",
    "ff": "feed_forward_size",
    "h": "num_attention_heads",
    "dh": "attention_head_size",
    "maxlen": "max_position_embeddings",
}
#: Dimensions that are a multiple of another: the final norm and output act on both reversible halves.
DERIVED: Final[dict[str, tuple[str, int]]] = {"d2": ("d", 2)}


def dims_for(spec: ReformerSpec) -> dict[str, int]:
    """Every dimension name's size under ``spec``."""
    sizes = {name: getattr(spec, key) for name, key in DIMENSIONS.items()}
    for name, (base, factor) in DERIVED.items():
        sizes[name] = factor * sizes[base]
    for axis, (size, depth) in enumerate(zip(spec.axial_pos_shape, spec.axial_pos_embds_dim, strict=True)):
        sizes[f"axial{axis}"] = size
        sizes[f"axial_dim{axis}"] = depth
    return sizes


def describe_dim(name: str) -> str:
    if name.startswith("axial_dim"):
        return f"axial_pos_embds_dim[{name.removeprefix('axial_dim')}]"
    if name.startswith("axial"):
        return f"axial_pos_shape[{name.removeprefix('axial')}]"
    return DIMENSIONS.get(name, name)


class DimSolver:
    """Binds dimension names to sizes by matching rule shapes against leaf shapes.

    A name, once bound, must give the same size everywhere: a second leaf that says otherwise
    is a conflict, named with both leaves.
    """

    def __init__(self) -> None:
        self.sizes: dict[str, int] = {}
        self._origin: dict[str, str] = {}  # name -> path of the leaf that bound it

    def conflict(self, pattern: Pattern, leaf: Leaf) -> str | None:
        """Bind ``pattern``'s names from ``leaf``; None, or why the leaf does not fit (nothing bound then)."""
        shape = leaf.shape
        if len(pattern) != len(shape):
            return f"{leaf.path} {list(shape)} has {len(shape)} dimensions; expected {len(pattern)}"
        proposed: dict[str, int] = {}
        for dim, size in zip(pattern, shape, strict=True):
            if isinstance(dim, int):
                if dim != size:
                    return f"{leaf.path} {list(shape)} is not {_show_pattern(pattern)}"
                continue
            base, factor = DERIVED.get(dim, (dim, 1))
            if size % factor:
                return f"{leaf.path} {list(shape)} is not {_show_pattern(pattern)}: {size} is not {factor}x a size"
            value = size // factor
            known = proposed.get(base, self.sizes.get(base))
            if known is not None and known != value:
                where = self._origin.get(base, leaf.path)
                return f"{leaf.path} {list(shape)} gives {describe_dim(base)} {value}; {where} gave {known}"
            proposed[base] = value
        for name, value in proposed.items():
            if name not in self.sizes:
                self.sizes[name] = value
                self._origin[name] = leaf.path
        return None

    def first_fit(self, rule: Rule, leaf: Leaf) -> str | None:
        """Match ``leaf`` against each shape the rule accepts; None, or why none fits."""
        reasons = []
        for pattern in rule.shapes:
            reason = self.conflict(pattern, leaf)
            if reason is None:
                return None
            reasons.append(reason)
        return reasons[0]


def _show_pattern(pattern: Pattern) -> str:
    return "(" + ", ".join(str(d) for d in pattern) + ")"


# ---------------------------------------------------------------- rule tables


@dataclass(frozen=True)
class Rule:
    """One Trax array: its role, its HF key template, its accepted shapes and transform.

    ``shapes`` name config dimensions (see ``DIMENSIONS``); the first is canonical, the others
    are layouts older or newer Trax releases stored. Templates fill ``{layer}`` and ``{axis}``.
    """

    role: str
    hf_key: str
    shapes: tuple[Pattern, ...]
    transform: Transform
    also: tuple[str, ...] = ()  # further HF keys holding the same tensor
    zero_ok: bool = False  # all zeros is normal (a bias before training), not a sign of a broken file
    #: For a tensor Trax computes instead of storing: its value from the dimensions. No leaf feeds it.
    compute: Callable[[dict[str, int]], Array] | None = field(default=None, repr=False, compare=False)

    @property
    def rank(self) -> int:
        return len(self.shapes[0])


def sin_cos_table(dims: dict[str, int]) -> Array:
    """Trax's fixed positional encoding (``pos_type='sin-cos'``), the rows of positions 0..maxlen-1.

    ``SinCosPositionalEncoding`` (trax >= 1.3.8) adds, in eval mode, ``[sin(p*w), cos(p*w)]`` with
    ``w_i = 10000^(-2i/d)``: sines in the first half of the features, cosines in the second, computed in
    float32 as JAX does.
    """
    length, d = dims["maxlen"], dims["d"]
    position = np.arange(length, dtype=np.int32)[:, None].astype(np.float32)
    scale = np.float32(-(np.log(np.float32(10000.0)) / np.float32(d)))
    frequency = np.exp(np.arange(0, d, 2, dtype=np.int32).astype(np.float32) * scale)
    angles = position * frequency
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)


EMBEDDING_RULE: Final = Rule("embedding", "reformer.embeddings.word_embeddings.weight", (("vocab", "d"),), IDENTITY)
PLAIN_POSITION_RULE: Final = Rule(
    "positional encoding",
    "reformer.embeddings.position_embeddings.embedding.weight",
    # Trax stored (1, max_len, d) until 2021, then (max_len, d).
    ((1, "maxlen", "d"), ("maxlen", "d")),
    POSITIONS,
)
AXIAL_POSITION_KEY: Final = "reformer.embeddings.position_embeddings.weights.{axis}"
SIN_COS_POSITION_RULE: Final = Rule(
    "positional encoding (Trax's fixed sin-cos, computed)",
    PLAIN_POSITION_RULE.hf_key,
    (("maxlen", "d"),),
    IDENTITY,
    compute=sin_cos_table,
)


def axial_position_rules(axes: int) -> tuple[Rule, ...]:
    """One rule per axis: (1, 1.., size of this axis, ..1, its depth); Hugging Face drops the leading 1."""
    return tuple(
        Rule(
            f"axial position axis {axis}",
            AXIAL_POSITION_KEY.format(axis=axis),
            ((1, *(f"axial{axis}" if i == axis else 1 for i in range(axes)), f"axial_dim{axis}"),),
            DROP_LEADING_AXIS,
        )
        for axis in range(axes)
    )


_LAYER = "reformer.encoder.layers.{layer}"


@dataclass(frozen=True)
class LayerRules:
    """One decoder block's arrays, in Trax's order: attention norm, attention, feed-forward."""

    norm: tuple[Rule, ...]
    attention: tuple[Rule, ...]
    feed_forward: tuple[Rule, ...]

    @property
    def rules(self) -> tuple[Rule, ...]:
        return (*self.norm, *self.attention, *self.feed_forward)


_ATTENTION_NORM: Final = (
    Rule("attention layer norm scale", f"{_LAYER}.attention.layer_norm.weight", (("d",),), IDENTITY),
    Rule("attention layer norm bias", f"{_LAYER}.attention.layer_norm.bias", (("d",),), IDENTITY, zero_ok=True),
)
_FEED_FORWARD: Final = (
    Rule("feed-forward layer norm scale", f"{_LAYER}.feed_forward.layer_norm.weight", (("d",),), IDENTITY),
    Rule("feed-forward layer norm bias", f"{_LAYER}.feed_forward.layer_norm.bias", (("d",),), IDENTITY, zero_ok=True),
    Rule("feed-forward dense 1", f"{_LAYER}.feed_forward.dense.dense.weight", (("d", "ff"),), TRANSPOSE),
    Rule("feed-forward dense 1 bias", f"{_LAYER}.feed_forward.dense.dense.bias", (("ff",),), IDENTITY, zero_ok=True),
    Rule("feed-forward dense 2", f"{_LAYER}.feed_forward.output.dense.weight", (("ff", "d"),), TRANSPOSE),
    Rule("feed-forward dense 2 bias", f"{_LAYER}.feed_forward.output.dense.bias", (("d",),), IDENTITY, zero_ok=True),
)
_PROJECTION: Final[Pattern] = ("h", "d", "dh")
_OUTPUT_PROJECTION: Final[Pattern] = ("h", "dh", "d")
_SELF_ATTENTION = f"{_LAYER}.attention.self_attention"

LAYER_RULES: Final[dict[AttentionKind, LayerRules]] = {
    # LSHSelfAttention always shares query and key: (w_qk, w_v, w_o).
    "lsh": LayerRules(
        _ATTENTION_NORM,
        (
            Rule("LSH query/key", f"{_SELF_ATTENTION}.query_key.weight", (_PROJECTION,), HEADS_IN),
            Rule("LSH value", f"{_SELF_ATTENTION}.value.weight", (_PROJECTION,), HEADS_IN),
            Rule("LSH output", f"{_LAYER}.attention.output.dense.weight", (_OUTPUT_PROJECTION,), HEADS_OUT),
        ),
        _FEED_FORWARD,
    ),
    # SelfAttention (share_qk=False): (w_q, w_k, w_v, w_o).
    "local": LayerRules(
        _ATTENTION_NORM,
        (
            Rule("local query", f"{_SELF_ATTENTION}.query.weight", (_PROJECTION,), HEADS_IN),
            Rule("local key", f"{_SELF_ATTENTION}.key.weight", (_PROJECTION,), HEADS_IN),
            Rule("local value", f"{_SELF_ATTENTION}.value.weight", (_PROJECTION,), HEADS_IN),
            Rule("local output", f"{_LAYER}.attention.output.dense.weight", (_OUTPUT_PROJECTION,), HEADS_OUT),
        ),
        _FEED_FORWARD,
    ),
}
# The final norm and output act on the two reversible halves concatenated: 2*hidden.
HEAD_RULES: Final = (
    Rule("final layer norm scale", "reformer.encoder.layer_norm.weight", (("d2",),), IDENTITY),
    Rule("final layer norm bias", "reformer.encoder.layer_norm.bias", (("d2",),), IDENTITY, zero_ok=True),
    Rule("output dense", "lm_head.decoder.weight", (("d2", "vocab"),), TRANSPOSE),
    # HF ties lm_head.bias to lm_head.decoder.bias; write both so neither is stale.
    Rule("output bias", "lm_head.decoder.bias", (("vocab",),), IDENTITY, also=("lm_head.bias",), zero_ok=True),
)


def _one(values: Iterable[Any], what: str) -> Any:
    distinct = set(values)
    if len(distinct) != 1:
        raise AssertionError(f"the layer tables disagree on {what}: {distinct}")  # a bug in the tables
    return distinct.pop()


#: Ranks with which every layer opens (its norm, then its first attention array): how layers are found.
LAYER_OPENING: Final[tuple[int, ...]] = _one(
    (tuple(r.rank for r in (*rules.norm, rules.attention[0])) for rules in LAYER_RULES.values()), "the layer opening"
)
#: The rank of every attention projection; a run of them is one layer's attention.
ATTENTION_RANK: Final[int] = _one((r.rank for rules in LAYER_RULES.values() for r in rules.attention), "attention")
NORM_SIZE: Final[int] = _one((len(rules.norm) for rules in LAYER_RULES.values()), "the norm size")
#: Attention kind by number of projection arrays (3: LSH, 4: local).
KIND_BY_PROJECTIONS: Final[dict[int, AttentionKind]] = {len(r.attention): k for k, r in LAYER_RULES.items()}


# ---------------------------------------------------------------------- slots


@dataclass(frozen=True)
class Slot:
    """A rule made concrete for one config: where one Trax leaf must go."""

    group: str  # "embeddings", "layer 3", "head"
    rule: Rule
    hf_key: str
    source_shapes: tuple[Shape, ...]  # accepted Trax shapes (first is canonical)
    also: tuple[str, ...] = ()

    @property
    def role(self) -> str:
        return self.rule.role

    @property
    def transform(self) -> Transform:
        return self.rule.transform

    @property
    def source_shape(self) -> Shape:
        return self.source_shapes[0]

    @property
    def target_shape(self) -> Shape:
        return self.transform.target_shape(self.source_shape)

    @property
    def hf_keys(self) -> tuple[str, ...]:
        return (self.hf_key, *self.also)

    def computed_value(self, spec: ReformerSpec) -> Array:
        """The tensor of a slot no leaf fills (``rule.compute``)."""
        assert self.rule.compute is not None, f"{self.hf_key} is read from the checkpoint, not computed"
        return self.rule.compute(dims_for(spec))


def _slot(rule: Rule, group: str, dims: dict[str, int], layer: int | None = None) -> Slot:
    shapes = tuple(tuple(d if isinstance(d, int) else dims[d] for d in pattern) for pattern in rule.shapes)
    return Slot(group, rule, rule.hf_key.format(layer=layer), shapes, tuple(k.format(layer=layer) for k in rule.also))


@dataclass(frozen=True)
class LayerSlots:
    """One decoder block's slots, grouped as its rules are."""

    kind: AttentionKind
    norm: tuple[Slot, ...]
    attention: tuple[Slot, ...]
    feed_forward: tuple[Slot, ...]

    @property
    def slots(self) -> tuple[Slot, ...]:
        return (*self.norm, *self.attention, *self.feed_forward)


@dataclass(frozen=True)
class SlotLayout:
    """The expected leaf sequence for a config, grouped the way alignment needs."""

    front: tuple[Slot, ...]  # embedding, positions
    layers: tuple[LayerSlots, ...]
    head: tuple[Slot, ...]
    computed: tuple[Slot, ...] = ()  # tensors Trax computes rather than stores (sin-cos positions)

    @property
    def slots(self) -> list[Slot]:
        """The slots leaves fill, in Trax's flat order."""
        return [*self.front, *(s for layer in self.layers for s in layer.slots), *self.head]


def position_rules(spec: ReformerSpec) -> tuple[Rule, ...]:
    if spec.sin_cos_positions:
        return (SIN_COS_POSITION_RULE,)
    return axial_position_rules(len(spec.axial_pos_shape)) if spec.axial_pos_embds else (PLAIN_POSITION_RULE,)


def expected_slots(spec: ReformerSpec) -> SlotLayout:
    """Every Hugging Face tensor for ``spec``, in Trax's flat leaf order."""
    dims = dims_for(spec)
    positions = position_rules(spec)
    front = tuple(_slot(r, "embeddings", dims) for r in (EMBEDDING_RULE, *positions) if r.compute is None)
    computed = tuple(_slot(r, "embeddings", dims) for r in positions if r.compute is not None)
    layers = []
    for i, kind in enumerate(spec.attn_layers):
        rules = LAYER_RULES[kind]
        group = f"layer {i}"

        def make(chosen: tuple[Rule, ...], group: str = group, i: int = i) -> tuple[Slot, ...]:
            return tuple(_slot(r, group, dims, layer=i) for r in chosen)

        layers.append(LayerSlots(kind, make(rules.norm), make(rules.attention), make(rules.feed_forward)))
    head = tuple(_slot(r, "head", dims) for r in HEAD_RULES)
    return SlotLayout(front, tuple(layers), head, computed)


def hf_shapes(spec: ReformerSpec) -> dict[str, Shape]:
    """Every ``ReformerModelWithLMHead`` state_dict key and shape for ``spec``."""
    shapes: dict[str, Shape] = {}
    layout = expected_slots(spec)
    for slot in (*layout.computed, *layout.slots):
        for key in slot.hf_keys:
            shapes[key] = slot.target_shape
    return shapes


# -------------------------------------------------------------- leaf layout


@dataclass(frozen=True)
class LayerLeaves:
    """One decoder block's leaves, cut where the rules say its parts are."""

    norm: tuple[Leaf, ...]
    attention: tuple[Leaf, ...]  # the run of attention-rank arrays after the norm
    attention_biases: tuple[Leaf, ...]  # (heads, size) arrays right after them: bias=True attention
    feed_forward: tuple[Leaf, ...]  # the rest


@dataclass(frozen=True)
class LeafLayout:
    """A checkpoint's leaves cut into embeddings, decoder layers and head."""

    front: tuple[Leaf, ...]
    layers: tuple[LayerLeaves, ...]
    head: tuple[Leaf, ...]


def layer_starts(leaves: Sequence[Leaf]) -> list[int]:
    """Where decoder layers begin: the ranks every layer opens with (its norm, then attention)."""
    ranks = [len(leaf.shape) for leaf in leaves]
    width = len(LAYER_OPENING)
    return [i for i in range(len(leaves) - width + 1) if tuple(ranks[i : i + width]) == LAYER_OPENING]


def split_leaves(leaves: Sequence[Leaf]) -> LeafLayout | None:
    """Cut ``leaves`` into embeddings, layers and head; None if no layer opening is found."""
    starts = layer_starts(leaves)
    if not starts:
        return None
    head_start = max(len(leaves) - len(HEAD_RULES), starts[-1] + NORM_SIZE)
    bounds = [*starts, head_start]
    layers = tuple(_split_layer(leaves[bounds[i] : bounds[i + 1]]) for i in range(len(starts)))
    return LeafLayout(tuple(leaves[: starts[0]]), layers, tuple(leaves[head_start:]))


def _split_layer(leaves: Sequence[Leaf]) -> LayerLeaves:
    end = NORM_SIZE
    while end < len(leaves) and len(leaves[end].shape) == ATTENTION_RANK:
        end += 1
    attention = tuple(leaves[NORM_SIZE:end])
    bias_end = end
    # A layer cut short (the head claims its last leaves) may have no attention left to size biases by.
    heads = attention[0].shape[0] if attention else None
    while bias_end < len(leaves) and len(leaves[bias_end].shape) == 2 and leaves[bias_end].shape[0] == heads:
        bias_end += 1
    return LayerLeaves(tuple(leaves[:NORM_SIZE]), attention, tuple(leaves[end:bias_end]), tuple(leaves[bias_end:]))


# ------------------------------------------------------------------ alignment

WEIGHTLESS_POSITIONS: Final = (
    "the checkpoint has no positional-encoding weights: Trax used a weightless encoding (pos_type 'sin-cos', 'no' "
    "or 'time-bin'), which Hugging Face's Reformer does not have and the weights cannot tell apart; Trax's sin-cos "
    "converts as a fixed table: if it is sin-cos, say so with --set trax_pos_type=sin-cos or a config.gin binding "
    "ReformerLM.pos_type = 'sin-cos'"
)


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
    computed: list[Slot] = field(default_factory=list)  # tensors made from the config, not from a leaf

    @property
    def ok(self) -> bool:
        return not (self.mismatches or self.missing or self.unused or self.problems)

    def hf_keys_for(self) -> dict[int, tuple[str, ...]]:
        """Leaf index -> HF key(s), for the leaves that found a slot."""
        return {a.leaf.index: a.slot.hf_keys for a in self.assignments}

    def to_json(self) -> dict[str, Any]:
        return {
            "mismatches": [
                {"hf_key": m.hf_key, "trax_path": m.trax_path, "expected": list(m.expected), "actual": list(m.actual)}
                for m in self.mismatches
            ],
            "missing": [slot.hf_key for slot in self.missing],
            "unused": [leaf.path for leaf in self.unused],
            "unsupported": list(self.problems),
            "notes": list(self.notes),
        }


def align(spec: ReformerSpec, leaves: Sequence[Leaf]) -> Alignment:
    """Pair every expected slot with a leaf; collect all disagreements."""
    layout = expected_slots(spec)
    result = Alignment(spec, [], [], [], [], [], [], list(layout.computed))
    found = split_leaves(leaves)
    if found is None:
        _pair(result, layout.slots, list(leaves))
        _explain_unsegmented(result, leaves, spec)
        return result
    if len(found.front) == 1 and len(layout.front) > 1:
        result.problems.append(WEIGHTLESS_POSITIONS)
    _pair(result, layout.front, found.front)
    for i in range(max(len(found.layers), len(layout.layers))):
        if i >= len(layout.layers):
            layer = found.layers[i]
            result.unused.extend((*layer.norm, *layer.attention, *layer.attention_biases, *layer.feed_forward))
        elif i >= len(found.layers):
            result.missing.extend(layout.layers[i].slots)
        else:
            _align_layer(result, i, layout.layers[i], found.layers[i])
    if len(found.layers) != len(layout.layers):
        result.notes.append(
            f"the checkpoint has {len(found.layers)} decoder layers; the config has {len(layout.layers)}"
        )
    _pair(result, layout.head, found.head)
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


def _align_layer(result: Alignment, index: int, slots: LayerSlots, leaves: LayerLeaves) -> None:
    kind = slots.kind
    _pair(result, slots.norm, leaves.norm)
    if leaves.attention_biases:
        result.problems.append(
            f"layer {index}: attention with biases ({', '.join(b.path for b in leaves.attention_biases)}); "
            "Hugging Face's Reformer attention has no biases"
        )
        result.unused.extend(leaves.attention_biases)
    found = len(leaves.attention)
    if found == len(slots.attention):
        _pair(result, slots.attention, leaves.attention)
    else:
        result.missing.extend(slots.attention)
        result.unused.extend(leaves.attention)
        other = KIND_BY_PROJECTIONS.get(found)
        if kind == "local" and other == "lsh":
            result.problems.append(
                f"layer {index}: shared query/key local attention (trax SelfAttention(share_qk=True), "
                f"{found} arrays from {leaves.attention[0].path}); Hugging Face's LocalSelfAttention needs separate "
                "query and key, and Trax's shared-QK attention normalizes keys and masks self-attention"
            )
        else:
            expected = f"{len(slots.attention)} projection arrays ({kind})"
            result.notes.append(
                f"layer {index}: the config says {kind} attention ({expected}); the checkpoint has {found}"
                + (f", which is {other} attention" if other is not None else "")
            )
    rest = leaves.feed_forward
    expected_ff = slots.feed_forward
    if len(rest) > len(expected_ff):
        matches = all(leaf.shape in slot.source_shapes for slot, leaf in zip(expected_ff, rest, strict=False))
        variant = "SRU layers (ff_use_sru)" if matches else "a sparse or otherwise non-standard feed-forward"
        result.problems.append(
            f"layer {index}: the feed-forward block has {len(rest)} arrays instead of {len(expected_ff)} "
            f"(from {rest[0].path}); it looks like {variant}, which Hugging Face's Reformer cannot represent"
        )
        _pair(result, expected_ff, rest[: len(expected_ff)])
        result.unused.extend(rest[len(expected_ff) :])
    else:
        _pair(result, expected_ff, rest)


def _explain_unsegmented(result: Alignment, leaves: Sequence[Leaf], spec: ReformerSpec) -> None:
    if any(len(leaf.shape) == ATTENTION_RANK for leaf in leaves):
        return
    d = spec.hidden_size
    if any(len(leaf.shape) == 2 and leaf.shape == (d, spec.all_head_size) for leaf in leaves[2:]):
        result.problems.append(
            "the attention weights are (d_model, heads*d_head) matrices: trax's early-2020 attention "
            "(ComputeAttentionHeads), which Hugging Face's Reformer cannot represent"
        )
    else:
        result.notes.append("no decoder layer found: no layer norm followed by (heads, d_model, d_head) projections")


def _check_dtypes(result: Alignment, leaves: Sequence[Leaf]) -> None:
    for leaf in leaves:
        if leaf.dtype not in WEIGHT_DTYPES:
            result.problems.append(f"{leaf.path} is {leaf.dtype}; weights must be floating point")


# ------------------------------------------------------------------------ plan


@dataclass(frozen=True)
class Plan:
    """A checked mapping: every HF key from exactly one leaf (or computed), every leaf used once."""

    spec: ReformerSpec
    assignments: tuple[Assignment, ...]  # in leaf order
    computed: tuple[Slot, ...] = ()

    @property
    def hf_keys(self) -> list[str]:
        return [key for slot in self.computed for key in slot.hf_keys] + [
            key for a in self.assignments for key in a.slot.hf_keys
        ]


def plan(spec: ReformerSpec, leaves: Sequence[Leaf], *, source: str = "checkpoint") -> Plan:
    """The conversion plan, or an error that names what does not fit."""
    alignment = align(spec, leaves)
    if alignment.problems:
        raise UnsupportedLayoutError(f"{source}: {alignment.problems[0]}")
    if not alignment.ok:
        raise MappingError(f"{source}: {summarize_disagreement(alignment)}")
    assignments = sorted(alignment.assignments, key=lambda a: a.leaf.index)
    _check_coverage(spec, assignments, alignment.computed)
    return Plan(spec, tuple(assignments), tuple(alignment.computed))


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


def _check_coverage(spec: ReformerSpec, assignments: Sequence[Assignment], computed: Sequence[Slot]) -> None:
    # Defence in depth: the tables must cover each key exactly once.
    keys = [key for a in assignments for key in a.slot.hf_keys] + [key for s in computed for key in s.hf_keys]
    expected = set(hf_shapes(spec))
    if len(keys) != len(set(keys)) or set(keys) != expected:
        raise AssertionError("mapping tables do not cover the model exactly once")  # a bug, not bad input
