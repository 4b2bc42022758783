"""The model configuration: a small typed view of ``config.json``.

The schema is ``transformers.ReformerConfig``'s, with its defaults, read without
importing transformers (that import costs seconds). Unknown keys are kept so a
written ``config.json`` round-trips what the user gave.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from reformer_tools.errors import ConfigError

AttentionKind = Literal["local", "lsh"]
#: The config key that says positions are Trax's fixed sin-cos encoding (a key Hugging Face ignores).
SIN_COS_KEY: Final = "trax_pos_type"
ATTENTION_KINDS: Final = ("local", "lsh")

#: transformers.ReformerConfig's defaults for the fields this tool reads.
HF_DEFAULTS: Final[dict[str, Any]] = {
    "attention_head_size": 64,
    "attn_layers": ["local", "lsh", "local", "lsh", "local", "lsh"],
    "axial_pos_embds": True,
    "axial_pos_shape": [64, 64],
    "axial_pos_embds_dim": [64, 192],
    "feed_forward_size": 512,
    "hash_seed": None,
    "hidden_act": "relu",
    "hidden_size": 256,
    "is_decoder": False,
    "layer_norm_eps": 1e-12,
    "local_attn_chunk_length": 64,
    "local_num_chunks_before": 1,
    "local_num_chunks_after": 0,
    "lsh_attn_chunk_length": 64,
    "lsh_num_chunks_before": 1,
    "lsh_num_chunks_after": 0,
    "max_position_embeddings": 4096,
    "num_attention_heads": 12,
    "num_buckets": None,
    "num_hashes": 1,
    "vocab_size": 320,
}

#: Activations Trax's ReformerLM can have, under the Hugging Face names that compute exactly the same
#: function: tl.Relu, tl.Gelu (erf), tl.FastGelu (the tanh approximation: gelu_new, gelu_fast and
#: gelu_pytorch_tanh), tl.Sigmoid, tl.Tanh, tl.Swish (silu, swish), tl.LeakyRelu (its default slope 0.01).
TRAX_ACTIVATIONS: Final = (
    "relu",
    "gelu",
    "gelu_new",
    "gelu_fast",
    "gelu_pytorch_tanh",
    "sigmoid",
    "tanh",
    "silu",
    "swish",
    "leaky_relu",
)


@dataclass(frozen=True)
class ReformerSpec:
    """What the weights' shapes and the forward pass depend on."""

    vocab_size: int
    hidden_size: int
    num_attention_heads: int
    attention_head_size: int
    feed_forward_size: int
    attn_layers: tuple[AttentionKind, ...]
    axial_pos_embds: bool
    axial_pos_shape: tuple[int, ...]
    axial_pos_embds_dim: tuple[int, ...]
    max_position_embeddings: int
    hidden_act: str = "relu"
    layer_norm_eps: float = 1e-12
    local_attn_chunk_length: int = 64
    local_num_chunks_before: int = 1
    local_num_chunks_after: int = 0
    lsh_attn_chunk_length: int = 64
    lsh_num_chunks_before: int = 1
    lsh_num_chunks_after: int = 0
    num_hashes: int = 1
    num_buckets: int | tuple[int, ...] | None = None
    hash_seed: int | None = None
    is_decoder: bool = False
    #: Trax's fixed sin-cos positions (no weights): the learned table is computed, not read from the checkpoint.
    sin_cos_positions: bool = False
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def num_layers(self) -> int:
        return len(self.attn_layers)

    @property
    def all_head_size(self) -> int:
        return self.num_attention_heads * self.attention_head_size

    def to_config_dict(self) -> dict[str, Any]:
        """A ``config.json`` for ``ReformerModelWithLMHead``: the user's keys, made complete."""
        config = dict(self.raw)
        config.update(
            {
                "architectures": ["ReformerModelWithLMHead"],
                "model_type": "reformer",
                "vocab_size": self.vocab_size,
                "hidden_size": self.hidden_size,
                "num_attention_heads": self.num_attention_heads,
                "attention_head_size": self.attention_head_size,
                "feed_forward_size": self.feed_forward_size,
                "attn_layers": list(self.attn_layers),
                "axial_pos_embds": self.axial_pos_embds,
                "axial_pos_shape": list(self.axial_pos_shape),
                "axial_pos_embds_dim": list(self.axial_pos_embds_dim),
                "max_position_embeddings": self.max_position_embeddings,
                "hidden_act": self.hidden_act,
                "layer_norm_eps": self.layer_norm_eps,
                "local_attn_chunk_length": self.local_attn_chunk_length,
                "local_num_chunks_before": self.local_num_chunks_before,
                "local_num_chunks_after": self.local_num_chunks_after,
                "lsh_attn_chunk_length": self.lsh_attn_chunk_length,
                "lsh_num_chunks_before": self.lsh_num_chunks_before,
                "lsh_num_chunks_after": self.lsh_num_chunks_after,
                "num_hashes": self.num_hashes,
                "num_buckets": list(self.num_buckets) if isinstance(self.num_buckets, tuple) else self.num_buckets,
                "hash_seed": self.hash_seed,
                "is_decoder": self.is_decoder,
                **({SIN_COS_KEY: "sin-cos"} if self.sin_cos_positions else {}),
            }
        )
        return config


