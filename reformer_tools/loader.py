"""Every checkpoint format Trax wrote for ReformerLM, told apart by its bytes and read into a TraxCheckpoint."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from reformer_tools import checkpoint as model
from reformer_tools import safe_pickle
from reformer_tools.allowlist import BFloat16Array, LargeText, type_name
from reformer_tools.byte_source import (
    FileDigests,
    OpenFile,
    open_file,
    with_file,
)
from reformer_tools.checkpoint import (
    MAX_SHARDS,
    CheckpointFormat,
    Leaf,
    MetadataItem,
    TraxCheckpoint,
    require_weight_shape,
)
from reformer_tools.dtypes import logical_name, native, require_weight_dtype
from reformer_tools.errors import ReformerToolsError, UnreadableCheckpointError
from reformer_tools.npy_records import NPY_MAGIC, first_header, read_records, side_file_candidates
from reformer_tools.sizes import format_size
from reformer_tools.summaries import key_label, summarize
from reformer_tools.untrusted import printable, shown

MAX_TREE_DEPTH: Final = 1000
#: Tree nodes a checkpoint's weights may visit: a list holding one list twice, 100
#: levels deep, is 2**100 nodes and would otherwise cost minutes and gigabytes of leaf
#: records. (Arrays: ``reformer_tools.checkpoint.MAX_ARRAYS``.)
MAX_TREE_NODES = 1_000_000
#: Characters of all weight paths together: a tree 999 levels deep makes each path thousands long.
MAX_PATH_CHARS: Final = 64_000_000
#: Bytes of weights beyond what the file holds (arrays repeated, or sharing one buffer): Trax writes
#: each weight once, and a small pickle referring to one array a million times would make convert
#: write terabytes.
MAX_REPEATED_BYTES = 1 << 30
#: The largest step this tool reports: it goes into safetensors metadata and JSON as a 64-bit count.
MAX_STEP: Final = (1 << 63) - 1
_MAX_VERSION: Final = 64  # characters of a version stamp ("Jun-18-2020")

Array = npt.NDArray[Any]


# ------------------------------------------------------------------ format detection


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
    on_array: Callable[[Array], Array | None] | None = None,
) -> TraxCheckpoint:
    """Load a Trax checkpoint of any era. Errors name the file and the problem.

    ``data=False`` reads shapes and dtypes only (``inspect``): gzip payloads are
    inflated and dropped instead of kept, so memory stays small; ``iter_arrays``
    is then unavailable. ``on_array`` sees every array of the main pickle that
    can be a weight (floating point; uint16 bfloat16 bits) as it is built, in file
    order, before the load finishes (weights and the rest alike); an array it returns takes that
    array's place in what is loaded (a stand-in, when the caller keeps the data elsewhere).
    Every format must hold at least one weight array, and every weight array
    must be floating point (uint16 arrays are bfloat16 bit patterns, as in Trax).
    """
    path = Path(path)
    # With data, hash the files in threads while the file loads and the caller converts: the
    # digests go into the output's metadata. Inflating a gzip file takes longer than hashing it.
    digests = FileDigests((path,), background=data)
    try:
        checkpoint = _load(path, max_decompressed, data, on_array)
        checkpoint.has_data = data
        digests.add(checkpoint.weight_files)
        checkpoint._digests = digests
        return checkpoint
    except ReformerToolsError as error:
        raise with_file(error, path) from None
    except MemoryError:
        raise UnreadableCheckpointError(f"{path}: not enough memory to load the checkpoint") from None


def _load(
    path: Path, max_decompressed: int | None, data: bool, on_array: Callable[[Array], Array | None] | None
) -> TraxCheckpoint:
    opened = open_file(path, max_decompressed, map_payloads=True, keep_payloads=data)
    try:
        head = opened.head
        if head.startswith(NPY_MAGIC):
            opened.close()
            description = "stream of .npy arrays (a trax *.weights.npy.gz file)"
            return _side_file_checkpoint(
                path, CheckpointFormat.NPY_STREAM, path, description, [], None, None, max_decompressed
            )
        if not _is_pickle(head):
            kind = "gzip data" if opened.compressed else "the file"
            raise UnreadableCheckpointError(
                f"not a Trax checkpoint: {kind} is neither a pickle nor .npy ({_sniff(head)})"
            )
        obj = _run_pickle(opened, on_array)
    finally:
        opened.close()
    return _interpret(
        path, obj, max_decompressed, compressed=opened.compressed, data=data, file_bytes=opened.source.consumed
    )


def _run_pickle(opened: OpenFile, on_array: Callable[[Array], Array | None] | None = None) -> Any:
    obj = safe_pickle.Machine(opened.source, on_array=on_array).load()
    opened.check_end()
    return obj


# ------------------------------------------------------------------ what the pickle holds


def _interpret(
    path: Path, obj: Any, max_decompressed: int | None, *, compressed: bool, data: bool, file_bytes: int
) -> TraxCheckpoint:
    """Find the weights in an unpickled object and describe the rest (``file_bytes``: what the pickle read)."""
    if isinstance(obj, tuple) and len(obj) == 4 and isinstance(obj[0], tuple) and len(obj[0]) == 3:
        # trax <= 1.1 (2019): (opt_state=(weights, slots, opt_params), step, history, model_state)
        arrays, leaves = _flatten_weights(obj[0][0], "[0][0]", file_bytes)
        metadata = summarize({"slots": obj[0][1], "opt_params": obj[0][2], "history": obj[2], "state": obj[3]})
        step, why = _step(obj[1])
        return TraxCheckpoint(
            path,
            CheckpointFormat.PICKLE_TREE,
            "trax Trainer checkpoint, tuple layout (trax <= 1.1, 2019)",
            metadata + why,
            step=step,
            _arrays=arrays,
            _leaves=leaves,
        )
    if not isinstance(obj, dict):
        raise UnreadableCheckpointError(f"not a Trax checkpoint: the pickle holds a {type_name(obj)}, not a dict")
    step, step_why = _step(obj["step"]) if "step" in obj else (None, [])
    version, version_why = _version(obj["version_timestamp"]) if "version_timestamp" in obj else (None, [])
    rest = {k: v for k, v in obj.items() if k not in ("weights", "flat_weights", "step", "version_timestamp")}
    metadata = summarize(rest, path=path) + step_why + version_why

    if "weights" in obj:
        arrays, leaves = _flatten_weights(obj["weights"], "weights", file_bytes)
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
        keys = ", ".join(key_label(k) for k in list(obj)[:8]) or "none"
        raise UnreadableCheckpointError(f"not a Trax checkpoint: no 'weights' or 'flat_weights' entry (keys: {keys})")
    flat = obj["flat_weights"]
    if isinstance(flat, list | tuple):
        arrays, leaves = _flatten_weights(tuple(flat), "flat_weights", file_bytes)
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
        where = files[0].name if kind is CheckpointFormat.NPY_SIDE_FILE else f"{len(files)} shard files"
        description = f"trax training.Loop checkpoint, weights in {where} (version {version or 'unknown'})"
        if kind is CheckpointFormat.NPY_SIDE_FILE:
            return _side_file_checkpoint(path, kind, files[0], description, metadata, step, version, max_decompressed)
        shard_arrays, shard_leaves = _read_shards(files, max_decompressed, data)
        return TraxCheckpoint(
            path,
            kind,
            description,
            metadata,
            step=step,
            version_timestamp=version,
            weight_files=files,
            max_decompressed=max_decompressed,
            _arrays=shard_arrays,
            _leaves=shard_leaves,
        )
    raise UnreadableCheckpointError(f"'flat_weights' is a {type_name(flat)}, not a list or an int")


def _side_file_checkpoint(
    path: Path,
    kind: CheckpointFormat,
    side: Path,
    description: str,
    metadata: list[MetadataItem],
    step: int | None,
    version: str | None,
    max_decompressed: int | None,
) -> TraxCheckpoint:
    """Weights in a .npy stream, read one record at a time when asked; the first header is checked now."""
    first_header(side, max_decompressed)

    def records(headers_only: bool) -> Any:
        return read_records(side, max_decompressed, headers_only=headers_only)

    return TraxCheckpoint(
        path,
        kind,
        description,
        metadata,
        step=step,
        version_timestamp=version,
        weight_files=(side,),
        max_decompressed=max_decompressed,
        _records=records,
    )


def _step(value: Any) -> tuple[int | None, list[MetadataItem]]:
    """The training step, if it is one this tool can carry (into JSON and safetensors metadata) exactly."""
    if type(value) is int and 0 <= value <= MAX_STEP:
        return value, []
    if type(value) is int:
        why = "a negative number" if value < 0 else f"a {value.bit_length()}-bit number"
    else:
        why = f"a {type_name(value)}"
    return None, [MetadataItem("step", f"unknown: the file's step is {why}, not a whole number from 0 to 2**63 - 1")]


def _version(value: Any) -> tuple[str | None, list[MetadataItem]]:
    if isinstance(value, str) and len(value) <= _MAX_VERSION:
        return value, []
    what = f"{len(value):,} characters long" if isinstance(value, str) else f"a {type_name(value)}"
    if isinstance(value, LargeText):
        what = f"{value.chars:,} characters long"
    return None, [MetadataItem("version_timestamp", f"unknown: the file's version stamp is {what}")]


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
    first_shard = path.with_name(f"{path.name}.shard0")
    if flat > 0 and first_shard.exists():  # the int is a shard count
        if flat > MAX_SHARDS:
            raise UnreadableCheckpointError(
                f"'flat_weights' promises {shown(flat, 24)} shard files, more than the {MAX_SHARDS:,} this tool reads"
            )
        shards = tuple(path.with_name(f"{path.name}.shard{i}") for i in range(flat))
        missing = next((s.name for s in shards if not s.exists()), None)
        if missing is not None:
            raise UnreadableCheckpointError(f"'flat_weights' promises {flat} shard files; {missing} is missing")
        return CheckpointFormat.GZIP_SHARDED, shards
    looked = ", ".join(c.name for c in [*candidates, *([first_shard] if flat > 0 else [])])
    raise UnreadableCheckpointError(
        f"'flat_weights' is {shown(flat, 24)}: the weights live in a side file, but none exists ({looked})"
    )


def _read_shards(
    shards: tuple[Path, ...], max_decompressed: int | None, data: bool
) -> tuple[list[Array | None], list[Leaf]]:
    """The weights of the memory-efficient trainer: a pickled list of arrays in each shard file."""
    arrays: list[Array | None] = []
    leaves: list[Leaf] = []
    for shard in shards:
        try:
            opened = open_file(shard, max_decompressed, map_payloads=True, keep_payloads=data)
            try:
                if not _is_pickle(opened.head):
                    raise UnreadableCheckpointError(f"not a pickle ({_sniff(opened.head)})")
                obj = _run_pickle(opened)
                file_bytes = opened.source.consumed
            finally:
                opened.close()
            if not isinstance(obj, list | tuple):
                raise UnreadableCheckpointError(f"holds a {type_name(obj)}, not a list of arrays")
            limit = model.MAX_ARRAYS - len(arrays)
            shard_arrays, shard_leaves = _flatten_weights(tuple(obj), shard.name, file_bytes, limit=limit)
        except ReformerToolsError as error:
            raise with_file(error, shard) from None
        offset = len(arrays)
        arrays.extend(shard_arrays)
        leaves.extend(Leaf(offset + leaf.index, leaf.path, leaf.shape, leaf.dtype) for leaf in shard_leaves)
    return arrays, leaves


# ------------------------------------------------------------------ flattening


def _flatten_weights(
    tree: Any, root: str, file_bytes: int, *, limit: int | None = None
) -> tuple[list[Array | None], list[Leaf]]:
    """Trax's ``fastmath.tree_flatten`` with paths, iteratively and with bounds.

    A list of flat weights may hold ``(uint16 array, 'bfloat16')`` pairs, the
    way training.Loop stored bfloat16 in late 2020; plain uint16 arrays are
    bfloat16 bit patterns too ("currently all uint16 are bfloat16s"). The walk
    keeps one frame per level (never a queue of every child), and builds a path
    only for an array, once its length is known to fit the budget.
    """
    max_arrays = model.MAX_ARRAYS if limit is None else limit
    arrays: list[Array | None] = []
    leaves: list[Leaf] = []
    nodes = MAX_TREE_NODES  # a tree that shares itself exponentially stops here
    chars = MAX_PATH_CHARS
    converted: dict[int, tuple[Array, str]] = {}
    unbacked = MAX_REPEATED_BYTES + file_bytes  # weights bytes may not outgrow what was read by more
    # The containers from the root down to the current node: (its children, its path piece, path length so far).
    frames: list[tuple[Iterator[tuple[Any, Any]], str, int, bool]] = []
    node, piece, length = tree, root, len(root)
    while True:
        nodes -= 1
        if nodes < 0:
            raise UnreadableCheckpointError("the weights tree is too large or refers to itself")
        if len(frames) > MAX_TREE_DEPTH:
            raise UnreadableCheckpointError(f"the weights tree is nested deeper than {MAX_TREE_DEPTH} levels")
        if isinstance(node, list | tuple) and not _is_bfloat16_pair(node):
            frames.append((iter(enumerate(node)), piece, length, False))
        elif isinstance(node, dict):
            frames.append((iter(node.items()), piece, length, True))
        else:
            if len(arrays) >= max_arrays:
                raise UnreadableCheckpointError(f"the weights hold more than {model.MAX_ARRAYS:,} arrays")
            chars -= length
            if chars < 0:
                raise UnreadableCheckpointError("the weights tree is too large or refers to itself (its paths)")
            path = "".join(frame[1] for frame in frames) + piece
            # An array the tree refers to many times is checked and byte-swapped once, not once per
            # reference: a small file repeating one big-endian array must not cost a copy per repeat.
            # The tree keeps every node alive during the walk, so ids stay unique.
            known = converted.get(id(node))
            if known is None:
                known = converted[id(node)] = _leaf_array(node, path)
            array, dtype = known
            unbacked -= array.nbytes
            if unbacked < 0:
                raise UnreadableCheckpointError(
                    f"the weights repeat data: over {format_size(MAX_REPEATED_BYTES, binary=True)} more than"
                    " the file holds (a Trax checkpoint holds each weight once)"
                )
            leaves.append(Leaf(len(arrays), path, tuple(array.shape), dtype))
            arrays.append(array)
        # The next node: the next child of the innermost container that has one left.
        while frames:
            children, _piece, parent_length, keyed = frames[-1]
            item = next(children, None)
            if item is not None:
                key, node = item
                piece = f"[{key_label(key) if keyed else key}]"
                length = parent_length + len(piece)
                break
            frames.pop()
        else:
            break
    if not leaves:
        raise UnreadableCheckpointError(f"'{root}' holds no weight arrays")
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
    if _is_bfloat16_pair(node):
        node = BFloat16Array(node[0])
    if isinstance(node, BFloat16Array):
        require_weight_shape(node.shape, path)
        return node.bits, "bfloat16"
    if isinstance(node, np.generic):
        node = np.asarray(node)
    if not isinstance(node, np.ndarray):
        raise UnreadableCheckpointError(f"the weights hold a {type_name(node)} at {printable(path, 200)}, not an array")
    array = native(node)
    dtype = logical_name(array.dtype)
    require_weight_dtype(dtype, path)
    require_weight_shape(tuple(array.shape), path)
    return array, dtype
