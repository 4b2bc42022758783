"""Broken, truncated, missing and mistaken inputs: one documented exit code and one line, never a traceback.

Every case runs the commands that read the input and checks the exit code,
that stderr is exactly one line naming the file and the problem, and that
nothing (no output, no temporary file) is left in the output's directory.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle  # to write shard files only: dumping plain arrays runs nothing
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reformer_tools.errors import ReformerToolsError, UnreadableCheckpointError
from reformer_tools.loader import load_checkpoint
from tests import hostile as h
from tests.conftest import TRAX_FIXTURES, invoke
from tests.test_hostile import assert_one_error_line, check_line, files_under

LOCAL = TRAX_FIXTURES / "t141_local_axial"
CONFIG = LOCAL / "config.json"
LOOP = LOCAL / "loop_checkpoint"


def assert_fails_cleanly(tmp_path: Path, checkpoint: Path, code: int, *needles: str, config: Path = CONFIG) -> None:
    """inspect, convert and verify all fail with ``code`` and one line; convert leaves nothing behind."""
    out_dir = tmp_path / "outputs"
    out_dir.mkdir(exist_ok=True)
    before = files_under(tmp_path)
    for args in (
        ["inspect", checkpoint, "--config", config],
        ["convert", checkpoint, "--config", config, "-o", out_dir / "model"],
        ["convert", checkpoint, "--config", config, "-o", out_dir / "model.bin"],
        ["verify", checkpoint, "--config", config],
    ):
        assert_one_error_line(invoke(args), code, *needles)
        assert files_under(tmp_path) == before, args


def copy_loop_checkpoint(tmp_path: Path) -> Path:
    directory = tmp_path / "loop"
    shutil.copytree(LOOP, directory)
    return directory / "model.pkl.gz"


def npy_arrays(path: Path) -> list[np.ndarray]:
    """The records of a Trax .npy stream, read by numpy with pickle off."""
    raw = io.BytesIO(gzip.decompress(path.read_bytes()))
    arrays = []
    while raw.tell() < len(raw.getbuffer()):
        arrays.append(np.lib.format.read_array(raw, allow_pickle=False))
    return arrays


def npy_stream(arrays: list[np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    for array in arrays:
        np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


# ------------------------------------------------------------------ not a checkpoint at all


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "model.pkl"
    path.write_bytes(b"")
    assert_fails_cleanly(tmp_path, path, 3, f"{path}: the file is empty")


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (json.dumps({"weights": [1, 2, 3]}).encode(), "it looks like JSON"),
        (b"This is a README, not a checkpoint.\nSecond line.\n", "it looks like text"),
        (b"PK\x03\x04" + bytes(60), "it looks like a zip archive"),
        (b"\x89HDF\r\n\x1a\n" + bytes(60), "it looks like an HDF5 file"),
        (bytes([0xDE, 0xAD, 0xBE, 0xEF]) + bytes(60), "it starts with bytes de ad be ef"),
    ],
    ids=["json", "text", "zip", "hdf5", "binary"],
)
def test_files_that_are_not_checkpoints(content: bytes, needle: str, tmp_path: Path) -> None:
    path = tmp_path / "model.pkl"
    path.write_bytes(content)
    assert_fails_cleanly(tmp_path, path, 3, str(path), "not a Trax checkpoint", needle)
    zipped = tmp_path / "model.pkl.gz"
    zipped.write_bytes(gzip.compress(content))
    assert_fails_cleanly(tmp_path, zipped, 3, str(zipped), "gzip data is neither a pickle nor .npy", needle)


def test_random_bytes_are_always_a_documented_error(tmp_path: Path) -> None:
    rng = random.Random(1234)
    path = tmp_path / "model.pkl"
    for _ in range(500):
        path.write_bytes(rng.randbytes(rng.randint(1, 4096)))
        with pytest.raises(ReformerToolsError):
            load_checkpoint(path)
    path.write_bytes(b"\x07" + rng.randbytes(1000))
    assert_fails_cleanly(tmp_path, path, 3, str(path), "it starts with bytes 07")


def test_a_directory(tmp_path: Path) -> None:
    directory = tmp_path / "checkpoints"
    shutil.copytree(LOCAL / "trainer_lib", directory)
    assert_fails_cleanly(tmp_path, directory, 3, f"{directory}: is a directory", "(model.pkl.gz)")


def test_a_missing_path(tmp_path: Path) -> None:
    assert_fails_cleanly(tmp_path, tmp_path / "nope.pkl", 3, f"{tmp_path / 'nope.pkl'}: no such file")


def test_a_fifo_does_not_hang(tmp_path: Path) -> None:
    # Opening a FIFO waits for a writer; the loader must not (it used to wait forever).
    fifo = tmp_path / "model.pkl"
    os.mkfifo(fifo)
    done = subprocess.run(
        [sys.executable, "-m", "reformer_tools", "inspect", fifo],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 3
    check_line(done.stderr, f"{fifo}: not a regular file")
    assert_fails_cleanly(tmp_path, fifo, 3, "not a regular file")


# Root reads any file: the child drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH
# (capset(2) through ctypes) so that the kernel applies permission bits to it.
DROP_FILE_CAPABILITIES = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
class Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
class Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]
header, data = Header(0x20080522, 0), (Data * 2)()
assert libc.capget(ctypes.byref(header), data) == 0
for item in data:
    item.effective &= ~0b110
    item.permitted &= ~0b110
assert libc.capset(ctypes.byref(header), data) == 0, ctypes.get_errno()
"""
RUN_CLI = "from reformer_tools.cli import main; sys.argv[0] = 'reformer-tools'; main()"
RUN_LOADER = """
from reformer_tools.errors import ReformerToolsError
from reformer_tools.loader import load_checkpoint
try:
    load_checkpoint(sys.argv[1])
except ReformerToolsError as error:
    print(error)
    sys.exit(int(error.exit_code))
"""


