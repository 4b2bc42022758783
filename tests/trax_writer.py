"""Write ReformerLM checkpoints the way each Trax era laid them out, with numpy alone.

Three layers, each usable on its own:

* weights: ``tiny_spec`` and ``random_leaves`` make a config and its arrays in
  Trax's flat leaf order (see ``leaf_shapes``);
* nesting: ``nest_*`` turn flat leaves into the nested ``weights`` tree of one
  Trax era, and ``trax_flatten`` undoes that the way ``fastmath.tree_flatten`` does;
* containers: ``write_*`` put weights into every file format Trax wrote, each
  returning a :class:`Written` that says which leaf path the loader should report
  for every array.

Pickles are produced by :class:`TraxPickler`, the standard library's pure-Python
pickler with a few extra types, so the byte streams have the same framing and
memo structure as real Trax files. Globals that cannot be imported here (trax,
jax, ml_dtypes) or that numpy 2 spells differently (numpy 1.x's ``numpy.core``)
are written by name (:class:`GlobalRef`, ``TraxPickler.save_global``); nothing
is registered in ``sys.modules``.

Leaves with dtype ``uint16`` are bfloat16 bit patterns throughout, as in Trax.
"""

from __future__ import annotations

import collections
import gzip
import io
import math
import pickle
import pickletools
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import FunctionType
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from reformer_tools.sizes import format_size
from reformer_tools.spec import ReformerSpec, spec_from_dict

Array = npt.NDArray[Any]
Tree = Any  # nested lists, tuples and dicts of leaves
BFloat16Style = Literal["uint16", "pair", "ml_dtypes"]
JaxStyle = Literal["array", "device_array"]

# ---------------------------------------------------------------------- weights


def tiny_spec(
    attn_layers: Sequence[str] = ("local", "lsh"),
    *,
    vocab: int = 11,
    heads: int = 2,
    head_size: int = 3,
    d_ff: int = 5,
    axial_shape: Sequence[int] | None = (2, 3),
    axial_dims: Sequence[int] = (3, 4),
    hidden: int | None = None,
    max_len: int | None = None,
) -> ReformerSpec:
    """A small, valid ReformerSpec; ``axial_shape=None`` means plain positional encoding."""
    axial = axial_shape is not None
    if hidden is None:
        hidden = sum(axial_dims) if axial else 7
    if max_len is None:
        max_len = math.prod(axial_shape) if axial_shape is not None else 9
    config: dict[str, Any] = {
        "attn_layers": list(attn_layers),
        "vocab_size": vocab,
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "attention_head_size": head_size,
        "feed_forward_size": d_ff,
        "axial_pos_embds": axial,
        "max_position_embeddings": max_len,
        "is_decoder": True,
    }
    if axial_shape is not None:
        config["axial_pos_shape"] = list(axial_shape)
        config["axial_pos_embds_dim"] = list(axial_dims)
    return spec_from_dict(config)


def leaf_shapes(spec: ReformerSpec, *, positions_rank: int = 3) -> list[tuple[int, ...]]:
    """Trax's flat leaf shapes for a standard ReformerLM, in order.

    ``positions_rank``: plain positional encodings were (1, max_len, d) until
    2021-03-30 and (max_len, d) after; axial ones always keep the leading 1.
    """
    d, h, dh, ff, vocab = (
        spec.hidden_size,
        spec.num_attention_heads,
        spec.attention_head_size,
        spec.feed_forward_size,
        spec.vocab_size,
    )
    shapes: list[tuple[int, ...]] = [(vocab, d)]
    if spec.axial_pos_embds:
        axes = len(spec.axial_pos_shape)
        for axis, (size, depth) in enumerate(zip(spec.axial_pos_shape, spec.axial_pos_embds_dim, strict=True)):
            shapes.append((1, *(size if i == axis else 1 for i in range(axes)), depth))
    else:
        plain = (spec.max_position_embeddings, d)
        shapes.append((1, *plain) if positions_rank == 3 else plain)
    for kind in spec.attn_layers:
        shapes += [(d,), (d,)]
        shapes += [(h, d, dh)] * (2 if kind == "lsh" else 3) + [(h, dh, d)]
        shapes += [(d,), (d,), (d, ff), (ff,), (ff, d), (d,)]
    shapes += [(2 * d,), (2 * d,), (2 * d, vocab), (vocab,)]
    return shapes


#: Bit patterns that value comparisons would blur: a NaN with a payload, -0.0, -inf, the smallest subnormal.
SPECIAL_BITS: dict[str, tuple[int, ...]] = {
    "bfloat16": (0x7FC1, 0x8000, 0xFF80, 0x0001),
    "float16": (0x7E01, 0x8000, 0xFC00, 0x0001),
    "float32": (0x7FC00001, 0x80000000, 0xFF800000, 0x00000001),
    "float64": (0x7FF8000000000001, 0x8000000000000000, 0xFFF0000000000000, 0x0000000000000001),
}


