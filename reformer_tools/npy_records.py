"""Streams of .npy records (Trax's weights side files), read with pickle off, one array at a time."""

from __future__ import annotations

import ast
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from reformer_tools import checkpoint as model
from reformer_tools.byte_source import ByteSource, open_file, with_file
from reformer_tools.checkpoint import Leaf, require_weight_shape
from reformer_tools.dtypes import check_shape, logical_name, native, require_weight_dtype, untrusted_dtype
from reformer_tools.errors import ReformerToolsError, UnreadableCheckpointError, UnsafeCheckpointError

NPY_MAGIC: Final = b"\x93NUMPY"
MAX_HEADER: Final = 10_000  # numpy's own limit for untrusted headers
_HEADER_KEYS: Final = frozenset({"descr", "fortran_order", "shape"})

Array = npt.NDArray[Any]


@dataclass(frozen=True, slots=True)
class RecordHeader:
    """One record's header: the array's shape, storage dtype (None: a pickled object array) and order."""

    shape: tuple[int, ...]
    dtype: np.dtype[Any] | None
    fortran: bool

    @property
    def nbytes(self) -> int:
        assert self.dtype is not None
        return math.prod(self.shape) * self.dtype.itemsize


def read_header(source: ByteSource, *, objects: bool = False) -> RecordHeader | None:
    """Parse one .npy record header; None at a clean end of stream.

    ``objects``: return object-dtype records (dtype None) instead of refusing
    them; the globals scan reads the pickle that follows such a header.
    """
    if source.at_eof():
        return None
    start = source.consumed
    magic = source.read_exact(len(NPY_MAGIC))
    if magic != NPY_MAGIC:
        raise UnreadableCheckpointError(f"not a .npy record at byte {start} (bad magic)")
    major, _minor = source.read_exact(2)
    if major == 1:
        length = int.from_bytes(source.read_exact(2), "little")
    elif major in (2, 3):
        length = int.from_bytes(source.read_exact(4), "little")
    else:
        raise UnreadableCheckpointError(f"unsupported .npy format version {major}")
    if length > MAX_HEADER:
        raise UnreadableCheckpointError(f".npy header of {length:,} bytes exceeds the {MAX_HEADER:,}-byte limit")
    return parse_header(source.read_exact(length), objects=objects)


def parse_header(raw: bytes, *, objects: bool = False) -> RecordHeader:
    """A header's text: a literal dict of exactly descr, fortran_order and shape, checked before numpy sees it."""
    text = raw.decode("latin-1").strip()
    try:
        header = ast.literal_eval(text) if text.isprintable() else None
    except (ValueError, SyntaxError, RecursionError, MemoryError, TypeError):
        header = None
    if not (isinstance(header, dict) and set(header) == _HEADER_KEYS):
        raise UnreadableCheckpointError(".npy header is malformed")
    descr, fortran, shape = header["descr"], header["fortran_order"], header["shape"]
    if not isinstance(descr, str):
        raise UnsafeCheckpointError(".npy record has a structured dtype (refused)")
    if type(fortran) is not bool or type(shape) is not tuple or not all(type(d) is int and d >= 0 for d in shape):
        raise UnreadableCheckpointError(".npy header is malformed")
    if descr.lstrip("<>|=")[:1] == "O":
        if objects:
            return RecordHeader(shape, None, fortran)
        raise UnsafeCheckpointError(".npy record holds Python objects (needs pickle; refused)")
    # The one rule for dtypes a file may hold: object and structured refused (4), the rest known or exit 3.
    dtype = untrusted_dtype(descr, ".npy record")
    # A shape numpy cannot make (an empty array 10**30 wide) would fail in reshape, untyped.
    check_shape(shape, dtype.itemsize, ".npy record")
    return RecordHeader(shape, dtype, fortran)


def read_records(side: Path, max_decompressed: int | None, *, headers_only: bool) -> Iterator[tuple[Leaf, Array]]:
    """Read a gzip (or plain) stream of .npy weight records one array at a time.

    Every record must be a weight array (floating point; uint16 is bfloat16 bits),
    and the stream must hold at least one.
    """
    try:
        opened = open_file(side, max_decompressed)
        try:
            index = 0
            while (header := read_header(opened.source)) is not None:
                if index >= model.MAX_ARRAYS:
                    raise UnreadableCheckpointError(f"holds more than {model.MAX_ARRAYS:,} arrays")
                assert header.dtype is not None
                leaf = Leaf(index, f"{side.name}[{index}]", header.shape, logical_name(header.dtype))
                require_weight_dtype(leaf.dtype, leaf.path)
                require_weight_shape(leaf.shape, leaf.path)
                if headers_only:
                    opened.source.skip(header.nbytes)
                    array: Array = np.empty(0, dtype=header.dtype)
                else:
                    buffer = opened.source.read_payload(header.nbytes)
                    assert isinstance(buffer, np.ndarray)  # side files keep payloads
                    flat = np.frombuffer(buffer, dtype=header.dtype)
                    array = native(flat.reshape(header.shape, order="F" if header.fortran else "C"))
                yield leaf, array
                index += 1
            if index == 0:
                raise UnreadableCheckpointError("holds no arrays (an empty .npy stream)")
            opened.check_end()
        finally:
            opened.close()
    except ReformerToolsError as error:
        raise with_file(error, side) from None


def first_header(side: Path, max_decompressed: int | None) -> RecordHeader:
    """The first record's header, checked as a weight: enough to refuse a stream that holds no weights at load."""
    try:
        opened = open_file(side, max_decompressed, keep_payloads=False)
        try:
            if not opened.head.startswith(NPY_MAGIC):
                raise UnreadableCheckpointError("not a .npy stream (no .npy magic at its start)")
            header = read_header(opened.source)
        finally:
            opened.close()
        if header is None:
            raise UnreadableCheckpointError("holds no arrays (an empty .npy stream)")
        assert header.dtype is not None
        require_weight_dtype(logical_name(header.dtype), f"{side.name}[0]")
        require_weight_shape(header.shape, f"{side.name}[0]")
        return header
    except ReformerToolsError as error:
        raise with_file(error, side) from None


def side_file_candidates(path: Path) -> list[Path]:
    """Where training.Loop (and Layer.save_to_file) put the weights of ``path``."""
    name = path.name
    base = name[: -len("pkl.gz")] if name.endswith("pkl.gz") else name + "."
    return [path.with_name(base + "weights.npy.gz"), path.with_name(name + ".npy")]