#: A config file larger than this is not one (real ones are a few KB).
MAX_CONFIG_BYTES: Final = 8 * 1024 * 1024


def read_config_file(path: Path, kind: str) -> bytes:
    """The bytes of a config file the user gave (``kind``: "config.json", "config.gin"), or a ConfigError."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a {kind}") from None
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied") from None
    except OSError as error:
        raise ConfigError(f"{path}: {error.strerror or error}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES // 2**20} MiB, not a {kind}")
    return data


def read_config_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON object in a ``config.json``, not yet validated. Errors name the file."""
    path = Path(path)
    try:
        text = read_config_file(path, "config.json").decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a JSON file (not UTF-8 text)") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def load_spec(path: str | os.PathLike[str]) -> ReformerSpec:
    """Read and validate a ``config.json``. Errors name the file and the field."""
    data = read_config_json(path)
    try:
        return spec_from_dict(data)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def spec_from_dict(data: Any) -> ReformerSpec:
    """Validate a config mapping (HF's schema and defaults) into a spec."""
    if not isinstance(data, dict):
        raise ConfigError(f"expected a JSON object, got {type(data).__name__}")
    if data.get("model_type", "reformer") != "reformer":
        raise ConfigError(f"model_type is {data['model_type']!r}, not 'reformer'")
    values = {**HF_DEFAULTS, **data}
    reader = _Reader(values)
    attn_layers = reader.str_list("attn_layers", ATTENTION_KINDS)
    spec = ReformerSpec(
        vocab_size=reader.positive_int("vocab_size"),
        hidden_size=reader.positive_int("hidden_size"),
        num_attention_heads=reader.positive_int("num_attention_heads"),
        attention_head_size=reader.positive_int("attention_head_size"),
        feed_forward_size=reader.positive_int("feed_forward_size"),
        attn_layers=attn_layers,  # type: ignore[arg-type]
        axial_pos_embds=reader.boolean("axial_pos_embds"),
        axial_pos_shape=reader.int_tuple("axial_pos_shape"),
        axial_pos_embds_dim=reader.int_tuple("axial_pos_embds_dim"),
        max_position_embeddings=reader.positive_int("max_position_embeddings"),
        hidden_act=reader.string("hidden_act"),
        layer_norm_eps=reader.positive_number("layer_norm_eps"),
        local_attn_chunk_length=reader.positive_int("local_attn_chunk_length"),
        local_num_chunks_before=reader.non_negative_int("local_num_chunks_before"),
        local_num_chunks_after=reader.non_negative_int("local_num_chunks_after"),
        lsh_attn_chunk_length=reader.positive_int("lsh_attn_chunk_length"),
        lsh_num_chunks_before=reader.non_negative_int("lsh_num_chunks_before"),
        lsh_num_chunks_after=reader.non_negative_int("lsh_num_chunks_after"),
        num_hashes=reader.positive_int("num_hashes"),
        num_buckets=reader.buckets("num_buckets"),
        hash_seed=reader.optional_int("hash_seed"),
        is_decoder=reader.boolean("is_decoder"),
        sin_cos_positions=reader.sin_cos(),
        raw=dict(data),
    )
    _check_consistency(spec, data)
    return spec