def random_leaves(
    spec: ReformerSpec, seed: int, dtype: str = "float32", *, positions_rank: int = 3, specials: bool = False
) -> list[Array]:
    """Random weights in Trax flat order; ``dtype='bfloat16'`` gives uint16 bit patterns.

    ``specials`` puts ``SPECIAL_BITS`` at the start of every array of 4 or more
    values, so that only a bit-exact comparison passes (keep it off for numerics).
    """
    rng = np.random.default_rng(seed)
    leaves = []
    for shape in leaf_shapes(spec, positions_rank=positions_rank):
        values = rng.standard_normal(shape, dtype=np.float32)
        # bfloat16 bits: the top half of float32's (truncation).
        leaf = (values.view(np.uint32) >> 16).astype(np.uint16) if dtype == "bfloat16" else values.astype(dtype)
        if specials and leaf.size >= 4:
            bits = leaf.reshape(-1).view(f"u{leaf.itemsize}")
            bits[:4] = SPECIAL_BITS[dtype]
        leaves.append(leaf)
    return leaves


# ---------------------------------------------------------------------- nesting


@dataclass
class _Layer:
    norm: tuple[Array, Array]
    attention: tuple[Array, ...]
    ff_norm: tuple[Array, Array]
    ff_in: tuple[Array, Array]
    ff_out: tuple[Array, Array]


@dataclass
class _Model:
    embedding: Array
    positions: list[Array]  # axial arrays, or the one plain array
    axial: bool
    layers: list[_Layer]
    head_norm: tuple[Array, Array]
    head_dense: tuple[Array, Array]


def _split(spec: ReformerSpec, leaves: Sequence[Any]) -> _Model:
    """Group flat leaves by layer. LSH layers have 3 attention arrays, local ones 4."""
    it = iter(leaves)

    def take(n: int) -> tuple[Any, ...]:
        return tuple(next(it) for _ in range(n))

    embedding = next(it)
    positions = list(take(len(spec.axial_pos_shape) if spec.axial_pos_embds else 1))
    layers = []
    for kind in spec.attn_layers:
        norm = take(2)
        attention = take(3 if kind == "lsh" else 4)
        layers.append(_Layer(norm, attention, take(2), take(2), take(2)))  # type: ignore[arg-type]
    model = _Model(embedding, positions, spec.axial_pos_embds, layers, take(2), take(2))  # type: ignore[arg-type]
    if next(it, None) is not None:
        raise ValueError("more leaves than the spec has arrays")
    return model


def _ff_list(layer: _Layer) -> list[Any]:
    # FeedForward = [LayerNorm, Dense(d_ff), Dropout, activation, Dense(d), Dropout]; 2020 Serials are lists.
    return [layer.ff_norm, layer.ff_in, (), (), layer.ff_out, ()]


def _ff_2020(layer: _Layer, chunked: bool) -> list[Any]:
    if not chunked:
        return _ff_list(layer)
    # ChunkedFeedForward = [Dup, Fn(reshape), Scan(Serial(ff)), Fn]; Scan returned its sublayer's weights as is.
    return [(), (), _ff_list(layer), ()]


def _blocks_2020(model: _Model, ff_half: Callable[[_Layer], list[Any]]) -> list[Any]:
    blocks: list[Any] = []
    for layer in model.layers:
        # ReversibleHalfResidualV2(LayerNorm, attention_layer=attn): (Serial(LN) weights, attention weights).
        attention_half = ([layer.norm], layer.attention)
        blocks += [attention_half, (), ff_half(layer), ()]
    return blocks


def _positions_2020(model: _Model) -> Any:
    # AxialPositionalEncoding keeps a tuple of arrays; PositionalEncoding a single array.
    return tuple(model.positions) if model.axial else model.positions[0]


def nest_trax123(spec: ReformerSpec, leaves: Sequence[Any], *, chunked_ff: bool = False) -> list[Any]:
    """trax <= 2020-04-16 (v1.2.3): 7 entries, 4n+1 blocks, FF at blk[2][0][2][2], Map head at [6]."""
    model = _split(spec, leaves)

    def ff_half(layer: _Layer) -> list[Any]:
        # compute_residual = Serial(Parallel([], Dup()), Swap(), Parallel([], [], ff), Select([2, 1, 0]))
        compute_residual = [([], ()), (), ([], [], _ff_2020(layer, chunked_ff)), ()]
        return [compute_residual, ((), [])]  # then Parallel(Add(), []): no weights

    blocks = [*_blocks_2020(model, ff_half), ()]  # the trailing () is SplitForOutput
    head = [model.head_norm, (), model.head_dense, ()]  # Map([LayerNorm, Dropout, Dense, LogSoftmax])
    return [(), model.embedding, (), _positions_2020(model), (), blocks, head]


def nest_trax124(spec: ReformerSpec, leaves: Sequence[Any], *, chunked_ff: bool = False) -> list[Any]:
    """trax 2020-04-16 .. 2020-05-04 (v1.2.4): like 1.2.3 with FF at blk[2][0][1][2]."""
    model = _split(spec, leaves)

    def ff_half(layer: _Layer) -> list[Any]:
        # compute_residual = Serial(Select([1, 0, 1]), Parallel([], [], ff), Select([2, 1, 0]))
        return [[(), ([], [], _ff_2020(layer, chunked_ff)), ()], ((), [])]

    blocks = [*_blocks_2020(model, ff_half), ()]
    head = [model.head_norm, (), model.head_dense, ()]
    return [(), model.embedding, (), _positions_2020(model), (), blocks, head]


