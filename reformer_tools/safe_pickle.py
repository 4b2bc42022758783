"""A restricted pickle machine: an exact allow-list of globals, and nothing else runs.

Python's ``pickle`` executes whatever callables a file names. This module is an
opcode interpreter of its own that never imports or calls anything a pickle
names. ``GLOBAL``/``STACK_GLOBAL`` resolve only an exact (module, name) pair from
``ALLOWED_GLOBALS`` to an inert marker; ``REDUCE``, ``NEWOBJ`` and ``BUILD`` dispatch
to this module's own rebuilders, which validate their arguments and build numpy
arrays from raw bytes. Everything else is refused before any of it runs.

The same machine also runs in *scan* mode, for ``inspect --globals``: it records
every global a pickle references, allowed or not, and builds nothing.
"""

from __future__ import annotations

import codecs
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt

from reformer_tools.errors import UnreadableCheckpointError, UnsafeCheckpointError
from reformer_tools.untrusted import printable

# Small strings stay ``bytes``; payloads at least this long are read into numpy
# buffers so that arrays can be views of them without another copy.
_PAYLOAD_THRESHOLD: Final = 1 << 16
_MAX_LONG_BYTES: Final = 64  # a 512-bit integer is plenty for any Trax metadata
_MAX_LINE: Final = 1 << 16
_MAX_NDIM: Final = 32
_MAX_CONTAINER_ITEMS: Final = 1 << 28
# Hashing a tuple recurses in C without a depth check: a key nested 200,000
# deep crashes the interpreter (SIGSEGV) instead of raising.
_MAX_KEY_DEPTH: Final = 100
_MAX_GLOBAL_NAME: Final = 1024  # characters in a module or name; real ones are far shorter
_MAX_GLOBAL_REFERENCES: Final = 10_000  # Trax pickles reference fewer than ten
_MAX_ARRAY_BYTES: Final = (1 << 63) - 1  # numpy's limit for any shape, even an empty one
#: Opcodes one pickle may run. Each opcode can leave an object of up to ~100
#: bytes behind (a MARK or EMPTY_DICT costs one byte of input), so without a cap
#: a 1 MB gzip of ``(((...`` would grow memory without bound for minutes. Trax
#: checkpoints run a few dozen opcodes per array. Read at each load (tests lower it).
MAX_OPCODES = 5_000_000


class ByteSource(Protocol):
    """What the machine reads from: exact reads that fail loudly, never short."""

    def read_exact(self, n: int) -> bytes: ...

    def read_payload(self, n: int) -> bytes | npt.NDArray[np.uint8] | SkippedPayload: ...

    def readline(self, limit: int) -> bytes: ...


@dataclass(frozen=True, slots=True)
class SkippedPayload:
    """A payload read past without keeping it (shapes-only loading, e.g. for ``inspect``)."""

    nbytes: int


class CorruptPickle(UnreadableCheckpointError):
    """The pickle stream is malformed."""


class RefusedPickle(UnsafeCheckpointError):
    """The pickle asks for something outside the allow-list."""


# --------------------------------------------------------------------------- markers


@dataclass(frozen=True, slots=True)
class Global:
    """Inert stand-in for a global the pickle referenced. Never callable."""

    module: str
    name: str

    def __str__(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(frozen=True, slots=True)
class BFloat16Array:
    """A bfloat16 array kept as its uint16 bit patterns (numpy has no bfloat16)."""

    bits: npt.NDArray[np.uint16]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.bits.shape)


@dataclass(frozen=True, slots=True)
class TraxHistory:
    """Inert stand-in for ``trax.history.History``: only its recorded values."""

    values: dict[Any, Any]


@dataclass(frozen=True, slots=True)
class ShapeDtype:
    """Inert stand-in for ``trax.shapes.ShapeDtype``."""

    shape: tuple[Any, ...]
    dtype: Any


class _BFloat16DType:
    """Marker dtype for ml_dtypes' bfloat16; arrays of it become BFloat16Array."""

    itemsize = 2
    storage = np.dtype("<u2")


BFLOAT16_DTYPE: Final = _BFloat16DType()
DType = np.dtype[Any] | _BFloat16DType


class _Pending:
    """An object made by REDUCE/NEWOBJ that only becomes usable after BUILD."""

    __hash__ = None  # type: ignore[assignment]
    what = "object"

    def finish(self, state: Any) -> Any:
        raise NotImplementedError


# ---------------------------------------------------------------------- allow-list

_NUMPY_CORE = ("numpy.core", "numpy._core")  # numpy 1.x and 2.x spellings
_NUMPY_SCALAR_TYPES = (
    "bool_",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
    "complex64",
    "complex128",
)

