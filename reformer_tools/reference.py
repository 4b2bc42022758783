"""An independent NumPy implementation of Trax's ``ReformerLM`` forward pass, in eval mode.

Written from Trax's own source (``trax/models/reformer/reformer.py``, ``trax/layers/reversible.py``,
``trax/layers/normalization.py``, the positional encodings and
``trax/layers/research/efficient_attention[_v2].py``; versions 1.2.4 and 1.4.1 compute the same thing
here) so that a converted model can be checked against what Trax computes rather than against the
mapping that produced it: this module imports neither the mapper nor torch nor transformers, and
reads the weights in Trax's own layout.

The model, as Trax builds it::

    ShiftRight -> Embedding -> + positions -> Dup
    -> per layer: x1 += Attention(LayerNorm(x2)); swap; x2 += FeedForward(x1); swap
    -> Concatenate(x1, x2) -> LayerNorm -> Dense -> (log-softmax)

Dropout is off (eval mode). LSH attention hashes with random rotations, which Trax draws from its
JAX RNG; they cannot be reproduced, so callers pass the rotations to use (``lsh_rotations``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

import numpy as np
import numpy.typing as npt

from reformer_tools.spec import AttentionKind, ReformerSpec

Array: TypeAlias = npt.NDArray[Any]
FloatArray: TypeAlias = npt.NDArray[np.floating[Any]]
#: Rotations for each LSH layer: a function of the layer index, one entry per layer (None for local
#: layers), or None to draw them with NumPy. Each array is (d_head, n_hashes, rot/2), per head
#: (heads, d_head, n_hashes, rot/2), or per example and head (batch, heads, d_head, n_hashes, rot/2).
LshRotations: TypeAlias = "Callable[[int], Array] | Sequence[Array | None] | None"
Precision: TypeAlias = Literal["float32", "float64"]

#: Trax's mask_self_attention subtracts these (rather than replacing the scores).
_CAUSAL_PENALTY: Final = 1e9
_SELF_PENALTY: Final = 1e5
#: length_normalized's epsilon (shared query/key attention normalizes its keys).
_KEY_NORM_EPS: Final = 1e-6


# --------------------------------------------------------------------- weights


@dataclass(frozen=True)
class LayerWeights:
    """One decoder block, in Trax's layout."""

    kind: AttentionKind
    attention_norm: tuple[FloatArray, FloatArray]
    attention: tuple[FloatArray, ...]  # lsh: w_qk, w_v, w_o; local: w_q, w_k, w_v, w_o
    feed_forward_norm: tuple[FloatArray, FloatArray]
    dense1: tuple[FloatArray, FloatArray]  # (d, d_ff), (d_ff,)
    dense2: tuple[FloatArray, FloatArray]  # (d_ff, d), (d,)


@dataclass(frozen=True)
class ReformerWeights:
    """Every weight of a ReformerLM, parsed from Trax's flat leaf order."""

    embedding: FloatArray  # (vocab, d)
    positions: tuple[FloatArray, ...]  # axial: one (*axial_shape broadcastable, d_i) per axis; plain: (max_len, d)
    axial: bool
    layers: tuple[LayerWeights, ...]
    final_norm: tuple[FloatArray, FloatArray]  # (2d,), (2d,)
    output: tuple[FloatArray, FloatArray]  # (2d, vocab), (vocab,)


class _LeafReader:
    """Takes leaves in order, checking each shape; errors name the leaf and its role."""

    def __init__(self, leaves: Sequence[Array], dtype: np.dtype[np.floating[Any]]) -> None:
        self._leaves = leaves
        self._dtype = dtype
        self.index = 0

    def take(self, role: str, *shapes: tuple[int, ...]) -> FloatArray:
        if self.index >= len(self._leaves):
            raise ValueError(f"leaf {self.index} ({role}) is missing: only {len(self._leaves)} weight arrays given")
        array = np.asarray(self._leaves[self.index])
        if array.shape not in shapes:
            expected = " or ".join(str(s) for s in shapes)
            raise ValueError(f"leaf {self.index} ({role}) has shape {array.shape}, expected {expected}")
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"leaf {self.index} ({role}) is {array.dtype}, not floating point")
        self.index += 1
        return array.astype(self._dtype)


