"""Read every checkpoint format Trax wrote for ReformerLM, with numpy alone.

``load_checkpoint`` returns a :class:`TraxCheckpoint`: the detected format, the
metadata, and the model's weight arrays in Trax's own flat leaf order (depth
first, left to right through tuples and lists, dict values in insertion order;
empty tuples contribute nothing), each with its path in the original file.

Pickles go through :mod:`reformer_tools.safe_pickle`; ``.npy`` side files are
parsed here with ``allow_pickle`` semantics off. Nothing of trax, jax or
tensorflow is imported, and no pickle is ever handed to :mod:`pickle`.
"""

from __future__ import annotations

import ast
import hashlib
import io
import itertools
import math
import os
import re
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, BinaryIO, Final

import numpy as np
import numpy.typing as npt

from reformer_tools import safe_pickle
from reformer_tools.errors import (
    ReformerToolsError,
    UnreadableCheckpointError,
    UnsafeCheckpointError,
)
from reformer_tools.gzip_stream import GzipError, GzipReader
from reformer_tools.safe_pickle import BFloat16Array, ShapeDtype, TraxHistory
from reformer_tools.sizes import dtype_itemsize, format_size
from reformer_tools.untrusted import printable

#: Default cap on decompressed bytes: generous for real checkpoints (float
#: weights barely compress), small enough to stop a gzip bomb early.
DEFAULT_MAX_RATIO: Final = 64
DEFAULT_MIN_LIMIT: Final = 1 << 30
MAX_TREE_DEPTH: Final = 1000
#: Weight arrays one checkpoint may hold (a Trax Reformer has hundreds) and tree
#: nodes it may visit: a list holding one list twice, 100 levels deep, is 2**100
#: nodes and would otherwise cost minutes and gigabytes of leaf records.
MAX_ARRAYS = 100_000
MAX_TREE_NODES = 1_000_000
_MAX_METADATA_ITEMS: Final = 100
_HEAD: Final = 256  # bytes sniffed to tell pickle, .npy, gzip, JSON and text apart
_CHUNK: Final = 4 << 20  # reads and hashing in steps this large: fast, and little memory
_NPY_MAGIC: Final = b"\x93NUMPY"
_GZIP_MAGIC: Final = b"\x1f\x8b"
_MAX_NPY_HEADER: Final = 10_000  # numpy's own limit for untrusted headers

Array = npt.NDArray[Any]


class CheckpointFormat(str, Enum):
    """The container a checkpoint came in. Values appear in ``--json`` output."""

    PICKLE_TREE = "pickle-weights-tree"
    GZIP_FLAT = "gzip-flat-weights"
    GZIP_SHARDED = "gzip-sharded-weights"
    NPY_SIDE_FILE = "npy-side-file"
    NPY_STREAM = "npy-stream"


@dataclass(frozen=True, slots=True)
class Leaf:
    """One weight array: where it sits in the file and what it holds."""

    index: int
    path: str
    shape: tuple[int, ...]
    dtype: str  # logical dtype: "float32", "bfloat16", ...

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * dtype_itemsize(self.dtype)


@dataclass(frozen=True, slots=True)
class MetadataItem:
    """A non-weight entry of the checkpoint, summarized in one line."""

    key: str
    summary: str


@dataclass
class TraxCheckpoint:
    """A loaded checkpoint. Arrays are storage arrays (bfloat16 as uint16 bits)."""

    path: Path
    format: CheckpointFormat
    description: str
    metadata: list[MetadataItem]
    step: int | None = None
    version_timestamp: str | None = None
    weight_files: tuple[Path, ...] = ()
    max_decompressed: int | None = None
    sha256: dict[str, str] = field(default_factory=dict)
    has_data: bool = True  # False: loaded for shapes only
    _digest_jobs: dict[str, _BackgroundDigest] = field(default_factory=dict)
    # In-memory formats hold arrays; side-file formats stream weight_files[0].
    _arrays: list[Array | None] | None = None
    _leaves: list[Leaf] | None = None

    @property
    def leaves(self) -> list[Leaf]:
        """Every weight array's path, shape and dtype (reads side files' headers)."""
        if self._leaves is None:
            for _ in self.iter_arrays(headers_only=True):
                pass
        assert self._leaves is not None
        return self._leaves

    def holds_exactly(self, arrays: list[Array]) -> bool:
        """Whether the weights are exactly these array objects, in this order."""
        return (
            self._arrays is not None
            and len(self._arrays) == len(arrays)
            and all(mine is theirs for mine, theirs in zip(self._arrays, arrays, strict=True))
        )

    def digests(self) -> dict[str, str]:
        """sha256 of the checkpoint and its weight files, hashing any not hashed while loading."""
        for name, job in list(self._digest_jobs.items()):
            self.sha256[name] = job.result()
            del self._digest_jobs[name]
        for file in (self.path, *self.weight_files):
            if file.name not in self.sha256:
                self.sha256[file.name] = _hash_file(file)
        return dict(self.sha256)

    @property
    def leaves_known(self) -> bool:
        """Whether ``leaves`` is available without reading the side file again."""
        return self._leaves is not None

    def iter_arrays(self, *, release: bool = False, headers_only: bool = False) -> Iterator[tuple[Leaf, Array]]:
        """Yield (leaf, storage array) in Trax order.

        ``release`` drops the loader's reference to each array once yielded, so
        a caller that writes and forgets arrays one by one holds about one
        tensor at a time. ``headers_only`` (side files) skips array data and
        yields empty placeholders.
        """
        if not (self.has_data or headers_only):
            raise ValueError(f"{self.path} was loaded for its shapes only (data=False)")
        if self._arrays is None:
            leaves: list[Leaf] = []
            for leaf, array in _stream_npy_records(self, headers_only=headers_only):
                leaves.append(leaf)
                yield leaf, array
            self._leaves = leaves
            return
        assert self._leaves is not None
        for leaf in self._leaves:
            stored = self._arrays[leaf.index]
            if stored is None:
                raise ReformerToolsError(f"{self.path}: array {leaf.path} was already released")
            if release:
                self._arrays[leaf.index] = None
            yield leaf, stored