#: Every global a checkpoint may reference, and why. Exact pairs only: allowing
#: a whole module is never safe (``numpy.testing._private.utils.runstring``
#: executes code, yet lives under ``numpy``).
ALLOWED_GLOBALS: Final[dict[tuple[str, str], str]] = {
    **{(f"{core}.multiarray", "_reconstruct"): "numpy array rebuilder" for core in _NUMPY_CORE},
    **{(f"{core}.multiarray", "scalar"): "numpy scalar rebuilder" for core in _NUMPY_CORE},
    **{(f"{core}.numeric", "_frombuffer"): "numpy array rebuilder (protocol 5)" for core in _NUMPY_CORE},
    ("numpy", "ndarray"): "numpy array type (argument of the rebuilder)",
    ("numpy", "dtype"): "numpy dtype rebuilder",
    **{("numpy", name): "numpy scalar type (a ShapeDtype's dtype)" for name in _NUMPY_SCALAR_TYPES},
    ("_codecs", "encode"): "bytes in protocol 2 pickles (latin-1 only)",
    ("collections", "OrderedDict"): "ordered dict (read as a plain dict)",
    ("collections", "defaultdict"): "defaultdict (read as a plain dict)",
    ("builtins", "list"): "a defaultdict's factory",
    ("builtins", "dict"): "a defaultdict's factory",
    ("builtins", "int"): "a defaultdict's factory",
    ("builtins", "float"): "a defaultdict's factory",
    # Protocol 0-2 pickles (Python 2, or Python 3 with fix_imports) spell builtins "__builtin__".
    **{("__builtin__", n): "a defaultdict's factory (Python 2 name)" for n in ("list", "dict", "int", "float")},
    ("trax.history", "History"): "training history (inert stand-in)",
    ("trax.supervised.history", "History"): "training history (inert stand-in)",
    ("trax.shapes", "ShapeDtype"): "input signature (inert stand-in)",
    ("jax._src.array", "_reconstruct_array"): "jax >= 0.4 array, rebuilt as numpy",
    ("jax._src.device_array", "reconstruct_device_array"): "jax 2021-2022 array, rebuilt as numpy",
    ("ml_dtypes", "bfloat16"): "bfloat16 dtype (kept as uint16 bits)",
}

_FACTORIES = {(module, n) for module in ("builtins", "__builtin__") for n in ("list", "dict", "int", "float")}
_NUMPY_TYPES = {("numpy", n) for n in _NUMPY_SCALAR_TYPES}
_DTYPE_KINDS = frozenset("biufc")


def describe_global(module: str, name: str) -> str | None:
    """Why a global is allowed, or None if it is refused."""
    return ALLOWED_GLOBALS.get((module, name))


# ------------------------------------------------------------------- rebuilders


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise CorruptPickle(message)


def _is_int(value: Any) -> bool:
    return type(value) is int


def _as_shape(value: Any, what: str) -> tuple[int, ...]:
    _check(type(value) is tuple, f"{what}: shape is not a tuple")
    _check(len(value) <= _MAX_NDIM, f"{what}: more than {_MAX_NDIM} dimensions")
    _check(all(_is_int(d) and d >= 0 for d in value), f"{what}: shape has a non-integer or negative size")
    return tuple(value)


def check_shape(shape: tuple[int, ...], itemsize: int, what: str) -> None:
    """Refuse shapes numpy cannot make: an empty array may still not have 10**30 columns.

    numpy raises ValueError for them (after the byte count check passed, since
    any shape with a 0 holds 0 bytes); that would escape as an internal error.
    """
    _check(len(shape) <= _MAX_NDIM, f"{what}: more than {_MAX_NDIM} dimensions")
    _check(
        math.prod(d for d in shape if d) * itemsize <= _MAX_ARRAY_BYTES,
        f"{what}: shape {shape} is larger than any array can be",
    )


def _is_one_of(value: Any, *choices: str | bytes) -> bool:
    """``value in choices`` for an untrusted value: never runs an array's ``__eq__``.

    ``ndarray in ("C", "F")`` raises ValueError (an ambiguous truth value); the
    type check first keeps such comparisons to plain strings and bytes.
    """
    return type(value) in (str, bytes) and value in choices


def _as_dtype(value: Any, what: str) -> DType:
    if isinstance(value, np.dtype | _BFloat16DType):
        return value
    raise CorruptPickle(f"{what}: expected a dtype, got {_type_name(value)}")


def _as_buffer(value: Any, what: str) -> bytes | bytearray | npt.NDArray[np.uint8] | SkippedPayload:
    if isinstance(value, bytes | bytearray | SkippedPayload):
        return value
    if isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 1:
        return value
    if isinstance(value, str):  # protocol 0-2 pickles decoded with latin-1
        try:
            return value.encode("latin-1")
        except UnicodeEncodeError:
            raise CorruptPickle(f"{what}: array data is not latin-1 text") from None
    if isinstance(value, list):
        raise RefusedPickle(f"{what}: object arrays are refused (they hold arbitrary objects)")
    raise CorruptPickle(f"{what}: array data is {_type_name(value)}, not bytes")


