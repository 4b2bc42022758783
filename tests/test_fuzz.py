"""Mutated real checkpoints, fuzzed .npy headers and metadata: the loader succeeds or raises a documented error.

Every Trax format among the fixtures is mutated by hypothesis: byte flips,
truncations, insertions, deletions, duplicated stretches, length fields set
to extreme values, and pickle opcodes (hostile ones included) spliced in at
opcode boundaries, in the decompressed stream or in the gzip bytes. .npy
record headers and metadata values are drawn whole. Runs are derandomized,
so CI sees the same cases every time. The default run draws a few hundred
cases of each; the ``stress`` marker (CI) runs a thousand of each.
"""

from __future__ import annotations

import ast
import contextlib
import gzip
import json
import pickle  # to write the shard fixture only: dumping plain arrays runs nothing
import pickletools
import resource
import shutil
import struct
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from reformer_tools.errors import ReformerToolsError
from reformer_tools.global_scan import scan_globals
from reformer_tools.loader import load_checkpoint
from tests import hostile as h
from tests import trax_writer as tw
from tests.conftest import TRAX_FIXTURES, invoke
from tests.test_hostile import check_line, files_under

LOCAL = TRAX_FIXTURES / "t141_local_axial"
CONFIG = LOCAL / "config.json"
# Generous: the promise is 30 s for any file under 10 MB, and the machine may be busy. Cases take milliseconds.
SECONDS_PER_CASE = 20.0
FAST = 200  # cases per fuzz test in the default run
LONG = 1000  # cases per fuzz test under the stress marker


@dataclass(frozen=True)
class Target:
    """One file of one checkpoint format: its decompressed bytes and where its opcodes start."""

    name: str
    files: dict[str, bytes]  # every file of the checkpoint, as stored
    mutate: str  # the file that gets mutated
    compressed: bool
    content: bytes  # decompressed
    boundaries: tuple[int, ...]  # opcode (or .npy record) offsets in content


def opcode_offsets(data: bytes) -> tuple[int, ...]:
    return tuple(position for _op, _arg, position in pickletools.genops(data))


def npy_offsets(data: bytes) -> tuple[int, ...]:
    offsets, at = [], 0
    while at < len(data):
        offsets.append(at)
        length = int.from_bytes(data[at + 8 : at + 10], "little")
        shape = ast.literal_eval(data[at + 10 : at + 10 + length].decode("latin-1"))["shape"]
        at += 10 + length + 4 * int(np.prod(shape))
    return tuple(offsets)


def shard_files() -> dict[str, bytes]:
    arrays = [a for _leaf, a in load_checkpoint(LOCAL / "model.pkl").iter_arrays()]
    return {
        "model.pkl.gz": gzip.compress(h.loop_checkpoint_pickle(2)),
        "model.pkl.gz.shard0": gzip.compress(pickle.dumps(arrays[:15], protocol=4)),
        "model.pkl.gz.shard1": gzip.compress(pickle.dumps(arrays[15:], protocol=4)),
    }


def targets() -> list[Target]:
    loop = {p.name: p.read_bytes() for p in (LOCAL / "loop_checkpoint").iterdir()}
    layouts = {
        "plain-tree": {"model.pkl": (LOCAL / "model.pkl").read_bytes()},
        "trainer-2020": {
            "model.pkl": (TRAX_FIXTURES / "hf2020_local_axial" / "trainer_lib" / "model.pkl").read_bytes()
        },
        "trainer-gzip": {"model.pkl.gz": (LOCAL / "trainer_lib" / "model.pkl.gz").read_bytes()},
        "save-to-file": {"model.pkl.gz": (LOCAL / "layer_save_to_file" / "model.pkl.gz").read_bytes()},
        "loop-main": loop,
        "loop-weights": loop,
        "sharded": shard_files(),
    }
    mutated = {"loop-weights": "model.weights.npy.gz", "sharded": "model.pkl.gz.shard1"}
    result = []
    for name, files in layouts.items():
        which = mutated.get(name, "model.pkl.gz" if "model.pkl.gz" in files else "model.pkl")
        stored = files[which]
        compressed = stored[:2] == b"\x1f\x8b"
        content = gzip.decompress(stored) if compressed else stored
        boundaries = npy_offsets(content) if which.endswith(".npy.gz") else opcode_offsets(content)
        result.append(Target(name, files, which, compressed, content, boundaries))
    return result


TARGETS = targets()