def run_without_file_capabilities(tail: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", DROP_FILE_CAPABILITIES + tail, *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_no_permission(tmp_path: Path) -> None:
    readable = tmp_path / "model.pkl"
    shutil.copy(LOCAL / "model.pkl", readable)
    locked = tmp_path / "locked.pkl"
    shutil.copy(LOCAL / "model.pkl", locked)
    locked.chmod(0)
    closed = tmp_path / "closed"
    closed.mkdir()
    shutil.copy(LOCAL / "model.pkl", closed / "model.pkl")
    closed.chmod(0)
    try:
        # The control: the same child reads a readable copy, so only the permission differs.
        assert run_without_file_capabilities(RUN_CLI, "inspect", readable, "--json").returncode == 0
        for path in (locked, closed / "model.pkl"):
            done = run_without_file_capabilities(RUN_LOADER, path)
            assert (done.returncode, done.stdout) == (3, f"{path}: permission denied\n"), done.stderr
        # A file in a closed directory reaches the loader: exit 3, one line.
        path = closed / "model.pkl"
        for args in (["inspect", path], ["convert", path, "--config", CONFIG, "-o", tmp_path / "out"]):
            done = run_without_file_capabilities(RUN_CLI, *args)
            assert done.returncode == 3, done.stderr
            assert done.stdout == ""
            check_line(done.stderr, f"{path}: permission denied")
        # A 000 file: the same one line and exit 3 (click does not check CKPT's readability first).
        done = run_without_file_capabilities(RUN_CLI, "inspect", locked)
        assert done.returncode == 3, done.stderr
        check_line(done.stderr, f"{locked}: permission denied")
        assert not (tmp_path / "out").exists()
    finally:
        closed.chmod(0o755)


# ------------------------------------------------------------------ truncated


def test_every_truncation_of_a_real_pickle(tmp_path: Path) -> None:
    # The training.Loop main file: 988 bytes, every prefix.
    data = gzip.decompress((LOOP / "model.pkl.gz").read_bytes())
    assert len(data) < 2000
    path = tmp_path / "model.pkl"
    for cut in range(2, len(data)):  # one byte (PROTO's opcode alone) is not recognizably a pickle
        path.write_bytes(data[:cut])
        with pytest.raises(UnreadableCheckpointError, match="truncated"):
            load_checkpoint(path)
    for cut in (2, 100, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        assert_fails_cleanly(tmp_path, path, 3, str(path), "truncated")


@pytest.mark.parametrize(
    "name", ["model.pkl", "trainer_lib/model.pkl.gz", "layer_save_to_file/model.pkl.gz"], ids=lambda n: n.split("/")[0]
)
def test_truncated_weights_pickles(name: str, tmp_path: Path) -> None:
    # 78 KB pickles: the first 512 prefixes (every header and small record), then every 257th byte.
    source = (LOCAL / name).read_bytes()
    data = gzip.decompress(source) if name.endswith(".gz") else source
    path = tmp_path / "model.pkl"
    for cut in [*range(2, 512), *range(512, len(data), 257)]:
        path.write_bytes(data[:cut])
        with pytest.raises(UnreadableCheckpointError, match="truncated"):
            load_checkpoint(path)
    path.write_bytes(data[: len(data) // 2])
    assert_fails_cleanly(tmp_path, path, 3, str(path), "truncated")


@pytest.mark.parametrize(
    "name", ["trainer_lib/model.pkl.gz", "layer_save_to_file/model.pkl.gz"], ids=lambda n: n.split("/")[0]
)
def test_truncated_gzip(name: str, tmp_path: Path) -> None:
    source = (LOCAL / name).read_bytes()
    path = tmp_path / "model.pkl.gz"
    for cut in [*range(2, 64), *range(64, len(source), 499)]:
        path.write_bytes(source[:cut])
        with pytest.raises(UnreadableCheckpointError, match=r"truncated|corrupt"):
            load_checkpoint(path)
    path.write_bytes(source[:-4])  # without the length field of the trailer
    assert_fails_cleanly(tmp_path, path, 3, str(path), "truncated gzip stream")
    # A wrong CRC: the trailer comes after the pickle's STOP, and must still be checked.
    path.write_bytes(source[:-8] + bytes(b ^ 0xFF for b in source[-8:-4]) + source[-4:])
    assert_fails_cleanly(tmp_path, path, 3, str(path), "corrupt gzip data")


# ------------------------------------------------------------------ a checkpoint, but wrong


def test_a_dict_without_weights(tmp_path: Path) -> None:
    path = tmp_path / "model.pkl"
    path.write_bytes(h.proto(2) + h.dct((h.string("step"), h.integer(5)), (h.string("history"), h.EMPTY_DICT)) + h.STOP)
    assert_fails_cleanly(tmp_path, path, 3, str(path), "no 'weights' or 'flat_weights' entry (keys: 'step', 'history')")


def test_weights_of_the_wrong_shape(tmp_path: Path) -> None:
    # The local-attention model against the mixed model's config: exit 1, with a pointer to verify.
    checkpoint = LOCAL / "model.pkl"
    config = TRAX_FIXTURES / "t141_mixed_axial" / "config.json"
    out = tmp_path / "out"
    result = invoke(["convert", checkpoint, "--config", config, "-o", out])
    assert_one_error_line(result, 1, str(checkpoint), "does not match the config", "run `reformer-tools verify`")
    assert files_under(tmp_path) == set()
    verify = invoke(["verify", checkpoint, "--config", config])
    assert verify.exit_code == 1
    assert verify.stderr == ""  # the table is the result: stdout
    assert "failed: 3 shape mismatches, 26 missing, 4 unused" in verify.stdout
    assert "reformer.embeddings.word_embeddings.weight" in verify.stdout


def test_a_side_file_with_too_few_arrays(tmp_path: Path) -> None:
    checkpoint = copy_loop_checkpoint(tmp_path)
    side = checkpoint.with_name("model.weights.npy.gz")
    side.write_bytes(gzip.compress(npy_stream(npy_arrays(side)[:-1])))
    before = files_under(tmp_path)
    result = invoke(["convert", checkpoint, "--config", CONFIG, "-o", tmp_path / "out"])
    assert_one_error_line(result, 1, str(checkpoint), "1 tensors missing", "run `reformer-tools verify`")
    verify = invoke(["verify", checkpoint, "--config", CONFIG])
    assert verify.exit_code == 1
    assert "1 missing" in verify.stdout
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("cut", ["header", "array"])
def test_a_side_file_truncated(cut: str, tmp_path: Path) -> None:
    checkpoint = copy_loop_checkpoint(tmp_path)
    side = checkpoint.with_name("model.weights.npy.gz")
    arrays = npy_arrays(side)
    whole = npy_stream(arrays)
    end_of_first = len(npy_stream(arrays[:1]))
    # Cut inside the third record's header, or in the middle of its data.
    at = len(npy_stream(arrays[:2])) + (20 if cut == "header" else 200)
    assert end_of_first < at < len(npy_stream(arrays[:3]))
    side.write_bytes(gzip.compress(whole[:at]))
    assert_fails_cleanly(tmp_path, checkpoint, 3, str(side), "truncated")


def test_a_side_file_that_is_not_npy(tmp_path: Path) -> None:
    checkpoint = copy_loop_checkpoint(tmp_path)
    side = checkpoint.with_name("model.weights.npy.gz")
    side.write_bytes(gzip.compress(b"\x93NUMPY\x01\x00" + (20).to_bytes(2, "little") + b"{'descr': 1}".ljust(20)))
    assert_fails_cleanly(tmp_path, checkpoint, 3, str(side), ".npy header is malformed")
    side.write_bytes(gzip.compress(h.npy_record("<f4", (2,), b"\0" * 8) + b"garbage!" * 4))
    assert_fails_cleanly(tmp_path, checkpoint, 3, str(side), "not a .npy record at byte")
    side.write_bytes(gzip.compress(h.npy_record("<U4", (2,), b"\0" * 32)))
    assert_fails_cleanly(tmp_path, checkpoint, 3, str(side), "unsupported dtype '<U4'")
    side.write_bytes(gzip.compress(h.npy_record("<f4", (2,), b"\0" * 8, version=9)))
    assert_fails_cleanly(tmp_path, checkpoint, 3, str(side), "unsupported .npy format version 9")


def test_a_side_file_with_a_structured_dtype_is_refused(tmp_path: Path) -> None:
    checkpoint = copy_loop_checkpoint(tmp_path)
    side = checkpoint.with_name("model.weights.npy.gz")
    header = b"{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }"
    record = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + bytes(8)
    side.write_bytes(gzip.compress(record))
    assert_fails_cleanly(tmp_path, checkpoint, 4, str(side), "structured dtype (refused)")


def shard_checkpoint(tmp_path: Path, promised: int, written: int) -> Path:
    arrays = [a for _leaf, a in load_checkpoint(LOCAL / "model.pkl").iter_arrays()]
    tmp_path.mkdir()
    main = tmp_path / "model.pkl.gz"
    main.write_bytes(gzip.compress(h.loop_checkpoint_pickle(promised)))
    half = len(arrays) // 2
    for index, part in enumerate((arrays[:half], arrays[half:])[:written]):
        main.with_name(f"model.pkl.gz.shard{index}").write_bytes(gzip.compress(pickle.dumps(part, protocol=4)))
    return main


def test_shards(tmp_path: Path) -> None:
    complete = shard_checkpoint(tmp_path / "complete", promised=2, written=2)
    assert invoke(["verify", complete, "--config", CONFIG]).exit_code == 0
    missing = shard_checkpoint(tmp_path / "missing", promised=2, written=1)
    assert_fails_cleanly(tmp_path, missing, 3, str(missing), "promises 2 shard files; model.pkl.gz.shard1 is missing")
    none = shard_checkpoint(tmp_path / "none", promised=1, written=0)
    assert_fails_cleanly(tmp_path, none, 3, str(none), "the weights live in a side file, but none exists")


# ------------------------------------------------------------------ config.json


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("{not json", "not valid JSON (Expecting property name enclosed in double quotes at line 1)"),
        ("[1, 2, 3]", "expected a JSON object, got list"),
        ('"just a string"', "expected a JSON object, got str"),
        (None, "hidden_size must be a non-negative integer, got '32'"),
        ("axial", "axial_pos_embds_dim"),
        ("\udcff", "not a JSON file (not UTF-8 text)"),
        ("[" * 100_000, "nested too deeply"),
    ],
    ids=["not-json", "list", "string", "wrong-type", "axial-sum", "not-utf8", "deep"],
)
def test_a_bad_config(content: str | None, needle: str, tmp_path: Path) -> None:
    config = tmp_path / "config" / "config.json"
    config.parent.mkdir()
    given = json.loads(CONFIG.read_text())
    if content is None:
        config.write_text(json.dumps({**given, "hidden_size": "32"}))
    elif content == "axial":
        config.write_text(json.dumps({**given, "axial_pos_embds_dim": [16, 8]}))  # 24, not hidden_size 32
    else:
        config.write_bytes(content.encode("utf-8", "surrogateescape"))
    assert_fails_cleanly(tmp_path, LOCAL / "model.pkl", 2, str(config), needle, config=config)


# ------------------------------------------------------------------ gzip headers


@pytest.mark.parametrize(("byte", "value", "needle"), [(3, 0x20, "reserved flag bits"), (2, 7, "compression method 7")])
def test_gzip_headers_outside_rfc_1952_are_refused(byte: int, value: int, needle: str, tmp_path: Path) -> None:
    # zlib inflates a member whose reserved FLG bits are set; RFC 1952 says they must be zero.
    data = bytearray((LOCAL / "trainer_lib" / "model.pkl.gz").read_bytes())
    data[byte] = data[byte] | value if byte == 3 else value
    path = tmp_path / "model.pkl.gz"
    path.write_bytes(bytes(data))
    assert_fails_cleanly(tmp_path, path, 3, str(path), needle)
    # In a later member too: every member's header is checked.
    second = bytearray(gzip.compress(b"", 1))
    second[3] |= 0x40
    path.write_bytes((LOCAL / "trainer_lib" / "model.pkl.gz").read_bytes() + bytes(second))
    assert_fails_cleanly(tmp_path, path, 3, str(path), "reserved flag bits")


# ------------------------------------------------------------------ converted models


@pytest.mark.parametrize(
    ("name", "content"),
    [("notes.txt", b"These are my notes about the run.\n"), ("model.safetensors", b"\x05\x00\x00\x00"), ("x", b"{}")],
)
def test_verify_names_what_is_not_a_converted_model(name: str, content: bytes, tmp_path: Path) -> None:
    # A text file read as safetensors once said "safetensors header is implausibly large".
    path = tmp_path / name
    path.write_bytes(content)
    result = invoke(["verify", LOCAL / "model.pkl", path, "--config", CONFIG])
    assert_one_error_line(result, 3, f"{path}: not a converted model (a model directory, a .safetensors file or a .bin")


def test_verify_reads_a_broken_converted_model_as_unreadable(tmp_path: Path) -> None:
    # torch.load's refusal and JSON nested 200,000 deep were internal errors (exit 70).
    deep = b'{"a":' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    (tmp_path / "deep.safetensors").write_bytes(len(deep).to_bytes(8, "little") + deep)
    (tmp_path / "garbage.bin").write_bytes(b"garbage")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "config.json").write_text("[" * 200_000)
    (tmp_path / "dir" / "model.safetensors").write_bytes((2).to_bytes(8, "little") + b"{}")
    (tmp_path / "escape").mkdir()
    (tmp_path / "escape" / "model.safetensors.index.json").write_text('{"weight_map": {"k": "../deep.safetensors"}}')
    for name in ("deep.safetensors", "garbage.bin", "dir", "escape"):
        result = invoke(["verify", LOCAL / "model.pkl", tmp_path / name, "--config", CONFIG])
        assert_one_error_line(result, 3, f"{tmp_path / name}: cannot read the converted model")