def _check_consistency(spec: ReformerSpec, data: dict[str, Any]) -> None:
    """Refuse configs that cannot describe a Trax ReformerLM in Hugging Face, every problem at once."""
    problems = []
    if not spec.attn_layers:
        problems.append("attn_layers is empty")
    layers = data.get("num_hidden_layers", spec.num_layers)
    if layers != spec.num_layers:
        problems.append(
            f"num_hidden_layers is {layers!r} but attn_layers lists {spec.num_layers} layers "
            "(Hugging Face would build the extra layers with random weights)"
        )
    if spec.hidden_act not in TRAX_ACTIVATIONS:
        problems.append(
            f"hidden_act {spec.hidden_act!r} is not an activation Trax's ReformerLM can have "
            f"(one of {', '.join(TRAX_ACTIVATIONS)})"
        )
    if spec.axial_pos_embds:
        if len(spec.axial_pos_shape) != len(spec.axial_pos_embds_dim) or not spec.axial_pos_shape:
            problems.append("axial_pos_shape and axial_pos_embds_dim must have the same, non-zero length")
        elif sum(spec.axial_pos_embds_dim) != spec.hidden_size:
            problems.append(
                f"axial_pos_embds_dim {list(spec.axial_pos_embds_dim)} must sum to hidden_size {spec.hidden_size}"
            )
        elif math.prod(spec.axial_pos_shape) != spec.max_position_embeddings:
            problems.append(
                f"axial_pos_shape {list(spec.axial_pos_shape)} has {math.prod(spec.axial_pos_shape)} positions but "
                f"max_position_embeddings is {spec.max_position_embeddings}"
            )
    if not spec.is_decoder:
        problems.append("is_decoder must be true: Trax's ReformerLM is causal, and ReformerModelWithLMHead requires it")
    for kind in ("local", "lsh"):
        after = getattr(spec, f"{kind}_num_chunks_after")
        if kind in spec.attn_layers and after != 0:
            problems.append(f"{kind}_num_chunks_after must be 0 in a causal model, got {after}")
    buckets = spec.num_buckets
    factors = (buckets,) if isinstance(buckets, int) else buckets or ()
    if any(factor % 2 for factor in factors):
        problems.append(f"num_buckets {_json(buckets)} must be even (each factor, when a list)")
    if data.get("tie_word_embeddings") is True:
        problems.append(
            "tie_word_embeddings must be false: the output layer is (2*hidden_size, vocab_size), "
            "which cannot share the (vocab_size, hidden_size) embedding"
        )
    for key in _PROBABILITIES:
        value = data.get(key)
        if value is not None and (type(value) not in (int, float) or not 0 <= value < 1):
            problems.append(f"{key} must be a probability in [0, 1), got {value!r}")
    for key in _TOKEN_IDS:
        value = data.get(key)
        ids = value if isinstance(value, list) else [value]
        if value is not None and not all(type(i) is int and 0 <= i < spec.vocab_size for i in ids):
            problems.append(f"{key} must be null or token ids in [0, {spec.vocab_size}), got {value!r}")
    for key in _CHUNK_SIZES:
        value = data.get(key)
        if value is not None and (type(value) is not int or value < 0):
            problems.append(f"{key} must be a non-negative integer, got {value!r}")
    if problems:
        raise ConfigError("; ".join(problems))


_PROBABILITIES: Final = (
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "local_attention_probs_dropout_prob",
    "lsh_attention_probs_dropout_prob",
)
_TOKEN_IDS: Final = ("pad_token_id", "eos_token_id", "bos_token_id")
_CHUNK_SIZES: Final = ("chunk_size_feed_forward", "chunk_size_lm_head")


def _json(value: Any) -> str:
    return json.dumps(list(value) if isinstance(value, tuple) else value)


class _Reader:
    """Typed access to config values; errors name the field."""

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values

    def _get(self, key: str) -> Any:
        return self._values[key]

    def positive_int(self, key: str) -> int:
        value = self.non_negative_int(key)
        if value == 0:
            raise ConfigError(f"{key} must be positive, got 0")
        return value

    def non_negative_int(self, key: str) -> int:
        value = self._get(key)
        if type(value) is not int or value < 0:
            raise ConfigError(f"{key} must be a non-negative integer, got {value!r}")
        return value

    def optional_int(self, key: str) -> int | None:
        value = self._get(key)
        if value is not None and type(value) is not int:
            raise ConfigError(f"{key} must be an integer or null, got {value!r}")
        return value

    def positive_number(self, key: str) -> float:
        value = self._get(key)
        if type(value) not in (int, float) or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"{key} must be a positive number, got {value!r}")
        return float(value)

    def boolean(self, key: str) -> bool:
        value = self._get(key)
        if type(value) is not bool:
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value

    def string(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value

    def int_tuple(self, key: str) -> tuple[int, ...]:
        value = self._get(key)
        if not isinstance(value, list | tuple) or not all(type(v) is int and v > 0 for v in value):
            raise ConfigError(f"{key} must be a list of positive integers, got {value!r}")
        return tuple(value)

    def str_list(self, key: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
        value = self._get(key)
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key} must be a list of strings, got {value!r}")
        for item in value:
            if item not in allowed:
                raise ConfigError(f"{key} may only contain {' or '.join(map(repr, allowed))}, got {item!r}")
        return tuple(value)

    def sin_cos(self) -> bool:
        value = self._values.get(SIN_COS_KEY)
        if value is None:
            return False
        if value != "sin-cos":
            raise ConfigError(f"{SIN_COS_KEY} may only be 'sin-cos' (Trax's weightless positions), got {value!r}")
        if self._values["axial_pos_embds"]:
            raise ConfigError(f"{SIN_COS_KEY} 'sin-cos' needs axial_pos_embds false: the table takes the learned slot")
        return True

    def buckets(self, key: str) -> int | tuple[int, ...] | None:
        value = self._get(key)
        if value is None or (type(value) is int and value > 0):
            return value
        if isinstance(value, list | tuple) and value and all(type(v) is int and v > 0 for v in value):
            return tuple(value)
        raise ConfigError(f"{key} must be null, a positive integer or a list of them, got {value!r}")
