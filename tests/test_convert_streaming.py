"""Gzip checkpoints converted as they are inflated: same output as the in-memory way, about one tensor held (#12)."""

from __future__ import annotations

import gzip
import json
import pickle
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

import reformer_tools.convert as convert_module
from reformer_tools import gzip_stream
from reformer_tools.convert import ConversionOptions, convert_checkpoint, write_conversion
from reformer_tools.errors import ReformerToolsError
from reformer_tools.loader import load_checkpoint
from reformer_tools.mapper import expected_slots
from reformer_tools.resolve import ConfigSources
from reformer_tools.spec import spec_from_dict
from tests.conftest import TRAX_FIXTURES, invoke

LOCAL = TRAX_FIXTURES / "t141_local_axial"
CONFIG = LOCAL / "config.json"


def fixture_weights() -> list[np.ndarray]:
    return [np.array(a) for _, a in load_checkpoint(LOCAL / "model.pkl").iter_arrays()]


def write_gzip_pickle(path: Path, checkpoint: Any, level: int = 1) -> Path:
    with gzip.open(path, "wb", compresslevel=level) as f:
        pickle.dump(checkpoint, f, protocol=4)
    return path


def safetensors_of(output: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    weights = output / "model.safetensors" if output.is_dir() else output
    with safe_open(str(weights), "np") as f:
        metadata = f.metadata()
    return load_file(str(weights)), metadata


def in_memory_conversion(checkpoint: Path, sources: ConfigSources, output: Path) -> None:
    """The conversion without streaming or spilling: every array loaded first, then written."""
    loaded = load_checkpoint(checkpoint)
    write_conversion(loaded, sources.resolve(loaded), output)


def assert_same_output(ours: Path, reference: Path) -> None:
    tensors, metadata = safetensors_of(ours)
    expected, expected_metadata = safetensors_of(reference)
    assert tensors.keys() == expected.keys()
    for key, value in expected.items():
        assert tensors[key].dtype == value.dtype, key
        assert tensors[key].tobytes() == value.tobytes(), key  # bit for bit
    assert metadata == expected_metadata
    if ours.is_dir():
        assert (ours / "config.json").read_bytes() == (reference / "config.json").read_bytes()


@pytest.mark.parametrize("with_config", [True, False], ids=["config", "no-config"])
def test_a_gzip_pickle_converts_bit_for_bit_as_in_memory(tmp_path: Path, with_config: bool) -> None:
    checkpoint = write_gzip_pickle(
        tmp_path / "model.pkl.gz",
        {"step": 3, "flat_weights": fixture_weights(), "slots": (), "version_timestamp": "Jun-18-2020"},
    )
    sources = ConfigSources(config_path=CONFIG) if with_config else ConfigSources()
    convert_checkpoint(checkpoint, tmp_path / "streamed", sources)
    in_memory_conversion(checkpoint, sources, tmp_path / "reference")
    assert_same_output(tmp_path / "streamed", tmp_path / "reference")


@pytest.mark.parametrize("with_config", [True, False], ids=["config", "no-config"])
def test_side_files_are_inflated_once_and_convert_as_in_memory(
    tmp_path: Path, with_config: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = LOCAL / "loop_checkpoint" / "model.pkl.gz"
    sources = ConfigSources(config_path=CONFIG) if with_config else ConfigSources()
    in_memory_conversion(checkpoint, sources, tmp_path / "reference")
    reads: list[bool] = []
    read_records = convert_module.load_checkpoint.__globals__["read_records"]

    def counting(side: Path, max_decompressed: int | None, *, headers_only: bool) -> Any:
        reads.append(headers_only)
        return read_records(side, max_decompressed, headers_only=headers_only)

    monkeypatch.setitem(convert_module.load_checkpoint.__globals__, "read_records", counting)
    convert_checkpoint(checkpoint, tmp_path / "streamed", sources)
    assert reads == [False]  # one pass over the side file, with its data (the first header is read apart)
    assert_same_output(tmp_path / "streamed", tmp_path / "reference")


def test_a_pickle_whose_weights_are_not_the_arrays_streamed_is_converted_from_its_weights(tmp_path: Path) -> None:
    # The pickle builds the arrays in one order, and its flat_weights names them in another: every
    # streamed array has a planned shape (the two norms are alike), only the final check can tell.
    weights = fixture_weights()
    swapped = list(weights)
    first, second = _two_alike(weights)
    swapped[first], swapped[second] = weights[second], weights[first]
    checkpoint = write_gzip_pickle(
        tmp_path / "model.pkl.gz", {"built": weights, "flat_weights": swapped, "version_timestamp": "Jun-18-2020"}
    )
    out = tmp_path / "model.safetensors"
    result = invoke(["convert", checkpoint, "--config", CONFIG, "-o", out])
    assert result.exit_code == 0, result.stderr
    in_memory_conversion(checkpoint, ConfigSources(config_path=CONFIG), tmp_path / "reference.safetensors")
    assert_same_output(out, tmp_path / "reference.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pkl.gz", "model.safetensors", "reference.safetensors"]


def _two_alike(weights: list[np.ndarray]) -> tuple[int, int]:
    """Two weights of one shape whose values differ."""
    for i, a in enumerate(weights):
        for j in range(i + 1, len(weights)):
            if weights[j].shape == a.shape and not np.array_equal(weights[j], a):
                return i, j
    raise AssertionError("the fixture has no two weights of one shape")


class _SharedData:
    """An array pickled with numpy's protocol-5 rebuilder over a bytes object other arrays share."""

    def __init__(self, data: bytes, shape: tuple[int, ...]) -> None:
        self.data, self.shape = data, shape

    def __reduce__(self) -> tuple[Any, ...]:
        from numpy._core.numeric import _frombuffer  # type: ignore[attr-defined]

        return _frombuffer, (self.data, np.dtype(np.float32), self.shape, "C")


@pytest.mark.parametrize("later", [False, True], ids=["among-weights", "after-weights"])
@pytest.mark.parametrize("with_config", [True, False], ids=["config", "no-config"])
def test_arrays_that_share_their_data_are_read_again_and_kept(tmp_path: Path, with_config: bool, later: bool) -> None:
    # Pickle memoizes the shared bytes: the second array is built from data the first one's release
    # dropped (among the weights, or in the optimizer slots after them). The load must notice and read
    # the file again, keeping the data.
    weights = wide_weights(2)
    first, second = _two_alike(weights)
    shared = weights[first].tobytes()
    flat: list[Any] = list(weights)
    flat[first] = _SharedData(shared, weights[first].shape)
    slots: list[Any] = []
    if later:
        slots.append(_SharedData(shared, weights[first].shape))
    else:
        flat[second] = _SharedData(shared, weights[first].shape)
    checkpoint, sources = wide_checkpoint(tmp_path, 2, with_config, flat, slots)
    conversion = convert_checkpoint(checkpoint, tmp_path / "streamed", sources)
    in_memory_conversion(checkpoint, sources, tmp_path / "reference")
    assert_same_output(tmp_path / "streamed", tmp_path / "reference")
    tensors, _ = safetensors_of(tmp_path / "streamed")
    copies = sum(np.array_equal(t.ravel(), weights[first].ravel()) for t in tensors.values())
    assert copies == (1 if later else 2)
    with pytest.raises(ReformerToolsError, match="already released"):
        next(conversion.checkpoint.iter_arrays())


@pytest.mark.parametrize("with_config", [True, False], ids=["config", "no-config"])
def test_a_truncated_gzip_pickle_leaves_nothing_behind(tmp_path: Path, with_config: bool) -> None:
    source = write_gzip_pickle(
        tmp_path / "whole.pkl.gz", {"flat_weights": fixture_weights(), "version_timestamp": "Jun-18-2020"}
    )
    checkpoint = tmp_path / "model.pkl.gz"
    checkpoint.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    source.unlink()
    args = ["convert", checkpoint, "-o", tmp_path / "hf", *(["--config", CONFIG] if with_config else [])]
    result = invoke(args)
    assert result.exit_code == 3, result.stderr
    assert "truncated" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pkl.gz"]  # no output, staging or spill file


# ------------------------------------------------------------------ memory


def _wide_config(layers: int) -> dict[str, Any]:
    """A model whose feed-forward weights (64 x 2048 float32, 512 KiB) dwarf the rest."""
    return {
        "architectures": ["ReformerModelWithLMHead"],
        "model_type": "reformer",
        "attn_layers": ["local"] * layers,
        "hidden_size": 64,
        "feed_forward_size": 2048,
        "num_attention_heads": 2,
        "attention_head_size": 32,
        "vocab_size": 64,
        "axial_pos_embds": True,
        "axial_pos_shape": [8, 8],
        "axial_pos_embds_dim": [32, 32],
        "max_position_embeddings": 64,
        "hidden_act": "relu",
        "is_decoder": True,
        "layer_norm_eps": 1e-6,
        "local_attn_chunk_length": 16,
        "local_num_chunks_before": 1,
        "local_num_chunks_after": 0,
        "num_hashes": 1,
        "tie_word_embeddings": False,
    }


def wide_weights(layers: int) -> list[np.ndarray]:
    rng = np.random.default_rng(layers)
    slots = expected_slots(spec_from_dict(_wide_config(layers))).slots
    return [rng.standard_normal(slot.source_shape, dtype=np.float32) for slot in slots]


def wide_checkpoint(
    directory: Path, layers: int, with_config: bool, weights: list[Any], slots: list[Any] | None = None
) -> tuple[Path, ConfigSources]:
    """A gzip pickle (level 0: quick to write) of ``weights``, and the sources to convert it with."""
    config = _wide_config(layers)
    (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")
    content = {"step": 1, "flat_weights": weights, "slots": slots or [], "version_timestamp": "Jun-18-2020"}
    checkpoint = write_gzip_pickle(directory / "model.pkl.gz", content, level=0)
    if with_config:
        return checkpoint, ConfigSources(config_path=directory / "config.json")
    given = ("local_attn_chunk_length", "local_num_chunks_before", "local_num_chunks_after", "hidden_act")
    return checkpoint, ConfigSources(settings={key: config[key] for key in given})


def _peak_traced(tmp_path: Path, layers: int, with_config: bool) -> tuple[int, int]:
    """Peak traced bytes while converting a ``layers``-deep gzip pickle, and the checkpoint's weight bytes."""
    directory = tmp_path / f"{layers}-{with_config}"
    directory.mkdir()
    weights = wide_weights(layers)
    total = sum(w.nbytes for w in weights)
    checkpoint, sources = wide_checkpoint(directory, layers, with_config, weights)
    del weights
    tracemalloc.start()
    try:
        convert_checkpoint(checkpoint, directory / "out.safetensors", sources, ConversionOptions())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak, total


@pytest.mark.parametrize("with_config", [True, False], ids=["config", "no-config"])
def test_converting_a_gzip_pickle_holds_about_one_tensor_whatever_its_size(
    tmp_path: Path, with_config: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Inflating reads ahead a bounded amount (16 MiB): smaller pieces here, so that only what is held stands out.
    monkeypatch.setattr(gzip_stream, "_CHUNK", 1 << 16)
    tensor = 64 * 2048 * 4
    small, small_total = _peak_traced(tmp_path, 4, with_config)
    large, large_total = _peak_traced(tmp_path, 16, with_config)
    assert large_total - small_total > 24 * tensor
    # Four times the layers, the same memory: a few tensors in flight (being built, queued, converted),
    # not the weights held until the load ends.
    assert large - small < 8 * tensor, (small, large)


def test_a_spill_that_cannot_be_written_is_an_output_error_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint, _ = wide_checkpoint(tmp_path, 1, False, wide_weights(1))

    def full_disk(fd: int, data: Any, offset: int) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(convert_module.os, "pwrite", full_disk)
    result = invoke(["convert", checkpoint, "--set", "local_attn_chunk_length=16", "-o", tmp_path / "hf"])
    assert result.exit_code == 5, result.stderr
    assert "cannot spill the weights" in result.stderr
    assert "No space left" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.pkl.gz"]
