"""Hashing outputs while they are written (#12)."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from reformer_tools.safetensors_writer import SafetensorsWriter, TensorSpec, read_header
from reformer_tools.write_behind import FollowingDigest, Once


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_following_digest_hashes_the_final_prefix_and_what_was_written(tmp_path: Path) -> None:
    path = tmp_path / "f"
    released = threading.Event()
    with open(path, "w+b") as file:
        file.write(b"\0" * 16)
        file.flush()

        def prefix() -> bytes:
            released.wait()  # as the header waits for the checkpoint's digests
            return b"H" * 16

        follower = FollowingDigest(file.fileno(), 16, prefix)
        for i in range(5):
            file.write(bytes([i]) * (3 << 20))
            file.flush()
            follower.advance(16 + (i + 1) * (3 << 20))
        released.set()
        file.seek(0)
        file.write(b"H" * 16)
        file.flush()
        digest = follower.result(b"H" * 16, 16 + 5 * (3 << 20))
    assert digest == _sha(path)


def test_following_digest_refuses_another_prefix_or_length(tmp_path: Path) -> None:
    with open(tmp_path / "f", "w+b") as file:
        file.write(b"\0" * 4 + b"data")
        file.flush()
        follower = FollowingDigest(file.fileno(), 4, lambda: b"abcd")
        follower.advance(8)
        assert follower.result(b"abce", 8) is None
        other = FollowingDigest(file.fileno(), 4, lambda: b"abcd")
        other.advance(8)
        assert other.result(b"abcd", 9) is None


def test_following_digest_gives_none_when_the_prefix_fails(tmp_path: Path) -> None:
    def broken() -> bytes:
        raise OSError("digest of the source failed")

    with open(tmp_path / "f", "w+b") as file:
        file.write(b"\0" * 4)
        file.flush()
        follower = FollowingDigest(file.fileno(), 4, broken)
        assert follower.result(b"abcd", 4) is None
        wrong_size = FollowingDigest(file.fileno(), 4, lambda: b"abc")
        assert wrong_size.result(b"abc", 4) is None


def test_abandon_does_not_wait_for_a_blocked_prefix(tmp_path: Path) -> None:
    never = threading.Event()
    with open(tmp_path / "f", "w+b") as file:
        follower = FollowingDigest(file.fileno(), 4, lambda: b"abcd" if never.wait() else b"")
        started = time.perf_counter()
        follower.abandon()
        assert time.perf_counter() - started < 1
        never.set()


def test_once_runs_the_function_once_across_threads() -> None:
    calls = []

    def slow() -> int:
        calls.append(1)
        time.sleep(0.05)
        return 42

    once = Once(slow)
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(once())) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [42] * 4
    assert len(calls) == 1


def test_once_retries_after_a_failure() -> None:
    outcomes = iter([ValueError("first"), 7])

    def flaky() -> int:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    once = Once(flaky)
    with pytest.raises(ValueError, match="first"):
        once()
    assert once() == 7 == once()


def _specs() -> list[TensorSpec]:
    return [
        TensorSpec("a", (300, 700), "float32"),
        TensorSpec("b", (5,), "float16"),
        TensorSpec("c", (0, 3), "float32"),
    ]


def _write(file: io.BufferedRandom | io.BytesIO, final: dict[str, str]) -> SafetensorsWriter:
    placeholder = {"source_sha256": "0" * 64}
    writer = SafetensorsWriter(file, _specs(), placeholder, final_metadata=lambda: final)
    rng = np.random.default_rng(0)
    writer.write("a", rng.standard_normal((300, 700), dtype=np.float32), "float32")
    writer.write("b", np.arange(5, dtype=np.float16), "float16")
    writer.write("c", np.zeros((0, 3), dtype=np.float32), "float32")
    writer.finish(final)
    return writer


def test_writer_hashes_the_file_as_written(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    final = {"source_sha256": "f" * 64}
    with open(path, "w+b") as file:
        writer = _write(file, final)
    assert writer.sha256 == _sha(path)
    with open(path, "rb") as file:
        _, header = read_header(file)
    assert header["__metadata__"] == final


def test_writer_without_a_file_descriptor_leaves_hashing_to_the_caller() -> None:
    assert _write(io.BytesIO(), {"source_sha256": "f" * 64}).sha256 is None


def test_writer_whose_metadata_changed_gives_no_digest(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    seen = {"source_sha256": "f" * 64}
    with open(path, "w+b") as file:
        writer = SafetensorsWriter(file, _specs(), {"source_sha256": "0" * 64}, final_metadata=lambda: seen)
        writer.write("a", np.zeros((300, 700), dtype=np.float32), "float32")
        writer.write("b", np.zeros(5, dtype=np.float16), "float16")
        writer.write("c", np.zeros((0, 3), dtype=np.float32), "float32")
        writer.finish({"source_sha256": "e" * 64})  # not what the hashing thread was given
    assert writer.sha256 is None


@pytest.mark.parametrize("fixture", ["hf2020_local_axial", "t141_mixed_axial"])
@pytest.mark.parametrize("output", ["hf-model", "model.safetensors", "sharded"])
def test_convert_reports_the_digest_of_the_files_on_disk(tmp_path: Path, fixture: str, output: str) -> None:
    from tests.conftest import TRAX_FIXTURES, fixture_checkpoints, invoke

    checkpoint = fixture_checkpoints(fixture)[0]
    out = tmp_path / output
    extra = ["--max-shard-size", "20KB"] if output == "sharded" else []
    config = TRAX_FIXTURES / fixture / "config.json"
    done = invoke(["convert", checkpoint, "--config", config, "-o", out, "--json", *extra])
    assert done.exit_code == 0, done.stderr
    report = json.loads(done.stdout)
    files = [out / f["name"] for f in report["files"]] if out.is_dir() else [out]
    assert [f["sha256"] for f in report["files"]] == [_sha(p) for p in files]
    assert any(f["name"].endswith(".safetensors") for f in report["files"])
