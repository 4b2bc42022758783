"""Conversion: checkpoint + config -> Hugging Face files, one tensor in memory at a time.

No model is instantiated and nothing is randomly initialised: the plan says
what every tensor is, the loader yields source arrays in order, each is
transformed once, written, and released. torch is imported only for the legacy
``.bin`` output; transformers never.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import mmap
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final

import numpy as np
import numpy.typing as npt

from reformer_tools import __version__
from reformer_tools.allowlist import PayloadReleased
from reformer_tools.byte_source import is_gzip
from reformer_tools.checkpoint import CheckpointFormat, Leaf, TraxCheckpoint
from reformer_tools.dtypes import WEIGHT_DTYPES, cast, itemsize, logical_name
from reformer_tools.errors import MappingError, OutputError, ReformerToolsError, UsageError
from reformer_tools.loader import load_checkpoint
from reformer_tools.mapper import TRANSFORMS, expected_slots, plan
from reformer_tools.npy_records import side_file_candidates
from reformer_tools.output import AtomicOutput, scratch_file
from reformer_tools.prefetch import Prefetch
from reformer_tools.resolve import ConfigSources, ResolvedConfig
from reformer_tools.safetensors_writer import (
    SafetensorsWriter,
    TensorSpec,
    index_json,
    shard_names,
    split_shards,
)
from reformer_tools.spec import ReformerSpec
from reformer_tools.write_behind import Once

if TYPE_CHECKING:
    from reformer_tools.verification import VerifyReport

Array = npt.NDArray[Any]
_PIPELINE_DEPTH: Final = 1  # tensors transformed ahead of the one being written
_DIGEST_PLACEHOLDER: Final = "0" * 64
_HASH_STEP: Final = 4 << 20


class OutputKind(str, Enum):
    DIRECTORY = "directory"
    SAFETENSORS = "safetensors"
    TORCH_BIN = "bin"


def output_kind_for(path: Path, *, legacy: bool = False) -> OutputKind:
    """``.bin`` -> torch.save; ``.safetensors`` -> one file; anything else -> a model directory.

    ``legacy``: the path came from the old script's ``--pytorch_dump_path``, which always wrote a
    ``torch.save`` file there, whatever its name.
    """
    if path.suffix == ".bin" or legacy:
        return OutputKind.TORCH_BIN
    if path.suffix == ".safetensors":
        return OutputKind.SAFETENSORS
    return OutputKind.DIRECTORY


# ------------------------------------------------------------------------ plan


@dataclass(frozen=True)
class PlannedTensor:
    """One output tensor: where it comes from, how, and what it becomes."""

    hf_key: str
    leaf_index: int
    trax_path: str | None  # None until a streamed side file is read
    source_shapes: tuple[tuple[int, ...], ...]
    transform: str
    target_shape: tuple[int, ...]
    dtype: str | None  # output dtype; None until a streamed side file is read

    @property
    def nbytes(self) -> int | None:
        return None if self.dtype is None else math.prod(self.target_shape) * itemsize(self.dtype)


@dataclass(frozen=True)
class ConversionPlan:
    kind: OutputKind
    tensors: tuple[PlannedTensor, ...]
    streaming: bool  # True: shapes are checked as the side file is read

    def by_leaf(self) -> dict[int, list[PlannedTensor]]:
        """Leaf index -> the tensors made from it (two for the output bias)."""
        groups: dict[int, list[PlannedTensor]] = {}
        for tensor in self.tensors:
            groups.setdefault(tensor.leaf_index, []).append(tensor)
        return groups

    @property
    def total_bytes(self) -> int | None:
        sizes = [t.nbytes for t in self.tensors]
        return None if any(s is None for s in sizes) else sum(s for s in sizes if s is not None)


@dataclass(frozen=True)
class DryRun:
    """What ``convert`` would write, and whether the real run would refuse the output path."""

    plan: ConversionPlan
    files: tuple[tuple[str, int | None], ...]  # (name, tensor bytes) of each weights file
    refusal: ReformerToolsError | None

    def to_json(self, checkpoint: TraxCheckpoint, resolved: ResolvedConfig, output: Path) -> dict[str, Any]:
        from reformer_tools.inspection import config_json

        return {
            "ok": self.refusal is None,
            "dry_run": True,
            "source": str(checkpoint.path),
            "format": checkpoint.format.value,
            **config_json(resolved),
            "output": str(output),
            "kind": self.plan.kind.value,
            "refusal": None if self.refusal is None else str(self.refusal),
            "files": [{"name": name, "tensor_bytes": size} for name, size in self.files],
            "tensors": [
                {
                    "hf_key": t.hf_key,
                    "trax_path": t.trax_path,
                    "transform": t.transform,
                    "source_shape": list(t.source_shapes[0]),
                    "target_shape": list(t.target_shape),
                    "dtype": t.dtype,
                    "bytes": t.nbytes,
                }
                for t in self.plan.tensors
            ],
            "total_bytes": self.plan.total_bytes,
        }


#: The leaf index of tensors no leaf feeds (Trax computes them: sin-cos positions); they come first.
COMPUTED: Final = -1


def _computed_tensors(spec: ReformerSpec, dtype: str | None) -> list[PlannedTensor]:
    return [
        PlannedTensor(
            key, COMPUTED, "(computed)", slot.source_shapes, slot.transform.name, slot.target_shape, dtype or "float32"
        )
        for slot in expected_slots(spec).computed
        for key in slot.hf_keys
    ]


def _computed_arrays(spec: ReformerSpec) -> dict[str, Array]:
    return {key: slot.computed_value(spec) for slot in expected_slots(spec).computed for key in slot.hf_keys}


def plan_from_config(spec: ReformerSpec, dtype: str | None) -> tuple[PlannedTensor, ...]:
    """The plan before any array is seen: leaf i fills slot i; shapes are checked as arrays arrive."""
    return tuple(_computed_tensors(spec, dtype)) + tuple(
        PlannedTensor(key, i, None, slot.source_shapes, slot.transform.name, slot.target_shape, dtype)
        for i, slot in enumerate(expected_slots(spec).slots)
        for key in slot.hf_keys
    )


def _out_dtype(source: str, requested: str | None) -> str:
    return requested or source


def plan_conversion(
    checkpoint: TraxCheckpoint,
    spec: ReformerSpec,
    kind: OutputKind,
    *,
    dtype: str | None = None,
    need_all_dtypes: bool = False,
) -> ConversionPlan:
    """Check the checkpoint against the config and list every output tensor.

    For side files whose headers have not been read, the plan comes from the
    config alone and each array is checked as it streams in (one pass instead of
    two), unless ``need_all_dtypes`` asks for the exact sizes up front.
    """
    streaming = not checkpoint.leaves_known and not (need_all_dtypes and dtype is None)
    if streaming:
        return ConversionPlan(kind, plan_from_config(spec, dtype), streaming=True)
    checked = plan(spec, checkpoint.leaves, source=str(checkpoint.path))
    tensors = _computed_tensors(spec, dtype) + [
        PlannedTensor(
            key,
            a.leaf.index,
            a.leaf.path,
            a.slot.source_shapes,
            a.slot.transform.name,
            a.target_shape,
            _out_dtype(a.leaf.dtype, dtype),
        )
        for a in checked.assignments
        for key in a.slot.hf_keys
    ]
    return ConversionPlan(kind, tuple(tensors), streaming=False)


# -------------------------------------------------------------------- running


@dataclass(frozen=True)
class ProgressEvent:
    key: str
    tensors_done: int
    tensors_total: int
    bytes_done: int


ProgressCallback = Callable[[ProgressEvent], None]


@dataclass(frozen=True)
class OutputFile:
    name: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class ConversionResult:
    output: Path
    kind: OutputKind
    files: tuple[OutputFile, ...]
    tensors: int
    verification: VerifyReport | None = None  # ``verify``: what was checked before the output was put in place


@dataclass(frozen=True)
class ConversionOptions:
    """How to write the output (the config comes from ``ConfigSources``)."""

    dtype: str | None = None
    max_shard_size: int | None = None
    force: bool = False
    max_decompressed: int | None = None
    legacy_bin: bool = False  # the old script's --pytorch_dump_path: a torch.save file, whatever the name
    verify: bool = False  # check the finished output (values, numerics, tokenizer) before putting it in place
    on_progress: ProgressCallback | None = None

    def kind_for(self, output: Path) -> OutputKind:
        kind = output_kind_for(output, legacy=self.legacy_bin)
        if self.max_shard_size is not None and kind is not OutputKind.DIRECTORY:
            raise UsageError("--max-shard-size needs a directory output (not .safetensors or .bin)")
        return kind


@dataclass(frozen=True)
class Conversion:
    """A finished conversion: what was read, the config it was written with, and what was written."""

    checkpoint: TraxCheckpoint
    resolved: ResolvedConfig
    result: ConversionResult
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        from reformer_tools.inspection import config_json

        result = self.result
        return {
            "ok": True,
            "source": str(self.checkpoint.path),
            "format": self.checkpoint.format.value,
            **config_json(self.resolved),
            "output": str(result.output),
            "kind": result.kind.value,
            "files": [{"name": f.name, "bytes": f.bytes, "sha256": f.sha256} for f in result.files],
            "tensors": result.tensors,
            "seconds": round(self.seconds, 3),
            "sha256": self.checkpoint.digests(),
            "verification": None if result.verification is None else result.verification.to_json(),
        }


class _Scratch:
    """A few rotating buffers for transposed tensors.

    Touching fresh memory for the first time is slow (the kernel zeroes every page); a new array
    for each transpose would do it for the whole model again. A tensor handed out is overwritten
    ``count`` tensors later, so ``count`` must exceed what the consumer holds at once.
    """

    def __init__(self, nbytes: int, count: int) -> None:
        self._buffers = [np.empty(nbytes, dtype=np.uint8) for _ in range(count)]
        self._next = 0

    def take(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> Array:
        buffer = self._buffers[self._next]
        self._next = (self._next + 1) % len(self._buffers)
        return buffer[: math.prod(shape) * dtype.itemsize].view(dtype).reshape(shape)


def _scratch_for(conversion: ConversionPlan, count: int) -> _Scratch:
    largest = max(math.prod(t.target_shape) for t in conversion.tensors)
    return _Scratch(largest * 8, count)  # 8: the widest dtype a source array may have


def _transform(planned: PlannedTensor, array: Array, scratch: _Scratch | None) -> Array:
    transform = TRANSFORMS[planned.transform]
    out = scratch.take(planned.target_shape, array.dtype) if scratch is not None else None
    return transform.apply(array, out)


def _stream_tensors(
    checkpoint: TraxCheckpoint,
    spec: ReformerSpec,
    conversion: ConversionPlan,
    dtype: str | None,
    scratch: _Scratch | None,
) -> Iterator[tuple[PlannedTensor, Array, str]]:
    """Yield (planned tensor, storage array, dtype) in plan order, one leaf at a time."""
    by_leaf = conversion.by_leaf()
    yield from _computed(spec, by_leaf.pop(COMPUTED, []), dtype)
    seen = 0
    for leaf, array in checkpoint.iter_arrays(release=True):
        seen += 1
        planned = by_leaf.get(leaf.index)
        # A streamed side file is planned from the config alone: check each shape as it arrives.
        if planned is None or (conversion.streaming and leaf.shape not in planned[0].source_shapes):
            raise _stream_mismatch(checkpoint, spec, leaf)
        transformed = _transform(planned[0], array, scratch)
        out_dtype = _out_dtype(leaf.dtype, dtype)
        transformed = cast(transformed, leaf.dtype, out_dtype)
        del array
        for tensor in planned:
            yield replace(tensor, trax_path=leaf.path, dtype=out_dtype), transformed, out_dtype
        del transformed
    if seen != len(by_leaf):
        raise _stream_mismatch(checkpoint, spec, None)


def _computed(
    spec: ReformerSpec, planned: list[PlannedTensor], dtype: str | None
) -> Iterator[tuple[PlannedTensor, Array, str]]:
    """The tensors Trax computes rather than stores, as float32 or the requested dtype."""
    arrays = _computed_arrays(spec) if planned else {}
    for tensor in planned:
        out_dtype = _out_dtype("float32", dtype)
        yield replace(tensor, dtype=out_dtype), cast(arrays[tensor.hf_key], "float32", out_dtype), out_dtype


def _stream_mismatch(checkpoint: TraxCheckpoint, spec: ReformerSpec, leaf: Leaf | None) -> Exception:
    """A streamed array did not fit the plan: diagnose with a full header scan."""
    try:
        plan(spec, checkpoint.leaves, source=str(checkpoint.path))
    except ReformerToolsError as error:  # the precise, named diagnosis
        return error
    where = f" at {leaf.path}" if leaf is not None else ""
    return MappingError(f"{checkpoint.path}: the checkpoint does not match the config{where}")


def write_conversion(
    checkpoint: TraxCheckpoint, resolved: ResolvedConfig, output: Path, options: ConversionOptions | None = None
) -> ConversionResult:
    """Convert a loaded ``checkpoint`` with its ``resolved`` config into ``output``; all or nothing."""
    options = options or ConversionOptions()
    kind = options.kind_for(output)
    spec = resolved.spec
    conversion = plan_conversion(
        checkpoint, spec, kind, dtype=options.dtype, need_all_dtypes=options.max_shard_size is not None
    )
    protected = (checkpoint.path, *checkpoint.weight_files)
    written: dict[str, _WrittenDigest] = {}
    with AtomicOutput(
        output, directory=kind is OutputKind.DIRECTORY, force=options.force, protected=protected
    ) as target:
        # Read and transform the next tensor while this one is written. torch.save keeps every
        # tensor, so the .bin output cannot reuse buffers; safetensors writes each one at once.
        scratch = None if kind is OutputKind.TORCH_BIN else _scratch_for(conversion, _PIPELINE_DEPTH + 2)
        tensors = _stream_tensors(checkpoint, spec, conversion, options.dtype, scratch)
        with closing(Prefetch(tensors, depth=_PIPELINE_DEPTH)) as stream:
            reported = _reporting(stream, conversion, options.on_progress)
            if kind is OutputKind.TORCH_BIN:
                from reformer_tools.hf import save_torch_state_dict

                save_torch_state_dict(target.open(output.name), reported)
                names = [output.name]
            else:
                names = _write_safetensors(
                    lambda: (checkpoint, resolved),
                    conversion,
                    target,
                    reported,
                    options.max_shard_size,
                    _metadata(checkpoint, resolved, final=False),
                    lambda: _metadata(checkpoint, resolved, final=True),
                    written,
                    hash_while_writing=True,
                )
        verified: list[VerifyReport] = []
        target.commit(_verifier(output, kind, lambda: (checkpoint, resolved), options, verified))
    files = _describe_files(output, kind, names, written)
    return ConversionResult(output, kind, files, len(conversion.tensors), verified[0] if verified else None)


def _verifier(
    output: Path,
    kind: OutputKind,
    sources: Callable[[], tuple[TraxCheckpoint, ResolvedConfig]],
    options: ConversionOptions,
    verified: list[VerifyReport],
) -> Callable[[Path], None] | None:
    """With ``options.verify``, the check ``AtomicOutput.commit`` runs on the finished output first."""
    if not options.verify:
        return None

    def check(staged: Path) -> None:
        from reformer_tools.verification import verify_staged_output

        checkpoint, resolved = sources()
        torch_bin = kind is OutputKind.TORCH_BIN
        report = verify_staged_output(
            staged, output, checkpoint.path, resolved, torch_bin=torch_bin, max_decompressed=options.max_decompressed
        )
        verified.append(report)

    return check


def dry_run(checkpoint: TraxCheckpoint, resolved: ResolvedConfig, output: Path, options: ConversionOptions) -> DryRun:
    """Everything ``write_conversion`` would check and write, without writing: the plan, the files, and
    the refusal the output path would meet (it exists, without --force)."""
    kind = options.kind_for(output)
    checkpoint.leaves  # noqa: B018 - read side-file headers so the plan shows every path and dtype
    conversion = plan_conversion(checkpoint, resolved.spec, kind, dtype=options.dtype, need_all_dtypes=True)
    specs = [TensorSpec(t.hf_key, t.target_shape, t.dtype) for t in conversion.tensors]
    if kind is OutputKind.DIRECTORY:
        shards = split_shards(specs, options.max_shard_size) if options.max_shard_size is not None else [specs]
        names = shard_names(len(shards)) if options.max_shard_size is not None else ["model.safetensors"]
    else:
        shards, names = [specs], [output.name]
    sizes = tuple(
        (name, sum(math.prod(t.shape) * itemsize(t.dtype or "float32") for t in shard))
        for name, shard in zip(names, shards, strict=True)
    )
    refusal: ReformerToolsError | None = None
    protected = (checkpoint.path, *checkpoint.weight_files)
    try:
        # Opening the output checks the target exactly as the real run does; nothing is created.
        with AtomicOutput(output, directory=kind is OutputKind.DIRECTORY, force=options.force, protected=protected):
            pass
    except ReformerToolsError as error:
        refusal = error
    return DryRun(conversion, sizes, refusal)


class _WrittenDigest:
    """sha256 and size of a finished weights file: hashed while it was written (``known``), or else
    read back in a thread while ``commit`` syncs it to disk.

    Verification rewrites only the model card, never a weights file, so the digest stays true.
    """

    def __init__(self, file: BinaryIO, known: tuple[int, str] | None = None) -> None:
        self._result = known
        self._thread: threading.Thread | None = None
        if known is None:
            file.flush()
            self._fd = os.dup(file.fileno())  # the output may close its own descriptor meanwhile
            self._thread = threading.Thread(target=self._run, name="sha256-out", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            digest = hashlib.sha256()
            buffer = bytearray(_HASH_STEP)
            view = memoryview(buffer)
            offset = 0
            while count := os.preadv(self._fd, [buffer], offset):
                digest.update(view[:count])
                offset += count
            self._result = (offset, digest.hexdigest())
        except OSError:
            pass  # read back from the final file instead
        finally:
            os.close(self._fd)

    def result(self) -> tuple[int, str] | None:
        if self._thread is not None:
            self._thread.join()
        return self._result


def _describe_files(
    output: Path, kind: OutputKind, names: list[str], written: dict[str, _WrittenDigest] | None = None
) -> tuple[OutputFile, ...]:
    """Size and sha256 of every written file: hashed as it was written, or read back from where it now is."""
    paths = [output / name for name in names] if kind is OutputKind.DIRECTORY else [output]
    files = []
    for name, path in zip(names, paths, strict=True):
        known = written[name].result() if written is not None and name in written else None
        if known is not None:
            files.append(OutputFile(name, *known))
            continue
        digest = hashlib.sha256()
        with open(path, "rb") as file:
            while chunk := file.read(_HASH_STEP):
                digest.update(chunk)
        files.append(OutputFile(name, path.stat().st_size, digest.hexdigest()))
    return tuple(files)


def _reporting(
    stream: Iterator[tuple[PlannedTensor, Array, str]], conversion: ConversionPlan, on_progress: ProgressCallback | None
) -> Iterator[tuple[str, Array, str]]:
    done_bytes = 0
    for count, (tensor, array, dtype) in enumerate(stream, start=1):
        yield tensor.hf_key, array, dtype
        done_bytes += array.nbytes
        if on_progress is not None:
            on_progress(ProgressEvent(tensor.hf_key, count, len(conversion.tensors), done_bytes))


#: safetensors metadata key holding where the config's values came from (JSON).
PROVENANCE_METADATA: Final = "reformer_tools_config"


def _metadata(checkpoint: TraxCheckpoint, resolved: ResolvedConfig, final: bool) -> dict[str, str]:
    digests = checkpoint.digests() if final else {}
    metadata = {
        "format": "pt",
        "converted_by": f"reformer-tools {__version__}",
        "trax_format": checkpoint.format.value,
        "source_file": checkpoint.path.name,
        "source_sha256": digests.get(checkpoint.path.name, _DIGEST_PLACEHOLDER),
        PROVENANCE_METADATA: json.dumps(resolved.provenance(), sort_keys=True),
    }
    for side in checkpoint.weight_files:
        if side != checkpoint.path:
            metadata[f"weights_sha256:{side.name}"] = digests.get(side.name, _DIGEST_PLACEHOLDER)
    if checkpoint.step is not None:
        metadata["trax_step"] = str(checkpoint.step)
    return metadata


def _write_safetensors(
    resolved: Callable[[], tuple[TraxCheckpoint, ResolvedConfig]],
    conversion: ConversionPlan,
    target: AtomicOutput,
    tensors: Iterator[tuple[str, Array, str]],
    max_shard_size: int | None,
    placeholder: dict[str, str],
    final_metadata: Callable[[], dict[str, str]],
    written: dict[str, _WrittenDigest],
    *,
    hash_while_writing: bool = False,
) -> list[str]:
    """Write the tensors as they come; the metadata (digests) is final only after the last one.

    ``written`` receives each weights file's digest: with ``hash_while_writing`` a thread hashes the
    file behind the writer (its header must then be known from the plan); otherwise, or if that
    failed, a thread reads it back once it is finished.
    """
    specs = [TensorSpec(t.hf_key, t.target_shape, t.dtype) for t in conversion.tensors]
    shards = split_shards(specs, max_shard_size) if max_shard_size is not None else [specs]
    if conversion.kind is OutputKind.SAFETENSORS:
        names = [target.target.name]
    else:
        names = shard_names(len(shards)) if max_shard_size is not None else ["model.safetensors"]
    final_metadata = Once(final_metadata)  # the hashing threads and this one see the same values
    follow = final_metadata if hash_while_writing else None
    writers = [
        SafetensorsWriter(target.open(name), shard, placeholder, final_metadata=follow)
        for name, shard in zip(names, shards, strict=True)
    ]
    shard_of = {spec.key: writers[i] for i, shard in enumerate(shards) for spec in shard}
    written_dtypes = set()
    try:
        for key, array, dtype in tensors:
            shard_of[key].write(key, array, dtype)
            written_dtypes.add(dtype)
        final = final_metadata()
        for writer in writers:
            writer.finish(final)
    except BaseException:
        for writer in writers:
            writer.abandon()
        raise
    for name, writer in zip(names, writers, strict=True):
        known = (writer.file_size, writer.sha256) if writer.sha256 is not None else None
        written[name] = _WrittenDigest(writer.file, known)
    if conversion.kind is OutputKind.DIRECTORY:
        if len(shards) > 1:
            total = sum(w.bytes_written for w in writers)
            target.open("model.safetensors.index.json").write(index_json(shards, names, total))
            names.append("model.safetensors.index.json")
        checkpoint, config = resolved()
        single = written_dtypes.pop() if len(written_dtypes) == 1 else None
        names += _write_model_files(target, checkpoint, config, single)
    return names


def _write_model_files(
    target: AtomicOutput, checkpoint: TraxCheckpoint, resolved: ResolvedConfig, dtype: str | None
) -> list[str]:
    """config.json, generation_config.json, the tokenizer and the model card beside the weights."""
    from reformer_tools import model_files

    files = {
        "config.json": model_files.config_json(resolved, dtype),
        "generation_config.json": model_files.generation_config_json(resolved),
        **model_files.tokenizer_files(resolved),
        "README.md": model_files.model_card(checkpoint, resolved, dtype=dtype),
    }
    for name, data in files.items():
        target.open(name).write(data)
    return list(files)


# ------------------------------------------------------- convert while loading


class _NotStreamable(Exception):
    """The weights did not arrive as the first arrays of the pickle, in order."""


#: Arrays the load builds ahead of the one being converted: a bound on what the two threads hold.
_HANDOVER_DEPTH: Final = 2
_POLL: Final = 0.1  # seconds between checks that the converting side still wants arrays
#: Smaller arrays stay in memory when spilling: a page-aligned map each would cost more than they hold.
_SPILL_MIN: Final = 1 << 16


def _stand_in(array: Array) -> Array:
    """An array of ``array``'s shape and dtype holding one element: what the loaded tree keeps in the
    place of an array whose data went elsewhere (converted, or spilled to a file)."""
    return np.lib.stride_tricks.as_strided(
        np.zeros(1, dtype=array.dtype), array.shape, (0,) * array.ndim, writeable=False
    )


def _can_stand_in(array: Array) -> bool:
    # A weight has a dimension; the loader converts a non-native array (a stand-in would give
    # zeros) and the writers want C order. Other arrays keep their data.
    return array.ndim > 0 and array.dtype.isnative and bool(array.flags.c_contiguous)


class _BackgroundLoad:
    """``load_checkpoint`` in a thread, handing the first ``count`` arrays over as they are built.

    The loaded tree keeps a stand-in (shape and dtype, no data) for every array handed over and
    for every later one (optimizer slots, state: only their shapes are described), so neither the
    load nor the conversion holds more than a few arrays. Whether the handed arrays were the weights
    is proved once the load ends: the weights it found must be exactly their stand-ins, in order.
    """

    def __init__(self, path: Path, max_decompressed: int | None, count: int) -> None:
        self._arrays: queue.Queue[Array | None] = queue.Queue(maxsize=_HANDOVER_DEPTH)  # None: the load ended
        self._left = count
        self._abandoned = threading.Event()
        self.stand_ins: list[Array] = []  # of the arrays handed over, in order
        self.replaced = False  # whether the loaded tree holds any stand-in
        self._checkpoint: TraxCheckpoint | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(path, max_decompressed), name="load", daemon=True)
        self._thread.start()

    def _run(self, path: Path, max_decompressed: int | None) -> None:
        try:
            self._checkpoint = load_checkpoint(path, max_decompressed=max_decompressed, on_array=self._hand_over)
        except BaseException as error:  # raised again in the caller's thread
            self._error = error
        finally:
            self._put(None)

    def _hand_over(self, array: Array) -> Array | None:
        if not _can_stand_in(array):
            return None
        stand_in = _stand_in(array)
        self.replaced = True
        if self._left > 0 and not self._abandoned.is_set():
            self._left -= 1
            self.stand_ins.append(stand_in)
            self._put(array)
        return stand_in

    def _put(self, item: Array | None) -> None:
        while not self._abandoned.is_set():
            try:
                self._arrays.put(item, timeout=_POLL)
                return
            except queue.Full:
                continue

    def take(self) -> Array | None:
        """The next array handed over; None once the load has ended."""
        return self._arrays.get()

    def abandon(self) -> None:
        """Stop handing arrays over (the load runs on, keeping stand-ins) and drop those waiting."""
        self._abandoned.set()
        while not self._arrays.empty():
            self._arrays.get_nowait()

    def result(self) -> TraxCheckpoint:
        self._thread.join()
        if isinstance(self._error, PayloadReleased):  # an array's data was needed again: read the file again
            raise _NotStreamable
        if self._error is not None:
            raise self._error
        assert self._checkpoint is not None
        return self._checkpoint


def _tensors_as_built(
    load: _BackgroundLoad, spec: ReformerSpec, conversion: ConversionPlan, dtype: str | None, scratch: _Scratch
) -> Iterator[tuple[PlannedTensor, Array, str]]:
    """Transform arrays as the pickle builds them; at the end, prove they were the weights."""
    by_leaf = conversion.by_leaf()
    yield from _computed(spec, by_leaf.pop(COMPUTED, []), dtype)
    for index in range(len(by_leaf)):
        planned = by_leaf[index]
        array = load.take()
        if array is None or array.shape not in planned[0].source_shapes:
            raise _NotStreamable
        source = logical_name(array.dtype)
        if source not in WEIGHT_DTYPES:  # the loader refuses such weights; here they were not the weights
            raise _NotStreamable
        out_dtype = _out_dtype(source, dtype)
        transformed = cast(_transform(planned[0], array, scratch), source, out_dtype)
        del array
        for tensor in planned:
            yield replace(tensor, dtype=out_dtype), transformed, out_dtype
        del transformed
    # The loaded weights are the stand-ins of the arrays written, in order: each stand-in was made
    # for one array as the pickle built it, so the tree's weights are those arrays and no others.
    checkpoint = load.result()
    if not checkpoint.holds_exactly(load.stand_ins):
        raise _NotStreamable
    checkpoint.release_all()  # the stand-ins hold no data: reading them must fail, not give zeros


class _Spill:
    """Arrays written to an unlinked file beside the output as the pickle builds them.

    Without a config, what each array becomes is known only once the load ends. Holding the arrays
    until then costs the whole checkpoint in memory; spilled, they cost page cache, and come back
    as read-only maps of the file's pages that the conversion releases one tensor at a time.
    """

    def __init__(self, output: Path) -> None:
        self._output = output
        self._fd = scratch_file(output)
        self._size = 0
        self._where: dict[int, tuple[Array, int]] = {}  # id(stand-in) -> (stand-in, offset in the file)

    def __call__(self, array: Array) -> Array | None:
        if not _can_stand_in(array) or array.nbytes < _SPILL_MIN:
            return None
        offset = self._size
        data = array.reshape(-1).view(np.uint8).data
        written = 0
        try:
            while written < len(data):
                written += os.pwrite(self._fd, data[written:], offset + written)
        except OSError as error:  # a full disk, most likely: the spill needs the weights' size beside the output
            raise OutputError(
                f"{self._output}: cannot spill the weights to a temporary file beside it ({error.strerror or error})"
            ) from None
        self._size = offset + -(-array.nbytes // mmap.ALLOCATIONGRANULARITY) * mmap.ALLOCATIONGRANULARITY
        stand_in = _stand_in(array)
        self._where[id(stand_in)] = (stand_in, offset)
        return stand_in

    def restore(self, checkpoint: TraxCheckpoint) -> None:
        """Put every spilled weight back into ``checkpoint``, mapped from the file."""
        arrays = checkpoint.stored_arrays
        for index, array in enumerate(arrays):
            entry = None if array is None else self._where.get(id(array))
            if entry is not None and entry[0] is array:
                mapped = mmap.mmap(self._fd, array.nbytes, offset=entry[1], access=mmap.ACCESS_READ)
                arrays[index] = np.frombuffer(mapped, dtype=array.dtype).reshape(array.shape)
        self._where.clear()

    def close(self) -> None:
        """Close the file; the maps handed out keep its pages until they are released."""
        self._where.clear()
        os.close(self._fd)


def _load_spilled(path: Path, output: Path, max_decompressed: int | None) -> TraxCheckpoint:
    """``load_checkpoint`` of a gzip pickle whose weights wait in a spill file, not in memory."""
    spill = _Spill(output)
    try:
        checkpoint = load_checkpoint(path, max_decompressed=max_decompressed, on_array=spill)
        spill.restore(checkpoint)
    finally:
        spill.close()
    return checkpoint


def _placeholder_metadata(path: Path, resolved: ResolvedConfig, side_files: tuple[Path, ...] = ()) -> dict[str, str]:
    """Metadata of the longest possible values, to reserve the header before the load ends.

    The config's provenance is known before the load only up to the releases the checkpoint turns
    out to come from: room is left for a longer text.
    """
    provenance = json.dumps(resolved.provenance(), sort_keys=True)
    metadata = {
        "format": "pt",
        "converted_by": f"reformer-tools {__version__}",
        "trax_format": max((f.value for f in CheckpointFormat), key=len),
        "source_file": path.name,
        "source_sha256": _DIGEST_PLACEHOLDER,
        PROVENANCE_METADATA: provenance + " " * (len(provenance) + 4096),
        "trax_step": "9" * 24,
    }
    for side in side_files:
        if side != path:
            metadata[f"weights_sha256:{side.name}"] = _DIGEST_PLACEHOLDER
    return metadata


def convert_checkpoint(
    path: Path, output: Path, sources: ConfigSources, options: ConversionOptions | None = None
) -> Conversion:
    """Load ``path``, resolve its config from ``sources`` and write ``output``; all or nothing.

    Inflating a gzip checkpoint is the floor; everything else hides behind it, holding about one tensor.
    When the config is known before the checkpoint is read (a config.json), every tensor is transformed
    and written as the pickle builds it, while the rest of the file (optimizer slots, state) is still
    being inflated: every Trax format pickles the model's weights first, in flat order. The loaded tree
    keeps stand-ins without data; once the load ends, its weights must be exactly the stand-ins of the
    arrays written, in that order, and the config resolved against the loaded checkpoint must be the one
    used; if not, that output is discarded and the file is converted the ordinary way. Weights in a side
    file are streamed from it against the config. Without a config, a gzip pickle's arrays are spilled
    to a file as they are built, and a side file's while its shapes are read, then converted from there.
    Plain pickles are memory-mapped and load at once; they, sharded and .bin outputs take the ordinary way.
    """
    options = options or ConversionOptions()
    started = time.perf_counter()
    kind = options.kind_for(output)
    gzip_file = is_gzip(path)
    streamable = (
        sources.config_path is not None
        and kind is not OutputKind.TORCH_BIN
        and options.max_shard_size is None
        and gzip_file
    )
    if not streamable:
        return _convert_loaded(path, output, sources, options, started, spill=gzip_file)
    early = sources.resolve(None)
    conversion = ConversionPlan(kind, plan_from_config(early.spec, options.dtype), streaming=True)
    load = _BackgroundLoad(path, options.max_decompressed, len(expected_slots(early.spec).slots))
    protected = (path, *side_file_candidates(path))
    final: list[ResolvedConfig] = []
    verified: list[VerifyReport] = []
    written: dict[str, _WrittenDigest] = {}

    def finish() -> ResolvedConfig:
        if not final:
            resolved = sources.resolve(load.result())
            if resolved.spec != early.spec:  # a default the checkpoint's releases settle differently
                raise _NotStreamable
            final.append(resolved)
        return final[0]

    try:
        with AtomicOutput(
            output, directory=kind is OutputKind.DIRECTORY, force=options.force, protected=protected
        ) as target:
            # Written as soon as transformed, in this thread: one scratch buffer is enough.
            tensors = _tensors_as_built(load, early.spec, conversion, options.dtype, _scratch_for(conversion, 1))
            names = _write_safetensors(
                lambda: (load.result(), finish()),
                conversion,
                target,
                _reporting(tensors, conversion, options.on_progress),
                None,
                _placeholder_metadata(path, early),
                lambda: _metadata(load.result(), finish(), final=True),
                written,
            )
            target.commit(_verifier(output, kind, lambda: (load.result(), finish()), options, verified))
    except _NotStreamable:
        load.abandon()
        loaded = None
        with contextlib.suppress(_NotStreamable):  # read again below, keeping the data
            loaded = load.result()  # the load's own error, if it failed
        # A load that kept stand-ins must be read again; one that kept everything (the weights are in
        # a side file) is converted as it is, streaming the side file against the config.
        reuse = loaded if loaded is not None and not load.replaced else None
        return _convert_loaded(path, output, sources, options, started, spill=True, loaded=reuse, early=early)
    finally:
        load.abandon()  # on any error: the load thread must not wait for a taker
    files = _describe_files(output, kind, names, written)
    result = ConversionResult(output, kind, files, len(conversion.tensors), verified[0] if verified else None)
    return Conversion(load.result(), finish(), result, time.perf_counter() - started)


def _convert_loaded(
    path: Path,
    output: Path,
    sources: ConfigSources,
    options: ConversionOptions,
    started: float,
    *,
    spill: bool,
    loaded: TraxCheckpoint | None = None,
    early: ResolvedConfig | None = None,
) -> Conversion:
    """Load (unless ``loaded``), resolve, then convert; a gzip pickle's arrays are spilled to a file while it
    loads. Side files are inflated once: streamed against ``early`` (the config.json's config) when given,
    else spilled while their shapes are read for the config."""
    checkpoint = loaded
    if checkpoint is None and spill:
        with contextlib.suppress(PayloadReleased):  # then loaded again below, keeping the data
            checkpoint = _load_spilled(path, output, options.max_decompressed)
    if checkpoint is None:
        checkpoint = load_checkpoint(path, max_decompressed=options.max_decompressed)
    side_file = not checkpoint.leaves_known
    if side_file:
        if early is not None:
            with contextlib.suppress(_NotStreamable):  # then converted again from the config it resolves to
                return _convert_side_file(checkpoint, early, sources, output, options, started)
        else:
            _spill_side_file(checkpoint, output)
    read = side_file and checkpoint.leaves_known
    resolved = _resolve_as_if_unread(sources, checkpoint) if read else sources.resolve(checkpoint)
    result = write_conversion(checkpoint, resolved, output, options)
    return Conversion(checkpoint, resolved, result, time.perf_counter() - started)


def _resolve_as_if_unread(sources: ConfigSources, checkpoint: TraxCheckpoint) -> ResolvedConfig:
    """The config of a checkpoint whose side file has been read, resolved as if it had not been.

    Resolving takes release clues from the weights' layout only when they are at hand, not worth
    inflating a side file for; ``inspect`` and ``verify`` resolve so. Reading the side file early
    (to inflate it once) must not change what the config says: its shapes are replayed when asked.
    """
    leaves = list(checkpoint.leaves)

    def replay(headers_only: bool) -> Iterator[tuple[Leaf, Array]]:
        for leaf in leaves:
            yield leaf, np.empty(0, dtype=np.uint8)

    return sources.resolve(replace(checkpoint, _leaves=None, _arrays=None, _records=replay))


def _spill_side_file(checkpoint: TraxCheckpoint, output: Path) -> None:
    """Read a side file's arrays once, into a spill file: its shapes decide the config, then the
    conversion reads the arrays from there instead of inflating the file a second time."""
    spill = _Spill(output)
    try:
        leaves: list[Leaf] = []
        arrays: list[Array | None] = []
        for leaf, array in checkpoint.iter_arrays():
            stand_in = spill(array)
            leaves.append(leaf)
            arrays.append(array if stand_in is None else stand_in)
            del array
        checkpoint.hold(leaves, arrays)
        spill.restore(checkpoint)
    finally:
        spill.close()


def _convert_side_file(
    checkpoint: TraxCheckpoint,
    early: ResolvedConfig,
    sources: ConfigSources,
    output: Path,
    options: ConversionOptions,
    started: float,
) -> Conversion:
    """Convert a side file as it is inflated, planned from the config.json alone (``early``).

    Each array's shape is checked as it arrives; once the file is read, the config is resolved against
    the checkpoint (its shapes, releases and config.gin) and must be the one used, or ``_NotStreamable``
    is raised before anything is put in place.
    """
    kind = options.kind_for(output)
    conversion = ConversionPlan(kind, plan_from_config(early.spec, options.dtype), streaming=True)
    final: list[ResolvedConfig] = []
    verified: list[VerifyReport] = []
    written: dict[str, _WrittenDigest] = {}

    def finish() -> ResolvedConfig:
        if not final:
            resolved = _resolve_as_if_unread(sources, checkpoint)  # the side file has been read
            if resolved.spec != early.spec:
                raise _NotStreamable
            final.append(resolved)
        return final[0]

    protected = (checkpoint.path, *checkpoint.weight_files)
    with AtomicOutput(
        output, directory=kind is OutputKind.DIRECTORY, force=options.force, protected=protected
    ) as target:
        scratch = _scratch_for(conversion, _PIPELINE_DEPTH + 2)
        tensors = _stream_tensors(checkpoint, early.spec, conversion, options.dtype, scratch)
        with closing(Prefetch(tensors, depth=_PIPELINE_DEPTH)) as stream:
            names = _write_safetensors(
                lambda: (checkpoint, finish()),
                conversion,
                target,
                _reporting(stream, conversion, options.on_progress),
                None,
                _placeholder_metadata(checkpoint.path, early, checkpoint.weight_files),
                lambda: _metadata(checkpoint, finish(), final=True),
                written,
            )
        target.commit(_verifier(output, kind, lambda: (checkpoint, finish()), options, verified))
    files = _describe_files(output, kind, names, written)
    result = ConversionResult(output, kind, files, len(conversion.tensors), verified[0] if verified else None)
    return Conversion(checkpoint, finish(), result, time.perf_counter() - started)
