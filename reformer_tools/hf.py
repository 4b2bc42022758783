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