def _make_array(
    buffer: Any, dtype: DType, shape: tuple[int, ...], fortran: bool, what: str
) -> np.ndarray[Any, Any] | BFloat16Array:
    raw = _as_buffer(buffer, what)
    storage = dtype.storage if isinstance(dtype, _BFloat16DType) else dtype
    check_shape(shape, storage.itemsize, what)
    expected = math.prod(shape) * storage.itemsize
    actual = raw.nbytes if isinstance(raw, np.ndarray | SkippedPayload) else len(raw)
    _check(actual == expected, f"{what}: shape {shape} needs {expected} bytes, the data has {actual}")
    if isinstance(raw, SkippedPayload):
        # Shape and dtype without data: a read-only view of one zero, broadcast.
        array = np.lib.stride_tricks.as_strided(np.zeros(1, storage), shape, (0,) * len(shape), writeable=False)
    else:
        flat = np.frombuffer(raw, dtype=storage)
        array = flat.reshape(shape, order="F" if fortran else "C")
    if isinstance(dtype, _BFloat16DType):
        return BFloat16Array(array)
    return array


def _build_ndarray(state: Any, what: str = "numpy array") -> np.ndarray[Any, Any] | BFloat16Array:
    """Apply ``ndarray.__setstate__``'s state, validated, without numpy's setstate."""
    _check(type(state) is tuple and len(state) in (4, 5), f"{what}: malformed array state")
    if len(state) == 5:
        _check(_is_int(state[0]), f"{what}: malformed array state version")
        state = state[1:]
    shape_value, dtype_value, fortran, data = state
    shape = _as_shape(shape_value, what)
    dtype = _as_dtype(dtype_value, what)
    _check(type(fortran) in (bool, int), f"{what}: malformed order flag")
    return _make_array(data, dtype, shape, bool(fortran), what)


class _PendingArray(_Pending):
    what = "numpy array"

    def finish(self, state: Any) -> Any:
        return _build_ndarray(state)


class _PendingDType(_Pending):
    what = "numpy dtype"

    def __init__(self, dtype: DType) -> None:
        self.dtype = dtype

    def finish(self, state: Any) -> Any:
        # (version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata])
        _check(type(state) is tuple and len(state) in (8, 9), "numpy dtype: malformed state")
        order, subarray, names, fields = state[1:5]
        if subarray is not None or names is not None or fields is not None:
            raise RefusedPickle("numpy dtype: structured dtypes are refused")
        _check(_is_one_of(order, "<", ">", "|", "="), "numpy dtype: malformed byte order")
        if isinstance(self.dtype, _BFloat16DType):
            _check(_is_one_of(order, "<", "|", "="), "bfloat16 dtype: only little-endian is supported")
            return self.dtype
        return self.dtype.newbyteorder(order) if order in "<>" else self.dtype


class _PendingHistory(_Pending):
    what = "trax History"

    def finish(self, state: Any) -> Any:
        if type(state) is tuple and len(state) == 2:  # (dict state, slot state)
            state = state[0]
        _check(type(state) is dict, "trax History: malformed state")
        values = state.get("_values", {})
        _check(type(values) is dict, "trax History: malformed values")
        return TraxHistory(values)


class _PendingShapeDtype(_Pending):
    what = "trax ShapeDtype"

    def finish(self, state: Any) -> Any:
        if type(state) is tuple and len(state) == 2:
            state = state[1] if state[1] is not None else state[0]
        _check(type(state) is dict, "trax ShapeDtype: malformed state")
        shape = state.get("shape", ())
        _check(type(shape) in (tuple, list), "trax ShapeDtype: malformed shape")
        return ShapeDtype(tuple(shape), state.get("dtype"))


def _reduce_reconstruct(args: tuple[Any, ...]) -> _PendingArray:
    _check(len(args) == 3, "numpy _reconstruct: wrong number of arguments")
    subtype, shape, code = args
    if not (isinstance(subtype, Global) and subtype.name == "ndarray"):
        raise RefusedPickle(f"numpy _reconstruct: refuses array subtype {_type_name(subtype)}")
    # Type checks before comparing: the arguments may be arrays (see _is_one_of).
    _check(
        type(shape) is tuple
        and len(shape) == 1
        and _is_int(shape[0])
        and shape[0] == 0
        and _is_one_of(code, b"b", "b"),
        "numpy _reconstruct: unexpected arguments",
    )
    return _PendingArray()


def _reduce_frombuffer(args: tuple[Any, ...]) -> Any:
    _check(len(args) == 4, "numpy _frombuffer: wrong number of arguments")
    buffer, dtype, shape, order = args
    _check(_is_one_of(order, "C", "F"), "numpy _frombuffer: malformed order")
    what = "numpy array"
    return _make_array(buffer, _as_dtype(dtype, what), _as_shape(shape, what), order == "F", what)


def _reduce_scalar(args: tuple[Any, ...]) -> Any:
    _check(len(args) in (1, 2), "numpy scalar: wrong number of arguments")
    dtype = _as_dtype(args[0], "numpy scalar")
    if len(args) == 1:
        raise RefusedPickle("numpy scalar: object scalars are refused")
    array = _make_array(args[1], dtype, (), False, "numpy scalar")
    return array if isinstance(array, BFloat16Array) else array[()]


