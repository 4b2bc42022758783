"""Issue 11's attack inputs, built in code: small files that once hung, crashed or ate memory.

Each builder writes its files into a directory and returns the path to pass on
the command line. ``scale`` shrinks the work an attack asks for, so the default
test run can use a fast version of the same shape (``scale=1`` is the size the
issue reported; the stress tests run that, measured, in a child process).
Nothing here is ever unpickled by :mod:`pickle`.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests import hostile as h

GZIP_LEVEL = 9
#: Writes an attack's files into a directory, at a scale (1: the size issue 11 reported); returns the path to pass.
Builder = Callable[[Path, float], Path]


def long1(value: int) -> bytes:
    """LONG1: a little-endian two's complement integer of up to 255 bytes."""
    size = (value.bit_length() + 8) // 8
    return b"\x8a" + bytes([size]) + value.to_bytes(size, "little", signed=True)


def binunicode8_header(length: int) -> bytes:
    return b"\x8d" + struct.pack("<Q", length)


def compressed_run(unit: bytes, count: int) -> bytes:
    """``unit * count`` as one gzip member, built without holding it all at once."""
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    per_block = max(1, (1 << 20) // len(unit))
    block = unit * per_block
    parts = []
    left = count
    while left:
        step = min(left, per_block)
        parts.append(compressor.compress(block[: step * len(unit)]))
        left -= step
    parts.append(compressor.flush())
    return b"".join(parts)


def checkpoint(body_entries: bytes, *, weights: bytes | None = None) -> bytes:
    """A protocol 4 ``{'weights': [small array], ...entries}`` pickle."""
    weights = weights if weights is not None else h.lst(h.small_array())
    return h.proto(4) + h.EMPTY_DICT + h.sstr("weights") + weights + h.SETITEM + body_entries + h.STOP


def entry(key: str, value: bytes) -> bytes:
    return h.sstr(key) + value + h.SETITEM


def shared_tuple(leaf: bytes, levels: int, first_memo: int = 0) -> tuple[bytes, int]:
    """``levels`` tuples, each holding the one below twice: 2**levels leaves by multiplicity.

    Returns the opcodes (which leave nothing on the stack) and the memo index of the top tuple.
    """
    body = leaf + h.MEMOIZE + h.POP
    for level in range(levels):
        index = first_memo + level
        body += _get(index) + _get(index) + b"\x86" + h.MEMOIZE + h.POP  # TUPLE2
    return body, first_memo + levels


def _get(index: int) -> bytes:
    return h.get(index) if index < 256 else b"j" + struct.pack("<I", index)


def shape_dtype(shape: bytes) -> bytes:
    """A ``trax.shapes.ShapeDtype`` whose shape is ``shape``."""
    state = h.EMPTY_DICT + h.sstr("shape") + shape + h.SETITEM + h.sstr("dtype") + h.global_("numpy", "float32")
    state += h.SETITEM
    return h.global_("trax.shapes", "ShapeDtype") + h.EMPTY_TUPLE + h.NEWOBJ + state + h.BUILD


# ------------------------------------------------------------------ the attacks


@dataclass(frozen=True)
class Attack:
    """One input of issue 11: how to build it and what any command must say about it."""

    name: str
    build: Callable[[Path, float], Path]
    code: int  # the exit code every command must end with
    needle: str  # in the one line on stderr (exit 3/4), or in stdout (exit 0)
    commands: tuple[str, ...] = ("inspect", "inspect --json", "inspect --globals", "verify", "convert")


def _write(directory: Path, name: str, data: bytes, *, compress: bool = False) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(gzip.compress(data, GZIP_LEVEL) if compress else data)
    return path


def huge_flat_weights(directory: Path, scale: float = 1.0) -> Path:
    """``flat_weights`` a 512-bit integer: a shard count no file system could hold."""
    value = (1 << 500) if scale >= 1 else (1 << 40)
    data = h.proto(2) + h.dct((h.string("flat_weights"), long1(value)), (h.string("step"), h.integer(1))) + h.STOP
    return _write(directory, "model.pkl", data)


def shared_key(directory: Path, scale: float = 1.0) -> Path:
    """A dict key of 99 tuples, each holding the one below twice: 2**99 leaves by multiplicity."""
    levels = 99 if scale >= 1 else 40
    body, top = shared_tuple(h.sstr("k"), levels)
    history = body + h.EMPTY_DICT + _get(top) + h.NONE + h.SETITEM
    return _write(directory, "model.pkl", checkpoint(entry("history", history)))


def shared_shape(directory: Path, scale: float = 1.0) -> Path:
    """A ShapeDtype whose shape is a tuple shared 2**60 ways."""
    levels = 60 if scale >= 1 else 30
    body, top = shared_tuple(h.integer(1), levels)
    return _write(directory, "model.pkl", checkpoint(body + entry("input_signature", shape_dtype(_get(top)))))


def deep_shape(directory: Path, scale: float = 1.0) -> Path:
    """A ShapeDtype whose shape is a tuple nested 200,000 deep."""
    depth = int(200_000 * scale) or 2000
    shape = h.EMPTY_TUPLE + b"\x85" * depth
    return _write(directory, "model.pkl", checkpoint(entry("input_signature", shape_dtype(shape))))


def wide_deep_tree(directory: Path, scale: float = 1.0) -> Path:
    """A weights tree 999 lists deep ending in a list of 4 million entries."""
    depth, width = 999, int(4_000_000 * scale)
    tree = h.EMPTY_LIST * depth + h.EMPTY_LIST + h.MARK + h.NONE * width + h.APPENDS + h.APPEND * depth
    return _write(directory, "model.pkl.gz", checkpoint(b"", weights=tree), compress=True)


def large_tuple_keys(directory: Path, scale: float = 1.0) -> Path:
    """100 metadata keys, each a tuple of 4,000 references to one 1,000-item tuple (4 million items each)."""
    keys, refs = 100, int(4000 * scale) or 10
    inner = h.MARK + b"".join(h.integer(i) for i in range(1000)) + h.TUPLE + h.MEMOIZE + h.POP
    entries = b"".join(h.MARK + h.get(0) * refs + h.integer(k) + h.TUPLE + h.NONE + h.SETITEM for k in range(keys))
    return _write(directory, "model.pkl.gz", checkpoint(inner + entries), compress=True)


def large_string_keys(directory: Path, scale: float = 1.0) -> Path:
    """100 metadata keys of 10 MB each (1 GB of keys), about 1 MB of gzip."""
    size = int(10_000_000 * scale) or 1000
    members = [gzip.compress(checkpoint(b"")[:-1], GZIP_LEVEL)]
    for k in range(100):
        members.append(gzip.compress(binunicode8_header(size), GZIP_LEVEL))
        members.append(compressed_run(b"k", size - 3) + gzip.compress(b"%03d" % k + h.NONE + h.SETITEM))
    members.append(gzip.compress(h.STOP))
    return _write(directory, "model.pkl.gz", b"".join(members))


def huge_string(directory: Path, scale: float = 1.0, *, astral: bool = False) -> Path:
    """A 1 GiB metadata string (a 1 MB gzip file); ``astral``: one character outside the BMP first."""
    size = int((1 << 30) * scale) - 4096  # just under the default decompressed-size limit
    prefix = "\U0001f600".encode() if astral else b""
    head = checkpoint(b"")[:-1] + h.sstr("notes") + binunicode8_header(size)
    tail = h.SETITEM + h.STOP
    data = gzip.compress(head + prefix, GZIP_LEVEL) + compressed_run(b"a", size - len(prefix))
    return _write(directory, "model.pkl.gz", data + gzip.compress(tail, GZIP_LEVEL))


def tiny_config(directory: Path) -> list[tuple[int, ...]]:
    """Write a tiny model's config.json into ``directory``; return its weight shapes in Trax order."""
    import json

    from tests.trax_writer import leaf_shapes, tiny_spec

    spec = tiny_spec()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(spec.to_config_dict()))
    return leaf_shapes(spec)


