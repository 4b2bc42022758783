"""What a loaded Trax checkpoint is: its format, weight leaves in Trax order, and metadata lines."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from reformer_tools.dtypes import itemsize
from reformer_tools.errors import ReformerToolsError, UnreadableCheckpointError
from reformer_tools.untrusted import printable

if TYPE_CHECKING:
    import numpy.typing as npt

    Array = npt.NDArray[Any]

#: Weight arrays one checkpoint may hold, in any format (a Trax Reformer has hundreds).
#: Read at each load (tests lower it).
MAX_ARRAYS = 100_000
#: Shard files ``flat_weights`` may promise (each holds at least one array); real ones have a few.
MAX_SHARDS: Final = 10_000


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
        return self.size * itemsize(self.dtype)


def require_weight_shape(shape: tuple[int, ...], where: str) -> None:
    """Refuse (exit 3) an array that cannot be a model weight by its shape: every weight has a dimension."""
    if not shape:
        raise UnreadableCheckpointError(
            f"{printable(where, 200)} is a scalar; weights are arrays of one or more dimensions"
        )


@dataclass(frozen=True, slots=True)
class MetadataItem:
    """A non-weight entry of the checkpoint, summarized in one line."""

    key: str
    summary: str


#: Reads a side file's records in order: (leaf, storage array); ``headers_only`` skips the data.
RecordReader = Callable[[bool], Iterator[tuple[Leaf, "Array"]]]
#: sha256 of the checkpoint's files by name, waiting for any hashing still running.
DigestSource = Callable[[], dict[str, str]]


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
    has_data: bool = True  # False: loaded for shapes only
    # In-memory formats hold arrays; side-file formats read weight_files[0] with _records.
    _arrays: list[Array | None] | None = None
    _leaves: list[Leaf] | None = None
    _records: RecordReader | None = None
    _digests: DigestSource | None = field(default=None, repr=False)

    @property
    def leaves(self) -> list[Leaf]:
        """Every weight array's path, shape and dtype (reads side files' headers)."""
        if self._leaves is None:
            for _ in self.iter_arrays(headers_only=True):
                pass
        assert self._leaves is not None
        return self._leaves

    @property
    def leaves_known(self) -> bool:
        """Whether ``leaves`` is available without reading the side file again."""
        return self._leaves is not None

    @property
    def stored_arrays(self) -> list[Array | None]:
        """The arrays held in memory, by leaf index (none for side files): a loader's caller may swap
        one for an array of the same data (mapped from a file it spilled the data to)."""
        return self._arrays if self._arrays is not None else []

    def hold(self, leaves: list[Leaf], arrays: list[Array | None]) -> None:
        """Keep these arrays (read from the side file by its caller) instead of reading the side file again."""
        self._leaves, self._arrays = leaves, arrays

    def release_all(self) -> None:
        """Drop every array held (as ``iter_arrays(release=True)`` does one by one)."""
        if self._arrays is not None:
            self._arrays[:] = [None] * len(self._arrays)

    def holds_exactly(self, arrays: list[Array]) -> bool:
        """Whether the weights are exactly these array objects, in this order."""
        return (
            self._arrays is not None
            and len(self._arrays) == len(arrays)
            and all(mine is theirs for mine, theirs in zip(self._arrays, arrays, strict=True))
        )

    def digests(self) -> dict[str, str]:
        """sha256 of the checkpoint and its weight files, hashing any not hashed while loading."""
        if self._digests is None:  # made outside load_checkpoint: hash now
            from reformer_tools.byte_source import FileDigests

            self._digests = FileDigests((self.path, *self.weight_files), background=False)
        return self._digests()

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
            assert self._records is not None
            leaves: list[Leaf] = []
            for leaf, array in self._records(headers_only):
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