INTERESTING = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 2**31 - 1, 2**31, 2**32 - 1, 2**62, 2**63 - 1, 2**64 - 1)
# Opcodes (with arguments) to splice in at opcode boundaries: structure, memo, huge claims, hostile globals.
SPLICES = (
    h.MARK,
    h.STOP,
    h.POP,
    b"1",  # POP_MARK
    b"2",  # DUP
    h.NONE,
    h.REDUCE,
    h.BUILD,
    h.TUPLE,
    h.EMPTY_TUPLE,
    b"\x85",
    b"\x86",
    b"\x87",
    h.LIST,
    h.EMPTY_LIST,
    h.APPEND,
    h.APPENDS,
    h.DICT,
    h.EMPTY_DICT,
    h.SETITEM,
    h.SETITEMS,
    b"\x8f",  # EMPTY_SET
    b"\x90",  # ADDITEMS
    b"\x91",  # FROZENSET
    h.NEWOBJ,
    h.NEWOBJ_EX,
    h.STACK_GLOBAL,
    h.MEMOIZE,
    h.get(0),
    h.get(255),
    h.put(3),
    b"j\xff\xff\xff\xff",  # LONG_BINGET
    b"r\xff\xff\xff\xff",  # LONG_BINPUT
    b"\x80\x06",  # PROTO 6
    b"\x95" + struct.pack("<Q", 2**63),  # FRAME
    b"\x8e" + struct.pack("<Q", 2**40),  # BINBYTES8 claim
    b"\x8d" + struct.pack("<Q", 2**40),  # BINUNICODE8 claim
    b"\x96" + struct.pack("<Q", 2**20),  # BYTEARRAY8
    b"\x8b" + struct.pack("<i", 70),  # LONG4, just over the limit
    b"\x8a\x08" + bytes(8),  # LONG1
    b"G" + struct.pack(">d", float("nan")),
    b"J\xff\xff\xff\xff",  # BININT -1
    b"F1e400\n",
    b"I01\n",
    b"L" + b"9" * 200 + b"L\n",
    b"S'\\x'\n",  # a broken escape
    b"V\\u12\n",
    b"X\x02\x00\x00\x00\xed\xb3",  # a lone surrogate
    b"g-1\n",
    b"i",  # INST without a line
    b"o",
    b"P1\n",
    b"Q",
    b"\x82\x01",
    b"\x97",
    b"\x98",
    h.global_("os", "system"),
    h.global_("numpy", "dtype"),
    h.global_("numpy.core.multiarray", "_reconstruct"),
    h.global_("collections", "OrderedDict"),
    h.global_("trax.history", "History"),
    h.stack_global("numpy", "ndarray"),
    h.call(h.global_("os", "system"), h.ustr("touch canary")),
    h.numpy_dtype("O8"),
    h.numpy_dtype("V8"),
    h.numpy_dtype("f4"),
    h.small_array(),
    h.numpy_array((0, 2**62), "f4", b""),
    h.npy_record("|O", (1,)),
    h.npy_record("<f4", (10**12,)),
    h.npy_record("<f4", (0, 10**30)),
)

position = st.tuples(st.sampled_from(["opcode", "byte"]), st.integers(0, 2**20))
mutation = st.one_of(
    st.tuples(st.just("flip"), position, st.integers(1, 255)),
    st.tuples(st.just("truncate"), position),
    st.tuples(st.just("insert"), position, st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), position, st.integers(1, 64)),
    st.tuples(st.just("splice"), position, st.sampled_from(SPLICES)),
    st.tuples(st.just("integer"), position, st.sampled_from([1, 2, 4, 8]), st.sampled_from(INTERESTING)),
    st.tuples(st.just("duplicate"), position, st.integers(1, 512), position),
)


def locate(target: Target, where: tuple[str, int], data: bytes) -> int:
    kind, value = where
    if kind == "opcode" and target.boundaries:
        return min(target.boundaries[value % len(target.boundaries)], len(data))
    return value % (len(data) + 1)


def apply(target: Target, data: bytes, step: tuple[Any, ...]) -> bytes:
    kind, where, *args = step
    at = locate(target, where, data)
    if kind == "flip":
        return data[:at] + bytes([data[at] ^ args[0]]) + data[at + 1 :] if at < len(data) else data
    if kind == "truncate":
        return data[:at]
    if kind == "insert":
        return data[:at] + args[0] + data[at:]
    if kind == "delete":
        return data[:at] + data[at + args[0] :]
    if kind == "splice":
        return data[:at] + args[0] + data[at:]
    if kind == "integer":
        width, value = args
        return data[:at] + (value % (1 << (8 * width))).to_bytes(width, "little") + data[at + width :]
    length, source = args
    start = locate(target, source, data)
    return data[:at] + data[start : start + length] + data[at:]