def parse_weights(leaves: Sequence[Array], spec: ReformerSpec, *, precision: Precision = "float64") -> ReformerWeights:
    """Split Trax's flat leaves into a ReformerLM's weights, checking every shape against ``spec``."""
    d, heads, dh, ff = spec.hidden_size, spec.num_attention_heads, spec.attention_head_size, spec.feed_forward_size
    reader = _LeafReader(leaves, np.dtype(precision))
    embedding = reader.take("embedding", (spec.vocab_size, d))
    positions: list[FloatArray] = []
    if spec.axial_pos_embds:
        axes = len(spec.axial_pos_shape)
        for axis, (size, depth) in enumerate(zip(spec.axial_pos_shape, spec.axial_pos_embds_dim, strict=True)):
            shape = (1, *(size if i == axis else 1 for i in range(axes)), depth)
            positions.append(reader.take(f"axial positional encoding, axis {axis}", shape)[0])
    elif not spec.sin_cos_positions:  # sin-cos has no weights: computed per input in _positions
        maxlen = spec.max_position_embeddings
        table = reader.take("positional encoding", (1, maxlen, d), (maxlen, d))
        positions.append(table.reshape(maxlen, d))  # checkpoints before 2021 kept a leading batch axis
    layers = []
    for i, kind in enumerate(spec.attn_layers):
        norm = (
            reader.take(f"layer {i} attention norm scale", (d,)),
            reader.take(f"layer {i} attention norm bias", (d,)),
        )
        names = ("w_qk", "w_v") if kind == "lsh" else ("w_q", "w_k", "w_v")
        projections = [reader.take(f"layer {i} {kind} {name}", (heads, d, dh)) for name in names]
        projections.append(reader.take(f"layer {i} {kind} w_o", (heads, dh, d)))
        ff_norm = (
            reader.take(f"layer {i} feed-forward norm scale", (d,)),
            reader.take(f"layer {i} feed-forward norm bias", (d,)),
        )
        dense1 = (reader.take(f"layer {i} dense 1", (d, ff)), reader.take(f"layer {i} dense 1 bias", (ff,)))
        dense2 = (reader.take(f"layer {i} dense 2", (ff, d)), reader.take(f"layer {i} dense 2 bias", (d,)))
        layers.append(LayerWeights(kind, norm, tuple(projections), ff_norm, dense1, dense2))
    final_norm = (reader.take("final norm scale", (2 * d,)), reader.take("final norm bias", (2 * d,)))
    output = (reader.take("output dense", (2 * d, spec.vocab_size)), reader.take("output bias", (spec.vocab_size,)))
    if reader.index != len(leaves):
        raise ValueError(f"{len(leaves)} weight arrays given; the config accounts for {reader.index}")
    return ReformerWeights(embedding, tuple(positions), spec.axial_pos_embds, tuple(layers), final_norm, output)


# ------------------------------------------------------------------ functions


def shift_right(input_ids: Array) -> Array:
    """Trax's ShiftRight: a 0 in front, the last token dropped (what Hugging Face must be fed)."""
    ids = np.asarray(input_ids)
    return np.concatenate([np.zeros_like(ids[:, :1]), ids[:, :-1]], axis=1)


