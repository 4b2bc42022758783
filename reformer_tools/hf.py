"""The only module that imports torch or transformers, and only inside functions."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Mapping
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from reformer_tools.errors import ConfigError, MappingError


def torch_tensor(array: npt.NDArray[Any], dtype: str) -> Any:
    """A torch tensor sharing the storage array's memory (bfloat16 from its bits)."""
    import torch

    data = np.ascontiguousarray(array)
    with warnings.catch_warnings():
        # Memory-mapped sources are read-only; the tensor only goes to torch.save, which never writes to it.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
        if dtype == "bfloat16":
            return torch.from_numpy(data.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(data)


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


def load_torch_state_dict(path: Any) -> dict[str, tuple[npt.NDArray[Any] | None, str, tuple[int, ...]]]:
    """Read a ``.bin`` state_dict safely (``weights_only``): key -> (storage array, dtype name, shape).

    Only dtypes this tool knows (``dtypes.DTYPES``) become arrays; a tensor of any other dtype (float8,
    complex32, ...) is kept as its dtype name and shape with no array, for ``verify`` to report. Anything
    that is not a mapping of names to plain tensors raises ValueError, in one line.
    """
    import torch

    from reformer_tools.dtypes import DTYPES
    from reformer_tools.untrusted import printable, shown

    try:
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # files from torch < 1.6 are not zip archives and cannot be memory-mapped
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as error:  # torch.load parses untrusted bytes and fails in many (partly untyped) ways
        first = str(error).split("\n", 1)[0]
        raise ValueError(f"torch.load could not read it: {printable(first, 200)}") from None
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"it holds a {printable(type(state_dict).__name__, 40)}, not a state_dict (names -> tensors)")
    arrays: dict[str, tuple[npt.NDArray[Any] | None, str, tuple[int, ...]]] = {}
    for key, tensor in state_dict.items():
        if not isinstance(key, str):
            raise ValueError(f"key {shown(key)} is not a tensor name (a string)")
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{shown(key)} is a {printable(type(tensor).__name__, 40)}, not a tensor")
        if tensor.layout != torch.strided or tensor.is_quantized or tensor.device.type != "cpu":
            raise ValueError(f"{shown(key)} is not a plain dense tensor ({printable(str(tensor.layout), 40)})")
        shape = tuple(int(d) for d in tensor.shape)
        name = str(tensor.dtype).removeprefix("torch.")
        try:
            if name == "bfloat16":
                bits = tensor.detach().contiguous().view(torch.int16)
                arrays[key] = (bits.numpy().view(np.uint16), "bfloat16", shape)
            elif name in DTYPES:
                arrays[key] = (tensor.detach().contiguous().numpy(), name, shape)
            else:
                arrays[key] = (None, name, shape)  # a dtype no weight of this tool has: reported, never read
        except (TypeError, RuntimeError) as error:  # conjugate or negative views, storage torch cannot share
            raise ValueError(f"{shown(key)}: cannot be read as an array ({printable(str(error), 120)})") from None
    return arrays


# ----------------------------------------------------------- numerics (verify --numerics)


def reformer_lm(config: Mapping[str, Any], state_dict: Mapping[str, npt.NDArray[Any]]) -> Any:
    """A float32 ``ReformerModelWithLMHead`` in eval mode holding exactly ``state_dict``.

    Every key must be used and every parameter given: a partial load would compare randomly
    initialised weights.
    """
    import torch
    from transformers import ReformerConfig, ReformerModelWithLMHead

    try:
        model: Any = ReformerModelWithLMHead(ReformerConfig(**config))
    except AssertionError as error:  # HF checks its config with asserts (is_decoder, look-ahead chunks)
        raise ConfigError(f"Hugging Face's ReformerModelWithLMHead refuses this config: {error}") from None
    # Writable copies where needed: memory-mapped safetensors arrays are read-only, which torch warns about.
    tensors = {
        key: torch.from_numpy(np.require(value, dtype=np.float32, requirements=["C", "W"]))
        for key, value in state_dict.items()
    }
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise MappingError(f"the tensors do not fit ReformerModelWithLMHead: {error}") from None
    if missing or unexpected:
        raise MappingError(
            "the tensors do not fit ReformerModelWithLMHead: "
            f"missing {sorted(missing)}, unexpected {sorted(unexpected)}"
        )
    model.eval()
    return model


def _run(model: Any, input_ids: npt.NDArray[Any]) -> Any:
    import torch
    from transformers.utils import logging as hf_logging

    ids = torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64))
    verbosity = hf_logging.get_verbosity()
    # Shifted ids begin with the pad id 0, which makes HF suggest an attention mask; Trax uses none.
    hf_logging.set_verbosity(logging.ERROR)
    try:
        # HF reseeds torch's global RNG before hashing when hash_seed is set; keep the caller's RNG untouched.
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            return model(input_ids=ids)
    finally:
        hf_logging.set_verbosity(verbosity)


def reformer_lm_log_probs(model: Any, input_ids: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """Log-softmax of the model's logits (batch, length, vocab), in float64."""
    logits = _run(model, input_ids).logits.double()
    return np.asarray(logits.log_softmax(dim=-1).numpy(), dtype=np.float64)


def reformer_lm_hidden_states(model: Any, input_ids: npt.NDArray[Any], n_layers: int) -> npt.NDArray[np.float64]:
    """The reversible halves (attention half, feed-forward half) concatenated after ``n_layers`` layers."""
    import torch

    captured: list[Any] = []

    def after_embeddings(_module: Any, _inputs: Any, output: Any) -> None:
        captured.append(torch.cat([output, output], dim=-1))

    def after_layer(_module: Any, _inputs: Any, output: Any) -> None:
        captured.append(torch.cat([output.attn_output, output.hidden_states], dim=-1))

    reformer = model.reformer
    if n_layers == 0:
        handle = reformer.embeddings.register_forward_hook(after_embeddings)
    else:
        handle = reformer.encoder.layers[n_layers - 1].register_forward_hook(after_layer)
    try:
        _run(model, input_ids)
    finally:
        handle.remove()
    return np.asarray(captured[0].double().numpy(), dtype=np.float64)


def lsh_rotations(hash_seed: int, shape: tuple[int, ...]) -> npt.NDArray[np.float32]:
    """The rotations HF's LSHSelfAttention._hash_vectors draws in float32 when ``hash_seed`` is set.

    It calls ``torch.manual_seed(hash_seed)`` and then ``torch.randn(shape)`` before hashing in every
    LSH layer, so all LSH layers use these same rotations. A fresh generator with that seed gives the
    same numbers without touching the global RNG.
    """
    import torch

    generator = torch.Generator().manual_seed(hash_seed)
    return np.asarray(torch.randn(shape, generator=generator, dtype=torch.float32).numpy())