def nest_hf2020(spec: ReformerSpec, leaves: Sequence[Any], *, chunked_ff: bool = False) -> list[Any]:
    """trax 2020-05-04 .. 2020-06-08 (HF script's scheme): 4n blocks, LN at [7], Dense at [9]."""
    model = _split(spec, leaves)

    def ff_half(layer: _Layer) -> list[Any]:
        return [[(), ([], [], _ff_2020(layer, chunked_ff)), ()], ((), [])]

    blocks = _blocks_2020(model, ff_half)
    # Concatenate, LayerNorm, Dropout, Dense, LogSoftmax
    return [(), model.embedding, (), _positions_2020(model), (), blocks, (), model.head_norm, (), model.head_dense, ()]


def nest_trax141(spec: ReformerSpec, leaves: Sequence[Any], *, chunked_ff: bool = False) -> tuple[Any, ...]:
    """trax 1.4.1: tuples throughout, AssertShape-wrapped encoder, ReversibleHalfResidual(ff)."""
    model = _split(spec, leaves)
    blocks: list[Any] = []
    for layer in model.layers:
        # [LayerNorm, Dense, Dropout, activation (a 3-layer Serial), Dense, Dropout]
        ff = (layer.ff_norm, layer.ff_in, (), ((), (), ()), layer.ff_out, ())
        if chunked_ff:
            # BatchLeadingAxes(Chunk(Serial(ff), n)); Chunk = Serial(reshape, Scan(ff), reshape); Scan wraps (w,)
            compute_residual: tuple[Any, ...] = ((((), (ff,), ()),),)
        else:
            compute_residual = ff
        blocks += [((layer.norm,), layer.attention), (), (compute_residual,), ()]
    positions = tuple(model.positions) if model.axial else model.positions[0]
    # As trax 1.4.1 files hold them: ShiftRight and the output Dense each wrapped in a 3-entry Serial,
    # and no LogSoftmax (removed 2020-11-20).
    head_dense = ((), model.head_dense, ())
    return (
        ((), (), ()),
        model.embedding,
        (),
        ((), positions, ()),
        (),
        tuple(blocks),
        (),
        model.head_norm,
        (),
        head_dense,
    )


NESTINGS: dict[str, Callable[..., Tree]] = {
    "trax123": nest_trax123,
    "trax124": nest_trax124,
    "hf2020": nest_hf2020,
    "trax141": nest_trax141,
}

#: Shared-layer marker since 2020-06-27: a dict that flattens to nothing.
CACHED_WEIGHTS_MARKER: dict[str, Any] = {"__marker_for_cached_weights_": ()}


def trax_flatten(tree: Tree, root: str = "weights") -> list[tuple[str, Any]]:
    """``fastmath.tree_flatten`` with paths: depth first, dict values in insertion order."""
    if isinstance(tree, list | tuple):
        return [item for i, child in enumerate(tree) for item in trax_flatten(child, f"{root}[{i}]")]
    if isinstance(tree, dict):
        return [item for key, child in tree.items() for item in trax_flatten(child, f"{root}[{key!r}]")]
    return [(root, tree)]


def map_tree(tree: Tree, fn: Callable[[Any], Any]) -> Tree:
    """Apply ``fn`` to every leaf, keeping lists, tuples and dicts as they are."""
    if isinstance(tree, list | tuple):
        return type(tree)(map_tree(child, fn) for child in tree)
    if isinstance(tree, dict):
        return {key: map_tree(child, fn) for key, child in tree.items()}
    return fn(tree)


def render_tree(tree: Tree, root: str = "weights") -> list[str]:
    """The ``weight_tree.txt`` notation of the fixtures: one line per node."""
    if isinstance(tree, list | tuple):
        lines = [f"{root} {type(tree).__name__} len={len(tree)}"]
        for i, child in enumerate(tree):
            lines += render_tree(child, f"{root}[{i}]")
        return lines
    return [f"{root} ndarray {tree.shape} {tree.dtype}"]


# ---------------------------------------------------------------------- pickling


@dataclass(frozen=True)
class GlobalRef:
    """A global written by name only (its module need not be importable here)."""

    module: str
    name: str

    def __call__(self, *args: Any) -> Any:  # save_reduce insists on a callable
        raise TypeError(f"{self.module}.{self.name} is a reference, not a function")


@cache
def ref(module: str, name: str) -> GlobalRef:
    """One object per name, so the pickler memoizes repeats as real pickles do."""
    return GlobalRef(module, name)


@dataclass(eq=False)
class Reduce:
    """``func(*args)``, then ``BUILD state`` unless it is None."""

    func: GlobalRef
    args: tuple[Any, ...]
    state: Any = None


@dataclass(eq=False)
class NewObj:
    """``cls.__new__(cls)`` then ``BUILD state``: how a plain instance (History, ShapeDtype) pickles."""

    cls: GlobalRef
    state: Any


@dataclass(eq=False)
class BFloat16:
    """A real bfloat16 array (ml_dtypes' dtype), given by its uint16 bits."""

    bits: npt.NDArray[np.uint16]


