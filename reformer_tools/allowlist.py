"""Every global a checkpoint pickle may name, why, and the rebuilders that check their arguments."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from reformer_tools.dtypes import MAX_NDIM, check_shape, untrusted_dtype
from reformer_tools.errors import UnreadableCheckpointError, UnsafeCheckpointError
from reformer_tools.untrusted import printable, shown

_MAX_SHAPE_DTYPE_DIMS: Final = 32


class CorruptPickle(UnreadableCheckpointError):
    """The pickle stream is malformed."""


class RefusedPickle(UnsafeCheckpointError):
    """The pickle asks for something outside the allow-list."""


# ------------------------------------------------------------------ what a pickle can produce


@dataclass(frozen=True, slots=True)
class Global:
    """Inert stand-in for a global the pickle referenced. Never callable."""

    module: str
    name: str

    def __str__(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(frozen=True, slots=True)
class SkippedPayload:
    """A payload read past without keeping it (shapes-only loading, e.g. for ``inspect``)."""

    nbytes: int


@dataclass(frozen=True, slots=True)
class ReleasedPayload:
    """A payload whose array a load's caller took away as it was built (``Machine``'s ``on_array``)."""

    nbytes: int


class PayloadReleased(UnreadableCheckpointError):
    """The pickle builds a second array from the data of one taken away: load it again, keeping the data."""


class LargeText:
    """A string of 1 MiB or more, never decoded into a ``str``.

    Protocol 0-2 pickles carry array bytes as latin-1 text; those are kept as
    bytes (``latin1``). Any other long text is only counted: it can be
    summarized, not used (a key, a global's name), so a 1 GiB string costs no
    memory beyond its bytes.
    """

    __slots__ = ("chars", "latin1")
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, chars: int, latin1: npt.NDArray[np.uint8] | SkippedPayload | None) -> None:
        self.chars = chars  # length in characters
        self.latin1 = latin1  # the text as latin-1 bytes, or None if it is not latin-1 text


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
    """Inert stand-in for ``trax.shapes.ShapeDtype``: a shape of at most 32 integers (or None) and a dtype."""

    shape: tuple[int | None, ...]
    dtype: Any


class _BFloat16DType:
    """Marker dtype for ml_dtypes' bfloat16; arrays of it become BFloat16Array."""

    itemsize = 2
    storage = np.dtype("<u2")


BFLOAT16_DTYPE: Final = _BFloat16DType()
DType = np.dtype[Any] | _BFloat16DType


class Pending:
    """An object made by REDUCE/NEWOBJ that only becomes usable after BUILD."""

    __hash__ = None  # type: ignore[assignment]
    what = "object"

    def finish(self, state: Any) -> Any:
        raise NotImplementedError


# ------------------------------------------------------------------ the allow-list

_NUMPY_CORE: Final = ("numpy.core", "numpy._core")  # numpy 1.x and 2.x spellings
_NUMPY_SCALAR_TYPES: Final = (
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
#: executes code, yet lives under ``numpy``). A pair resolves to an inert
#: :class:`Global`; only the rebuilders below ever act on one.
ALLOWED_GLOBALS: Final[dict[tuple[str, str], str]] = {
    **{(f"{core}.multiarray", "_reconstruct"): "numpy array rebuilder" for core in _NUMPY_CORE},
    **{(f"{core}.multiarray", "scalar"): "numpy scalar rebuilder" for core in _NUMPY_CORE},
    **{(f"{core}.numeric", "_frombuffer"): "numpy array rebuilder (protocol 5)" for core in _NUMPY_CORE},
    ("numpy", "ndarray"): "numpy array type (argument of the rebuilder)",
    ("numpy", "dtype"): "numpy dtype rebuilder",
    **{("numpy", name): "numpy scalar type (a ShapeDtype's dtype)" for name in _NUMPY_SCALAR_TYPES},
    ("_codecs", "encode"): "bytes in protocol 2 pickles (latin-1 only)",
    # Protocol 0-2 write empty bytes (an empty array's data) as a call of bytes with no arguments.
    ("builtins", "bytes"): "empty bytes in protocol 0-2 pickles (no arguments)",
    ("__builtin__", "bytes"): "empty bytes in protocol 0-2 pickles (no arguments)",
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

_FACTORIES: Final = {(module, n) for module in ("builtins", "__builtin__") for n in ("list", "dict", "int", "float")}
_NUMPY_TYPES: Final = {("numpy", n) for n in _NUMPY_SCALAR_TYPES}


def describe_global(module: str, name: str) -> str | None:
    """Why a global is allowed, or None if it is refused."""
    return ALLOWED_GLOBALS.get((module, name))


def is_allowed(module: str, name: str) -> bool:
    return (module, name) in ALLOWED_GLOBALS


# ------------------------------------------------------------------ argument checks


def require(condition: bool, message: str) -> None:
    """A malformed pickle (exit 3) unless ``condition`` holds."""
    if not condition:
        raise CorruptPickle(message)


def type_name(value: Any) -> str:
    """What a pickled value is, for an error message: never its contents."""
    if isinstance(value, Global):
        return printable(str(value), 120)
    if isinstance(value, Pending):
        return value.what
    if isinstance(value, LargeText):
        return f"text of {value.chars:,} characters"
    return type(value).__name__


def _is_int(value: Any) -> bool:
    return type(value) is int


def _is_one_of(value: Any, *choices: str | bytes) -> bool:
    """``value in choices`` for an untrusted value: never runs an array's ``__eq__``.

    ``ndarray in ("C", "F")`` raises ValueError (an ambiguous truth value); the
    type check first keeps such comparisons to plain strings and bytes.
    """
    return type(value) in (str, bytes) and value in choices


def _as_shape(value: Any, what: str) -> tuple[int, ...]:
    require(type(value) is tuple, f"{what}: shape is not a tuple")
    require(len(value) <= MAX_NDIM, f"{what}: more than {MAX_NDIM} dimensions")
    require(all(_is_int(d) and d >= 0 for d in value), f"{what}: shape has a non-integer or negative size")
    return tuple(value)


def _as_dtype(value: Any, what: str) -> DType:
    if isinstance(value, np.dtype | _BFloat16DType):
        return value
    raise CorruptPickle(f"{what}: expected a dtype, got {type_name(value)}")


def _as_buffer(value: Any, what: str) -> bytes | bytearray | npt.NDArray[np.uint8] | SkippedPayload:
    if isinstance(value, ReleasedPayload):
        raise PayloadReleased(f"{what}: its data was released with an earlier array")
    if isinstance(value, bytes | bytearray | SkippedPayload):
        return value
    if isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 1:
        return value
    if isinstance(value, str | LargeText):  # protocol 0-2 pickles decoded with latin-1
        return _latin1(value, what)
    if isinstance(value, list):
        raise RefusedPickle(f"{what}: object arrays are refused (they hold arbitrary objects)")
    raise CorruptPickle(f"{what}: array data is {type_name(value)}, not bytes")


def _latin1(text: str | LargeText, what: str) -> bytes | npt.NDArray[np.uint8] | SkippedPayload:
    if isinstance(text, LargeText):
        if text.latin1 is None:
            raise CorruptPickle(f"{what}: text is not latin-1")
        return text.latin1
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        raise CorruptPickle(f"{what}: text is not latin-1") from None


def _make_array(
    buffer: Any, dtype: DType, shape: tuple[int, ...], fortran: bool, what: str
) -> np.ndarray[Any, Any] | BFloat16Array:
    raw = _as_buffer(buffer, what)
    storage = dtype.storage if isinstance(dtype, _BFloat16DType) else dtype
    check_shape(shape, storage.itemsize, what)
    expected = math.prod(shape) * storage.itemsize
    actual = raw.nbytes if isinstance(raw, np.ndarray | SkippedPayload) else len(raw)
    require(
        actual == expected, f"{what}: shape {printable(str(shape), 120)} needs {expected} bytes, the data has {actual}"
    )
    if isinstance(raw, SkippedPayload):
        # Shape and dtype without data: a read-only view of one zero, broadcast.
        array = np.lib.stride_tricks.as_strided(np.zeros(1, storage), shape, (0,) * len(shape), writeable=False)
    else:
        flat = np.frombuffer(raw, dtype=storage)
        array = flat.reshape(shape, order="F" if fortran else "C")
    if isinstance(dtype, _BFloat16DType):
        return BFloat16Array(array)
    return array


# ------------------------------------------------------------------ rebuilders


def _build_ndarray(state: Any, what: str = "numpy array") -> np.ndarray[Any, Any] | BFloat16Array:
    """Apply ``ndarray.__setstate__``'s state, validated, without numpy's setstate."""
    require(type(state) is tuple and len(state) in (4, 5), f"{what}: malformed array state")
    if len(state) == 5:
        require(_is_int(state[0]), f"{what}: malformed array state version")
        state = state[1:]
    shape_value, dtype_value, fortran, data = state
    shape = _as_shape(shape_value, what)
    dtype = _as_dtype(dtype_value, what)
    require(type(fortran) in (bool, int), f"{what}: malformed order flag")
    return _make_array(data, dtype, shape, bool(fortran), what)


class _PendingArray(Pending):
    what = "numpy array"

    def finish(self, state: Any) -> Any:
        return _build_ndarray(state)


class _PendingDType(Pending):
    what = "numpy dtype"

    def __init__(self, dtype: DType) -> None:
        self.dtype = dtype

    def finish(self, state: Any) -> Any:
        # (version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata])
        require(type(state) is tuple and len(state) in (8, 9), "numpy dtype: malformed state")
        order, subarray, names, fields = state[1:5]
        if subarray is not None or names is not None or fields is not None:
            raise RefusedPickle("numpy dtype: structured dtypes are refused")
        require(_is_one_of(order, "<", ">", "|", "="), "numpy dtype: malformed byte order")
        if isinstance(self.dtype, _BFloat16DType):
            require(_is_one_of(order, "<", "|", "="), "bfloat16 dtype: only little-endian is supported")
            return self.dtype
        return self.dtype.newbyteorder(order) if order in "<>" else self.dtype


class _PendingHistory(Pending):
    what = "trax History"

    def finish(self, state: Any) -> Any:
        if type(state) is tuple and len(state) == 2:  # (dict state, slot state)
            state = state[0]
        require(type(state) is dict, "trax History: malformed state")
        values = state.get("_values", {})
        require(type(values) is dict, "trax History: malformed values")
        return TraxHistory(values)


class _PendingShapeDtype(Pending):
    what = "trax ShapeDtype"

    def finish(self, state: Any) -> Any:
        if type(state) is tuple and len(state) == 2:
            state = state[1] if state[1] is not None else state[0]
        require(type(state) is dict, "trax ShapeDtype: malformed state")
        shape = state.get("shape", ())
        # A shape is a few sizes: anything else (a tuple nested 200,000 deep, or shared
        # 2**60 ways) would only cost time and stack when shown.
        require(
            type(shape) in (tuple, list)
            and len(shape) <= _MAX_SHAPE_DTYPE_DIMS
            and all(_is_int(d) or d is None for d in shape),
            "trax ShapeDtype: malformed shape (not a few integers)",
        )
        return ShapeDtype(tuple(shape), state.get("dtype"))


def _reduce_reconstruct(args: tuple[Any, ...]) -> _PendingArray:
    require(len(args) == 3, "numpy _reconstruct: wrong number of arguments")
    subtype, shape, code = args
    if not (isinstance(subtype, Global) and subtype.name == "ndarray"):
        raise RefusedPickle(f"numpy _reconstruct: refuses array subtype {type_name(subtype)}")
    # Type checks before comparing: the arguments may be arrays (see _is_one_of).
    require(
        type(shape) is tuple
        and len(shape) == 1
        and _is_int(shape[0])
        and shape[0] == 0
        and _is_one_of(code, b"b", "b"),
        "numpy _reconstruct: unexpected arguments",
    )
    return _PendingArray()


def _reduce_frombuffer(args: tuple[Any, ...]) -> Any:
    require(len(args) == 4, "numpy _frombuffer: wrong number of arguments")
    buffer, dtype, shape, order = args
    require(_is_one_of(order, "C", "F"), "numpy _frombuffer: malformed order")
    what = "numpy array"
    return _make_array(buffer, _as_dtype(dtype, what), _as_shape(shape, what), order == "F", what)


def _reduce_scalar(args: tuple[Any, ...]) -> Any:
    require(len(args) in (1, 2), "numpy scalar: wrong number of arguments")
    dtype = _as_dtype(args[0], "numpy scalar")
    if len(args) == 1:
        raise RefusedPickle("numpy scalar: object scalars are refused")
    array = _make_array(args[1], dtype, (), False, "numpy scalar")
    return array if isinstance(array, BFloat16Array) else array[()]


def _reduce_dtype(args: tuple[Any, ...]) -> _PendingDType:
    require(1 <= len(args) <= 3, "numpy dtype: wrong number of arguments")
    spec = args[0]
    if isinstance(spec, Global) and (spec.module, spec.name) == ("ml_dtypes", "bfloat16"):
        return _PendingDType(BFLOAT16_DTYPE)
    if isinstance(spec, Global) and (spec.module, spec.name) in _NUMPY_TYPES:
        spec = spec.name
    # The one rule for dtypes a file may hold (reformer_tools.dtypes): object and structured refused.
    return _PendingDType(untrusted_dtype(spec, "numpy dtype"))


def _reduce_jax_array(args: tuple[Any, ...]) -> Any:
    # jax's rebuilders are (fun, args, arr_state[, aval_state]) with fun(*args)
    # numpy's _reconstruct; rebuild the numpy array and drop the jax wrapper.
    require(len(args) in (3, 4), "jax array: wrong number of arguments")
    fun, fun_args, arr_state = args[:3]
    if not (isinstance(fun, Global) and fun.name == "_reconstruct" and fun.module.startswith(_NUMPY_CORE)):
        raise RefusedPickle(f"jax array: refuses rebuilder {type_name(fun)}")
    require(type(fun_args) is tuple, "jax array: malformed arguments")
    _reduce_reconstruct(fun_args)
    return _build_ndarray(arr_state, "jax array")


def _reduce_encode(args: tuple[Any, ...]) -> bytes | npt.NDArray[np.uint8] | SkippedPayload:
    require(len(args) in (1, 2) and type(args[0]) in (str, LargeText), "_codecs.encode: malformed arguments")
    encoding = args[1] if len(args) == 2 else "utf-8"
    if not _is_one_of(encoding, "latin1", "latin-1"):
        shown_encoding = shown(encoding, 60) if type(encoding) in (str, bytes) else type_name(encoding)
        raise RefusedPickle(f"_codecs.encode: refuses encoding {shown_encoding}")
    return _latin1(args[0], "_codecs.encode")


def _reduce_ordered_dict(args: tuple[Any, ...]) -> dict[Any, Any]:
    require(
        len(args) == 0 or (len(args) == 1 and type(args[0]) in (list, tuple) and not args[0]),
        "OrderedDict: unexpected arguments",
    )
    return {}


def _reduce_empty_bytes(args: tuple[Any, ...]) -> bytes:
    require(not args, "bytes: only bytes() with no arguments (empty bytes) is rebuilt")
    return b""


def _reduce_defaultdict(args: tuple[Any, ...]) -> dict[Any, Any]:
    require(len(args) <= 1, "defaultdict: unexpected arguments")
    factory = args[0] if args else None
    if factory is not None and not (isinstance(factory, Global) and (factory.module, factory.name) in _FACTORIES):
        raise RefusedPickle(f"defaultdict: refuses factory {type_name(factory)}")
    return {}


#: What REDUCE may call: an allowed global's rebuilder, given the argument tuple.
REDUCERS: Final[dict[tuple[str, str], Callable[[tuple[Any, ...]], Any]]] = {
    **{(f"{core}.multiarray", "_reconstruct"): _reduce_reconstruct for core in _NUMPY_CORE},
    **{(f"{core}.multiarray", "scalar"): _reduce_scalar for core in _NUMPY_CORE},
    **{(f"{core}.numeric", "_frombuffer"): _reduce_frombuffer for core in _NUMPY_CORE},
    ("numpy", "dtype"): _reduce_dtype,
    ("_codecs", "encode"): _reduce_encode,
    ("builtins", "bytes"): _reduce_empty_bytes,
    ("__builtin__", "bytes"): _reduce_empty_bytes,
    ("collections", "OrderedDict"): _reduce_ordered_dict,
    ("collections", "defaultdict"): _reduce_defaultdict,
    ("jax._src.array", "_reconstruct_array"): _reduce_jax_array,
    ("jax._src.device_array", "reconstruct_device_array"): _reduce_jax_array,
}

#: What NEWOBJ may make (with no arguments): stand-ins that BUILD then fills.
CLASSES: Final[dict[tuple[str, str], type[Pending]]] = {
    ("trax.history", "History"): _PendingHistory,
    ("trax.supervised.history", "History"): _PendingHistory,
    ("trax.shapes", "ShapeDtype"): _PendingShapeDtype,
}
