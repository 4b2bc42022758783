"""The dtypes reformer-tools knows: names, storage, sizes, safetensors codes, casts, and what a file may hold."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from reformer_tools.errors import UnreadableCheckpointError, UnsafeCheckpointError, UsageError
from reformer_tools.untrusted import printable

Array = npt.NDArray[Any]


@dataclass(frozen=True, slots=True)
class DTypeInfo:
    """One dtype: its logical name (what ``Leaf.dtype`` says) and how it is stored."""

    name: str  # "float32", "bfloat16", ...
    storage: np.dtype[Any]  # native-order numpy storage; bfloat16 is kept as its uint16 bits
    safetensors: str | None  # the safetensors header's code, None if this tool never writes it
    weight: bool  # a floating-point dtype a model's weights may have
    output: bool  # a dtype `convert --dtype` can produce
    spellings: tuple[str, ...]  # numpy type codes that mean it, without a byte order

    @property
    def itemsize(self) -> int:
        return self.storage.itemsize


def _info(
    name: str, code: str, safetensors: str | None, *spellings: str, weight: bool = False, output: bool = False
) -> DTypeInfo:
    # ``code`` is a constant of this table: the only strings numpy.dtype ever parses here.
    return DTypeInfo(name, np.dtype(code), safetensors, weight, output, (name, code[1:], *spellings))


#: Every dtype the tool knows. A file may hold arrays of these and nothing else.
DTYPES: Final[dict[str, DTypeInfo]] = {
    info.name: info
    for info in (
        _info("float64", "<f8", "F64", "d", weight=True),
        _info("float32", "<f4", "F32", "f", weight=True, output=True),
        _info("float16", "<f2", "F16", "e", weight=True, output=True),
        DTypeInfo("bfloat16", np.dtype("<u2"), "BF16", weight=True, output=True, spellings=()),
        _info("int64", "<i8", "I64", "q", "l"),
        _info("int32", "<i4", "I32", "i"),
        _info("int16", "<i2", "I16", "h"),
        _info("int8", "|i1", "I8", "b"),
        _info("uint64", "<u8", None, "Q", "L"),
        _info("uint32", "<u4", None, "I"),
        _info("uint16", "<u2", None, "H"),
        _info("uint8", "|u1", "U8", "B"),
        _info("bool", "|b1", "BOOL", "?", "bool_"),
        _info("complex64", "<c8", None, "F"),
        _info("complex128", "<c16", None, "D"),
    )
}
#: The dtypes a model's weights may have (uint16 arrays are bfloat16 bit patterns, as in Trax).
WEIGHT_DTYPES: Final = tuple(name for name, info in DTYPES.items() if info.weight)
#: The dtypes `convert --dtype` writes.
OUTPUT_DTYPES: Final = tuple(name for name, info in DTYPES.items() if info.output)
#: safetensors code -> logical name.
BY_SAFETENSORS: Final = {info.safetensors: name for name, info in DTYPES.items() if info.safetensors is not None}

_BY_SPELLING: Final = {spelling: info for info in DTYPES.values() for spelling in info.spellings}
_TYPE_CODE: Final = re.compile(r"([<>|=]?)([A-Za-z?_]+[0-9]*)")
_MAX_SPEC: Final = 16  # characters; the longest spelling above is 10


def info(name: str) -> DTypeInfo:
    """The table entry of a logical dtype name (KeyError if the tool does not know it)."""
    return DTYPES[name]


def itemsize(name: str) -> int:
    """Bytes per element of a logical dtype name ("bfloat16" included, which numpy lacks)."""
    return DTYPES[name].itemsize


def logical_name(dtype: np.dtype[Any]) -> str:
    """The logical name of a storage dtype; uint16 means bfloat16, as in Trax's weights."""
    native = dtype.newbyteorder("=")
    if native == np.uint16:
        return "bfloat16"
    return native.name


def native(array: Array) -> Array:
    """The array in the machine's byte order (big-endian arrays are valid, but slow and unexpected downstream)."""
    return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))


def require_weight_dtype(name: str, where: str) -> None:
    """Refuse (exit 3) an array that cannot be a model weight: every weight is floating point."""
    if name not in WEIGHT_DTYPES:
        raise UnreadableCheckpointError(
            f"{printable(where, 200)} is {printable(name, 40)}; weights must be floating point"
            f" ({', '.join(WEIGHT_DTYPES)})"
        )