@dataclass(eq=False)
class JaxArray:
    """A jax array as jax pickles it: numpy's own reduction wrapped in jax's rebuilder."""

    value: Array | BFloat16
    kind: JaxStyle = "array"


JAX_REBUILDERS: dict[str, tuple[str, str]] = {
    "array": ("jax._src.array", "_reconstruct_array"),  # jax >= 0.4
    "device_array": ("jax._src.device_array", "reconstruct_device_array"),  # about 2021-2022
}
_RECONSTRUCT_ARGS = (np.ndarray, (0,), b"b")


def _numpy_core(numpy_names: int) -> str:
    return "numpy.core" if numpy_names == 1 else "numpy._core"


def bfloat16_dtype() -> Reduce:
    # numpy's arraydescr_reduce for a user dtype: numpy.dtype(<scalar type>, False, True) and the
    # state (3, byteorder, subarray, names, fields, elsize, alignment, flags) with the real elsize.
    return Reduce(
        ref("numpy", "dtype"), (ref("ml_dtypes", "bfloat16"), False, True), (3, "<", None, None, None, 2, 2, 0)
    )


def _bfloat16_state(bits: npt.NDArray[np.uint16]) -> tuple[Any, ...]:
    return (1, bits.shape, bfloat16_dtype(), False, np.ascontiguousarray(bits).tobytes())