def as_float32(array: Array, dtype: str) -> npt.NDArray[np.float32]:
    """Decode a storage array to float32, bit-exactly for bfloat16."""
    if dtype == "bfloat16":
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array.astype(np.float32, copy=False)


# ------------------------------------------------------------------ byte sources


class _Source:
    """Bounded, exact reads from a plain or gzip stream (see safe_pickle.ByteSource)."""

    def __init__(
        self,
        stream: BinaryIO,
        *,
        name: str,
        limit: int,
        compressed: bool,
        limit_note: str,
        mapped: Path | None = None,
        keep_payloads: bool = True,
    ) -> None:
        self._stream = stream
        self._keep_payloads = keep_payloads  # False: shapes only, payload bytes are skipped
        self.name = name
        self._limit = limit
        self._compressed = compressed
        self._limit_note = limit_note
        self._mapped = mapped  # a plain file: large payloads are memory-mapped, not read
        self.consumed = 0

    def _claim(self, n: int) -> None:
        if n < 0:
            raise safe_pickle.CorruptPickle("negative length")
        if self.consumed + n > self._limit:
            if self._compressed:
                raise UnreadableCheckpointError(
                    f"decompressed data exceeds the {format_size(self._limit, binary=True)} limit ({self._limit_note})"
                )
            raise UnreadableCheckpointError(
                f"truncated or corrupt: a record claims {format_size(n, binary=True)} but only "
                f"{format_size(self._limit - self.consumed, binary=True)} remain in the file"
            )

    def read_exact(self, n: int) -> bytes:
        self._claim(n)
        with _gzip_errors():
            data: bytes = self._stream.read(n)
        if len(data) != n:
            raise UnreadableCheckpointError("truncated: the data ends in the middle of a record")
        self.consumed += n
        return data

    def read_payload(self, n: int) -> npt.NDArray[np.uint8] | safe_pickle.SkippedPayload:
        self._claim(n)
        if self._mapped is None and not self._keep_payloads:
            self.skip(n)
            return safe_pickle.SkippedPayload(n)
        if self._mapped is not None and n:
            # Pages are read only when a tensor is converted, and freed with it:
            # converting a plain pickle holds about one tensor in memory.
            mapped = np.memmap(self._mapped, dtype=np.uint8, mode="r", offset=self.consumed, shape=(n,))
            self._stream.seek(n, io.SEEK_CUR)
            self.consumed += n
            return mapped
        # np.empty does not touch its pages, so a lying length costs nothing
        # until data really arrives.
        buffer = np.empty(n, dtype=np.uint8)
        view = buffer.data
        filled = 0
        while filled < n:
            with _gzip_errors():
                got = self._stream.readinto(view[filled : min(n, filled + _CHUNK)])  # type: ignore[attr-defined]
            if not got:
                raise UnreadableCheckpointError("truncated: the data ends in the middle of an array")
            filled += got
        self.consumed += n
        return buffer

    def skip(self, n: int) -> None:
        self._claim(n)
        remaining = n
        while remaining:
            with _gzip_errors():
                got = len(self._stream.read(min(remaining, _CHUNK)))
            if not got:
                raise UnreadableCheckpointError("truncated: the data ends in the middle of an array")
            remaining -= got
        self.consumed += n

    def readline(self, limit: int) -> bytes:
        with _gzip_errors():
            line: bytes = self._stream.readline(min(limit, self._limit - self.consumed + 1))
        self._claim(len(line))
        self.consumed += len(line)
        return line

    def peek(self, n: int) -> bytes:
        with _gzip_errors():
            data: bytes = self._stream.peek(n)[:n]  # type: ignore[attr-defined]
        return data

    def at_eof(self) -> bool:
        return self.peek(1) == b""

    def stop(self) -> None:
        """Stop any read-ahead (the gzip worker) so the underlying file can be touched."""
        raw = getattr(self._stream, "raw", None)
        if isinstance(raw, GzipReader):
            raw.stop()