def flat_checkpoint(directory: Path, code: str, *, step: bytes | None = None) -> Path:
    """A gzip {'flat_weights': [...], 'step': ...} pickle whose arrays fit ``tiny_config`` (zeros of ``code``)."""
    shapes = tiny_config(directory)
    itemsize = int(code[1:])
    arrays = [h.numpy_array(shape, code, bytes(itemsize * math.prod(shape))) for shape in shapes]
    entries = [(h.string("flat_weights"), h.lst(*arrays))]
    if step is not None:
        entries.append((h.string("step"), step))
    return _write(directory, "model.pkl.gz", h.proto(2) + h.dct(*entries) + h.STOP, compress=True)


def huge_step(directory: Path, scale: float = 1.0) -> Path:
    """A step of 2**500: it went into the safetensors header, past the space reserved for it."""
    return flat_checkpoint(directory, "f4", step=long1(1 << 500))


def opcode_run(opcode: bytes, count: int, *, tail: bytes = b"") -> Callable[[Path, float], Path]:
    def build(directory: Path, scale: float = 1.0) -> Path:
        n = int(count * scale) or 1
        members = gzip.compress(h.proto(4), GZIP_LEVEL) + compressed_run(opcode, n)
        return _write(directory, "model.pkl.gz", members + gzip.compress(tail + h.STOP, GZIP_LEVEL))

    return build


def additems(directory: Path, scale: float = 1.0) -> Path:
    """One set, four million members (the same small int), added at once."""
    n = int(4_000_000 * scale) or 1
    head = h.proto(4) + b"\x8f" + h.MARK  # EMPTY_SET, MARK
    data = gzip.compress(head, GZIP_LEVEL) + compressed_run(b"K\x01", n) + gzip.compress(b"\x90" + h.STOP)
    return _write(directory, "model.pkl.gz", data)