def _reduce_dtype(args: tuple[Any, ...]) -> _PendingDType:
    _check(1 <= len(args) <= 3, "numpy dtype: wrong number of arguments")
    spec = args[0]
    if isinstance(spec, Global) and (spec.module, spec.name) == ("ml_dtypes", "bfloat16"):
        return _PendingDType(BFLOAT16_DTYPE)
    if isinstance(spec, Global) and (spec.module, spec.name) in _NUMPY_TYPES:
        spec = spec.name
    _check(type(spec) is str and 0 < len(spec) <= 8, "numpy dtype: malformed type code")
    try:
        dtype = np.dtype(spec)
    except TypeError:
        raise CorruptPickle(f"numpy dtype: unknown type code {spec!r}") from None
    if dtype.kind == "O":
        raise RefusedPickle("numpy dtype: object arrays are refused (they hold arbitrary objects)")
    if dtype.kind == "V":
        # A void dtype is how numpy pickles a structured one: its fields (which
        # may hold objects) arrive with BUILD. Refuse it as the unsafe kind it is.
        raise RefusedPickle("numpy dtype: structured dtypes are refused")
    if dtype.kind not in _DTYPE_KINDS:
        raise UnreadableCheckpointError(f"numpy dtype: unsupported dtype {dtype.str!r}")
    return _PendingDType(dtype)


def _reduce_jax_array(args: tuple[Any, ...]) -> Any:
    # jax's rebuilders are (fun, args, arr_state[, aval_state]) with fun(*args)
    # numpy's _reconstruct; rebuild the numpy array and drop the jax wrapper.
    _check(len(args) in (3, 4), "jax array: wrong number of arguments")
    fun, fun_args, arr_state = args[:3]
    if not (isinstance(fun, Global) and fun.name == "_reconstruct" and fun.module.startswith(_NUMPY_CORE)):
        raise RefusedPickle(f"jax array: refuses rebuilder {_type_name(fun)}")
    _check(type(fun_args) is tuple, "jax array: malformed arguments")
    _reduce_reconstruct(fun_args)
    return _build_ndarray(arr_state, "jax array")


def _reduce_encode(args: tuple[Any, ...]) -> bytes:
    _check(len(args) in (1, 2) and type(args[0]) is str, "_codecs.encode: malformed arguments")
    encoding = args[1] if len(args) == 2 else "utf-8"
    if not _is_one_of(encoding, "latin1", "latin-1"):
        raise RefusedPickle(f"_codecs.encode: refuses encoding {printable(repr(encoding), 60)}")
    text: str = args[0]
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        raise CorruptPickle("_codecs.encode: text is not latin-1") from None


def _reduce_ordered_dict(args: tuple[Any, ...]) -> dict[Any, Any]:
    _check(
        len(args) == 0 or (len(args) == 1 and type(args[0]) in (list, tuple) and not args[0]),
        "OrderedDict: unexpected arguments",
    )
    return {}


def _reduce_defaultdict(args: tuple[Any, ...]) -> dict[Any, Any]:
    _check(len(args) <= 1, "defaultdict: unexpected arguments")
    factory = args[0] if args else None
    if factory is not None and not (isinstance(factory, Global) and (factory.module, factory.name) in _FACTORIES):
        raise RefusedPickle(f"defaultdict: refuses factory {_type_name(factory)}")
    return {}


_REDUCERS: Final[dict[tuple[str, str], Callable[[tuple[Any, ...]], Any]]] = {
    **{(f"{core}.multiarray", "_reconstruct"): _reduce_reconstruct for core in _NUMPY_CORE},
    **{(f"{core}.multiarray", "scalar"): _reduce_scalar for core in _NUMPY_CORE},
    **{(f"{core}.numeric", "_frombuffer"): _reduce_frombuffer for core in _NUMPY_CORE},
    ("numpy", "dtype"): _reduce_dtype,
    ("_codecs", "encode"): _reduce_encode,
    ("collections", "OrderedDict"): _reduce_ordered_dict,
    ("collections", "defaultdict"): _reduce_defaultdict,
    ("jax._src.array", "_reconstruct_array"): _reduce_jax_array,
    ("jax._src.device_array", "reconstruct_device_array"): _reduce_jax_array,
}

_CLASSES: Final[dict[tuple[str, str], type[_Pending]]] = {
    ("trax.history", "History"): _PendingHistory,
    ("trax.supervised.history", "History"): _PendingHistory,
    ("trax.shapes", "ShapeDtype"): _PendingShapeDtype,
}


def _type_name(value: Any) -> str:
    if isinstance(value, Global):
        return str(value)
    if isinstance(value, _Pending):
        return value.what
    return type(value).__name__


# -------------------------------------------------------------------- machine

_HASHABLE_LEAVES = (str, bytes, int, float, bool, type(None))


