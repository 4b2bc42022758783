"""A streaming safetensors writer: one tensor in memory at a time, the header reserved up front."""

from __future__ import annotations

import io
import json
import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, Final

import numpy as np
import numpy.typing as npt

from reformer_tools.dtypes import DTYPES, itemsize
from reformer_tools.output import start_writeback
from reformer_tools.write_behind import FollowingDigest

#: Logical dtype -> safetensors dtype name.
SAFETENSORS_DTYPES: Final = {name: info.safetensors for name, info in DTYPES.items() if info.safetensors is not None}
_WIDEST_NAME: Final = max(SAFETENSORS_DTYPES.values(), key=len)
_WIDEST_ITEMSIZE: Final = 8
_ALIGNMENT: Final = 8
_WRITEBACK_STEP: Final = 32 << 20  # bytes written between starts of their writeback to disk


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A tensor the file will hold; ``dtype`` None means "known when written"."""

    key: str
    shape: tuple[int, ...]
    dtype: str | None


def _header(entries: Sequence[tuple[str, str, tuple[int, ...], int, int]], metadata: Mapping[str, str]) -> bytes:
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    for key, dtype, shape, start, end in entries:
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [start, end]}
    return json.dumps(header, separators=(",", ":")).encode("utf-8")


def reserved_header_size(specs: Sequence[TensorSpec], metadata: Mapping[str, str]) -> int:
    """Bytes to reserve for the header: exact when every dtype is known, else a bound."""
    offsets: list[tuple[str, str, tuple[int, ...], int, int]] = []
    if all(spec.dtype is not None for spec in specs):
        offsets = _planned_entries(specs)
    else:
        bound = sum(math.prod(spec.shape) for spec in specs) * _WIDEST_ITEMSIZE
        offsets = [(spec.key, _WIDEST_NAME, spec.shape, bound, bound) for spec in specs]
    size = len(_header(offsets, metadata))
    return size + (-(size + 8) % _ALIGNMENT)


class SafetensorsWriter:
    """Write ``specs`` in order to ``file``; call ``finish`` with the final metadata.

    The file is ``[u64 header length][JSON header][tensor bytes]``. The header is
    reserved up front (its worst-case size is computable from the plan even when a
    dtype is only known once its data arrives), tensors are written in order, and
    the real header, padded with spaces as the format allows, is written last.
    """

    def __init__(
        self,
        file: BinaryIO,
        specs: Sequence[TensorSpec],
        metadata: Mapping[str, str],
        *,
        final_metadata: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        self._file = file
        self._specs = list(specs)
        # Metadata values not known yet (digests) get their final length reserved.
        self._reserved = reserved_header_size(self._specs, metadata)
        self._entries: list[tuple[str, str, tuple[int, ...], int, int]] = []
        self._position = 0
        self._data_start = 8 + self._reserved
        self._synced = 0  # tensor bytes whose writeback has been started
        file.write(b"\0" * self._data_start)
        self.sha256: str | None = None  # the file's digest, when it could be computed while writing
        self._fd = _fileno(file)
        self._follower: FollowingDigest | None = None
        if final_metadata is not None and self._fd is not None and all(s.dtype is not None for s in self._specs):
            # Every offset is known from the plan: the header is final as soon as the metadata is,
            # so a thread can hash the file while it is written (final_metadata may block until then).
            planned = _planned_entries(self._specs)
            self._follower = FollowingDigest(
                self._fd, self._data_start, lambda: self._header_bytes(planned, final_metadata())
            )

    @property
    def file(self) -> BinaryIO:
        return self._file

    @property
    def file_size(self) -> int:
        """Bytes in the file so far: header space and tensors."""
        return self._data_start + self._position

    @property
    def bytes_written(self) -> int:
        return self._position

    def write(self, key: str, array: npt.NDArray[Any], dtype: str) -> None:
        """Append the next tensor. ``array`` is storage (bfloat16 as uint16)."""
        index = len(self._entries)
        if index >= len(self._specs) or self._specs[index].key != key:
            raise ValueError(f"tensor {key!r} written out of order")
        spec = self._specs[index]
        if tuple(array.shape) != spec.shape or (spec.dtype is not None and spec.dtype != dtype):
            raise ValueError(f"tensor {key!r}: got {dtype} {array.shape}, planned {spec.dtype} {spec.shape}")
        data = np.ascontiguousarray(array)
        if data.dtype.byteorder == ">":
            data = data.astype(data.dtype.newbyteorder("<"))
        nbytes = data.nbytes
        if nbytes:
            self._file.write(data.reshape(-1).view(np.uint8).data)
        self._entries.append((key, SAFETENSORS_DTYPES[dtype], spec.shape, self._position, self._position + nbytes))
        self._position += nbytes
        if self._fd is None:
            return
        writeback_due = self._position - self._synced >= _WRITEBACK_STEP
        if self._follower is not None or writeback_due:
            self._file.flush()  # the hashing thread and the writeback see the file's descriptor
        if self._follower is not None:
            self._follower.advance(self._data_start + self._position)
        if writeback_due:
            # Written to disk while the rest is converted, the output's fsync finds little left.
            start_writeback(self._fd, self._data_start + self._synced, self._data_start + self._position)
            self._synced = self._position

    def _header_bytes(
        self, entries: Sequence[tuple[str, str, tuple[int, ...], int, int]], metadata: Mapping[str, str]
    ) -> bytes:
        """The first ``8 + reserved`` bytes of the file: length, JSON header, space padding."""
        header = _header(entries, metadata)
        if len(header) > self._reserved:
            raise ValueError("safetensors header outgrew its reservation")
        header += b" " * (self._reserved - len(header))
        return struct.pack("<Q", len(header)) + header

    def finish(self, metadata: Mapping[str, str]) -> None:
        """Write the real header into the reserved space."""
        if len(self._entries) != len(self._specs):
            raise ValueError(f"{len(self._specs) - len(self._entries)} planned tensors were never written")
        prefix = self._header_bytes(self._entries, metadata)
        self._file.flush()
        self._file.seek(0)
        self._file.write(prefix)
        self._file.flush()
        if self._follower is not None:
            # The thread hashed its own copy of the header: the digest holds only if it is this one.
            self.sha256 = self._follower.result(prefix, self._data_start + self._position)

    def abandon(self) -> None:
        """The file is being discarded: stop hashing it."""
        if self._follower is not None:
            self._follower.abandon()


def _planned_entries(specs: Sequence[TensorSpec]) -> list[tuple[str, str, tuple[int, ...], int, int]]:
    """The header entries of ``specs`` written in order (every dtype known)."""
    entries = []
    position = 0
    for spec in specs:
        assert spec.dtype is not None
        end = position + math.prod(spec.shape) * itemsize(spec.dtype)
        entries.append((spec.key, SAFETENSORS_DTYPES[spec.dtype], spec.shape, position, end))
        position = end
    return entries


def _fileno(file: BinaryIO) -> int | None:
    try:
        return file.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None


def split_shards(specs: Sequence[TensorSpec], max_bytes: int) -> list[list[TensorSpec]]:
    """Greedy split in order; a tensor larger than the limit gets a shard of its own."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        assert spec.dtype is not None, "sharding needs every dtype"
        nbytes = math.prod(spec.shape) * itemsize(spec.dtype)
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += nbytes
    return shards


def shard_names(count: int) -> list[str]:
    """Hugging Face's shard file names."""
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def index_json(shards: Sequence[Sequence[TensorSpec]], names: Sequence[str], total_size: int) -> bytes:
    """``model.safetensors.index.json`` for a sharded checkpoint."""
    weight_map = {spec.key: name for shard, name in zip(shards, names, strict=True) for spec in shard}
    document = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
    return (json.dumps(document, indent=2) + "\n").encode("utf-8")


def read_header(file: BinaryIO) -> tuple[int, dict[str, Any]]:
    """Read a safetensors header: (data start offset, parsed JSON)."""
    prefix = file.read(8)
    if len(prefix) != 8:
        raise ValueError("file too short for a safetensors header")
    (length,) = struct.unpack("<Q", prefix)
    if length > 100_000_000:
        raise ValueError("safetensors header is implausibly large")
    raw = file.read(length)
    if len(raw) != length:
        raise ValueError("truncated safetensors header")
    header = json.loads(raw)
    if not isinstance(header, dict):
        raise ValueError("safetensors header is not a JSON object")
    return 8 + length, header