def exercise(path: Path) -> bool:
    """Everything the commands do with a checkpoint: load, shapes, arrays, digests, globals.

    True if it loaded, with its arrays.
    """
    loaded = False
    for data in (True, False):
        message = ""
        try:
            checkpoint = load_checkpoint(path, data=data)
            assert all(leaf.nbytes >= 0 for leaf in checkpoint.leaves)
            if data:
                for leaf, array in checkpoint.iter_arrays():
                    assert len(array.tobytes()) == leaf.nbytes
                checkpoint.digests()
                loaded = True
        except ReformerToolsError as error:  # documented; anything else fails the test
            message = str(error)
        assert "memory" not in message  # a MemoryError turned into a message is a failure here
    with contextlib.suppress(ReformerToolsError):
        scan_globals(path)
    return loaded


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="fuzz-"))
    yield directory
    shutil.rmtree(directory)


@contextlib.contextmanager
def memory_ceiling() -> Iterator[None]:
    """A case that allocates without bound fails with MemoryError instead of eating the machine.

    3 GiB of address space above what the test process already maps; the
    default decompressed-size limit (1 GiB) fits well within it.
    """
    with open("/proc/self/statm") as statm:
        mapped = int(statm.read().split()[0]) * resource.getpagesize()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (mapped + (3 << 30), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def write_case(directory: Path, target: Target, content: bytes, raw_gzip: bool) -> Path:
    for stale in directory.iterdir():
        stale.unlink()
    for name, stored in target.files.items():
        (directory / name).write_bytes(stored)
    # With raw_gzip the mutation was applied to the gzip bytes themselves.
    stored = gzip.compress(content, 6) if target.compressed and not raw_gzip else content
    (directory / target.mutate).write_bytes(stored)
    return directory / ("model.pkl.gz" if "model.pkl.gz" in target.files else "model.pkl")


BY_NAME = {target.name: target for target in TARGETS}
BF16_PAIR = h.MARK + h.numpy_array((2,), "u2", bytes(4)) + h.small_array() + h.TUPLE  # (uint16 array, not a str)
TRAILER_AT = len(BY_NAME["trainer-gzip"].files["model.pkl.gz"]) - 8  # the gzip trailer: CRC32, length

CASES = st.tuples(st.sampled_from(TARGETS), st.booleans(), st.lists(mutation, min_size=1, max_size=4))


def mutated(target: Target, raw_gzip: bool, steps: list[tuple[Any, ...]]) -> bytes:
    data = target.files[target.mutate] if (target.compressed and raw_gzip) else target.content
    for step in steps:
        data = apply(target, data, step)
    return data


FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def check_mutated(case: tuple[Target, bool, list[tuple[Any, ...]]], workdir: Path) -> None:
    target, raw_gzip, steps = case
    path = write_case(workdir, target, mutated(target, raw_gzip, steps), raw_gzip)
    started = time.monotonic()
    with memory_ceiling():
        loaded = exercise(path)
    assert time.monotonic() - started < SECONDS_PER_CASE
    if loaded and target.compressed:
        # Whatever loads must be gzip that Python's own gzip accepts, CRC and length included.
        gzip.decompress((workdir / target.mutate).read_bytes())


@settings(FUZZ, max_examples=FAST)
@given(case=CASES)
# Regressions: each of these was an internal error (or, for the CRC, a silent success) before a fix.
@example(case=(BY_NAME["trainer-gzip"], True, [("truncate", ("byte", TRAILER_AT + 4))]))
@example(case=(BY_NAME["trainer-gzip"], False, [("splice", ("opcode", 13), BF16_PAIR)]))
@example(case=(BY_NAME["plain-tree"], False, [("splice", ("opcode", 2), h.numpy_array((0, 2**62), "f4", b""))]))
@example(
    case=(
        BY_NAME["plain-tree"],
        False,
        [("splice", ("opcode", 2), h.call(h.global_("collections", "OrderedDict"), h.small_array()))],
    )
)
def test_mutated_checkpoints_load_or_fail_cleanly(
    case: tuple[Target, bool, list[tuple[Any, ...]]], workdir: Path
) -> None:
    check_mutated(case, workdir)


@pytest.mark.stress
@settings(FUZZ, max_examples=LONG)
@given(case=CASES)
def test_mutated_checkpoints_load_or_fail_cleanly_long(
    case: tuple[Target, bool, list[tuple[Any, ...]]], workdir: Path
) -> None:
    check_mutated(case, workdir)


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(case=CASES)
def test_mutated_checkpoints_through_the_cli(case: tuple[Target, bool, list[tuple[Any, ...]]], workdir: Path) -> None:
    target, raw_gzip, steps = case
    path = write_case(workdir, target, mutated(target, raw_gzip, steps), raw_gzip)
    out = workdir.parent / f"{workdir.name}-out"
    shutil.rmtree(out, ignore_errors=True)
    for args in (
        ["inspect", path],
        ["verify", path, "--config", CONFIG],
        ["convert", path, "--config", CONFIG, "-o", out],
    ):
        before = files_under(workdir)
        result = invoke(args)
        assert result.exit_code in (0, 1, 3, 4), (args, result.exit_code, result.stderr)
        if result.exit_code in (3, 4) or (result.exit_code == 1 and args[0] == "convert"):
            assert result.stdout == ""
            check_line(result.stderr, str(workdir))
            assert not out.exists()
        assert files_under(workdir) == before
    shutil.rmtree(out, ignore_errors=True)


# ------------------------------------------------------------------ .npy headers

DESCRS = (
    "<f4", ">f4", "<u2", "|u1", "<i4", "<c8", "f4,,", "i4,O", "M8[us/0]", "M8[xx]", "|O", "O", "|V8", "<U4",
    "(2,)f4", "2f4", "f16", "g", "T", "", "f4 ", "float32", "bool_", "<" * 20,
)  # fmt: skip
header_value = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.sampled_from(DESCRS),
        st.text(max_size=12),
        st.floats(allow_nan=False),
    ),
    lambda children: st.one_of(st.lists(children, max_size=4), st.lists(children, max_size=4).map(tuple)),
    max_leaves=12,
)
shapes = st.one_of(
    st.lists(st.integers(0, 4), max_size=3).map(tuple),
    st.lists(st.sampled_from([0, 1, 2**31, 2**62, 10**30, -1]), max_size=33).map(tuple),
    header_value,
)
headers = st.one_of(
    st.fixed_dictionaries(
        {
            "descr": st.one_of(st.sampled_from(DESCRS), header_value),
            "fortran_order": st.one_of(st.booleans(), header_value),
            "shape": shapes,
        }
    ),
    st.dictionaries(st.sampled_from(["descr", "fortran_order", "shape", "extra"]), header_value, max_size=4),
    header_value,
)
header_text = st.one_of(
    headers.map(repr), st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))
)


