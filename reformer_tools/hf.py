"""The only module that imports torch or transformers, and only inside functions."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt


def torch_tensor(array: npt.NDArray[Any], dtype: str) -> Any:
    """A torch tensor sharing the storage array's memory (bfloat16 from its bits)."""
    import torch

    if dtype == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(array).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(array))


def save_torch_state_dict(
    file: BinaryIO, tensors: Iterable[tuple[str, npt.NDArray[Any], str]]
) -> list[tuple[str, int]]:
    """``torch.save`` a state_dict, the legacy ``pytorch_model.bin`` format."""
    import torch

    state_dict: dict[str, Any] = {}
    shared: dict[int, Any] = {}  # one tensor for keys fed the same array (lm_head.bias)
    for key, array, dtype in tensors:
        tensor = shared.get(id(array))
        if tensor is None:
            tensor = shared[id(array)] = torch_tensor(array, dtype)
        state_dict[key] = tensor
    torch.save(state_dict, file)
    file.flush()
    return [
        (
            getattr(file, "name", "model.bin") if isinstance(getattr(file, "name", None), str) else "model.bin",
            file.tell(),
        )
    ]


def load_torch_state_dict(path: Any) -> dict[str, tuple[npt.NDArray[Any], str]]:
    """Read a ``.bin`` state_dict safely (``weights_only``) as numpy storage arrays."""
    import torch

    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # files from torch < 1.6 are not zip archives and cannot be memory-mapped
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    arrays: dict[str, tuple[npt.NDArray[Any], str]] = {}
    for key, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{key!r} is a {type(tensor).__name__}, not a tensor")
        if tensor.dtype == torch.bfloat16:
            arrays[key] = (tensor.contiguous().view(torch.int16).numpy().view(np.uint16), "bfloat16")
        else:
            arrays[key] = (tensor.contiguous().numpy(), str(tensor.dtype).removeprefix("torch."))
    return arrays