def trax_default_num_buckets(seq_len: int, chunk_len: int) -> int | tuple[int, ...]:
    """LSHSelfAttention.hash_vectors' choice when n_buckets is None (trax >= 1.3)."""
    n_buckets = 2 * max(1, seq_len // chunk_len)
    if n_buckets <= 128:
        return n_buckets
    first = 2 ** math.ceil(math.log2(math.sqrt(n_buckets)))
    return (first, 2 * (n_buckets // (2 * first)))  # both factors even


def rotation_size(num_buckets: int | Sequence[int]) -> int:
    """Columns of the random rotation: the bucket count, or the sum of its factors."""
    return num_buckets if isinstance(num_buckets, int) else sum(num_buckets)


def lsh_num_buckets(spec: ReformerSpec, seq_len: int) -> int | tuple[int, ...]:
    """The bucket count Trax's LSH layers use for ``spec`` at this length."""
    if spec.num_buckets is not None:
        return spec.num_buckets
    return trax_default_num_buckets(seq_len, spec.lsh_attn_chunk_length)


def lsh_rotation_shape(spec: ReformerSpec, seq_len: int) -> tuple[int, int, int, int]:
    """Per-head rotations: (heads, d_head, n_hashes, rot/2), the shape Hugging Face draws."""
    half = rotation_size(lsh_num_buckets(spec, seq_len)) // 2
    return (spec.num_attention_heads, spec.attention_head_size, spec.num_hashes, half)


def _layer_norm(x: FloatArray, scale: FloatArray, bias: FloatArray, eps: float) -> FloatArray:
    mean = x.mean(axis=-1, keepdims=True)
    centered = x - mean
    variance = (centered * centered).mean(axis=-1, keepdims=True)
    return np.asarray(centered / np.sqrt(variance + eps) * scale + bias)


def _logsumexp(x: FloatArray, axis: int) -> FloatArray:
    peak = x.max(axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    return np.asarray(np.log(np.exp(x - peak).sum(axis=axis, keepdims=True)) + peak)


def log_softmax(x: FloatArray) -> FloatArray:
    return x - _logsumexp(x, axis=-1)


_erf = np.frompyfunc(math.erf, 1, 1)


def _activation(name: str) -> Callable[[FloatArray], FloatArray]:
    """Trax's activations under Hugging Face's names (gelu = tl.Gelu, gelu_new/gelu_fast = tl.FastGelu)."""

    def gelu(x: FloatArray) -> FloatArray:
        return np.asarray(x * 0.5 * (1.0 + _erf(x / np.sqrt(2.0)).astype(x.dtype)))

    def fast_gelu(x: FloatArray) -> FloatArray:
        return np.asarray(0.5 * x * (1 + np.tanh(x * 0.7978845608 * (1 + 0.044715 * x * x))))

    def sigmoid(x: FloatArray) -> FloatArray:
        return 1 / (1 + np.exp(-x))

    table: dict[str, Callable[[FloatArray], FloatArray]] = {
        "relu": lambda x: np.maximum(x, 0),
        "gelu": gelu,
        "gelu_new": fast_gelu,
        "gelu_fast": fast_gelu,
        "gelu_pytorch_tanh": fast_gelu,
        "leaky_relu": lambda x: np.where(x >= 0, x, 0.01 * x),
        "silu": lambda x: x * sigmoid(x),
        "swish": lambda x: x * sigmoid(x),
        "tanh": np.tanh,
        "sigmoid": sigmoid,
    }
    if name not in table:
        raise ValueError(f"hidden_act {name!r} has no Trax counterpart here (known: {', '.join(table)})")
    return table[name]


def _look_adjacent(x: Array, before: int, after: int) -> Array:
    """Trax's look_adjacent on axis -3 (chunks) of (..., chunks, chunk_len, ...): wraps around both ends."""
    if before == 0 and after == 0:
        return x
    return np.concatenate([np.roll(x, -i, axis=-3) for i in range(-before, after + 1)], axis=-2)


def _chunked_attention(
    q: FloatArray,
    k: FloatArray,
    v: FloatArray,
    q_pos: Array,
    kv_pos: Array,
    *,
    chunk_len: int,
    before: int,
    after: int,
    exclude_self: bool,
    score_dtype: type[np.floating[Any]] | None = None,
) -> tuple[FloatArray, FloatArray]:
    """Trax's ``attend``: causal, chunked dot-product attention; returns (output, logsumexp).

    ``q``, ``k``, ``v`` are (..., n, depth) with ``k`` already scaled; positions are (..., n) token
    positions used for masking (Trax's q_info / kv_info). ``score_dtype``: compute the masked scores
    and their softmax in this dtype (see :func:`_lsh_attention`).
    """
    n = q.shape[-2]
    if n % chunk_len:
        raise ValueError(f"{n} positions do not split into chunks of {chunk_len} (Trax cannot run this length)")
    chunks = n // chunk_len

    def split(x: Array) -> Array:
        return x.reshape(*x.shape[:-2], chunks, chunk_len, x.shape[-1])

    qc, kc, vc = split(q), split(k), split(v)
    q_info = q_pos.reshape(*q_pos.shape[:-1], chunks, chunk_len, 1)
    kv_info = kv_pos.reshape(*kv_pos.shape[:-1], chunks, chunk_len, 1)
    kc = _look_adjacent(kc, before, after)
    vc = _look_adjacent(vc, before, after)
    kv_info = _look_adjacent(kv_info, before, after)
    dots = qc @ np.swapaxes(kc, -1, -2)
    if score_dtype is not None:
        dots = dots.astype(score_dtype)
    kv_row = np.swapaxes(kv_info, -1, -2)
    dots = dots - dots.dtype.type(_CAUSAL_PENALTY) * (q_info < kv_row)
    if exclude_self:
        dots = dots - dots.dtype.type(_SELF_PENALTY) * (q_info == kv_row)
    lse = _logsumexp(dots, axis=-1)
    out = np.exp(dots - lse).astype(vc.dtype) @ vc
    return out.reshape(*out.shape[:-3], n, out.shape[-1]), lse.reshape(*lse.shape[:-3], n)


def _local_attention(x: FloatArray, weights: tuple[FloatArray, ...], spec: ReformerSpec) -> FloatArray:
    """efficient_attention.SelfAttention(causal=True, share_qk=False), all heads and examples at once."""
    w_q, w_k, w_v, w_o = weights
    q = np.einsum("bld,hde->bhle", x, w_q)
    k = np.einsum("bld,hde->bhle", x, w_k) / np.sqrt(w_k.shape[-1])
    v = np.einsum("bld,hde->bhle", x, w_v)
    positions = np.arange(x.shape[1])
    out, _ = _chunked_attention(
        q,
        k,
        v,
        positions,
        positions,
        chunk_len=spec.local_attn_chunk_length,
        before=spec.local_num_chunks_before,
        after=spec.local_num_chunks_after,
        exclude_self=False,
    )
    return np.asarray(np.einsum("bhle,hed->bld", out, w_o))  # heads' outputs are summed


def _hash(qk: FloatArray, rotations: FloatArray, num_buckets: int | Sequence[int]) -> tuple[Array, int]:
    """hash_vecs: argmax over [xR, -xR] (per factor when factorized); returns (b, h, n_hashes, L), count."""
    rotated = np.einsum("bhld,bhdnr->bhnlr", qk, rotations)
    factors = (num_buckets,) if isinstance(num_buckets, int) else tuple(num_buckets)
    buckets = np.zeros(rotated.shape[:-1], dtype=np.int64)
    start, product = 0, 1
    for factor in factors:
        part = rotated[..., start : start + factor // 2]
        start += factor // 2
        buckets += product * np.argmax(np.concatenate([part, -part], axis=-1), axis=-1)
        product *= factor
    return buckets, product


def _lsh_attention(
    x: FloatArray, weights: tuple[FloatArray, ...], spec: ReformerSpec, rotations: FloatArray
) -> FloatArray:
    """efficient_attention.LSHSelfAttention(causal=True), all heads and examples at once."""
    w_qk, w_v, w_o = weights
    batch, seq_len = x.shape[:2]
    n_hashes = spec.num_hashes
    qk = np.einsum("bld,hde->bhle", x, w_qk)
    v = np.einsum("bld,hde->bhle", x, w_v)
    buckets, n_buckets = _hash(qk, rotations, lsh_num_buckets(spec, seq_len))
    # Offsets keep the hashing rounds apart; sorting by (bucket, position) is Trax's sort_key_val.
    buckets = buckets + (np.arange(n_hashes) * n_buckets)[:, None]
    buckets = buckets.reshape(*buckets.shape[:2], n_hashes * seq_len)
    ticker = np.arange(n_hashes * seq_len)
    sticker = np.argsort(seq_len * buckets + ticker % seq_len, axis=-1, kind="stable")
    undo_sort = np.argsort(sticker, axis=-1, kind="stable")
    st = sticker % seq_len
    sq = np.take_along_axis(qk, st[..., None], axis=-2)
    sv = np.take_along_axis(v, st[..., None], axis=-2)
    # Shared QK: keys are the length-normalized queries (attend's share_qk branch), then scaled.
    variance = (sq * sq).mean(axis=-1, keepdims=True)
    sk = sq / np.sqrt(variance + _KEY_NORM_EPS) / np.sqrt(sq.shape[-1])
    so, slogits = _chunked_attention(
        sq,
        sk,
        sv,
        st,
        st,
        chunk_len=spec.lsh_attn_chunk_length,
        before=spec.lsh_num_chunks_before,
        after=spec.lsh_num_chunks_after,
        exclude_self=True,
        # Scores and round weights in float32, as Trax computes them: a query that may attend only to
        # itself scores about -1e5, where float32 resolves 2**-7, and the result depends on that rounding
        # (with 2 hashes the first position gets 0.9978 of its value vector, not all of it; Trax's stored
        # outputs and Hugging Face both show this). Float64 would differ by ~1e-3 there.
        score_dtype=np.float32,
    )
    o = np.take_along_axis(so, undo_sort[..., None], axis=-2)
    logits = np.take_along_axis(slogits, undo_sort, axis=-1)
    o = o.reshape(batch, -1, n_hashes, seq_len, o.shape[-1])
    logits = logits.reshape(batch, -1, n_hashes, seq_len, 1)
    # Rounds are weighted by their share of the total softmax mass.
    o = (o * np.exp(logits - _logsumexp(logits, axis=2)).astype(o.dtype)).sum(axis=2)
    return np.asarray(np.einsum("bhle,hed->bld", o, w_o))


def _rotations_for(
    layer: int, source: LshRotations, spec: ReformerSpec, batch: int, seq_len: int, dtype: np.dtype[Any]
) -> FloatArray:
    heads, dh, n_hashes, half = lsh_rotation_shape(spec, seq_len)
    full = (batch, heads, dh, n_hashes, half)
    if source is None:
        # Trax draws per example and head from JAX's RNG, which cannot be reproduced; this is only deterministic.
        rng = np.random.default_rng([spec.hash_seed or 0, layer])
        return rng.standard_normal(full).astype(dtype)
    given = source(layer) if callable(source) else _sequence_entry(source, layer, spec)
    if given is None:
        raise ValueError(f"no LSH rotations given for layer {layer}")
    array = np.asarray(given)
    if array.ndim not in (3, 4, 5) or array.shape[-3:] != full[-3:] or array.shape[:-3] != full[5 - array.ndim : 2]:
        raise ValueError(
            f"layer {layer}: rotations have shape {array.shape}; expected {full[2:]}, {full[1:]} or {full} "
            f"for num_buckets={lsh_num_buckets(spec, seq_len)}"
        )
    return np.broadcast_to(array.astype(dtype), full)


def _sequence_entry(source: Sequence[Array | None], layer: int, spec: ReformerSpec) -> Array | None:
    if len(source) != spec.num_layers:
        raise ValueError(f"lsh_rotations has {len(source)} entries; give one per layer ({spec.num_layers})")
    return source[layer]


def _check_ids(input_ids: Array, spec: ReformerSpec) -> Array:
    ids = np.asarray(input_ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"input_ids must be a (batch, length) integer array, got {ids.dtype} {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= spec.vocab_size):
        raise ValueError(f"input_ids must lie in [0, {spec.vocab_size})")
    limit = math.prod(spec.axial_pos_shape) if spec.axial_pos_embds else spec.max_position_embeddings
    if ids.shape[1] > limit:
        raise ValueError(f"length {ids.shape[1]} exceeds the {limit} positions the positional encoding has")
    return ids.astype(np.int64)


def _sin_cos(seq_len: int, d_model: int) -> FloatArray:
    """SinCosPositionalEncoding in eval mode (trax >= 1.3.8, position_encodings.py ``_sincos``): for positions
    0..seq_len-1, sin(p * w) then cos(p * w) along the features, w = exp(arange(0, d, 2) * -log(10000) / d),
    in float32 as JAX computes it."""
    rates = np.exp(np.arange(0, d_model, 2).astype(np.float32) * np.float32(-np.log(10000.0) / d_model))
    arguments = np.arange(seq_len).astype(np.float32)[:, None] * rates[None, :]
    return np.concatenate([np.sin(arguments), np.cos(arguments)], axis=1)


def _positions(weights: ReformerWeights, spec: ReformerSpec, seq_len: int) -> FloatArray:
    if spec.sin_cos_positions:
        return _sin_cos(seq_len, spec.hidden_size).astype(weights.embedding.dtype)
    if not weights.axial:
        return weights.positions[0][:seq_len]
    # Position p sits at the row-major multi-index of p in axial_pos_shape; each axis contributes its part.
    # (Trax's axial encoding accepts only the full length prod(axial_pos_shape); shorter inputs get the
    # table's first positions, as in Hugging Face's eval mode.)
    index = np.unravel_index(np.arange(seq_len), spec.axial_pos_shape)
    parts = [table.reshape(table.shape[axis], -1)[index[axis]] for axis, table in enumerate(weights.positions)]
    return np.concatenate(parts, axis=-1)


def _decoder(
    weights: ReformerWeights,
    spec: ReformerSpec,
    input_ids: Array,
    rotations: LshRotations,
    n_layers: int,
) -> tuple[FloatArray, FloatArray]:
    """ShiftRight, embeddings and the first ``n_layers`` reversible blocks: the two halves (x1, x2)."""
    ids = shift_right(_check_ids(input_ids, spec))
    batch, seq_len = ids.shape
    x = weights.embedding[ids] + _positions(weights, spec, seq_len)
    act = _activation(spec.hidden_act)
    x1, x2 = x, x  # Dup
    for i, layer in enumerate(weights.layers[:n_layers]):
        h = _layer_norm(x2, *layer.attention_norm, spec.layer_norm_eps)
        if layer.kind == "lsh":
            rot = _rotations_for(i, rotations, spec, batch, seq_len, h.dtype)
            x1 = x1 + _lsh_attention(h, layer.attention, spec, rot)
        else:
            x1 = x1 + _local_attention(h, layer.attention, spec)
        # ReversibleSwap, then the feed-forward half-residual and another swap.
        h = _layer_norm(x1, *layer.feed_forward_norm, spec.layer_norm_eps)
        h = act(h @ layer.dense1[0] + layer.dense1[1]) @ layer.dense2[0] + layer.dense2[1]
        x2 = x2 + h
    return x1, x2


def trax_log_probs(
    leaves: Sequence[Array],
    spec: ReformerSpec,
    input_ids: Array,
    *,
    lsh_rotations: LshRotations = None,
    precision: Precision = "float64",
) -> FloatArray:
    """Trax ReformerLM's log-probabilities (batch, length, vocab) for ``input_ids``, in eval mode.

    ``input_ids`` are what Trax is fed: the model shifts them right itself, so Hugging Face must be
    fed ``shift_right(input_ids)`` for its position t to line up with position t here. Always causal;
    LayerNorm's epsilon is the config's ``layer_norm_eps`` (Trax's is 1e-6 unless config.gin binds
    ``LayerNorm.epsilon``). ``lsh_rotations``: see :data:`LshRotations`.
    """
    weights = parse_weights(leaves, spec, precision=precision)
    x1, x2 = _decoder(weights, spec, input_ids, lsh_rotations, spec.num_layers)
    h = _layer_norm(np.concatenate([x1, x2], axis=-1), *weights.final_norm, spec.layer_norm_eps)
    return log_softmax(h @ weights.output[0] + weights.output[1])


def trax_hidden_states(
    leaves: Sequence[Array],
    spec: ReformerSpec,
    input_ids: Array,
    n_layers: int,
    *,
    lsh_rotations: LshRotations = None,
    precision: Precision = "float64",
) -> FloatArray:
    """The two reversible halves concatenated (batch, length, 2d) after the first ``n_layers`` blocks."""
    if not 0 <= n_layers <= spec.num_layers:
        raise ValueError(f"n_layers must be in [0, {spec.num_layers}], got {n_layers}")
    weights = parse_weights(leaves, spec, precision=precision)
    x1, x2 = _decoder(weights, spec, input_ids, lsh_rotations, n_layers)
    return np.concatenate([x1, x2], axis=-1)
