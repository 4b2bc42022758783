"""The naive baseline: convert a Trax checkpoint the way Hugging Face's old script does.

Cost structure of ``convert_reformer_trax_checkpoint_to_pytorch.py``, kept on
purpose: import torch and transformers, build a randomly initialised
``ReformerModelWithLMHead`` on the CPU, ``pickle.load`` the whole checkpoint,
copy every array into a new ``nn.Parameter`` (``torch.tensor`` + transpose
+ ``contiguous`` as the old script does), then ``torch.save(model.state_dict())``.

Only the mapping is borrowed: ``reformer_tools.mapper.plan`` says which array
goes where, so the baseline also reads the formats the old script never could
(gzip flat weights, ``.weights.npy.gz`` side files) without index arithmetic.

``pickle.load`` runs code from the file. That is acceptable here only because
``bench_convert.py`` generated every file this script is given.
"""

from __future__ import annotations

import argparse
import gzip
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np
import torch
from torch import nn
from transformers import ReformerConfig, ReformerModelWithLMHead

from reformer_tools.checkpoint import Leaf
from reformer_tools.mapper import plan
from reformer_tools.spec import load_spec

_GZIP_MAGIC = b"\x1f\x8b"


def _open(path: Path) -> BinaryIO:
    with open(path, "rb") as probe:
        compressed = probe.read(2) == _GZIP_MAGIC
    return cast(BinaryIO, gzip.open(path, "rb") if compressed else open(path, "rb"))


def _flatten(tree: Any) -> Iterator[np.ndarray]:
    # Trax's own leaf order: depth first through lists and tuples, dict values in insertion order.
    if isinstance(tree, list | tuple):
        for item in tree:
            yield from _flatten(item)
    elif isinstance(tree, dict):
        for item in tree.values():
            yield from _flatten(item)
    elif isinstance(tree, np.ndarray):
        yield tree


def _side_file(path: Path) -> Path:
    base = path.name[: -len("pkl.gz")]
    for candidate in (path.with_name(base + "weights.npy.gz"), path.with_name(path.name + ".npy")):
        if candidate.exists():
            return candidate
    raise SystemExit(f"{path}: flat_weights is an int but no .npy side file exists")


def _read_npy_stream(path: Path) -> list[np.ndarray]:
    # Trax's np_from_file: np.load in a loop on one gzip stream until it runs dry.
    arrays = []
    with gzip.open(path, "rb") as stream:
        while True:
            try:
                arrays.append(np.load(stream, allow_pickle=False))
            except EOFError:
                return arrays


def load_arrays(path: Path) -> list[np.ndarray]:
    """Every weight array of the checkpoint, in Trax's flat order, all in memory at once."""
    with _open(path) as file:
        checkpoint = pickle.load(file)  # trusted: bench_convert.py wrote this file
    if "weights" in checkpoint:
        return list(_flatten(checkpoint["weights"]))
    flat = checkpoint["flat_weights"]
    if isinstance(flat, int):
        return _read_npy_stream(_side_file(path))
    return list(_flatten(flat))


def _to_torch(array: np.ndarray, transform: str, hidden_size: int) -> torch.Tensor:
    # The old script's exact torch expressions: each copies at least once.
    tensor = torch.tensor(array)
    if transform == "heads_in":
        return tensor.transpose(1, 2).contiguous().view(-1, hidden_size)
    if transform == "heads_out":
        return tensor.view(-1, hidden_size).contiguous().transpose(0, 1)
    if transform == "transpose":
        return tensor.transpose(0, 1).contiguous()
    if transform == "drop_leading_axis":
        return tensor[0]
    if transform == "positions":
        return tensor.reshape(tensor.shape[-2:])
    return tensor


def _set_parameter(model: nn.Module, key: str, parameter: nn.Parameter) -> None:
    # Replace, not copy into: the old script's set_param does `layer.weight = nn.Parameter(...)`.
    owner, _, name = key.rpartition(".")
    module = model.get_submodule(owner)
    old = getattr(module, name)
    assert old.shape == parameter.shape, f"{key}: {tuple(old.shape)} != {tuple(parameter.shape)}"
    setattr(module, name, parameter)


def convert(checkpoint: Path, config_file: Path, output: Path) -> None:
    config = ReformerConfig.from_json_file(str(config_file))
    model = ReformerModelWithLMHead(config)  # random init, as the old script does
    arrays = load_arrays(checkpoint)
    leaves = [Leaf(i, f"[{i}]", tuple(a.shape), str(a.dtype)) for i, a in enumerate(arrays)]
    for assignment in plan(load_spec(config_file), leaves, source=str(checkpoint)).assignments:
        array = arrays[assignment.leaf.index]
        parameter = nn.Parameter(_to_torch(array, assignment.slot.transform.name, config.hidden_size))
        for key in assignment.slot.hf_keys:
            _set_parameter(model, key, parameter)
    torch.save(model.state_dict(), output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="model.pkl, model.pkl.gz (flat or with a side file)")
    parser.add_argument("--config", type=Path, required=True, help="the model's config.json")
    parser.add_argument("-o", "--output", type=Path, required=True, help="where to torch.save the state_dict")
    args = parser.parse_args()
    convert(args.checkpoint, args.config, args.output)


if __name__ == "__main__":
    main()
