"""Hostile checkpoints: nothing in a file may run code, hang, crash, or leave output behind.

Every payload in ``tests/hostile.py`` is placed five ways (the whole file, inside
gzip, as the 'history' of a valid-looking checkpoint, inside a shard file, and
as an object array in a .npy side file) and fed to every command. Each must be
refused with exit code 4 and one line on stderr naming the file and what was
refused, with no traceback, no output and no canary. The resource attacks
below must stop early with exit code 3, in bounded time and memory.
"""

from __future__ import annotations

import gc
import gzip
import json
import os
import pickletools
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import Result

from reformer_tools import byte_source, checkpoint, global_scan, loader, safe_pickle, summaries
from reformer_tools.allowlist import ALLOWED_GLOBALS
from reformer_tools.errors import UnreadableCheckpointError
from reformer_tools.global_scan import scan_globals
from reformer_tools.loader import load_checkpoint
from tests import hostile as h
from tests.conftest import TRAX_FIXTURES, invoke

CONFIG = TRAX_FIXTURES / "t141_local_axial" / "config.json"
CASES = [(p, where) for p in h.PAYLOADS for where in h.PLACEMENTS]


# Generous: the promise is that a file under 10 MB never takes longer than this, in any command, even
# on a busy machine. What a test measures is whether the bound holds, not how fast a run happens to be.
SECONDS = 30


def files_under(directory: Path) -> set[Path]:
    return set(directory.rglob("*"))