def _check_key(key: Any) -> None:
    # Only plain values may be dict keys or set members: hashing anything else
    # could run code or fail in ways this module does not control. Nesting is
    # bounded too: hashing a deeply nested tuple overflows the C stack.
    todo = [(key, 0)]
    while todo:
        item, depth = todo.pop()
        if type(item) is tuple:
            _check(depth < _MAX_KEY_DEPTH, f"a key nested deeper than {_MAX_KEY_DEPTH} levels")
            todo.extend((child, depth + 1) for child in item)
        elif type(item) not in _HASHABLE_LEAVES:
            raise CorruptPickle(f"unhashable {_type_name(item)} used as a key")


def _check_values(items: list[Any] | tuple[Any, ...]) -> None:
    for item in items:
        if isinstance(item, _Pending):
            raise CorruptPickle(f"{item.what} used before its state was set")


@dataclass(frozen=True, slots=True)
class GlobalReference:
    """One global a pickle references, as ``inspect --globals`` lists it."""

    module: str
    name: str
    opcode: str
    opcode_index: int  # how many opcodes ran before this one

    @property
    def allowed(self) -> bool:
        # INST names a global and calls it in one opcode; loading refuses INST whatever it names.
        return self.opcode != "INST" and (self.module, self.name) in ALLOWED_GLOBALS


class _Opaque:
    """Scan mode's result of REDUCE/NEWOBJ/BUILD: something that would be built."""

    __hash__ = None  # type: ignore[assignment]