def npy_record_of(text: str, data: bytes, version: int) -> bytes:
    raw = text.encode("latin-1", "replace")
    size = struct.pack("<H" if version == 1 else "<I", len(raw))
    return b"\x93NUMPY" + bytes([version, 0]) + size + raw + data


def check_npy_header(text: str, data: bytes, version: int, where: str, workdir: Path) -> None:
    for stale in workdir.iterdir():
        stale.unlink()
    record = npy_record_of(text, data, version)
    if where == "side":
        path = workdir / "model.pkl.gz"
        path.write_bytes(gzip.compress(h.loop_checkpoint_pickle(1)))
        (workdir / "model.weights.npy.gz").write_bytes(gzip.compress(record))
    else:
        path = workdir / "weights.npy"
        path.write_bytes(record)
    started = time.monotonic()
    with memory_ceiling():
        exercise(path)
    assert time.monotonic() - started < SECONDS_PER_CASE


NPY_CASES = st.tuples(
    header_text, st.binary(max_size=64), st.sampled_from([1, 2, 3, 9]), st.sampled_from(["side", "stream"])
)


@settings(FUZZ, max_examples=FAST)
@given(case=NPY_CASES)
@example(case=("{'descr': 'M8[us/0]', 'fortran_order': False, 'shape': (1,)}", bytes(8), 1, "side"))
@example(case=("{'descr': 'f4,,', 'fortran_order': False, 'shape': (1,)}", bytes(8), 1, "stream"))
def test_npy_headers_load_or_fail_cleanly(case: tuple[str, bytes, int, str], workdir: Path) -> None:
    check_npy_header(*case, workdir)


