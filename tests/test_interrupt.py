"""Interrupting `convert` mid-write (SIGINT, SIGTERM, SIGKILL) leaves no output and no temporary file."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

VOCAB, D_MODEL = 40_000, 256  # ~125 MB of weights: long enough to be caught mid-write


def write_large_checkpoint(directory: Path) -> tuple[Path, Path]:
    """A plain {'weights': ...} pickle with big embedding and output layers."""
    d, heads, head, ff = D_MODEL, 2, 8, 32
    ones = lambda *shape: np.ones(shape, np.float32)  # noqa: E731 - values do not matter here
    layer = [
        (ones(d), ones(d)),
        (ones(heads, d, head), ones(heads, d, head), ones(heads, d, head), ones(heads, head, d)),
    ]
    feed_forward = [(ones(d), ones(d)), (ones(d, ff), ones(ff)), (), (ones(ff, d), ones(d))]
    weights = (
        (),
        ones(VOCAB, d),
        (),
        (ones(1, 4, 1, 128), ones(1, 1, 4, 128)),
        (),
        [tuple(layer), (), [feed_forward], ()],
        (),
        (ones(2 * d), ones(2 * d)),
        (),
        (ones(2 * d, VOCAB), ones(VOCAB)),
    )
    checkpoint = directory / "model.pkl"
    with open(checkpoint, "wb") as f:
        pickle.dump({"weights": weights}, f, protocol=4)
    config = directory / "config.json"
    config.write_text(
        json.dumps(
            {
                "vocab_size": VOCAB, "hidden_size": d, "num_attention_heads": heads, "attention_head_size": head,
                "feed_forward_size": ff, "attn_layers": ["local"], "axial_pos_shape": [4, 4],
                "axial_pos_embds_dim": [128, 128], "max_position_embeddings": 16, "is_decoder": True,
            }
        )
    )  # fmt: skip
    return checkpoint, config


def wait_until_writing(process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Block until the converter holds an anonymous (O_TMPFILE) output file with data in it."""
    deadline = time.monotonic() + timeout
    fd_dir = Path(f"/proc/{process.pid}/fd")
    while time.monotonic() < deadline:
        assert process.poll() is None, "convert finished before it could be interrupted"
        try:
            for fd in fd_dir.iterdir():
                target = os.readlink(fd)
                if "(deleted)" in target and os.stat(fd).st_size > 1_000_000:
                    return
        except (FileNotFoundError, ProcessLookupError):
            pass
        time.sleep(0.001)
    raise AssertionError("convert never started writing")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
@pytest.mark.parametrize("output", ["hf", "model.safetensors"])
def test_interrupted_convert_leaves_nothing(signum: signal.Signals, output: str, tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    checkpoint, config = write_large_checkpoint(source)
    target_dir = tmp_path / "out"
    target_dir.mkdir()
    out = target_dir / output
    process = subprocess.Popen(
        [sys.executable, "-m", "reformer_tools", "convert", str(checkpoint), "--config", str(config), "-o", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    wait_until_writing(process)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0
    if signum != signal.SIGKILL:
        assert process.returncode == 130
        assert stderr.decode().strip() == "error: interrupted; nothing was written"
    assert list(target_dir.iterdir()) == []
    assert sorted(p.name for p in source.iterdir()) == ["config.json", "model.pkl"]


def test_the_same_conversion_completes_when_left_alone(tmp_path: Path) -> None:
    checkpoint, config = write_large_checkpoint(tmp_path)
    out = tmp_path / "hf"
    result = subprocess.run(
        [sys.executable, "-m", "reformer_tools", "convert", str(checkpoint), "--config", str(config), "-o", str(out)],
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert {"config.json", "model.safetensors"} <= {p.name for p in out.iterdir()}