@contextmanager
def _gzip_errors() -> Iterator[None]:
    """Turn the gzip module's failures into one readable error."""
    try:
        yield
    except GzipError as error:
        raise UnreadableCheckpointError(str(error)) from None


class _BackgroundDigest:
    """Hash a memory-mapped file in a thread while the conversion reads its pages."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._digest: str | None = None
        self._error: ReformerToolsError | None = None
        self._thread = threading.Thread(target=self._run, name="sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._digest = _hash_file(self._path)
        except ReformerToolsError as error:
            self._error = error

    def result(self) -> str:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._digest is not None
        return self._digest


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as file:
            while chunk := file.read(_CHUNK):
                digest.update(chunk)
    except OSError as error:
        raise UnreadableCheckpointError(f"{path}: {error.strerror or error}") from None
    return digest.hexdigest()


@dataclass
class _OpenFile:
    """An open checkpoint file and what its first bytes say."""

    source: _Source
    raw: BinaryIO
    head: bytes  # first decompressed bytes, for sniffing
    compressed: bool

    def check_end(self) -> None:
        """For gzip, read to the end of the compressed data: its CRC and length are checked only
        there, after the pickle's STOP, so otherwise a truncated or corrupted file would load as if
        it were whole."""
        if self.compressed and not self.source.at_eof():
            raise UnreadableCheckpointError("unexpected data after the end of the pickle")

    def close(self) -> None:
        self.source.stop()
        self.raw.close()


def _open(
    path: Path, max_decompressed: int | None, *, map_payloads: bool = False, keep_payloads: bool = True
) -> _OpenFile:
    """Open a file for bounded reading; gzip is detected by its magic bytes.

    ``map_payloads``: in a plain (uncompressed) file, memory-map large payloads.
    ``keep_payloads`` False: skip payloads that cannot be mapped (shapes only).
    """
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait forever for a writer.
        raw = open(path, "rb", buffering=0, opener=_open_nonblocking)  # noqa: SIM115 - closed by _OpenFile.close
    except IsADirectoryError:
        raise UnreadableCheckpointError(_directory_hint(path)) from None
    except FileNotFoundError:
        raise UnreadableCheckpointError("no such file") from None
    except PermissionError:
        raise UnreadableCheckpointError("permission denied") from None
    except OSError as error:
        raise UnreadableCheckpointError(error.strerror or str(error)) from None
    try:
        status = os.fstat(raw.fileno())
        size = status.st_size
        if path.is_dir():
            raise UnreadableCheckpointError(_directory_hint(path))
        if not stat.S_ISREG(status.st_mode):
            raise UnreadableCheckpointError("not a regular file (a pipe, socket or device)")
        os.set_blocking(raw.fileno(), True)
        if size == 0:
            raise UnreadableCheckpointError("the file is empty")
        buffered = io.BufferedReader(raw, buffer_size=1 << 20)
        compressed = buffered.peek(2)[:2] == _GZIP_MAGIC
        if compressed:
            limit = (
                max_decompressed if max_decompressed is not None else max(DEFAULT_MIN_LIMIT, DEFAULT_MAX_RATIO * size)
            )
            note = (
                "set by --max-decompressed-size"
                if max_decompressed is not None
                else f"{DEFAULT_MAX_RATIO}x the file size; raise it with --max-decompressed-size for a real checkpoint"
            )
            buffered_stream = io.BufferedReader(GzipReader(buffered), buffer_size=1 << 20)
            source = _Source(
                buffered_stream,
                name=path.name,
                limit=limit,
                compressed=True,
                limit_note=note,
                keep_payloads=keep_payloads,
            )
            head = source.peek(_HEAD)
        else:
            mapped = path if map_payloads else None
            source = _Source(buffered, name=path.name, limit=size, compressed=False, limit_note="", mapped=mapped)
            head = source.peek(_HEAD)
        return _OpenFile(source, raw, head, compressed)
    except BaseException:
        raw.close()
        raise


def _open_nonblocking(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NONBLOCK)


def is_gzip(path: Path) -> bool:
    """Whether ``path`` starts like a gzip file (False for anything unreadable: loading will say why)."""
    try:
        with open(path, "rb", opener=_open_nonblocking) as file:
            return stat.S_ISREG(os.fstat(file.fileno()).st_mode) and file.read(2) == _GZIP_MAGIC
    except OSError:
        return False


def _directory_hint(path: Path) -> str:
    try:
        found = sorted(p.name for p in path.iterdir() if p.name.endswith((".pkl", ".pkl.gz")))
    except OSError:
        found = []
    hint = f"; pass the checkpoint file inside it ({', '.join(found[:3])})" if found else ""
    return f"is a directory, not a checkpoint file{hint}"


def _sniff(head: bytes) -> str:
    """Name what a file that is neither pickle nor npy looks like."""
    stripped = head.lstrip()
    if stripped[:1] in (b"{", b"["):
        return "it looks like JSON"
    if head.startswith(b"PK"):
        return "it looks like a zip archive (a PyTorch or Keras file?)"
    if head.startswith(b"\x89HDF"):
        return "it looks like an HDF5 file"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "it looks like text"
    return f"it starts with bytes {head[:4].hex(' ')}"


# A protocol 0 pickle may open with GLOBAL ("cos\nsystem\n(S'...'\ntR."): treat
# it as a pickle, so that it is refused as unsafe by name instead of called text.
_PROTOCOL0_GLOBAL: Final = re.compile(rb"c[A-Za-z_][\w.]*\n[A-Za-z_][\w.]*\n")


def _is_pickle(head: bytes) -> bool:
    if head[:1] == b"\x80":
        return len(head) > 1 and 2 <= head[1] <= 5
    return head[:1] in (b"(", b"}", b"]", b")") or _PROTOCOL0_GLOBAL.match(head) is not None  # protocol 0/1


# ------------------------------------------------------------------ public entry


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    max_decompressed: int | None = None,
    data: bool = True,
    on_array: Callable[[Array], None] | None = None,
) -> TraxCheckpoint:
    """Load a Trax checkpoint of any era. Errors name the file and the problem.

    ``data=False`` reads shapes and dtypes only (``inspect``): gzip payloads are
    inflated and dropped instead of kept, so memory stays small; ``iter_arrays``
    is then unavailable. ``on_array`` sees every array of the main pickle as it
    is built, in file order, before the load finishes (weights and the rest alike).
    """
    path = Path(path)
    try:
        checkpoint = _load(path, max_decompressed, data, on_array)
        checkpoint.has_data = data
        if data:
            # Hash the files in a thread while the caller converts: the digests go into the
            # output's metadata, and the file is in the page cache by now.
            checkpoint._digest_jobs = {p.name: _BackgroundDigest(p) for p in (path, *checkpoint.weight_files)}
        return checkpoint
    except ReformerToolsError as error:
        raise _with_file(error, path) from None
    except MemoryError:
        raise UnreadableCheckpointError(f"{path}: not enough memory to load the checkpoint") from None


def _with_file(error: ReformerToolsError, path: Path) -> ReformerToolsError:
    message = str(error)
    if message.startswith(str(path)):
        return error
    return type(error)(f"{path}: {message}")


def _load(
    path: Path, max_decompressed: int | None, data: bool, on_array: Callable[[Array], None] | None
) -> TraxCheckpoint:
    opened = _open(path, max_decompressed, map_payloads=True, keep_payloads=data)
    try:
        head = opened.head
        if head.startswith(_NPY_MAGIC):
            return _npy_stream_checkpoint(path, max_decompressed, opened)
        if not _is_pickle(head):
            kind = "gzip data" if opened.compressed else "the file"
            raise UnreadableCheckpointError(
                f"not a Trax checkpoint: {kind} is neither a pickle nor .npy ({_sniff(head)})"
            )
        obj = safe_pickle.Machine(opened.source, on_array=on_array).load()
        opened.check_end()
    finally:
        opened.close()
    return _interpret(path, obj, max_decompressed, compressed=opened.compressed, data=data)


def _interpret(path: Path, obj: Any, max_decompressed: int | None, *, compressed: bool, data: bool) -> TraxCheckpoint:
    """Find the weights in an unpickled object and describe the rest."""
    if isinstance(obj, tuple) and len(obj) == 4 and isinstance(obj[0], tuple) and len(obj[0]) == 3:
        # trax <= 1.1 (2019): (opt_state=(weights, slots, opt_params), step, history, model_state)
        arrays, leaves = _flatten_weights(obj[0][0], "[0][0]")
        metadata = _summarize({"slots": obj[0][1], "opt_params": obj[0][2], "history": obj[2], "state": obj[3]})
        step = obj[1] if type(obj[1]) is int else None
        return TraxCheckpoint(
            path,
            CheckpointFormat.PICKLE_TREE,
            "trax Trainer checkpoint, tuple layout (trax <= 1.1, 2019)",
            metadata,
            step=step,
            _arrays=arrays,
            _leaves=leaves,
        )
    if not isinstance(obj, dict):
        raise UnreadableCheckpointError(f"not a Trax checkpoint: the pickle holds a {_describe_type(obj)}, not a dict")
    step = obj.get("step") if type(obj.get("step")) is int else None
    version = obj.get("version_timestamp") if isinstance(obj.get("version_timestamp"), str) else None
    rest = {k: v for k, v in obj.items() if k not in ("weights", "flat_weights", "step", "version_timestamp")}
    metadata = _summarize(rest, path=path)

    if "weights" in obj:
        arrays, leaves = _flatten_weights(obj["weights"], "weights")
        description = _describe_tree_checkpoint(obj, version)
        return TraxCheckpoint(
            path,
            CheckpointFormat.PICKLE_TREE,
            description,
            metadata,
            step=step,
            version_timestamp=version,
            _arrays=arrays,
            _leaves=leaves,
        )
    if "flat_weights" not in obj:
        keys = ", ".join(_printable_key(k) for k in list(obj)[:8]) or "none"
        raise UnreadableCheckpointError(f"not a Trax checkpoint: no 'weights' or 'flat_weights' entry (keys: {keys})")
    flat = obj["flat_weights"]
    if isinstance(flat, list | tuple):
        arrays, leaves = _flatten_weights(tuple(flat), "flat_weights", flat=True)
        return TraxCheckpoint(
            path,
            CheckpointFormat.GZIP_FLAT,
            _describe_flat_checkpoint(obj, version, compressed),
            metadata,
            step=step,
            version_timestamp=version,
            _arrays=arrays,
            _leaves=leaves,
        )
    if type(flat) is int:
        kind, files = _weights_elsewhere(path, flat)
        shard_arrays: list[Array | None] | None = None
        shard_leaves: list[Leaf] | None = None
        if kind is CheckpointFormat.GZIP_SHARDED:
            shard_arrays, shard_leaves = _read_shards(files, max_decompressed, data)
        where = files[0].name if kind is CheckpointFormat.NPY_SIDE_FILE else f"{len(files)} shard files"
        return TraxCheckpoint(
            path,
            kind,
            f"trax training.Loop checkpoint, weights in {where} (version {version or 'unknown'})",
            metadata,
            step=step,
            version_timestamp=version,
            weight_files=files,
            max_decompressed=max_decompressed,
            _arrays=shard_arrays,
            _leaves=shard_leaves,
        )
    raise UnreadableCheckpointError(f"'flat_weights' is a {_describe_type(flat)}, not a list or an int")


def _describe_tree_checkpoint(obj: dict[Any, Any], version: str | None) -> str:
    if version:
        return f"trax Trainer checkpoint, nested weights (version {version}, trax 1.2.x)"
    if set(obj) == {"weights"}:
        return "pickled weights tree ({'weights': ...}, as Hugging Face's script reads)"
    return "trax Trainer checkpoint, nested weights (early 2020, before version stamps)"


def _describe_flat_checkpoint(obj: dict[Any, Any], version: str | None, compressed: bool) -> str:
    container = "gzip pickle" if compressed else "pickle"
    if version is None:
        return f"trax Layer.save_to_file {container}, flat weights (trax >= 1.3.8)"
    origin = "Trainer" if version == "Jun-18-2020" else "training.Loop"
    return f"trax {origin} checkpoint, {container} with flat weights (version {version})"


def _weights_elsewhere(path: Path, flat: int) -> tuple[CheckpointFormat, tuple[Path, ...]]:
    """``flat_weights`` is an int: which side file exists decides what it means."""
    candidates = side_file_candidates(path)
    for side in candidates:
        if side.exists():  # the int is a gzip compresslevel
            return CheckpointFormat.NPY_SIDE_FILE, (side,)
    shards = [path.with_name(f"{path.name}.shard{i}") for i in range(max(flat, 0))]
    if flat > 0 and shards[0].exists():  # the int is a shard count
        missing = [s.name for s in shards if not s.exists()]
        if missing:
            raise UnreadableCheckpointError(f"'flat_weights' promises {flat} shard files; {missing[0]} is missing")
        return CheckpointFormat.GZIP_SHARDED, tuple(shards)
    looked = ", ".join(c.name for c in candidates + shards[:1])
    raise UnreadableCheckpointError(
        f"'flat_weights' is {flat}: the weights live in a side file, but none exists ({looked})"
    )


def side_file_candidates(path: Path) -> list[Path]:
    """Where training.Loop (and Layer.save_to_file) put the weights of ``path``."""
    name = path.name
    base = name[: -len("pkl.gz")] if name.endswith("pkl.gz") else name + "."
    return [path.with_name(base + "weights.npy.gz"), path.with_name(name + ".npy")]


def _read_shards(
    shards: tuple[Path, ...], max_decompressed: int | None, data: bool
) -> tuple[list[Array | None], list[Leaf]]:
    """The weights of the memory-efficient trainer: a pickled list of arrays in each shard file."""
    arrays: list[Array | None] = []
    leaves: list[Leaf] = []
    for shard in shards:
        try:
            opened = _open(shard, max_decompressed, map_payloads=True, keep_payloads=data)
            try:
                if not _is_pickle(opened.head):
                    raise UnreadableCheckpointError(f"not a pickle ({_sniff(opened.head)})")
                obj = safe_pickle.Machine(opened.source).load()
                opened.check_end()
            finally:
                opened.close()
            if not isinstance(obj, list | tuple):
                raise UnreadableCheckpointError(f"holds a {_describe_type(obj)}, not a list of arrays")
            shard_arrays, shard_leaves = _flatten_weights(tuple(obj), shard.name, flat=True)
        except ReformerToolsError as error:
            raise _with_file(error, shard) from None
        offset = len(arrays)
        arrays.extend(shard_arrays)
        leaves.extend(Leaf(offset + leaf.index, leaf.path, leaf.shape, leaf.dtype) for leaf in shard_leaves)
    return arrays, leaves


def _npy_stream_checkpoint(path: Path, max_decompressed: int | None, opened: _OpenFile) -> TraxCheckpoint:
    opened.close()
    return TraxCheckpoint(
        path,
        CheckpointFormat.NPY_STREAM,
        "stream of .npy arrays (a trax *.weights.npy.gz file)",
        [],
        weight_files=(path,),
        max_decompressed=max_decompressed,
    )


# ------------------------------------------------------------------- npy streams


def _stream_npy_records(checkpoint: TraxCheckpoint, *, headers_only: bool) -> Iterator[tuple[Leaf, Array]]:
    """Read a gzip (or plain) stream of .npy records one array at a time."""
    side = checkpoint.weight_files[0]
    try:
        opened = _open(side, checkpoint.max_decompressed)
        try:
            index = 0
            while True:
                record = _read_npy_header(opened.source)
                if record is None:
                    break
                if index >= MAX_ARRAYS:
                    raise UnreadableCheckpointError(f"holds more than {MAX_ARRAYS:,} arrays")
                shape, dtype, fortran = record
                nbytes = math.prod(shape) * dtype.itemsize
                logical = "bfloat16" if dtype == np.dtype("<u2") else dtype.newbyteorder("=").name
                leaf = Leaf(index, f"{side.name}[{index}]", shape, logical)
                if headers_only:
                    opened.source.skip(nbytes)
                    array: Array = np.empty(0, dtype=dtype)
                else:
                    buffer = opened.source.read_payload(nbytes)
                    assert not isinstance(buffer, safe_pickle.SkippedPayload)  # side files keep payloads
                    array = np.frombuffer(buffer, dtype=dtype).reshape(shape, order="F" if fortran else "C")
                    array = _native(array)
                yield leaf, array
                index += 1
            opened.check_end()
        finally:
            opened.close()
    except ReformerToolsError as error:
        raise _with_file(error, side) from None


def _read_npy_header(source: _Source, *, objects: bool = False) -> tuple[tuple[int, ...], np.dtype[Any], bool] | None:
    """Parse one .npy record header; None at a clean end of stream.

    ``objects``: return object-dtype records instead of refusing them (scan mode
    reads the pickle that follows such a header, for its globals).
    """
    if source.at_eof():
        return None
    magic = source.read_exact(len(_NPY_MAGIC))
    if magic != _NPY_MAGIC:
        raise UnreadableCheckpointError(f"not a .npy record at byte {source.consumed - len(magic)} (bad magic)")
    major, _minor = source.read_exact(2)
    if major == 1:
        length = int.from_bytes(source.read_exact(2), "little")
    elif major in (2, 3):
        length = int.from_bytes(source.read_exact(4), "little")
    else:
        raise UnreadableCheckpointError(f"unsupported .npy format version {major}")
    if length > _MAX_NPY_HEADER:
        raise UnreadableCheckpointError(f".npy header of {length} bytes exceeds the {_MAX_NPY_HEADER}-byte limit")
    text = source.read_exact(length).decode("latin-1").strip()
    try:
        header = ast.literal_eval(text) if text.isprintable() else None
    except (ValueError, SyntaxError, RecursionError, MemoryError, TypeError):
        header = None
    if not (isinstance(header, dict) and set(header) == {"descr", "fortran_order", "shape"}):
        raise UnreadableCheckpointError(".npy header is malformed")
    descr, fortran, shape = header["descr"], header["fortran_order"], header["shape"]
    if not isinstance(descr, str):
        raise UnsafeCheckpointError(".npy record has a structured dtype (refused)")
    if type(fortran) is not bool or type(shape) is not tuple or not all(type(d) is int and d >= 0 for d in shape):
        raise UnreadableCheckpointError(".npy header is malformed")
    try:
        dtype = np.dtype(descr)
    except TypeError:
        raise UnreadableCheckpointError(f".npy record has an unknown dtype {descr!r}") from None
    if dtype.kind == "O":
        if objects:
            return shape, dtype, fortran
        raise UnsafeCheckpointError(".npy record holds Python objects (needs pickle; refused)")
    if dtype.kind not in "biufc":
        raise UnreadableCheckpointError(f".npy record has an unsupported dtype {descr!r}")
    # A shape numpy cannot make (an empty array 10**30 wide) would fail in reshape, untyped.
    safe_pickle.check_shape(shape, dtype.itemsize, ".npy record")
    return shape, dtype, fortran


# ----------------------------------------------------------------- flattening


def _native(array: Array) -> Array:
    return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))


def _flatten_weights(tree: Any, root: str, *, flat: bool = False) -> tuple[list[Array | None], list[Leaf]]:
    """Trax's ``fastmath.tree_flatten`` with paths, iteratively and with bounds.

    A list of flat weights may hold ``(uint16 array, 'bfloat16')`` pairs, the
    way training.Loop stored bfloat16 in late 2020; plain uint16 arrays are
    bfloat16 bit patterns too ("currently all uint16 are bfloat16s").
    """
    arrays: list[Array | None] = []
    leaves: list[Leaf] = []
    budget = MAX_TREE_NODES  # a tree that shares itself exponentially stops here
    todo: list[tuple[Any, str, int]] = [(tree, root, 0)]
    while todo:
        node, path, depth = todo.pop()
        budget -= 1
        if budget < 0:
            raise UnreadableCheckpointError("the weights tree is too large or refers to itself")
        if depth > MAX_TREE_DEPTH:
            raise UnreadableCheckpointError(f"the weights tree is nested deeper than {MAX_TREE_DEPTH} levels")
        if _is_bfloat16_pair(node):
            node = BFloat16Array(node[0])
        if isinstance(node, list | tuple):
            for i in range(len(node) - 1, -1, -1):
                todo.append((node[i], f"{path}[{i}]", depth + 1))
        elif isinstance(node, dict):
            for key in reversed(list(node)):
                todo.append((node[key], f"{path}[{_printable_key(key)}]", depth + 1))
        else:
            if len(arrays) >= MAX_ARRAYS:
                raise UnreadableCheckpointError(f"the weights hold more than {MAX_ARRAYS:,} arrays")
            array, dtype = _leaf_array(node, path)
            leaves.append(Leaf(len(arrays), path, tuple(array.shape), dtype))
            arrays.append(array)
    if flat and not leaves:
        raise UnreadableCheckpointError(f"'{root}' holds no arrays")
    return arrays, leaves


def _is_bfloat16_pair(node: Any) -> bool:
    return (
        type(node) is tuple
        and len(node) == 2
        and isinstance(node[0], np.ndarray)
        and node[0].dtype == np.uint16
        and type(node[1]) is str  # before ==: an array's == is elementwise, its truth value ambiguous
        and node[1] == "bfloat16"
    )


def _leaf_array(node: Any, path: str) -> tuple[Array, str]:
    if isinstance(node, BFloat16Array):
        return node.bits, "bfloat16"
    if isinstance(node, np.generic):
        node = np.asarray(node)
    if not isinstance(node, np.ndarray):
        raise UnreadableCheckpointError(f"the weights hold a {_describe_type(node)} at {path}, not an array")
    array = _native(node)
    if array.dtype == np.uint16:
        return array, "bfloat16"
    return array, array.dtype.name


def _printable_key(key: Any) -> str:
    text = repr(key) if isinstance(key, str) else str(key)
    return printable(text, 80)


def _describe_type(value: Any) -> str:
    if isinstance(value, safe_pickle.Global):
        return f"reference to {value}"
    return type(value).__name__


# -------------------------------------------------------------------- metadata


def _summarize(entries: dict[Any, Any], path: Path | None = None) -> list[MetadataItem]:
    """One line per non-weight entry: optimizer slots, history, state, ...

    At most ``_MAX_METADATA_ITEMS`` of them: a Trax checkpoint has about ten, and
    a million keys would otherwise keep ``inspect`` printing for minutes.
    """
    items = []
    for key, value in itertools.islice(entries.items(), _MAX_METADATA_ITEMS):
        label = _printable_key(key).strip("'")
        items.append(MetadataItem(label, _summarize_value(label, value, path)))
    if len(entries) > _MAX_METADATA_ITEMS:
        items.append(MetadataItem("...", f"{len(entries) - _MAX_METADATA_ITEMS:,} more entries, not shown"))
    return items


def _summarize_value(key: str, value: Any, path: Path | None) -> str:
    if isinstance(value, TraxHistory) or (key == "history" and isinstance(value, dict)):
        values = value.values if isinstance(value, TraxHistory) else value.get("_values", value)
        return _summarize_history(values)
    if key in ("slots", "slots_per_task") and type(value) is int and path is not None:
        found = sorted(p.name for p in path.parent.glob(path.name.removesuffix("pkl.gz") + "opt_slots*.npy.gz"))
        where = f" in {', '.join(found)}" if found else ""
        return f"optimizer slots stored in side files{where} (not read)"
    if isinstance(value, ShapeDtype) or (
        isinstance(value, tuple) and value and all(isinstance(v, ShapeDtype) for v in value)
    ):
        signature = value if isinstance(value, tuple) else (value,)
        return "input signature " + ", ".join(f"{tuple(s.shape)} {_dtype_name(s.dtype)}" for s in signature)
    if (
        isinstance(value, dict)
        and value
        and all(isinstance(v, int | float | np.generic | np.ndarray) and np.ndim(v) == 0 for v in value.values())
    ):
        return ", ".join(f"{_printable_key(k).strip(chr(39))}={_scalar(v)}" for k, v in list(value.items())[:8])
    if isinstance(value, int | float | str | bool) or value is None:
        return printable(repr(value), 120)
    count, nbytes = _count_arrays(value)
    if count:
        return f"{count} arrays, {format_size(nbytes)}"
    if isinstance(value, list | tuple | dict):
        return f"{type(value).__name__} of {len(value)} items, no arrays" if value else f"empty {type(value).__name__}"
    return _describe_type(value)


def _summarize_history(values: Any) -> str:
    if not isinstance(values, dict):
        return "training history"
    parts = []
    for mode, metrics in list(values.items())[:4]:
        if isinstance(metrics, dict):
            points = sum(len(v) for v in metrics.values() if isinstance(v, list))
            parts.append(f"{_printable_key(mode).strip(chr(39))}: {len(metrics)} metrics, {points} points")
    return "training history" + (f" ({'; '.join(parts)})" if parts else "")


def _dtype_name(dtype: Any) -> str:
    if isinstance(dtype, np.dtype):
        return dtype.name
    if isinstance(dtype, safe_pickle.Global):
        return dtype.name
    return _describe_type(dtype)


def _scalar(value: Any) -> str:
    try:
        return f"{float(value):.6g}"
    except (TypeError, ValueError):
        return _describe_type(value)


def _count_arrays(value: Any) -> tuple[int, int]:
    count = nbytes = 0
    todo = [(value, 0)]
    seen = 0
    while todo and seen < 1_000_000:
        node, depth = todo.pop()
        seen += 1
        if isinstance(node, BFloat16Array):
            count, nbytes = count + 1, nbytes + node.bits.nbytes
        elif isinstance(node, np.ndarray):
            count, nbytes = count + 1, nbytes + node.nbytes
        elif depth < MAX_TREE_DEPTH and isinstance(node, list | tuple):
            todo.extend((child, depth + 1) for child in node)
        elif depth < MAX_TREE_DEPTH and isinstance(node, dict):
            todo.extend((child, depth + 1) for child in node.values())
    return count, nbytes


# ------------------------------------------------------------------- globals


@dataclass(frozen=True, slots=True)
class FileGlobals:
    """Every global one pickle file references, found without building anything."""

    file: Path
    references: list[safe_pickle.GlobalReference]


def scan_globals(path: str | os.PathLike[str], *, max_decompressed: int | None = None) -> list[FileGlobals]:
    """List the globals of a checkpoint's pickles (the main file and any shard files).

    The pickle runs in scan mode: globals are recorded, nothing is called or
    built. ``.npy`` side files are read too: an object array in one is stored
    as a pickle, whose globals are listed like any other's.
    """
    path = Path(path)
    results = [_scan_file(path, max_decompressed)]
    name = path.name
    shard = 0
    while (candidate := path.with_name(f"{name}.shard{shard}")).exists():
        results.append(_scan_file(candidate, max_decompressed))
        shard += 1
    results.extend(_scan_file(side, max_decompressed) for side in side_file_candidates(path) if side.is_file())
    return results


def _scan_file(path: Path, max_decompressed: int | None) -> FileGlobals:
    try:
        opened = _open(path, max_decompressed, keep_payloads=False)  # payloads are not needed to scan
        try:
            if opened.head.startswith(_NPY_MAGIC):
                return FileGlobals(path, _scan_npy_records(opened.source))
            if not _is_pickle(opened.head):
                raise UnreadableCheckpointError(f"not a pickle ({_sniff(opened.head)})")
            return FileGlobals(path, safe_pickle.Machine(opened.source, scan=True).scan())
        finally:
            opened.close()
    except ReformerToolsError as error:
        raise _with_file(error, path) from None


def _scan_npy_records(source: _Source) -> list[safe_pickle.GlobalReference]:
    """The globals of a stream of .npy records: those of its object arrays' pickles."""
    references: list[safe_pickle.GlobalReference] = []
    while (record := _read_npy_header(source, objects=True)) is not None:
        shape, dtype, _fortran = record
        if dtype.kind == "O":  # numpy wrote the array with pickle; it ends at its STOP
            references.extend(safe_pickle.Machine(source, scan=True).scan())
        else:
            source.skip(math.prod(shape) * dtype.itemsize)
    return references