def untrusted_dtype(spec: object, what: str) -> np.dtype[Any]:
    """The one check of a dtype a file names: a type code string, or a numpy dtype already made.

    Object, structured and void dtypes are refused as unsafe (their elements or
    fields may hold pickled objects); anything else outside :data:`DTYPES` is
    unsupported. A string is matched against the table's own spellings and never
    handed to ``numpy.dtype``, which crashes the interpreter (SIGFPE) on
    ``'M8[us/0]'`` and raises SyntaxError on ``'f4,,'``.
    """
    if isinstance(spec, np.dtype):
        return _known(spec, what)
    if type(spec) is not str or not spec or len(spec) > _MAX_SPEC:
        raise UnreadableCheckpointError(f"{what}: malformed dtype {_shown(spec)}")
    match = _TYPE_CODE.fullmatch(spec)
    letters = spec.lstrip("<>|=")[:1]
    if "," in spec or spec[:1] in "([" or letters.isdigit():
        raise UnsafeCheckpointError(f"{what}: structured dtype {_shown(spec)} refused (its fields may hold objects)")
    if letters == "O":
        raise UnsafeCheckpointError(f"{what}: object arrays are refused (they hold arbitrary objects)")
    if letters == "V":
        raise UnsafeCheckpointError(f"{what}: structured dtypes are refused (void {_shown(spec)})")
    known = _BY_SPELLING.get(match.group(2)) if match else None
    if match is None or known is None:
        raise UnreadableCheckpointError(f"{what}: unsupported dtype {_shown(spec)}")
    order = match.group(1)
    return known.storage.newbyteorder(">") if order == ">" else known.storage


def _known(dtype: np.dtype[Any], what: str) -> np.dtype[Any]:
    if dtype.kind == "O":
        raise UnsafeCheckpointError(f"{what}: object arrays are refused (they hold arbitrary objects)")
    if dtype.kind == "V" or dtype.fields is not None or dtype.subdtype is not None:
        raise UnsafeCheckpointError(f"{what}: structured dtypes are refused")
    native = dtype.newbyteorder("=")
    if not any(native == info.storage for info in DTYPES.values()):
        raise UnreadableCheckpointError(f"{what}: unsupported dtype {_shown(dtype.str)}")
    return dtype


def _shown(spec: object) -> str:
    return printable(repr(spec[: _MAX_SPEC + 1]) if isinstance(spec, str) else type(spec).__name__, 40)


# ------------------------------------------------------------------ values


def as_float32(array: Array, dtype: str) -> npt.NDArray[np.float32]:
    """Decode a storage array to float32, bit-exactly for bfloat16."""
    if dtype == "bfloat16":
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array.astype(np.float32, copy=False)


def cast(array: Array, source: str, target: str) -> Array:
    """Convert storage arrays between float dtypes the way torch rounds them."""
    if source == target:
        return array
    if target == "float32":
        return as_float32(array, source)
    if target == "float16":
        return (as_float32(array, source) if source == "bfloat16" else array).astype(np.float16)
    if target == "bfloat16":
        return float32_to_bfloat16_bits(as_float32(array, source))
    raise UsageError(f"cannot convert to {target}")


def float32_to_bfloat16_bits(array: npt.NDArray[np.float32]) -> npt.NDArray[np.uint16]:
    """Round to nearest even, NaNs kept quiet: torch's float -> bfloat16."""
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    rounded = (bits + (np.uint32(0x7FFF) + ((bits >> 16) & 1))) >> 16
    out = rounded.astype(np.uint16)
    nan = np.isnan(array)
    if nan.any():
        out[nan] = ((bits[nan] >> 16) | 0x0040).astype(np.uint16)
    return out


# ------------------------------------------------------------------ shapes

MAX_NDIM: Final = 32  # numpy's own limit
_MAX_ARRAY_BYTES: Final = (1 << 63) - 1  # numpy's limit for any shape, even an empty one


def check_shape(shape: tuple[int, ...], itemsize: int, what: str) -> None:
    """Refuse shapes numpy cannot make: an empty array may still not have 10**30 columns.

    numpy raises ValueError for them (after the byte count check passed, since
    any shape with a 0 holds 0 bytes); that would escape as an internal error.
    """
    if len(shape) > MAX_NDIM:
        raise UnreadableCheckpointError(f"{what}: more than {MAX_NDIM} dimensions")
    if math.prod(d for d in shape if d) * itemsize > _MAX_ARRAY_BYTES:
        raise UnreadableCheckpointError(f"{what}: shape {printable(str(shape), 120)} is larger than any array can be")