class TraxPickler(pickle._Pickler):
    """The standard pure-Python pickler, plus the markers above and old spellings.

    ``numpy_names=1`` writes numpy's rebuilders under ``numpy.core`` (numpy 1.x
    wrote every real Trax checkpoint); ``2`` keeps numpy 2's ``numpy._core``.
    ``py2`` writes ASCII text and bytes as Python 2 ``str`` (``BINSTRING``), the
    way cloudpickle on Python 2 wrote trax <= 1.1 checkpoints.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def __init__(self, file: Any, protocol: int, *, numpy_names: int = 1, py2: bool = False) -> None:
        super().__init__(file, protocol)
        self.numpy_names = numpy_names
        self.py2 = py2

    def write_global(self, module: str, name: str) -> None:
        if self.proto >= 4:
            self.save(module)
            self.save(name)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + module.encode() + b"\n" + name.encode() + b"\n")

    def save_global(self, obj: Any, name: str | None = None) -> None:
        module = getattr(obj, "__module__", None) or ""
        if self.numpy_names == 1 and module.startswith("numpy._core"):
            # The base class would import-check numpy 2's module; write numpy 1's name instead.
            self.write_global("numpy.core" + module.removeprefix("numpy._core"), name or obj.__qualname__)
            self.memoize(obj)
            return
        super().save_global(obj, name)

    def _save_function(self, obj: FunctionType) -> None:
        self.save_global(obj)  # the base table holds the base save_global, which would skip the override

    def _save_str(self, obj: str) -> None:
        if self.py2 and obj.isascii():
            self._save_binstring(obj, obj.encode("ascii"))
        else:
            pickle._Pickler.save_str(self, obj)

    def _save_bytes(self, obj: bytes) -> None:
        if self.py2:
            self._save_binstring(obj, obj)
        else:
            pickle._Pickler.save_bytes(self, obj)

    def _save_binstring(self, obj: Any, data: bytes) -> None:
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    def _save_ref(self, obj: GlobalRef) -> None:
        self.write_global(obj.module, obj.name)
        self.memoize(obj)

    def _save_reduce_marker(self, obj: Reduce) -> None:
        self.save_reduce(obj.func, obj.args, obj.state, obj=obj)

    def _save_new_obj(self, obj: NewObj) -> None:
        self.save(obj.cls)
        self.save(())
        self.write(pickle.NEWOBJ)
        self.memoize(obj)
        self.save(obj.state)
        self.write(pickle.BUILD)

    def _save_bfloat16(self, obj: BFloat16) -> None:
        core = _numpy_core(self.numpy_names)
        if self.proto >= 5:  # ndarray.__reduce_ex__(5): _frombuffer(buffer, dtype, shape, order)
            buffer = pickle.PickleBuffer(bytearray(np.ascontiguousarray(obj.bits).tobytes()))
            args = (buffer, bfloat16_dtype(), obj.bits.shape, "C")
            self.save_reduce(ref(f"{core}.numeric", "_frombuffer"), args, obj=obj)
        else:
            reconstruct = ref(f"{core}.multiarray", "_reconstruct")
            self.save_reduce(reconstruct, _RECONSTRUCT_ARGS, _bfloat16_state(obj.bits), obj=obj)

    def _save_jax(self, obj: JaxArray) -> None:
        # jax: fun, args, arr_state = np.asarray(self).__reduce__(), so _reconstruct whatever the protocol.
        if isinstance(obj.value, BFloat16):
            reduced: Any = (
                ref(f"{_numpy_core(self.numpy_names)}.multiarray", "_reconstruct"),
                _RECONSTRUCT_ARGS,
                _bfloat16_state(obj.value.bits),
            )
        else:
            reduced = obj.value.__reduce__()
        aval_state = {"weak_type": False, "named_shape": {}}
        self.save_reduce(ref(*JAX_REBUILDERS[obj.kind]), (*reduced, aval_state), obj=obj)

    dispatch[FunctionType] = _save_function
    dispatch[str] = _save_str
    dispatch[bytes] = _save_bytes
    dispatch[GlobalRef] = _save_ref
    dispatch[Reduce] = _save_reduce_marker
    dispatch[NewObj] = _save_new_obj
    dispatch[BFloat16] = _save_bfloat16
    dispatch[JaxArray] = _save_jax


def pickle_globals(data: bytes) -> set[tuple[str, str]]:
    """Every (module, name) a pickle references, read with pickletools (nothing is built)."""
    found: set[tuple[str, str]] = set()
    memo: dict[int, Any] = {}
    pushed: list[Any] = []  # one entry per value pushed; only strings matter here
    for opcode, arg, _ in pickletools.genops(data):
        name = opcode.name
        if name == "GLOBAL":
            module, _, attr = arg.partition(" ")
            found.add((module, attr))
            pushed.append(None)
        elif name == "STACK_GLOBAL":
            found.add((pushed[-2], pushed[-1]))
            pushed.append(None)
        elif name == "MEMOIZE":
            memo[len(memo)] = pushed[-1]
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = pushed[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            pushed.append(memo.get(arg))
        elif name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
            pushed.append(arg)
        elif name not in ("FRAME", "PROTO"):
            pushed.append(None)
    return found


def pickle_protocol(data: bytes) -> int:
    opcode, arg, _ = next(pickletools.genops(data))
    return int(arg) if opcode.name == "PROTO" else 0


# ---------------------------------------------------------------------- encodings


@dataclass(frozen=True)
class Encoding:
    """How a pickle and the arrays in it are written.

    ``bfloat16`` (for uint16 leaves): keep them uint16, write ``(bits, 'bfloat16')``
    pairs (training.Loop, Oct-Nov 2020) or real ml_dtypes bfloat16 arrays
    (``save_to_file``, which never bit-cast). ``jax``/``state_jax``: pickle the
    weights / the model state as jax arrays. ``fortran``: arrays of rank >= 2
    in Fortran order.
    """

    protocol: int = 4
    numpy_names: int = 1
    py2: bool = False
    bfloat16: BFloat16Style = "uint16"
    jax: JaxStyle | None = None
    state_jax: JaxStyle | None = None
    fortran: bool = False

    def leaf(self, leaf: Array) -> Any:
        if self.fortran and leaf.ndim >= 2:
            leaf = np.asfortranarray(leaf)
        if leaf.dtype == np.uint16 and self.bfloat16 == "pair":
            # Loop._to_bits: (jax.lax.bitcast_convert_type(w, np.uint16), 'bfloat16'), bits as a jax array.
            return (JaxArray(leaf, self.jax) if self.jax is not None else leaf, "bfloat16")
        value: Any = BFloat16(leaf) if leaf.dtype == np.uint16 and self.bfloat16 == "ml_dtypes" else leaf
        return JaxArray(value, self.jax) if self.jax is not None else value

    def dumps(self, obj: Any) -> bytes:
        if self.py2 and self.protocol != 2:
            raise ValueError("Python 2 wrote protocol 2 at most")
        buffer = io.BytesIO()
        TraxPickler(buffer, self.protocol, numpy_names=self.numpy_names, py2=self.py2).dump(obj)
        return buffer.getvalue()


# ---------------------------------------------------------------------- non-weight contents


def history_values() -> dict[str, Any]:
    """``History._values``: mode -> defaultdict(list) of metric -> [(step, value)]."""
    train: collections.defaultdict[str, list[Any]] = collections.defaultdict(list)
    train["metrics/loss"] += [(1, 2.5), (2, np.float32(2.25))]
    evaluation: collections.defaultdict[str, list[Any]] = collections.defaultdict(list)
    evaluation["metrics/accuracy"].append((2, np.float32(0.125)))
    return {"train": train, "eval": evaluation}


def history_summary(recorded: bool) -> str:
    return (
        "training history (train: 1 metrics, 2 points; eval: 1 metrics, 1 points)" if recorded else "training history"
    )


def history_object(module: str, recorded: bool) -> NewObj:
    return NewObj(ref(module, "History"), {"_values": history_values() if recorded else {}})


def shape_dtype(shape: tuple[int, ...], dtype: Any) -> NewObj:
    # ShapeDtype has __slots__, so its state is (None, {slot: value}).
    return NewObj(ref("trax.shapes", "ShapeDtype"), (None, {"shape": shape, "dtype": dtype}))


def batch_signature(*, dtype_types: bool = False) -> tuple[NewObj, ...]:
    """(inputs, targets, mask); dtypes as numpy dtype objects, or as numpy types (``numpy.int32``)."""
    int32: Any = np.int32 if dtype_types else np.dtype("int32")
    float32: Any = np.float32 if dtype_types else np.dtype("float32")
    return (shape_dtype((2, 16), int32), shape_dtype((2, 16), int32), shape_dtype((2, 16), float32))


BATCH_SIGNATURE_SUMMARY = "input signature (2, 16) int32, (2, 16) int32, (2, 16) float32"
INPUTS_SIGNATURE_SUMMARY = "input signature (2, 16) int32"


def adam_slots(leaves: Sequence[Array]) -> list[tuple[Array, Array]]:
    """One (m, v) pair per weight, as Adam keeps them."""
    return [(np.zeros(leaf.shape, np.float32), np.ones(leaf.shape, np.float32)) for leaf in leaves]


def slots_summary(leaves: Sequence[Array]) -> str:
    return f"{2 * len(leaves)} arrays, {format_size(sum(8 * leaf.size for leaf in leaves))}"


def model_state(jax: JaxStyle | None = None) -> list[Any]:
    """A flat model state: two counters and an RNG key, as jax arrays unless device_get'd."""
    state: list[Any] = [np.zeros((), np.int32), np.array([0, 42], np.uint32), np.zeros((), np.int32)]
    return [JaxArray(s, jax) for s in state] if jax is not None else state