def bingets(directory: Path, scale: float = 1.0) -> Path:
    """Four million memo lookups: what `--globals` took 29 s over."""
    n = int(4_000_000 * scale) or 1
    head = h.proto(4) + h.NONE + h.MEMOIZE + h.MARK
    data = gzip.compress(head, GZIP_LEVEL) + compressed_run(h.get(0), n) + gzip.compress(h.TUPLE + h.STOP)
    return _write(directory, "model.pkl.gz", data)


def weights_of_dtype(directory: Path, code: str, where: str) -> Path:
    """A tiny model's weights (with its config.json) of dtype ``code`` (a numpy type code), stored ``where``.

    ``where``: 'gzip-flat' (converted while it loads), 'plain-tree', 'npy-side'
    (a training.Loop side file) or 'npy-stream' (a .npy file given directly).
    """
    if where == "gzip-flat":
        return flat_checkpoint(directory, code)
    shapes = tiny_config(directory)
    itemsize = int(code[1:])
    if where == "plain-tree":
        tree = h.tup(*(h.numpy_array(shape, code, bytes(itemsize * math.prod(shape))) for shape in shapes))
        return _write(directory, "model.pkl", h.proto(2) + h.dct((h.string("weights"), tree)) + h.STOP)
    records = b"".join(h.npy_record("<" + code, shape, bytes(itemsize * math.prod(shape))) for shape in shapes)
    if where == "npy-side":
        main = _write(directory, "model.pkl.gz", h.loop_checkpoint_pickle(1), compress=True)
        _write(directory, "model.weights.npy.gz", records, compress=True)
        return main
    return _write(directory, "weights.npy", records)


def bad_dtype_string(directory: Path, code: str, where: str) -> Path:
    """A dtype spelled ``code`` in a pickle's ``numpy.dtype`` call or in a .npy header."""
    if where == "pickle":
        array = h.numpy_array((1,), code, bytes(4))
        return _write(directory, "model.pkl", h.proto(2) + h.dct((h.string("weights"), h.lst(array))) + h.STOP)
    main = _write(directory, "model.pkl.gz", h.loop_checkpoint_pickle(1), compress=True)
    _write(directory, "model.weights.npy.gz", h.npy_record(code, (1,), bytes(8)), compress=True)
    return main


def empty_weights(directory: Path, scale: float = 1.0) -> Path:
    """``{'weights': ((), (), ())}``: a tree with no arrays in it."""
    tree = h.tup(h.EMPTY_TUPLE, h.EMPTY_TUPLE, h.EMPTY_TUPLE)
    return _write(directory, "model.pkl", h.proto(2) + h.dct((h.string("weights"), tree)) + h.STOP)


def input_ids_npy(directory: Path, scale: float = 1.0) -> Path:
    """A plain int32 .npy of token ids, passed where a checkpoint belongs."""
    return _write(directory, "input_ids.npy", h.npy_record("<i4", (2, 8), bytes(64)))


def structured_npy_descr(directory: Path, scale: float = 1.0) -> Path:
    """A side file whose record descr is the string 'i4,O': a structured dtype with an object field."""
    main = _write(directory, "model.pkl.gz", h.loop_checkpoint_pickle(1), compress=True)
    _write(directory, "model.weights.npy.gz", h.npy_record("i4,O", (1,), bytes(12)), compress=True)
    return main


def gzip_reserved_flags(directory: Path, scale: float = 1.0) -> Path:
    """A gzip checkpoint whose header sets FLG bit 5, which RFC 1952 reserves (must be zero)."""
    data = bytearray(gzip.compress(checkpoint(b"")))
    data[3] |= 0x20
    return _write(directory, "model.pkl.gz", bytes(data))


def unhashable_key_then_global(directory: Path, scale: float = 1.0) -> Path:
    """A call's result used as a dict key, then os.system: the scan stopped at the key."""
    key = h.call(h.global_("builtins", "str"))
    body = h.EMPTY_DICT + key + h.NONE + h.SETITEM + h.POP + h.call(h.global_("os", "system"), h.ustr("true"))
    return _write(directory, "model.pkl", h.proto(2) + body + h.STOP)


def second_pickle(directory: Path, scale: float = 1.0) -> Path:
    """A valid checkpoint pickle, then a second pickle calling os.system after its STOP."""
    second = h.proto(2) + h.call(h.global_("os", "system"), h.ustr("true")) + h.STOP
    return _write(directory, "model.pkl", checkpoint(b"") + second)


def text_then_pickle(directory: Path, scale: float = 1.0) -> Path:
    """A line of text, then a pickle calling os.system."""
    pickled = h.proto(2) + h.call(h.global_("os", "system"), h.ustr("true")) + h.STOP
    return _write(directory, "model.pkl", b"# notes about this checkpoint\n" + pickled)