class Machine:
    """One pickle load. ``load()`` returns the object; ``scan()`` lists globals."""

    def __init__(
        self, source: ByteSource, *, scan: bool = False, on_array: Callable[[npt.NDArray[Any]], None] | None = None
    ) -> None:
        self._source = source
        self._scan = scan
        # Called with every array as soon as it is built (bfloat16: its uint16 bits), in file order.
        self._on_array = on_array
        self._stack: list[Any] = []
        self._marks: list[list[Any]] = []
        self._memo: dict[int, Any] = {}
        self._pending_memo: dict[int, list[int]] = {}
        self._position = 0
        self.globals: list[GlobalReference] = []
        self._dispatch = self._build_dispatch()

    # ---- public

    def load(self) -> Any:
        """Run the pickle to its STOP opcode and return the object it made."""
        read = self._source.read_exact
        dispatch = self._dispatch
        limit = MAX_OPCODES
        try:
            while True:
                code = read(1)
                self._position += 1
                if self._position > limit:
                    raise UnreadableCheckpointError(
                        f"the pickle runs more than {limit:,} opcodes (a limit against memory exhaustion; "
                        "Trax checkpoints need far fewer)"
                    )
                handler = dispatch.get(code[0])
                if handler is None:
                    raise CorruptPickle(f"unknown pickle opcode 0x{code[0]:02x}")
                if handler():
                    result = self._pop()
                    if isinstance(result, _Pending):
                        raise CorruptPickle(f"{result.what} was never given its state")
                    return result
        finally:
            # The dispatch table's bound methods make the machine a reference cycle;
            # drop what it holds now, so arrays are freed as soon as callers release them.
            self._memo.clear()
            self._stack.clear()
            self._marks.clear()
            self._pending_memo.clear()

    def scan(self) -> list[GlobalReference]:
        """Run the pickle without building anything; return every global it names."""
        self.load()
        return self.globals

    # ---- stack helpers

    def _pop(self) -> Any:
        if not self._stack:
            raise CorruptPickle("pickle stack underflow")
        return self._stack.pop()

    def _top(self) -> Any:
        if not self._stack:
            raise CorruptPickle("pickle stack underflow")
        return self._stack[-1]

    def _pop_mark(self) -> list[Any]:
        if not self._marks:
            raise CorruptPickle("pickle mark missing")
        items = self._stack
        self._stack = self._marks.pop()
        return items

    def _read_int(self, fmt: str, size: int) -> int:
        value: int = struct.unpack(fmt, self._source.read_exact(size))[0]
        return value

    def _read_line(self) -> bytes:
        line = self._source.readline(_MAX_LINE)
        _check(line.endswith(b"\n"), "pickle text line is unterminated or too long")
        return line[:-1]

    # ---- opcode handlers; each returns True only for STOP

    def _build_dispatch(self) -> dict[int, Callable[[], bool | None]]:
        table: dict[bytes, Callable[[], bool | None]] = {
            b"(": self._op_mark,
            b".": lambda: True,
            b"0": self._op_pop,
            b"1": self._op_pop_mark,
            b"2": self._op_dup,
            b"F": self._op_float,
            b"I": self._op_int,
            b"J": self._op_binint,
            b"K": self._op_binint1,
            b"L": self._op_long,
            b"M": self._op_binint2,
            b"N": self._op_none,
            b"R": self._op_reduce,
            b"S": self._op_string,
            b"T": self._op_binstring,
            b"U": self._op_short_binstring,
            b"V": self._op_unicode,
            b"X": self._op_binunicode,
            b"a": self._op_append,
            b"b": self._op_build,
            b"c": self._op_global,
            b"d": self._op_dict,
            b"}": self._op_empty_dict,
            b"e": self._op_appends,
            b"g": self._op_get,
            b"h": self._op_binget,
            b"j": self._op_long_binget,
            b"l": self._op_list,
            b"]": self._op_empty_list,
            b"p": self._op_put,
            b"q": self._op_binput,
            b"r": self._op_long_binput,
            b"s": self._op_setitem,
            b"t": self._op_tuple,
            b")": self._op_empty_tuple,
            b"u": self._op_setitems,
            b"G": self._op_binfloat,
            b"\x80": self._op_proto,
            b"\x81": self._op_newobj,
            b"\x85": self._op_tuple1,
            b"\x86": self._op_tuple2,
            b"\x87": self._op_tuple3,
            b"\x88": self._op_true,
            b"\x89": self._op_false,
            b"\x8a": self._op_long1,
            b"\x8b": self._op_long4,
            b"B": self._op_binbytes,
            b"C": self._op_short_binbytes,
            b"\x8c": self._op_short_binunicode,
            b"\x8d": self._op_binunicode8,
            b"\x8e": self._op_binbytes8,
            b"\x8f": self._op_empty_set,
            b"\x90": self._op_additems,
            b"\x91": self._op_frozenset,
            b"\x92": self._op_newobj_ex,
            b"\x93": self._op_stack_global,
            b"\x94": self._op_memoize,
            b"\x95": self._op_frame,
            b"\x96": self._op_bytearray8,
            # Opcodes that create objects by other routes, or need outside help.
            b"i": self._op_inst,
            b"o": self._op_obj,
            b"P": self._refuse("PERSID"),
            b"Q": self._refuse("BINPERSID"),
            b"\x82": self._refuse("EXT1"),
            b"\x83": self._refuse("EXT2"),
            b"\x84": self._refuse("EXT4"),
            b"\x97": self._refuse("NEXT_BUFFER"),
            b"\x98": self._refuse("READONLY_BUFFER"),
        }
        return {key[0]: handler for key, handler in table.items()}

    def _refuse(self, name: str) -> Callable[[], None]:
        def handler() -> None:
            raise RefusedPickle(f"pickle opcode {name} is refused")

        return handler

    def _push(self, value: Any) -> None:
        self._stack.append(value)

    def _op_mark(self) -> None:
        self._marks.append(self._stack)
        self._stack = []

    def _op_pop(self) -> None:
        if self._stack:
            self._stack.pop()
        else:
            self._pop_mark()

    def _op_pop_mark(self) -> None:
        self._pop_mark()

    def _op_dup(self) -> None:
        self._push(self._top())

    def _op_float(self) -> None:
        try:
            self._push(float(self._read_line()))
        except ValueError:
            raise CorruptPickle("malformed FLOAT") from None

    def _op_int(self) -> None:
        line = self._read_line()
        if line in (b"00", b"01"):  # protocol 0 booleans
            self._push(line == b"01")
            return
        self._push(self._parse_int(line, "INT"))

    def _op_long(self) -> None:
        self._push(self._parse_int(self._read_line().rstrip(b"L"), "LONG"))

    @staticmethod
    def _parse_int(text: bytes, what: str) -> int:
        _check(len(text) <= 2 * _MAX_LONG_BYTES + 2, f"{what} is too long")
        try:
            return int(text)
        except ValueError:
            raise CorruptPickle(f"malformed {what}") from None

    def _op_binint(self) -> None:
        self._push(self._read_int("<i", 4))

    def _op_binint1(self) -> None:
        self._push(self._source.read_exact(1)[0])

    def _op_binint2(self) -> None:
        self._push(self._read_int("<H", 2))

    def _op_long1(self) -> None:
        self._push(self._decode_long(self._source.read_exact(1)[0]))

    def _op_long4(self) -> None:
        self._push(self._decode_long(self._read_int("<i", 4)))

    def _decode_long(self, n: int) -> int:
        _check(0 <= n <= _MAX_LONG_BYTES, "LONG is too long")
        return int.from_bytes(self._source.read_exact(n), "little", signed=True)

    def _op_binfloat(self) -> None:
        self._push(struct.unpack(">d", self._source.read_exact(8))[0])

    def _op_none(self) -> None:
        self._push(None)

    def _op_true(self) -> None:
        self._push(True)

    def _op_false(self) -> None:
        self._push(False)

    def _op_string(self) -> None:
        line = self._read_line()
        _check(len(line) >= 2 and line[0] == line[-1] and line[:1] in (b"'", b'"'), "malformed STRING")
        try:
            self._push(codecs.escape_decode(line[1:-1])[0].decode("latin-1"))
        except ValueError:
            raise CorruptPickle("malformed STRING") from None

    def _op_binstring(self) -> None:
        self._push_text(self._read_int("<i", 4), "latin-1")

    def _op_short_binstring(self) -> None:
        self._push_text(self._source.read_exact(1)[0], "latin-1")

    def _op_unicode(self) -> None:
        try:
            self._push(self._read_line().decode("raw-unicode-escape"))
        except UnicodeDecodeError:
            raise CorruptPickle("malformed UNICODE") from None

    def _op_binunicode(self) -> None:
        self._push_text(self._read_int("<I", 4), "utf-8")

    def _op_short_binunicode(self) -> None:
        self._push_text(self._source.read_exact(1)[0], "utf-8")

    def _op_binunicode8(self) -> None:
        self._push_text(self._read_int("<Q", 8), "utf-8")

    def _push_text(self, n: int, encoding: str) -> None:
        _check(n >= 0, "negative string length")
        raw = self._source.read_exact(n)
        try:
            self._push(raw.decode(encoding, "surrogatepass"))
        except UnicodeDecodeError:
            raise CorruptPickle("string is not valid UTF-8") from None

    def _op_binbytes(self) -> None:
        self._push_bytes(self._read_int("<I", 4), bytearray_=False)

    def _op_short_binbytes(self) -> None:
        self._push(self._source.read_exact(self._source.read_exact(1)[0]))

    def _op_binbytes8(self) -> None:
        self._push_bytes(self._read_int("<Q", 8), bytearray_=False)

    def _op_bytearray8(self) -> None:
        self._push_bytes(self._read_int("<Q", 8), bytearray_=True)

    def _push_bytes(self, n: int, *, bytearray_: bool) -> None:
        if n >= _PAYLOAD_THRESHOLD:
            self._push(self._source.read_payload(n))
        else:
            data = self._source.read_exact(n)
            self._push(bytearray(data) if bytearray_ else data)

    def _op_append(self) -> None:
        item = self._pop()
        self._extend_list([item])

    def _op_appends(self) -> None:
        items = self._pop_mark()
        self._extend_list(items)

    def _extend_list(self, items: list[Any]) -> None:
        target = self._top()
        if type(target) is not list:
            raise CorruptPickle(f"APPEND to {_type_name(target)}")
        _check(len(target) + len(items) <= _MAX_CONTAINER_ITEMS, "list is too long")
        _check_values(items)
        target.extend(items)

    def _op_list(self) -> None:
        items = self._pop_mark()
        _check_values(items)
        self._push(items)

    def _op_empty_list(self) -> None:
        self._push([])

    def _op_tuple(self) -> None:
        items = self._pop_mark()
        _check_values(items)
        self._push(tuple(items))

    def _op_empty_tuple(self) -> None:
        self._push(())

    def _op_tuple1(self) -> None:
        self._tuple_n(1)

    def _op_tuple2(self) -> None:
        self._tuple_n(2)

    def _op_tuple3(self) -> None:
        self._tuple_n(3)

    def _tuple_n(self, n: int) -> None:
        _check(len(self._stack) >= n, "pickle stack underflow")
        items = self._stack[-n:]
        _check_values(items)
        del self._stack[-n:]
        self._push(tuple(items))

    def _op_dict(self) -> None:
        items = self._pop_mark()
        self._push(self._fill_dict({}, items))

    def _op_empty_dict(self) -> None:
        self._push({})

    def _op_setitem(self) -> None:
        value = self._pop()
        key = self._pop()
        self._fill_dict(self._top(), [key, value])

    def _op_setitems(self) -> None:
        items = self._pop_mark()
        self._fill_dict(self._top(), items)

    def _fill_dict(self, target: Any, items: list[Any]) -> dict[Any, Any]:
        if type(target) is not dict:
            raise CorruptPickle(f"SETITEM on {_type_name(target)}")
        _check(len(items) % 2 == 0, "odd number of dict items")
        _check_values(items)
        for i in range(0, len(items), 2):
            _check_key(items[i])
            target[items[i]] = items[i + 1]
        _check(len(target) <= _MAX_CONTAINER_ITEMS, "dict is too large")
        return target

    def _op_empty_set(self) -> None:
        self._push(set())

    def _op_additems(self) -> None:
        items = self._pop_mark()
        target = self._top()
        if type(target) is not set:
            raise CorruptPickle(f"ADDITEMS on {_type_name(target)}")
        for item in items:
            _check_key(item)
        target.update(items)

    def _op_frozenset(self) -> None:
        items = self._pop_mark()
        for item in items:
            _check_key(item)
        self._push(frozenset(items))

    # ---- memo

    def _op_get(self) -> None:
        self._memo_get(self._parse_int(self._read_line(), "GET"))

    def _op_binget(self) -> None:
        self._memo_get(self._source.read_exact(1)[0])

    def _op_long_binget(self) -> None:
        self._memo_get(self._read_int("<I", 4))

    def _memo_get(self, index: int) -> None:
        if index not in self._memo:
            raise CorruptPickle(f"memo entry {index} is missing")
        self._push(self._memo[index])

    def _op_put(self) -> None:
        self._memo_put(self._parse_int(self._read_line(), "PUT"))

    def _op_binput(self) -> None:
        self._memo_put(self._source.read_exact(1)[0])

    def _op_long_binput(self) -> None:
        self._memo_put(self._read_int("<I", 4))

    def _op_memoize(self) -> None:
        self._memo_put(len(self._memo))

    def _memo_put(self, index: int) -> None:
        _check(index >= 0, "negative memo index")
        value = self._top()
        self._memo[index] = value
        if isinstance(value, _Pending):
            self._pending_memo.setdefault(id(value), []).append(index)

    # ---- framing

    def _op_proto(self) -> None:
        version = self._source.read_exact(1)[0]
        _check(version <= 5, f"unsupported pickle protocol {version}")

    def _op_frame(self) -> None:
        self._read_int("<Q", 8)  # frames are a read-ahead hint; sizes are checked per read

    # ---- globals and object construction: the allow-list is enforced here

    def _op_global(self) -> None:
        try:
            module = self._read_line().decode("utf-8")
            name = self._read_line().decode("utf-8")
        except UnicodeDecodeError:
            raise CorruptPickle("GLOBAL name is not UTF-8") from None
        self._push(self._resolve_global(module, name, "GLOBAL"))

    def _op_inst(self) -> None:
        if not self._scan:
            raise RefusedPickle("pickle opcode INST is refused")
        # Scan mode lists the global INST names (it is inline, like GLOBAL's) and goes on.
        try:
            module = self._read_line().decode("utf-8")
            name = self._read_line().decode("utf-8")
        except UnicodeDecodeError:
            raise CorruptPickle("INST name is not UTF-8") from None
        self._resolve_global(module, name, "INST")
        self._pop_mark()
        self._push(_Opaque())

    def _op_obj(self) -> None:
        if not self._scan:
            raise RefusedPickle("pickle opcode OBJ is refused")
        # Scan mode: the class came from GLOBAL/STACK_GLOBAL, already listed; OBJ is a call.
        self._pop_mark()
        self._push(_Opaque())

    def _op_stack_global(self) -> None:
        name = self._pop()
        module = self._pop()
        if type(module) is not str or type(name) is not str:
            raise CorruptPickle("STACK_GLOBAL operands are not strings")
        self._push(self._resolve_global(module, name, "STACK_GLOBAL"))

    def _resolve_global(self, module: str, name: str, opcode: str) -> Global:
        # Bounded, so that `inspect --globals --json` cannot be made to print gigabytes.
        _check(max(len(module), len(name)) <= _MAX_GLOBAL_NAME, f"a global name longer than {_MAX_GLOBAL_NAME}")
        _check(len(self.globals) < _MAX_GLOBAL_REFERENCES, f"more than {_MAX_GLOBAL_REFERENCES:,} global references")
        self.globals.append(GlobalReference(module, name, opcode, self._position))
        if not self._scan and (module, name) not in ALLOWED_GLOBALS:
            raise RefusedPickle(f"refused global {printable(module)}.{printable(name)} (not on the allow-list)")
        return Global(module, name)

    def _op_reduce(self) -> None:
        args = self._pop()
        func = self._pop()
        if self._scan:
            self._push(_Opaque())
            return
        if not isinstance(func, Global):
            raise RefusedPickle(f"REDUCE on {_type_name(func)}, which is not an allowed global")
        reducer = _REDUCERS.get((func.module, func.name))
        if reducer is None:
            raise RefusedPickle(f"REDUCE on {func}, which may only be referenced, not called")
        if type(args) is not tuple:
            raise CorruptPickle(f"REDUCE arguments for {func} are not a tuple")
        _check_values(args)
        self._push(self._built(reducer(args)))

    def _built(self, value: Any) -> Any:
        if self._on_array is not None:
            if isinstance(value, np.ndarray):
                self._on_array(value)
            elif isinstance(value, BFloat16Array):
                self._on_array(value.bits)
        return value

    def _op_newobj(self) -> None:
        args = self._pop()
        cls = self._pop()
        self._new_object(cls, args, {})

    def _op_newobj_ex(self) -> None:
        kwargs = self._pop()
        args = self._pop()
        cls = self._pop()
        self._new_object(cls, args, kwargs)

    def _new_object(self, cls: Any, args: Any, kwargs: Any) -> None:
        if self._scan:
            self._push(_Opaque())
            return
        if not isinstance(cls, Global) or (cls.module, cls.name) not in _CLASSES:
            raise RefusedPickle(f"NEWOBJ of {_type_name(cls)}, which is not an allowed class")
        no_args = type(args) is tuple and not args  # type checks first: args may be arrays
        no_kwargs = kwargs is None or (type(kwargs) is dict and not kwargs)
        if not (no_args and no_kwargs):
            raise CorruptPickle(f"NEWOBJ of {cls}: unexpected arguments")
        self._push(_CLASSES[(cls.module, cls.name)]())

    def _op_build(self) -> None:
        state = self._pop()
        target = self._top()
        if self._scan:
            return
        if not isinstance(target, _Pending):
            raise RefusedPickle(f"BUILD on {_type_name(target)} is refused")
        _check_values(state if type(state) is tuple else (state,))
        result = self._built(target.finish(state))
        self._stack[-1] = result
        for index in self._pending_memo.pop(id(target), ()):
            self._memo[index] = result