STATE_SUMMARY = "3 arrays, 16 B"
OPT_PARAMS = {"learning_rate": np.array(0.001, np.float32), "b1": 0.9, "b2": 0.999, "eps": 1e-5}
OPT_PARAMS_SUMMARY = "learning_rate=0.001, b1=0.9, b2=0.999, eps=1e-05"


# ---------------------------------------------------------------------- containers


@dataclass(frozen=True)
class Written:
    """A checkpoint on disk, and what loading it must report."""

    path: Path  # the file to load
    leaf_paths: tuple[str, ...]  # where each flat leaf sits in the file
    step: int | None
    version: str | None
    files: tuple[Path, ...]
    metadata: dict[str, str] = field(default_factory=dict)  # non-weight key -> its one-line summary


def write_file(path: Path, data: bytes, compresslevel: int | None) -> Path:
    """Plain, or gzip like ``gzip.GzipFile(fileobj=f, compresslevel=...)`` in Trax."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if compresslevel is None:
        path.write_bytes(data)
    else:
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=compresslevel) as out:
            out.write(data)
    return path


def _flat_paths(root: str, n: int) -> tuple[str, ...]:
    return tuple(f"{root}[{i}]" for i in range(n))


def _tree_leaves(tree: Tree, enc: Encoding) -> list[Array]:
    if enc.bfloat16 == "pair":
        raise ValueError("(bits, 'bfloat16') pairs only ever appeared in flat lists")
    return [leaf for _, leaf in trax_flatten(tree)]


def write_trainer_tuple(path: Path, tree: Tree, *, step: int = 100, history: bool = True, enc: Encoding) -> Written:
    """trax <= 1.1 (T0): ``(opt_state=(weights, slots, opt_params), step, history, model_state)``.

    ``weights`` is ``(model weights, loss weights)``; cloudpickle on Python 2 wrote protocol 2.
    """
    leaves = _tree_leaves(tree, enc)
    weights = (map_tree(tree, enc.leaf), ())
    opt_state = (weights, (adam_slots(leaves), ()), dict(OPT_PARAMS))
    obj = (opt_state, step, history_object("trax.history", history), [(), model_state(enc.state_jax)])
    write_file(path, enc.dumps(obj), None)
    metadata = {
        "slots": slots_summary(leaves),
        "opt_params": OPT_PARAMS_SUMMARY,
        "history": history_summary(history),
        "state": STATE_SUMMARY,
    }
    paths = tuple(path for path, _ in trax_flatten((tree, ()), "[0][0]"))
    return Written(path, paths, step, None, (path,), metadata)


def write_trainer_2020_01_10(path: Path, tree: Tree, *, step: int = 100, enc: Encoding) -> Written:
    """T1a (f855729a, 2020-01-10): a dict, but 'weights' is still (model weights, loss weights)."""
    leaves = _tree_leaves(tree, enc)
    obj = {
        "step": step,
        "weights": (map_tree(tree, enc.leaf), ()),
        "slots": (adam_slots(leaves), ()),
        "opt_params": dict(OPT_PARAMS),
        "history": history_object("trax.history", True),
        "model_state": [(), model_state(enc.state_jax)],
    }
    write_file(path, enc.dumps(obj), None)
    metadata = {
        "slots": slots_summary(leaves),
        "opt_params": OPT_PARAMS_SUMMARY,
        "history": history_summary(True),
        "model_state": STATE_SUMMARY,
    }
    paths = tuple(path for path, _ in trax_flatten((tree, ()), "weights"))
    return Written(path, paths, step, None, (path,), metadata)


def write_trainer_jan_13_2020(
    path: Path, tree: Tree, *, step: int = 100, history: bool = True, slots: bool = True, enc: Encoding
) -> Written:
    """T1b "Jan-13-2020" (v1.2.0 - v1.2.4): plain pickle of the model weights tree and the rest."""
    leaves = _tree_leaves(tree, enc)
    obj = {
        "step": step,
        "weights": map_tree(tree, enc.leaf),
        "loss_weights": [],
        "slots": adam_slots(leaves) if slots else [],
        "opt_params": dict(OPT_PARAMS),
        "history": history_object("trax.history", history),
        "state": [(), model_state(enc.state_jax)],  # model_state was not device_get'd
        "loss_state": [],
        "version_timestamp": "Jan-13-2020",
    }
    write_file(path, enc.dumps(obj), None)
    metadata = {
        "loss_weights": "empty list",
        "slots": slots_summary(leaves) if slots else "empty list",
        "opt_params": OPT_PARAMS_SUMMARY,
        "history": history_summary(history),
        "state": STATE_SUMMARY,
        "loss_state": "empty list",
    }
    paths = tuple(path for path, _ in trax_flatten(tree, "weights"))
    return Written(path, paths, step, "Jan-13-2020", (path,), metadata)


def write_weights_only(path: Path, tree: Tree, *, enc: Encoding) -> Written:
    """``{'weights': tree}``: what Hugging Face's script reads and the Reformer colabs shared."""
    _tree_leaves(tree, enc)
    write_file(path, enc.dumps({"weights": map_tree(tree, enc.leaf)}), None)
    return Written(path, tuple(path for path, _ in trax_flatten(tree, "weights")), None, None, (path,))