def assert_one_error_line(result: Result, code: int, *needles: str) -> str:
    """Exit code, nothing on stdout, exactly one line on stderr holding every needle; no traceback."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    check_line(result.stderr, *needles)
    return result.stderr


def check_line(stderr: str, *needles: str, prefix: str = "error: ") -> None:
    """Exactly one line, no traceback, no terminal escape, every needle in it."""
    assert stderr.startswith(prefix), stderr
    assert stderr.endswith("\n"), stderr
    assert stderr.count("\n") == 1, stderr
    assert "Traceback" not in stderr
    assert "\x1b" not in stderr
    for needle in needles:
        assert needle in stderr, (needle, stderr)


def commands(checkpoint: Path, out: Path, *, every: bool = True) -> list[list[str | Path]]:
    """The commands that read a checkpoint; ``every`` False: one of each (the default run's matrix)."""
    if not every:
        return [
            ["inspect", checkpoint],
            ["convert", checkpoint, "--config", CONFIG, "-o", out],
            ["verify", checkpoint, "--config", CONFIG],
        ]
    return [
        ["inspect", checkpoint],
        ["inspect", checkpoint, "--json"],
        ["convert", checkpoint, "--config", CONFIG, "-o", out],
        ["convert", checkpoint, "--config", CONFIG, "-o", out.with_suffix(".safetensors")],
        ["verify", checkpoint, "--config", CONFIG],
    ]


# ------------------------------------------------------------------ the corpus itself


def test_the_corpus_is_large_and_varied() -> None:
    assert len(h.PAYLOADS) >= 40
    assert len({p.name for p in h.PAYLOADS}) == len(h.PAYLOADS)
    refused = {p.refused for p in h.PAYLOADS}
    for kind in ("INST", "EXT1", "PERSID", "BINPERSID", "BUILD on", "object arrays", "structured dtypes"):
        assert any(kind in r for r in refused), kind


@pytest.mark.parametrize("payload", h.PAYLOADS, ids=lambda p: p.name)
def test_every_payload_is_a_well_formed_pickle(payload: h.Payload, tmp_path: Path) -> None:
    # The stdlib's own disassembler parses (never runs) them: each is refused for
    # what it does, not for being garbage.
    for build in (h.plain_pickle, h.checkpoint_pickle, h.shard_pickle):
        data = build(payload, tmp_path / "canary")
        with open(os.devnull, "w") as sink:
            if payload.redefines_memo:
                with pytest.raises(ValueError, match="memo key 1 already defined"):
                    pickletools.dis(data, out=sink)
                assert [op.name for op, _, _ in pickletools.genops(data)][-1] == "STOP"  # every opcode parses
                continue
            pickletools.dis(data, out=sink)  # raises on a malformed stream or an unbalanced stack


def test_memo_hidden_stack_global_has_no_strings_next_to_it(tmp_path: Path) -> None:
    # A scanner that reads the two strings right before STACK_GLOBAL sees only memo lookups.
    payload = next(p for p in h.PAYLOADS if p.name == "memo_hidden_stack_global")
    ops = [op.name for op, _arg, _pos in pickletools.genops(h.plain_pickle(payload, tmp_path / "canary"))]
    at = ops.index("STACK_GLOBAL")
    assert ops[at - 2 : at] == ["BINGET", "BINGET"]


# ------------------------------------------------------------------ refused by every command


def check_refused_by_every_command(payload: h.Payload, where: str, tmp_path: Path, *, every: bool) -> None:
    canary = tmp_path / "canary"
    placed = h.place(payload, where, tmp_path / "ckpt", canary)
    before = files_under(tmp_path)
    for args in commands(placed.checkpoint, tmp_path / "out", every=every):
        result = invoke(args)
        assert_one_error_line(result, 4, str(placed.hostile_file), placed.refused)
        assert files_under(tmp_path) == before, args  # no output, no temporary file, no canary
    assert not canary.exists()


@pytest.mark.parametrize(("payload", "where"), CASES, ids=[f"{p.name}-{w}" for p, w in CASES])
def test_payload_is_refused_by_every_command(payload: h.Payload, where: str, tmp_path: Path) -> None:
    check_refused_by_every_command(payload, where, tmp_path, every=False)


@pytest.mark.stress
@pytest.mark.parametrize(("payload", "where"), CASES, ids=[f"{p.name}-{w}" for p, w in CASES])
def test_payload_is_refused_by_every_command_and_output(payload: h.Payload, where: str, tmp_path: Path) -> None:
    check_refused_by_every_command(payload, where, tmp_path, every=True)


@pytest.mark.parametrize(("payload", "where"), CASES, ids=[f"{p.name}-{w}" for p, w in CASES])
def test_inspect_globals_lists_every_global_and_refuses(payload: h.Payload, where: str, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    placed = h.place(payload, where, tmp_path / "ckpt", canary)
    result = invoke(["inspect", placed.checkpoint, "--globals", "--json"])
    assert result.exit_code == 4, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1
    document = json.loads(result.stdout)
    listed = [g for g in document["globals"] if g["file"] == str(placed.hostile_file)]
    assert payload.globals <= {f"{g['module']}.{g['name']}" for g in listed}
    for g in listed:  # each verdict is the exact-pair rule (and INST is never allowed)
        expected = (g["module"], g["name"]) in ALLOWED_GLOBALS and g["opcode"] != "INST"
        assert g["allowed"] is expected, g
    if payload.unnamed is not None:
        # EXT and PERSID reach an object through no global name: listed as such, refused, and the scan goes on.
        assert any(g["opcode"] == payload.unnamed and not g["allowed"] for g in listed), listed
    assert document["refused"] == sum(not g["allowed"] for g in document["globals"]) >= 1
    assert result.stderr.startswith("warning: ")
    assert "not on the allow-list" in result.stderr or "which loading refuses" in result.stderr
    assert not canary.exists()


@pytest.mark.parametrize("payload", h.PAYLOADS, ids=lambda p: p.name)
def test_inspect_globals_table_marks_refused_globals(payload: h.Payload, tmp_path: Path) -> None:
    placed = h.place(payload, "plain", tmp_path, tmp_path / "canary")
    result = invoke(["inspect", placed.checkpoint, "--globals"])
    assert result.exit_code == 4
    references = scan_globals(placed.checkpoint)[0].references
    refused = [r for r in references if not r.allowed]
    assert refused
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("global "))
    assert lines[0].startswith(str(placed.checkpoint))
    assert "pickle at bytes 0-" in lines[1]
    rows = lines[header + 1 : -1]  # between the table's header and the totals
    assert len(rows) == len(references)
    assert sum(row.split()[-1] == "refused" for row in rows) == len(refused)
    assert f"{len(references)} global references, {len(refused)} refused" in result.stdout
    assert not (tmp_path / "canary").exists()


def test_allowed_pairs_are_judged_as_pairs(tmp_path: Path) -> None:
    # numpy.dtype is allowed; numpy.load, in the same module, is not.
    payload = next(p for p in h.PAYLOADS if p.name == "object_dtype_array")
    placed = h.place(payload, "plain", tmp_path, tmp_path / "canary")
    verdicts = {(r.module, r.name): r.allowed for r in scan_globals(placed.checkpoint)[0].references}
    assert verdicts[("numpy", "dtype")] is True
    assert verdicts[("os", "system")] is False
    numpy_load = next(p for p in h.PAYLOADS if p.name == "numpy_load_allow_pickle")
    placed = h.place(numpy_load, "plain", tmp_path / "b", tmp_path / "canary")
    assert [r.allowed for r in scan_globals(placed.checkpoint)[0].references] == [False]


def test_inst_is_listed_but_never_allowed(tmp_path: Path) -> None:
    # INST calls what it names; even an allow-listed name is refused through INST.
    path = tmp_path / "model.pkl"
    path.write_bytes(h.MARK + h.string("<f4") + h.inst("numpy", "dtype") + h.STOP)
    (reference,) = scan_globals(path)[0].references
    assert (reference.module, reference.name, reference.opcode, reference.allowed) == ("numpy", "dtype", "INST", False)
    assert_one_error_line(invoke(["inspect", path]), 4, "INST")


# ------------------------------------------------------------------ the installed entry point


ENTRY_POINT_CASES = [
    ("protocol0_text_global", "plain"),
    ("memo_hidden_stack_global", "gzip"),
    ("build_setstate_trick", "nested"),
    ("marshal_function", "shard"),
    ("object_dtype_array", "npy"),
]


def run_entry_point(args: list[str | Path], cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "reformer_tools", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=120, check=False)


@pytest.mark.parametrize(
    ("name", "where"),
    [
        case if case[1] in ("plain", "npy") else pytest.param(*case, marks=pytest.mark.stress)
        for case in ENTRY_POINT_CASES
    ],
)
def test_python_dash_m_refuses_the_same_way(name: str, where: str, tmp_path: Path) -> None:
    payload = next(p for p in h.PAYLOADS if p.name == name)
    canary = tmp_path / "canary"
    placed = h.place(payload, where, tmp_path / "ckpt", canary)
    before = files_under(tmp_path)
    for args in commands(placed.checkpoint, tmp_path / "out")[::2]:  # inspect, convert, verify
        done = run_entry_point(args, tmp_path)
        assert done.returncode == 4, done.stderr
        assert done.stdout == ""
        assert done.stderr.count("\n") == 1
        assert done.stderr.startswith("error: ")
        assert str(placed.hostile_file) in done.stderr
        assert placed.refused in done.stderr
        assert "Traceback" not in done.stderr
    assert files_under(tmp_path) == before
    assert not canary.exists()


def test_console_script_refuses_the_same_way(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "reformer-tools"
    assert script.exists(), "the package is installed with its console script"
    placed = h.place(h.PAYLOADS[0], "gzip", tmp_path, tmp_path / "canary")
    done = subprocess.run([script, "inspect", placed.checkpoint], capture_output=True, text=True, check=False)
    assert done.returncode == 4
    assert done.stderr == f"error: {placed.checkpoint}: refused global os.system (not on the allow-list)\n"
    assert not (tmp_path / "canary").exists()


# ------------------------------------------------------------------ resource attacks


def measure(args: list[str | Path], cwd: Path, *, setup: str = "") -> tuple[int, str, float, int]:
    """Run the CLI in a child: exit code, stderr, seconds, peak RSS in MiB.

    ``setup`` runs first in the child (to lower a limit). The child also gets a
    hard address-space ceiling, so a regression fails here instead of taking
    the machine's memory. The peak is the child's own VmHWM, read as it exits
    (getrusage's figure for a child includes the forking parent's size).
    """
    report = cwd.parent / f"{cwd.name}.vmhwm"  # outside cwd: tests compare cwd's listing
    code = "; ".join(
        (
            "import atexit, resource, sys",
            "resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))",
            f"atexit.register(lambda: open({str(report)!r}, 'w').write(open('/proc/self/status').read()))",
            setup or "pass",
            "from reformer_tools.cli import main",
            "sys.argv[0] = 'reformer-tools'",
            "main()",
        )
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=cwd)
    seconds = time.monotonic() - started
    status = dict(line.split(":", 1) for line in report.read_text().splitlines())
    report.unlink()
    peak_kib = int(status["VmHWM"].split()[0])
    return done.returncode, done.stderr, seconds, peak_kib // 1024


@pytest.fixture(scope="module")
def zeros_member() -> bytes:
    """One gzip member that inflates to 64 MiB of zeros (about 64 KB)."""
    return gzip.compress(b"\0" * (64 << 20), 9)


def test_gzip_bomb_behind_a_binbytes8_claim_stops_at_the_cap(tmp_path: Path, zeros_member: bytes) -> None:
    # BINBYTES8 claims 4 GiB and 4 GiB of zeros follow: ~4 MB on disk.
    path = tmp_path / "model.pkl.gz"
    path.write_bytes(gzip.compress(h.proto(4) + b"\x8e" + struct.pack("<Q", 4 << 30)) + zeros_member * 64)
    assert path.stat().st_size < 5 << 20
    for args in (["inspect", path], ["convert", path, "--config", CONFIG, "-o", tmp_path / "out"]):
        started = time.monotonic()
        result = invoke(args)
        assert time.monotonic() - started < SECONDS
        assert_one_error_line(result, 3, str(path), "decompressed data exceeds the 1.0 GiB limit")
    assert not (tmp_path / "out").exists()


def test_gzip_bomb_of_raw_data_stops_at_the_cap_in_seconds_and_bounded_memory(tmp_path: Path) -> None:
    # 4 GiB of valid pickle (1 MiB BINBYTES, then POP, over and over): no claim is
    # too large, only the total. Inflating stops at the 1 GiB cap.
    unit = gzip.compress(b"B" + struct.pack("<I", 1 << 20) + b"\0" * (1 << 20) + h.POP, 9)
    path = tmp_path / "model.pkl.gz"
    path.write_bytes(gzip.compress(h.proto(4)) + unit * 4096)
    code, stderr, seconds, peak = measure(["inspect", path], tmp_path)
    assert code == 3, stderr
    assert stderr == f"error: {path}: decompressed data exceeds the 1.0 GiB limit " + (
        "(64x the file size; raise it with --max-decompressed-size for a real checkpoint)\n"
    )
    assert seconds < SECONDS
    assert peak < 200  # MiB (about 60): shapes-only inspect drops each payload
    lowered = invoke(["inspect", path, "--max-decompressed-size", "1MB"])
    assert_one_error_line(lowered, 3, "exceeds the 976.6 KiB limit (set by --max-decompressed-size)")
    verify = invoke(["verify", path, "--config", CONFIG, "--max-decompressed-size", "1MB"])
    assert_one_error_line(verify, 3, "exceeds the 976.6 KiB limit")


def test_gzip_bomb_in_an_npy_side_file(tmp_path: Path, zeros_member: bytes) -> None:
    (tmp_path / "model.pkl.gz").write_bytes(gzip.compress(h.loop_checkpoint_pickle(1)))
    side = tmp_path / "model.weights.npy.gz"
    side.write_bytes(gzip.compress(h.npy_record("<f4", (1 << 30,))) + zeros_member * 64)
    for args in (["inspect", tmp_path / "model.pkl.gz"], ["verify", tmp_path / "model.pkl.gz", "--config", CONFIG]):
        started = time.monotonic()
        assert_one_error_line(invoke(args), 3, str(side), "decompressed data exceeds the 1.0 GiB limit")
        assert time.monotonic() - started < SECONDS


CLAIMS = {
    "BINBYTES8": b"\x8e" + struct.pack("<Q", 1 << 60),
    "BINUNICODE8": b"\x8d" + struct.pack("<Q", 1 << 60),
    "BYTEARRAY8": b"\x96" + struct.pack("<Q", 1 << 60),
    "BINUNICODE": b"X" + struct.pack("<I", (1 << 32) - 1),
    "BINBYTES": b"B" + struct.pack("<I", (1 << 32) - 1),
    "BINSTRING": b"T" + struct.pack("<i", -5),
    "LONG4": b"\x8b" + struct.pack("<i", (1 << 31) - 1),
    "FRAME+BINBYTES8": b"\x95" + struct.pack("<Q", 1 << 60) + b"\x8e" + struct.pack("<Q", 1 << 40),
}


@pytest.mark.parametrize("claim", CLAIMS, ids=str)
@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
def test_huge_length_claims_fail_fast(claim: str, compressed: bool, tmp_path: Path) -> None:
    data = (h.proto(4) + CLAIMS[claim]).ljust(100, b"\0")
    path = tmp_path / ("model.pkl.gz" if compressed else "model.pkl")
    path.write_bytes(gzip.compress(data) if compressed else data)
    started = time.monotonic()
    result = invoke(["convert", path, "--config", CONFIG, "-o", tmp_path / "out"])
    assert time.monotonic() - started < SECONDS
    assert_one_error_line(result, 3, str(path))
    assert not (tmp_path / "out").exists()


def test_huge_claims_cost_no_memory(tmp_path: Path) -> None:
    # 2**60 bytes claimed in a 100-byte file, and a .npy header claiming 10**12 floats.
    (tmp_path / "a").mkdir()
    claim = tmp_path / "a" / "model.pkl"
    claim.write_bytes((h.proto(4) + CLAIMS["BINBYTES8"]).ljust(100, b"\0"))
    main = tmp_path / "model.pkl"
    main.write_bytes(h.loop_checkpoint_pickle(1))
    side = tmp_path / "model.pkl.npy"
    side.write_bytes(h.npy_record("<f4", (10**12,), b"\0" * 400))
    for args, needle in (
        (["convert", claim, "--config", CONFIG, "-o", tmp_path / "out"], "a record claims 1048576.0 TiB"),
        (["verify", main, "--config", CONFIG], "a record claims 3.6 TiB"),
    ):
        code, stderr, seconds, peak = measure(args, tmp_path)
        assert code == 3, stderr
        check_line(stderr, needle)
        assert seconds < SECONDS
        assert peak < 200  # MiB (about 40: the interpreter and numpy)


@pytest.mark.parametrize(
    ("shape", "data", "needle"),
    [
        ((3,), b"\0" * 8, "shape (3,) needs 12 bytes, the data has 8"),
        ((2, 2), b"\0" * 20, "shape (2, 2) needs 16 bytes, the data has 20"),
        ((0, 10**30), b"", "is larger than any array can be"),
        ((0, 1 << 62, 1 << 62), b"", "is larger than any array can be"),
        ((1,) * 33, b"\0" * 4, "more than 32 dimensions"),
        ((-1,), b"", "negative size"),
    ],
)
def test_array_bytes_must_match_a_possible_shape(
    shape: tuple[int, ...], data: bytes, needle: str, tmp_path: Path
) -> None:
    # numpy's own limits surfaced as ValueError (an internal error) before they were checked here.
    path = tmp_path / "model.pkl"
    array = h.numpy_array(shape, "f4", data)
    path.write_bytes(h.proto(2) + h.dct((h.string("weights"), array)) + h.STOP)
    assert_one_error_line(invoke(["inspect", path]), 3, str(path), needle)


@pytest.mark.parametrize("shape", [(0, 10**30), (1,) * 40])
def test_npy_record_shapes_numpy_cannot_make(shape: tuple[int, ...], tmp_path: Path) -> None:
    (tmp_path / "model.pkl.gz").write_bytes(gzip.compress(h.loop_checkpoint_pickle(1)))
    side = tmp_path / "model.weights.npy.gz"
    side.write_bytes(gzip.compress(h.npy_record("<f4", shape)))
    assert_one_error_line(invoke(["inspect", tmp_path / "model.pkl.gz"]), 3, str(side), ".npy record")


DEPTH = 200_000


def weights_file(tmp_path: Path, weights: bytes, *, history: bytes | None = None) -> Path:
    """A protocol 4 {'weights': ..., 'history': ...} pickle from raw opcodes."""
    body = h.EMPTY_DICT + h.sstr("weights") + weights + h.SETITEM
    if history is not None:
        body += h.sstr("history") + history + h.SETITEM
    path = tmp_path / "model.pkl"
    path.write_bytes(h.proto(4) + body + h.STOP)
    return path


NESTINGS = {
    "lists": h.EMPTY_LIST * DEPTH + h.APPEND * (DEPTH - 1),
    "tuples": h.EMPTY_TUPLE + b"\x85" * DEPTH,  # TUPLE1, 200,000 times
    "dicts": (h.EMPTY_DICT + h.sstr("k")) * DEPTH + h.EMPTY_DICT + h.SETITEM * DEPTH,
    "marks": h.EMPTY_LIST + (h.MARK + h.EMPTY_LIST) * DEPTH + h.APPENDS * DEPTH,
}


@pytest.mark.parametrize("kind", NESTINGS)
def test_deep_nesting_in_the_weights_is_refused(kind: str, tmp_path: Path) -> None:
    path = weights_file(tmp_path, NESTINGS[kind])
    assert_one_error_line(invoke(["inspect", path]), 3, str(path), "nested deeper than 1000 levels")


@pytest.mark.parametrize("kind", NESTINGS)
def test_deep_nesting_in_metadata_is_only_summarized(kind: str, tmp_path: Path) -> None:
    # Metadata is summarized, never walked to the bottom: the checkpoint loads (exit 0).
    path = weights_file(tmp_path, h.small_array(), history=NESTINGS[kind])
    result = invoke(["inspect", path, "--json"])
    assert result.exit_code == 0, result.stderr
    assert "history" in json.loads(result.stdout)["metadata"]


def test_a_deeply_nested_dict_key_is_refused_without_crashing(tmp_path: Path) -> None:
    # Hashing a 200,000-deep tuple overflowed the C stack (SIGSEGV). In a child:
    # a regression must fail this test, not kill the test run.
    key = h.EMPTY_TUPLE + b"\x85" * DEPTH
    path = weights_file(tmp_path, h.small_array(), history=h.EMPTY_DICT + key + h.NONE + h.SETITEM)
    code, stderr, _seconds, _peak = measure(["inspect", path], tmp_path)
    assert code == 3, stderr
    assert stderr == f"error: {path}: a key nested deeper than 100 levels\n"


def test_a_deeply_nested_frozenset_member_is_refused(tmp_path: Path) -> None:
    member = h.EMPTY_TUPLE + b"\x85" * 1000
    path = weights_file(tmp_path, h.small_array(), history=h.MARK + member + b"\x91")  # FROZENSET
    assert_one_error_line(invoke(["inspect", path]), 3, "a key nested deeper than 100 levels")


SELF_REFERENCE = h.EMPTY_LIST + h.MEMOIZE + h.get(0) + h.APPEND + h.get(0) + h.APPEND


def test_a_list_that_contains_itself_in_the_weights(tmp_path: Path) -> None:
    path = weights_file(tmp_path, SELF_REFERENCE)
    assert_one_error_line(invoke(["inspect", path]), 3, str(path), "nested deeper than 1000 levels")


def test_a_list_that_contains_itself_in_metadata(tmp_path: Path) -> None:
    path = weights_file(tmp_path, h.small_array(), history=SELF_REFERENCE)
    result = invoke(["inspect", path])
    assert result.exit_code == 0, result.stderr
    assert "history:" in result.stdout


def exponential(leaf: bytes, levels: int = 100) -> bytes:
    """levels lists, each holding the one below twice: 2**levels paths to ``leaf``."""
    body = leaf + h.MEMOIZE + h.POP
    for level in range(levels):
        body += h.EMPTY_LIST + h.get(level) + h.get(level) + b"\x86" + h.APPEND + h.MEMOIZE + h.POP
    return body + h.get(levels)


@pytest.mark.parametrize(
    ("leaf", "needle"), [(h.small_array(), "more than 100,000 arrays"), (h.EMPTY_TUPLE, "too large")]
)
def test_exponential_sharing_in_the_weights_stops_early(leaf: bytes, needle: str, tmp_path: Path) -> None:
    path = weights_file(tmp_path, exponential(leaf))
    code, stderr, seconds, peak = measure(["inspect", path], tmp_path)
    assert code == 3, stderr
    check_line(stderr, needle)
    assert seconds < SECONDS
    assert peak < 300  # MiB (about 120); it was 2.9 GiB and 25 s before the node and array budgets


def test_exponential_sharing_in_metadata_is_summarized(tmp_path: Path) -> None:
    path = weights_file(tmp_path, h.small_array(), history=exponential(h.small_array()))
    started = time.monotonic()
    result = invoke(["inspect", path, "--json"])
    assert result.exit_code == 0, result.stderr
    assert time.monotonic() - started < SECONDS


def test_a_million_tiny_arrays_are_refused(tmp_path: Path) -> None:
    arrays = h.small_array() + h.MEMOIZE + h.POP + h.EMPTY_LIST + h.MARK + h.get(0) * 1_000_000 + h.APPENDS
    path = weights_file(tmp_path, arrays)
    code, stderr, seconds, peak = measure(["inspect", path], tmp_path)
    assert code == 3, stderr
    assert stderr == f"error: {path}: the weights hold more than 100,000 arrays\n"
    assert seconds < SECONDS
    assert peak < 400  # MiB (about 200)


def test_too_many_npy_records_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoint, "MAX_ARRAYS", 1000)  # the default (100,000) works the same, slower
    (tmp_path / "model.pkl.gz").write_bytes(gzip.compress(h.loop_checkpoint_pickle(1)))
    side = tmp_path / "model.weights.npy.gz"
    side.write_bytes(gzip.compress(h.npy_record("<f4", (1,), b"\0" * 4) * 1001))
    assert_one_error_line(invoke(["inspect", tmp_path / "model.pkl.gz"]), 3, str(side), "more than 1,000 arrays")


def test_the_opcode_budget_bounds_time_and_memory(tmp_path: Path) -> None:
    # A MARK costs one byte of input and ~80 bytes of memory. Measure the cost
    # per opcode between two lowered budgets (the slope, free of start-up and
    # read-ahead memory), then check the default budget keeps the worst case
    # under 1 GiB.
    path = tmp_path / "model.pkl.gz"
    path.write_bytes(gzip.compress(h.proto(4) + h.MARK * 5_000_001 + h.STOP))
    peaks = {}
    for budget in (400_000, 1_000_000):
        setup = f"import reformer_tools.safe_pickle as s; s.MAX_OPCODES = {budget}"
        code, stderr, seconds, peaks[budget] = measure(["inspect", path], tmp_path, setup=setup)
        assert code == 3, stderr
        assert stderr == f"error: {path}: the pickle runs more than {budget:,} opcodes " + (
            "(a limit against memory exhaustion; Trax checkpoints need far fewer)\n"
        )
        assert seconds < SECONDS
    per_opcode = (peaks[1_000_000] - peaks[400_000]) * (1 << 20) / 600_000
    print(f"{per_opcode:.0f} bytes per MARK")
    assert per_opcode < 200
    assert safe_pickle.MAX_OPCODES * per_opcode < 1 << 30


def test_the_opcode_budget_is_on_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The full 5 million is run, measured, by the stress tests (tests/test_stress.py).
    assert safe_pickle.MAX_OPCODES == 5_000_000
    monkeypatch.setattr(safe_pickle, "MAX_OPCODES", 10_000)
    path = tmp_path / "model.pkl"
    path.write_bytes(h.proto(4) + h.NONE * 10_001 + h.STOP)  # the cheapest opcode
    with pytest.raises(UnreadableCheckpointError, match="more than 10,000 opcodes"):
        load_checkpoint(path)
    path.write_bytes(h.proto(4) + b"\x8f" * 2_501 + h.STOP)  # an empty set costs four: its memory does
    with pytest.raises(UnreadableCheckpointError, match="more than 10,000 opcodes"):
        load_checkpoint(path)


def test_global_references_are_bounded_for_the_scanner(tmp_path: Path) -> None:
    # `inspect --globals --json` prints every reference: repeats are counted, names cut, distinct ones capped.
    many = h.sstr("os") + h.MEMOIZE + h.sstr("system") + h.MEMOIZE + h.STACK_GLOBAL + h.POP
    many += (h.get(0) + h.get(1) + h.STACK_GLOBAL + h.POP) * 10_000
    path = tmp_path / "model.pkl"
    path.write_bytes(h.proto(4) + many + h.NONE + h.STOP)
    (found,) = scan_globals(path)
    assert [(r.label, r.count, r.allowed) for r in found.references] == [("os.system", 10_001, False)]
    assert found.complete
    path.write_bytes(h.proto(4) + h.ustr("m" * 2000) + h.sstr("n") + h.STACK_GLOBAL + h.STOP)
    (reference,) = scan_globals(path)[0].references
    assert (reference.resolved, reference.allowed) == (False, False)
    assert len(reference.label) < 200  # a 2,000-character operand is never kept, let alone shown
    path.write_bytes(h.proto(4) + h.global_("m" * 2000, "n") + h.STOP)
    (reference,) = scan_globals(path)[0].references
    assert reference.module == "m" * 1024 + "..."
    result = invoke(["inspect", path, "--globals"])
    assert result.exit_code == 4
    assert max(map(len, result.stdout.splitlines())) < 2000


def test_distinct_global_references_are_capped_and_the_rest_reported_unscanned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(global_scan, "MAX_REFERENCES", 100)
    path = tmp_path / "model.pkl"
    path.write_bytes(h.proto(2) + b"".join(h.global_("os", f"f{i}") + h.POP for i in range(150)) + h.NONE + h.STOP)
    (found,) = scan_globals(path)
    assert len(found.references) == 100
    (rest,) = found.unscanned
    assert (rest.end, "more than 100 different global references" in rest.reason) == (None, True)


def test_many_metadata_entries_are_summarized_briefly(tmp_path: Path) -> None:
    entries = h.MARK + b"".join(b"J" + struct.pack("<i", i) + h.NONE for i in range(200_000)) + h.SETITEMS
    path = weights_file(tmp_path, h.small_array())
    path.write_bytes(path.read_bytes()[:-1] + entries + h.STOP)
    started = time.monotonic()
    result = invoke(["inspect", path])
    assert result.exit_code == 0, result.stderr
    assert "...: 199,900 more entries, not shown" in result.stdout
    assert result.stdout.count("\n") < 200
    assert time.monotonic() - started < SECONDS


def test_a_comparison_with_an_array_is_not_an_internal_error(tmp_path: Path) -> None:
    # (uint16 array, <not a string>) once reached `array == "bfloat16"`, whose truth value raises.
    pair = h.MARK + h.numpy_array((2,), "u2", b"\0" * 4) + h.numpy_array((2,), "f4", b"\0" * 8) + h.TUPLE
    path = tmp_path / "model.pkl"
    path.write_bytes(h.proto(2) + h.dct((h.string("flat_weights"), h.lst(pair))) + h.STOP)
    result = invoke(["inspect", path, "--json"])
    assert result.exit_code == 0, result.stderr
    assert [a["dtype"] for a in json.loads(result.stdout)["arrays"]] == ["bfloat16", "float32"]
    array = h.numpy_array((2,), "f4", b"\0" * 8)
    frombuffer = h.global_("numpy.core.numeric", "_frombuffer")
    for call, code, needle in (
        (h.call(h.global_("collections", "OrderedDict"), array), 3, "OrderedDict: unexpected arguments"),
        (h.call(frombuffer, h.latin1_bytes(b""), h.numpy_dtype("f4"), h.tup(), array), 3, "malformed order"),
        (h.call(h.global_("_codecs", "encode"), h.ustr("x"), array), 4, "refuses encoding ndarray"),
        (h.global_("trax.shapes", "ShapeDtype") + array + h.EMPTY_DICT + h.NEWOBJ_EX, 3, "unexpected arguments"),
    ):
        path.write_bytes(h.proto(2) + h.dct((h.string("weights"), call)) + h.STOP)
        assert_one_error_line(invoke(["inspect", path]), code, str(path), needle)


# ------------------------------------------------------------------ untrusted text in the output

NASTY = {
    "ansi": "\x1b[2J\x1b[31mred",
    "carriage_return": "fake\rerror: all good",
    "markup": "[bold red]boom[/]",
    "long": "k" * 100_000,
    "surrogates": "\udcff\udc80bad",  # undecodable bytes, as surrogateescape spells them
    "bidi": "\u202eevil",
    "newline": "two\nlines",
    "bell_and_nul": "\a\0",
}
VERSION = "\x1b]0;pwned\a\x1b[31mJun-18-2020\udcff"


def nasty_checkpoint(path: Path, *, bad_leaf: str | None = None) -> Path:
    """{'weights': {nasty key: array}, nasty key: 1, 'version_timestamp': nasty} from raw opcodes."""
    weights = h.MARK + b"".join(h.ustr(k) + (h.small_array() if k != bad_leaf else h.ustr("x")) for k in NASTY.values())
    entries = h.MARK + h.ustr("weights") + weights + h.DICT
    entries += b"".join(h.ustr(k) + h.integer(1) for k in NASTY.values())
    entries += h.ustr("version_timestamp") + h.ustr(VERSION)
    path.write_bytes(h.proto(4) + entries + h.DICT + h.STOP)
    return path


def assert_terminal_safe(text: str) -> None:
    assert "\x1b" not in text
    assert "\r" not in text
    assert "\a" not in text
    assert "\0" not in text
    assert "\u202e" not in text
    assert not any("\ud800" <= ch <= "\udfff" for ch in text)
    assert max(map(len, text.splitlines() or [""])) < 2000


def test_names_from_a_checkpoint_are_escaped_in_human_output(tmp_path: Path) -> None:
    path = nasty_checkpoint(tmp_path / "model.pkl")
    result = invoke(["inspect", path])
    assert result.exit_code == 0, result.stderr
    assert_terminal_safe(result.stdout)
    assert_terminal_safe(result.stderr)
    assert "[bold red]boom[/]" in result.stdout  # shown literally, not as rich markup
    assert "\\x1b[2J\\x1b[31mred" in result.stdout
    assert "fake\\rerror" in result.stdout or "fake\\x0derror" in result.stdout
    assert "version \\x1b]0;pwned" in result.stdout
    assert len(NASTY) == result.stdout.count("weights[")


def test_names_from_a_checkpoint_round_trip_in_json(tmp_path: Path) -> None:
    path = nasty_checkpoint(tmp_path / "model.pkl")
    result = invoke(["inspect", path, "--json"])
    assert result.exit_code == 0, result.stderr
    assert "\x1b" not in result.stdout
    document = json.loads(result.stdout)
    assert document["version_timestamp"] == VERSION  # the exact string, escaped by JSON only
    assert [a["path"] for a in document["arrays"]] == [leaf.path for leaf in load_checkpoint(path).leaves]
    assert len(document["metadata"]) == len(NASTY)


def test_names_from_a_checkpoint_are_escaped_in_errors(tmp_path: Path) -> None:
    path = nasty_checkpoint(tmp_path / "model.pkl", bad_leaf=NASTY["ansi"])
    line = assert_one_error_line(invoke(["inspect", path]), 3, "the weights hold a str at weights['\\x1b[2J")
    assert_terminal_safe(line)
    # A refused global with a terminal escape in its name, from a file whose name has one too.
    hostile = tmp_path / "evil\x1b[31m\r.pkl"
    hostile.write_bytes(h.proto(2) + h.call(h.global_("os\x1b[2J", "system\u202e"), h.ustr("x")) + h.STOP)
    line = assert_one_error_line(invoke(["inspect", hostile]), 4, "refused global os\\x1b[2J.system\\u202e")
    assert_terminal_safe(line)
    assert "evil\\x1b[31m\\x0d.pkl" in line
    table = invoke(["inspect", hostile, "--globals"])
    assert table.exit_code == 4
    assert_terminal_safe(table.stdout + table.stderr)
    document = json.loads(invoke(["inspect", hostile, "--globals", "--json"]).stdout)
    assert (document["globals"][0]["module"], document["globals"][0]["name"]) == ("os\x1b[2J", "system\u202e")


# ------------------------------------------------------------------ SECURITY.md says what the code does


SECURITY = (Path(__file__).parent.parent / "SECURITY.md").read_text(encoding="utf-8")


def test_security_md_lists_exactly_the_allow_list() -> None:
    table = SECURITY.split("## What may load", 1)[1].split("## What is refused", 1)[0]
    documented = set()
    for row in table.splitlines():
        if row.startswith("| `"):
            first_cell = row.split("|")[1]
            documented |= set(re.findall(r"`([\w.]+)`", first_cell))
    assert documented == {f"{module}.{name}" for module, name in ALLOWED_GLOBALS}


def test_security_md_states_the_limits_the_code_enforces() -> None:
    assert f"max(1 GiB, {byte_source.DEFAULT_MAX_RATIO} × the file's size)" in SECURITY
    assert byte_source.DEFAULT_MIN_LIMIT == 1 << 30
    assert f"| opcodes per pickle | {safe_pickle.MAX_OPCODES:,} |" in SECURITY
    assert f"| {checkpoint.MAX_ARRAYS:,} |" in SECURITY
    assert f"| {loader.MAX_TREE_NODES:,} |" in SECURITY
    assert f"| {loader.MAX_TREE_DEPTH:,} levels |" in SECURITY
    assert f"| {loader.MAX_PATH_CHARS:,} |" in SECURITY
    assert loader.MAX_REPEATED_BYTES == 1 << 30
    assert (
        "| bytes of weights beyond the bytes the file holds (arrays repeated, or sharing one buffer) | 1 GiB |"
        in SECURITY
    )
    assert f"| {checkpoint.MAX_SHARDS:,} |" in SECURITY
    assert f"| {safe_pickle.MAX_KEY_ITEMS:,} |" in SECURITY
    assert f"| {safe_pickle.MAX_TEXT_BYTES >> 20} MiB |" in SECURITY
    assert f"| {summaries.MAX_VISITS:,} |" in SECURITY
    assert f"| {global_scan.MAX_REFERENCES:,}; 1,024 |" in SECURITY
    assert f"| {global_scan.MAX_SPANS:,} |" in SECURITY
    assert "A string of 1 MiB or more is never decoded" in SECURITY
    assert safe_pickle.LARGE_TEXT == 1 << 20
    assert f"{len(h.PAYLOADS)} hostile payloads" in SECURITY


def test_loads_that_overlap_restore_the_collector_only_when_the_last_ends() -> None:
    first, second = safe_pickle._PausedCollector(), safe_pickle._PausedCollector()
    assert gc.isenabled()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # the first to start ends first: the second still loads
    assert not gc.isenabled()
    second.__exit__(None, None, None)
    assert gc.isenabled()