@pytest.mark.stress
@settings(FUZZ, max_examples=LONG)
@given(case=NPY_CASES)
def test_npy_headers_load_or_fail_cleanly_long(case: tuple[str, bytes, int, str], workdir: Path) -> None:
    check_npy_header(*case, workdir)


# ------------------------------------------------------------------ metadata


def _array(code: str) -> Any:
    return np.zeros(2, np.dtype(code))


metadata_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**511), 2**511 - 1),
    st.floats(),
    st.text(max_size=40),
    st.binary(max_size=40),
    st.sampled_from(["f4", "u2", "i4", "c8", "u8", "b1", "f2", "f8"]).map(_array),
    st.tuples(st.lists(st.integers(0, 9), max_size=4).map(tuple), st.sampled_from(["int32", "float32"])).map(
        lambda args: tw.shape_dtype(args[0], np.dtype(args[1]))
    ),
)
metadata_value = st.recursive(
    metadata_leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(
            st.one_of(st.text(max_size=8), st.integers(), st.tuples(st.integers(), st.text(max_size=3))),
            children,
            max_size=4,
        ),
        children.map(lambda x: (x, x)),  # shared: the pickler memoizes the second reference
        children.map(lambda x: tw.NewObj(tw.ref("trax.history", "History"), {"_values": {"train": {"loss": [x]}}})),
    ),
    max_leaves=30,
)
METADATA_CASES = st.tuples(
    st.dictionaries(
        st.text(max_size=10).filter(lambda k: k not in ("weights", "flat_weights")), metadata_value, max_size=6
    ),
    st.sampled_from([2, 4, 5]),
)


def check_metadata(case: tuple[dict[str, Any], int], workdir: Path) -> None:
    entries, protocol = case
    for stale in workdir.iterdir():
        stale.unlink()
    path = workdir / "model.pkl"
    path.write_bytes(tw.Encoding(protocol=protocol).dumps({"weights": [np.ones((2, 3), np.float32)], **entries}))
    started = time.monotonic()
    with memory_ceiling():
        exercise(path)
        try:
            checkpoint = load_checkpoint(path, data=False)
        except ReformerToolsError:
            return
    assert time.monotonic() - started < SECONDS_PER_CASE
    for item in checkpoint.metadata:
        assert len(item.key) < 200
        assert len(item.summary) < 1000
        assert item.summary.isprintable()


@settings(FUZZ, max_examples=FAST)
@given(case=METADATA_CASES)
def test_metadata_loads_or_fails_cleanly(case: tuple[dict[str, Any], int], workdir: Path) -> None:
    check_metadata(case, workdir)


@pytest.mark.stress
@settings(FUZZ, max_examples=LONG)
@given(case=METADATA_CASES)
def test_metadata_loads_or_fails_cleanly_long(case: tuple[dict[str, Any], int], workdir: Path) -> None:
    check_metadata(case, workdir)


# ------------------------------------------------------------------ converted models (verify's CONVERTED)

json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**64), 2**64), st.text(max_size=8), st.sampled_from(["F32", "BF16", "X"])
)
json_value = st.recursive(
    json_leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)
entry = st.fixed_dictionaries(
    {
        "dtype": st.one_of(st.sampled_from(["F32", "BF16", "F16", "I64", "BOOL", "Q"]), json_value),
        "shape": st.one_of(st.lists(st.integers(0, 4), max_size=3), json_value),
        "data_offsets": st.one_of(st.lists(st.integers(0, 64), min_size=2, max_size=2), json_value),
    }
)
safetensors_header = st.one_of(
    st.dictionaries(st.text(max_size=8), st.one_of(entry, json_value), max_size=4), json_value
)


@settings(FUZZ, max_examples=FAST)
@given(header=safetensors_header, data=st.binary(max_size=64), length_delta=st.sampled_from([0, 0, 0, -1, 1, 2**40]))
def test_converted_models_read_or_fail_cleanly(header: Any, data: bytes, length_delta: int, workdir: Path) -> None:
    from reformer_tools.converted import open_converted

    raw = json.dumps(header).encode()
    path = workdir / "model.safetensors"
    for stale in workdir.iterdir():
        stale.unlink()
    path.write_bytes(struct.pack("<Q", max(0, len(raw) + length_delta)) + raw + data)
    try:
        model = open_converted(path)
    except ReformerToolsError as error:
        failure: ReformerToolsError | None = error
    else:
        failure = None
        for key in model.tensors:
            assert model.load(key).nbytes >= 0
    assert failure is None or failure.exit_code == 3
