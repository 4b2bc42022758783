"""Read a converted model back (a directory, a .safetensors file or a .bin), without loading it all."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from reformer_tools.dtypes import BY_SAFETENSORS, DTYPES
from reformer_tools.errors import UnreadableCheckpointError
from reformer_tools.safetensors_writer import read_header
from reformer_tools.untrusted import printable, shown

_KINDS: Final = "a model directory, a .safetensors file or a .bin file"


class NotConverted(ValueError):
    """The path is not a converted model at all (a text file given as CONVERTED, ...)."""


@dataclass(frozen=True)
class StoredTensor:
    """Where one tensor lives: file, dtype, shape, byte range (or an array, for .bin)."""

    file: Path
    dtype: str  # a name of dtypes.DTYPES; from a .bin, any torch dtype (then ``array`` is None: unreadable)
    shape: tuple[int, ...]
    start: int = 0
    end: int = 0
    array: npt.NDArray[Any] | None = field(default=None, repr=False)


@dataclass
class ConvertedModel:
    """A converted model's tensors and, for a directory, its config.json."""

    path: Path
    tensors: dict[str, StoredTensor]
    config: dict[str, Any] | None

    def load(self, key: str) -> npt.NDArray[Any]:
        """The tensor's storage array (bfloat16 as uint16), memory-mapped when possible."""
        stored = self.tensors[key]
        if stored.array is not None:
            return stored.array
        if stored.dtype not in DTYPES:
            raise ValueError(f"{shown(key)} is stored as {printable(stored.dtype, 40)}, which cannot be read")
        storage = DTYPES[stored.dtype].storage
        count = math.prod(stored.shape)
        if count == 0:
            return np.empty(stored.shape, dtype=storage)
        mapped = np.memmap(stored.file, dtype=storage, mode="r", offset=stored.start, shape=(count,))
        return mapped.reshape(stored.shape)

    def items(self) -> Iterator[tuple[str, StoredTensor]]:
        yield from self.tensors.items()


def open_converted(path: Path, *, torch_bin: bool = False) -> ConvertedModel:
    """Open a converted model; errors name the file and what is wrong.

    safetensors files are parsed here (header checked, data memory-mapped), so
    reading a converted model needs neither torch nor the file in memory; only a
    ``.bin`` (or any file with ``torch_bin``) goes through ``torch.load(weights_only=True)``.
    """
    try:
        if path.is_dir():
            return _open_directory(path)
        if torch_bin or path.suffix == ".bin":
            return ConvertedModel(path, _read_bin(path), None)
        return ConvertedModel(path, _read_safetensors(path), None)
    except NotConverted as error:
        raise UnreadableCheckpointError(f"{path}: not a converted model ({_KINDS}): {error}") from None
    except (OSError, ValueError, RecursionError) as error:  # RecursionError: JSON nested too deeply
        message = printable(str(error).split("\n", 1)[0], 300)
        raise UnreadableCheckpointError(f"{path}: cannot read the converted model ({message})") from None


def _open_directory(path: Path) -> ConvertedModel:
    config_file = path / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.exists() else None
    index = path / "model.safetensors.index.json"
    tensors: dict[str, StoredTensor] = {}
    if index.exists():
        document = json.loads(index.read_text(encoding="utf-8"))
        weight_map = document.get("weight_map") if isinstance(document, dict) else None
        if not isinstance(weight_map, dict) or not all(_is_file_name(v) for v in weight_map.values()):
            raise ValueError("model.safetensors.index.json has no weight_map of file names in this directory")
        for shard in sorted(set(weight_map.values())):
            tensors.update(_read_safetensors(path / shard))
    elif (path / "model.safetensors").exists():
        tensors = _read_safetensors(path / "model.safetensors")
    elif (path / "pytorch_model.bin").exists():
        tensors = _read_bin(path / "pytorch_model.bin")
    else:
        raise ValueError("no model.safetensors, model.safetensors.index.json or pytorch_model.bin in it")
    return ConvertedModel(path, tensors, config)


def _is_file_name(value: object) -> bool:
    """A plain name of a file in the same directory (not a path elsewhere)."""
    return isinstance(value, str) and value not in ("", ".", "..") and "/" not in value and "\0" not in value


def _read_safetensors(path: Path) -> dict[str, StoredTensor]:
    size = path.stat().st_size
    with open(path, "rb") as file:
        prefix = file.read(9)
        length = int.from_bytes(prefix[:8], "little")
        # A safetensors file is [u64 length][JSON object][data]: anything else is not one.
        if len(prefix) < 9 or length > size - 8 or prefix[8:9] != b"{":
            suffix = f"a {path.suffix} file" if path.suffix and path.suffix != ".safetensors" else "this file"
            raise NotConverted(f"{suffix} does not start like a safetensors file")
        file.seek(0)
        data_start, header = read_header(file)
    tensors = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise ValueError(f"tensor {shown(key)} has no dtype, shape and offsets")
        code = entry.get("dtype")
        dtype = BY_SAFETENSORS.get(code) if isinstance(code, str) else None
        if dtype is None:
            raise ValueError(f"tensor {shown(key)} has an unknown dtype {shown(entry.get('dtype'), 20)}")
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if not (
            isinstance(shape, list)
            and all(type(d) is int and d >= 0 for d in shape)
            and isinstance(offsets, list)
            and len(offsets) == 2
            and all(type(o) is int and o >= 0 for o in offsets)
        ):
            raise ValueError(f"tensor {shown(key)}: malformed shape or data offsets")
        start, end = (data_start + offset for offset in offsets)
        if end - start != math.prod(shape) * DTYPES[dtype].itemsize or end > size:
            raise ValueError(f"tensor {shown(key)}: its byte range does not match its shape")
        tensors[key] = StoredTensor(path, dtype, tuple(shape), start, end)
    return tensors


def _read_bin(path: Path) -> dict[str, StoredTensor]:
    from reformer_tools.hf import load_torch_state_dict

    # torch.load(weights_only=True) refusing or failing to parse it, or anything but a state_dict of plain
    # tensors, is a ValueError naming the problem in one line.
    state = load_torch_state_dict(path)
    return {key: StoredTensor(path, dtype, shape, array=array) for key, (array, dtype, shape) in state.items()}