def write_trainer_jun_18_2020(
    path: Path,
    leaves: Sequence[Array],
    *,
    step: int = 100,
    history: bool = True,
    signature_dtype_types: bool = False,
    enc: Encoding,
) -> Written:
    """T2 "Jun-18-2020" (v1.3.0 ->): gzip(2) pickle, flat weights, a History object, the batch signature."""
    obj = {
        "step": step,
        "flat_weights": [enc.leaf(leaf) for leaf in leaves],
        "slots": tuple(adam_slots(leaves)),
        "opt_params": dict(OPT_PARAMS),
        "history": history_object("trax.supervised.history", history),
        "flat_state": model_state(enc.state_jax),
        "input_signature": batch_signature(dtype_types=signature_dtype_types),
        "version_timestamp": "Jun-18-2020",
    }
    write_file(path, enc.dumps(obj), 2)
    metadata = {
        "slots": slots_summary(leaves),
        "opt_params": OPT_PARAMS_SUMMARY,
        "history": history_summary(history),
        "flat_state": STATE_SUMMARY,
        "input_signature": BATCH_SIGNATURE_SUMMARY,
    }
    return Written(path, _flat_paths("flat_weights", len(leaves)), step, "Jun-18-2020", (path,), metadata)


LoopVersion = Literal["Jun-29-2020", "Aug-21-2020", "Sep-17-2020", "Oct-28-2020"]


def _loop_dict(
    version: LoopVersion, flat_weights: Any, leaves: Sequence[Array], step: int, enc: Encoding
) -> dict[str, Any]:
    """The keys training.Loop.save_checkpoint wrote at each 2020 version, in its order."""
    d: dict[str, Any] = {"step": step, "flat_weights": flat_weights, "flat_state": model_state(enc.state_jax)}
    if version == "Jun-29-2020":  # weights of Serial(model, loss); the whole batch signature
        d["slots"] = tuple(adam_slots(leaves))
        d["input_signature"] = batch_signature()
    else:
        if version != "Aug-21-2020":
            d["flat_eval_state"] = model_state(enc.state_jax)
        d["slots_per_task"] = (tuple(adam_slots(leaves)),)
        d["input_signature"] = batch_signature()[:1]  # batch_signature[:model.n_in]
    d["version_timestamp"] = version
    return d


def _loop_metadata(d: dict[str, Any], leaves: Sequence[Array]) -> dict[str, str]:
    summaries = {
        "flat_state": STATE_SUMMARY,
        "flat_eval_state": STATE_SUMMARY,
        "slots": slots_summary(leaves),
        "slots_per_task": slots_summary(leaves),
        "input_signature": BATCH_SIGNATURE_SUMMARY if "slots" in d else INPUTS_SIGNATURE_SUMMARY,
    }
    return {key: summary for key, summary in summaries.items() if key in d}


def write_loop_flat(
    path: Path, leaves: Sequence[Array], *, version: LoopVersion, step: int = 100, enc: Encoding
) -> Written:
    """training.Loop, Jun-29 .. Oct-28-2020: gzip(2) pickle with the flat weights inline."""
    d = _loop_dict(version, [enc.leaf(leaf) for leaf in leaves], leaves, step, enc)
    write_file(path, enc.dumps(d), 2)
    paths = _flat_paths("flat_weights", len(leaves))
    return Written(path, paths, step, version, (path,), _loop_metadata(d, leaves))


def write_loop_sharded(
    path: Path,
    leaves: Sequence[Array],
    *,
    max_shard_size: int = 4 * 1024 * 1024,
    gzip_shards: bool = True,
    step: int = 100,
    enc: Encoding,
) -> Written:
    """Loop "Oct-28-2020" memory-efficient trainer: 'flat_weights' is the number of shard files.

    ``_save_weights_sharded`` closes a shard once it holds more than
    ``max_shard_size`` values. Shards were gzipped at first and plain pickles
    (protocol HIGHEST) from 2020-11-20.
    """
    shards: list[list[Array]] = [[]]
    size = 0
    for leaf in leaves:
        shards[-1].append(leaf)
        size += leaf.size
        if size > max_shard_size:
            shards.append([])
            size = 0
    if not shards[-1]:
        shards.pop()
    files: list[Path] = []
    paths: list[str] = []
    for i, shard in enumerate(shards):
        shard_path = path.with_name(f"{path.name}.shard{i}")
        files.append(write_file(shard_path, enc.dumps([enc.leaf(leaf) for leaf in shard]), 2 if gzip_shards else None))
        paths += _flat_paths(shard_path.name, len(shard))
    d = _loop_dict("Oct-28-2020", len(shards), leaves, step, enc)
    write_file(path, enc.dumps(d), 2)
    return Written(path, tuple(paths), step, "Oct-28-2020", (path, *files), _loop_metadata(d, leaves))


def np_to_file(path: Path, arrays: Sequence[Array], compresslevel: int) -> Path:
    """``tl.np_to_file``: one gzip stream of concatenated .npy records, whatever the name says."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=compresslevel) as out:
        for array in arrays:
            np.save(out, array, allow_pickle=False)
    return path


def _npy_leaves(leaves: Sequence[Array], enc: Encoding) -> list[Array]:
    # Loop._to_bits had already made bfloat16 plain uint16; nothing else changes in a .npy file.
    return [np.asfortranarray(leaf) if enc.fortran and leaf.ndim >= 2 else leaf for leaf in leaves]


def write_loop_npy_feb_2021(
    path: Path, leaves: Sequence[Array], *, compresslevel: int = 2, step: int = 100, enc: Encoding
) -> Written:
    """Loop 2021-02-23 (51ebf720): weights in ``<ckpt>.pkl.gz.npy``; 'flat_weights' is the compresslevel."""
    side = np_to_file(path.with_name(path.name + ".npy"), _npy_leaves(leaves, enc), compresslevel)
    d = {
        "step": step,
        "flat_weights": compresslevel,
        "flat_state": model_state(enc.state_jax),
        "flat_eval_state": model_state(enc.state_jax),
        "history": {"_values": history_values()},  # History.to_dict(), a deep copy of __dict__
        "slots_per_task": [tuple(adam_slots(leaves))],
        "input_signature": batch_signature()[:1],
        "version_timestamp": "Oct-28-2020",  # that commit kept the timestamp
    }
    write_file(path, enc.dumps(d), 2)
    metadata = {
        "flat_state": STATE_SUMMARY,
        "flat_eval_state": STATE_SUMMARY,
        "history": history_summary(True),
        "slots_per_task": slots_summary(leaves),
        "input_signature": INPUTS_SIGNATURE_SUMMARY,
    }
    return Written(path, _flat_paths(side.name, len(leaves)), step, "Oct-28-2020", (path, side), metadata)


def write_loop_mar_10_2021(
    directory: Path,
    leaves: Sequence[Array],
    *,
    basename: str = "model",
    compresslevel: int = 2,
    step: int = 100,
    history: bool = True,
    enc: Encoding,
) -> Written:
    """Loop "Mar-10-2021" (v1.3.8 -> HEAD): ``<base>.pkl.gz``, ``.weights.npy.gz``, ``.opt_slots0.npy.gz``."""
    directory.mkdir(parents=True, exist_ok=True)
    weights = np_to_file(directory / f"{basename}.weights.npy.gz", _npy_leaves(leaves, enc), compresslevel)
    slots = [array for pair in adam_slots(leaves) for array in pair]
    slot_file = np_to_file(directory / f"{basename}.opt_slots0.npy.gz", slots, compresslevel)
    d = {
        "step": step,
        "flat_weights": compresslevel,  # "for compatibility with older format"
        "flat_state": model_state(enc.state_jax),
        "flat_eval_state": model_state(enc.state_jax),
        "history": {"_values": history_values() if history else {}},
        "slots_per_task": compresslevel,
        "input_signature": batch_signature()[:1],
        "version_timestamp": "Mar-10-2021",
    }
    path = write_file(directory / f"{basename}.pkl.gz", enc.dumps(d), 2)
    metadata = {
        "flat_state": STATE_SUMMARY,
        "flat_eval_state": STATE_SUMMARY,
        "history": history_summary(history),
        "slots_per_task": f"optimizer slots stored in side files in {slot_file.name} (not read)",
        "input_signature": INPUTS_SIGNATURE_SUMMARY,
    }
    paths = _flat_paths(weights.name, len(leaves))
    return Written(path, paths, step, "Mar-10-2021", (path, weights, slot_file), metadata)


def write_save_to_file(
    path: Path, leaves: Sequence[Array], *, weights_only: bool = False, signature: bool = True, enc: Encoding
) -> Written:
    """``Layer.save_to_file`` (2021-01-24 ->): gzip(2), protocol HIGHEST, no version, no bit-casting."""
    d: dict[str, Any] = {"flat_weights": [enc.leaf(leaf) for leaf in leaves]}
    metadata = {}
    if not weights_only:
        d["flat_state"] = model_state(enc.state_jax)
        metadata["flat_state"] = STATE_SUMMARY
    if signature:
        d["input_signature"] = shape_dtype((2, 16), np.dtype("int32"))
        metadata["input_signature"] = INPUTS_SIGNATURE_SUMMARY
    write_file(path, enc.dumps(d), 2)
    return Written(path, _flat_paths("flat_weights", len(leaves)), None, None, (path,), metadata)
