"""``verify --numerics``: run the converted model and Trax's forward pass on the same tokens, compare log-probs.

The Trax side is :mod:`reformer_tools.reference`, an independent NumPy implementation that reads the
checkpoint's own arrays (not the mapper's output); the Hugging Face side is
``ReformerModelWithLMHead`` loaded with the converted tensors (:mod:`reformer_tools.hf`).

LSH attention hashes with random rotations. Trax draws them from JAX's RNG, which cannot be
reproduced, so Hugging Face is run with a fixed ``hash_seed`` and the reference is given the very
rotations that seed makes Hugging Face draw. When that cannot line the two up (the config leaves
``num_buckets`` unset and Hugging Face's default differs from Trax's at every usable length), only the
layers before the first LSH layer are compared, and the report says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

from reformer_tools.converted import ConvertedModel, open_converted
from reformer_tools.dtypes import as_float32, cast
from reformer_tools.errors import UsageError
from reformer_tools.reference import (
    lsh_num_buckets,
    rotation_size,
    shift_right,
    trax_default_num_buckets,
    trax_hidden_states,
    trax_log_probs,
)
from reformer_tools.spec import ReformerSpec
from reformer_tools.trax_defaults import OUTPUT_FIELDS, TRAX_LAYER_NORM_EPS

Array = npt.NDArray[Any]

#: Tolerance on log-probabilities. Weights converted to 16 bits are rounded the same way for the reference,
#: so this holds whatever the dtype; how far the rounding itself moved the outputs is reported apart.
DEFAULT_ATOL: Final = 1e-4
DEFAULT_SEED: Final = 0
DEFAULT_BATCH_SIZE: Final = 2
#: Long enough for several LSH chunks at the usual chunk lengths, short enough to take seconds.
DEFAULT_MAX_LENGTH: Final = 512
#: Relative differences are taken against max(|a|, |b|, this): log-probs near 0 would inflate them.
_RELATIVE_FLOOR: Final = 1e-6


@dataclass(frozen=True)
class PositionDifference:
    """The largest differences at one sequence position, over the batch and the vocabulary."""

    position: int
    max_abs_diff: float
    max_rel_diff: float


@dataclass(frozen=True)
class NumericsReport:
    """The outcome of one numerics comparison."""

    ok: bool
    atol: float
    compared: Literal["log_probs", "hidden_states"]
    layers_compared: int  # all layers for log_probs; those before the first LSH layer otherwise
    num_layers: int
    batch_size: int
    sequence_length: int
    seed: int
    max_abs_diff: float
    max_rel_diff: float
    worst_position: int
    positions: tuple[PositionDifference, ...]
    lsh: str  # how LSH attention was handled, in a sentence or two
    notes: tuple[str, ...] = ()
    weights_dtype: str = "float32"  # of the Hugging Face model's weights; "mixed (float16, float32)" if several
    #: Config values no source of the checkpoint gave (assumed; or only a converted model's config.json says
    #: them): not proved.
    assumed: dict[str, Any] = field(default_factory=dict)

    @property
    def proved(self) -> str:
        """Exactly what this comparison shows, in one sentence."""
        what = (
            "the converted model's log-probabilities equal Trax's ReformerLM forward pass"
            if self.complete
            else f"the converted model's hidden states entering layer {self.layers_compared} equal Trax's"
        )
        claim = f"{what} within {self.atol:g}, for this config"
        unproved = [key for key in self.assumed if key in OUTPUT_FIELDS]
        if unproved:
            claim += (
                f"; values no source of the checkpoint gives ({', '.join(unproved)}) are not proved: had Trax "
                "used others, its outputs would differ and no check on these weights could tell"
            )
        return claim

    @property
    def complete(self) -> bool:
        """Whether the whole model (every layer and the output) was compared."""
        return self.compared == "log_probs"

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "proved": self.proved,
            "assumed": {k: list(v) if isinstance(v, tuple) else v for k, v in self.assumed.items()},
            "weights_dtype": self.weights_dtype,
            "complete": self.complete,
            "atol": self.atol,
            "compared": self.compared,
            "layers_compared": self.layers_compared,
            "num_layers": self.num_layers,
            "batch_size": self.batch_size,
            "sequence_length": self.sequence_length,
            "seed": self.seed,
            "max_abs_diff": self.max_abs_diff,
            "max_rel_diff": self.max_rel_diff,
            "worst_position": self.worst_position,
            "positions": [
                {"position": p.position, "max_abs_diff": p.max_abs_diff, "max_rel_diff": p.max_rel_diff}
                for p in self.positions
            ],
            "lsh": self.lsh,
            "notes": list(self.notes),
        }


# ------------------------------------------------------------------- inputs


def hf_default_num_buckets(spec: ReformerSpec, seq_len: int) -> int | tuple[int, ...]:
    """What Hugging Face's LSHSelfAttention._set_num_buckets picks when num_buckets is None."""
    if spec.num_buckets is not None:
        return spec.num_buckets
    chunk = spec.lsh_attn_chunk_length
    power = (2 * (seq_len // chunk)).bit_length() - 1
    limit = 2 * max(int((spec.max_position_embeddings // chunk) ** 0.5), chunk)
    if 2**power > limit:
        return (2 ** (power // 2), 2 ** (power - power // 2))
    return int(2**power)


def _length_step(spec: ReformerSpec) -> int:
    # Hugging Face pads any other length (with an attention mask Trax's ReformerLM never uses).
    chunks = {
        spec.local_attn_chunk_length if kind == "local" else spec.lsh_attn_chunk_length for kind in spec.attn_layers
    }
    return math.lcm(*chunks)


def _length_limit(spec: ReformerSpec) -> int:
    limit = spec.max_position_embeddings
    if spec.axial_pos_embds:
        limit = min(limit, math.prod(spec.axial_pos_shape))
    return limit


def _buckets_agree(spec: ReformerSpec, seq_len: int) -> bool:
    if "lsh" not in spec.attn_layers or spec.num_buckets is not None or seq_len <= spec.lsh_attn_chunk_length:
        return True  # at or below one chunk neither side hashes meaningfully
    return tuple(np.atleast_1d(trax_default_num_buckets(seq_len, spec.lsh_attn_chunk_length))) == tuple(
        np.atleast_1d(hf_default_num_buckets(spec, seq_len))
    )


def choose_sequence_length(spec: ReformerSpec, max_length: int = DEFAULT_MAX_LENGTH) -> int:
    """The longest length up to ``max_length`` both sides run unpadded, preferring agreeing bucket counts."""
    step = _length_step(spec)
    limit = min(_length_limit(spec), max(max_length, step))
    if step > limit:
        raise UsageError(
            f"no sequence length fits: chunk lengths need a multiple of {step}, positions allow at most {limit}"
        )
    candidates = range(limit // step * step, 0, -step)
    return next((n for n in candidates if _buckets_agree(spec, n)), candidates[0])


def make_input_ids(spec: ReformerSpec, seq_len: int, *, batch_size: int = DEFAULT_BATCH_SIZE, seed: int = 0) -> Array:
    """Deterministic random token ids (batch_size, seq_len), as fed to Trax."""
    return np.random.default_rng(seed).integers(0, spec.vocab_size, size=(batch_size, seq_len), dtype=np.int64)


def check_input_ids(spec: ReformerSpec, input_ids: Array) -> Array:
    ids = np.asarray(input_ids)
    if ids.ndim == 1:
        ids = ids[None, :]
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer) or ids.size == 0:
        raise UsageError(f"input ids must be a non-empty (batch, length) integer array, got {ids.dtype} {ids.shape}")
    if ids.min() < 0 or ids.max() >= spec.vocab_size:
        raise UsageError(f"input ids must lie in [0, {spec.vocab_size})")
    step, limit = _length_step(spec), _length_limit(spec)
    if ids.shape[1] % step or ids.shape[1] > limit:
        raise UsageError(f"input length {ids.shape[1]} must be a multiple of {step} and at most {limit}")
    return ids.astype(np.int64)


# --------------------------------------------------------------- comparison


def _state_dict(model: Path | ConvertedModel | Mapping[str, Array]) -> tuple[dict[str, Array], dict[str, str]]:
    """The model's tensors as float32, and the dtype each was stored in."""
    if isinstance(model, Mapping):
        return {key: np.asarray(value, dtype=np.float32) for key, value in model.items()}, dict.fromkeys(
            model, "float32"
        )
    converted = open_converted(model) if isinstance(model, Path) else model
    tensors = {key: as_float32(converted.load(key), stored.dtype) for key, stored in converted.items()}
    return tensors, {key: stored.dtype for key, stored in converted.items()}


#: Stored dtypes the reference rounds its weights to (wider ones hold every float32 value exactly).
_ROUNDED: Final = ("float16", "bfloat16")


def _weights_dtype(stored: Mapping[str, str]) -> str:
    """One dtype's name, or ``mixed (a, b)`` when the tensors are stored in several."""
    dtypes = sorted(set(stored.values()))
    if not dtypes:
        return "float32"
    return dtypes[0] if len(dtypes) == 1 else f"mixed ({', '.join(dtypes)})"


def _rounding(
    leaves: Sequence[Array], stored: Mapping[str, str], leaf_dtypes: Sequence[str | None] | None
) -> tuple[list[str | None], str | None]:
    """The dtype each reference leaf is rounded to (None: kept), and a note saying how, if anything is."""
    dtypes = sorted(set(stored.values()))
    alike = f"the converted weights are {dtypes[0]}; both sides computed with them rounded alike" if dtypes else ""
    if leaf_dtypes is not None:
        if len(leaf_dtypes) != len(leaves):
            raise ValueError("leaf_dtypes must give one dtype (or None) per leaf")
        rounded = [d if d in _ROUNDED else None for d in leaf_dtypes]
        if not any(rounded):
            return rounded, None
        if len(dtypes) == 1:
            return rounded, alike
        counts = ", ".join(f"{d} ({sum(v == d for v in stored.values())})" for d in dtypes)
        return rounded, (
            f"the converted tensors are stored in several dtypes: {counts}; the reference rounded each of its "
            "arrays to the dtype its own tensor is stored in"
        )
    if len(dtypes) == 1 and dtypes[0] in _ROUNDED:
        return [dtypes[0]] * len(leaves), alike
    if set(dtypes) & set(_ROUNDED):
        # Which array feeds which tensor is the mapper's to say; without it nothing is rounded.
        return [None] * len(leaves), (
            f"the converted tensors are stored in several dtypes ({', '.join(dtypes)}); the reference "
            "computed with the checkpoint's own values, unrounded"
        )
    return [None] * len(leaves), None


def leaf_dtype(leaves: Sequence[Array]) -> str:
    return str(np.asarray(leaves[0]).dtype) if leaves else "float32"


def _differences(ours: Array, theirs: Array) -> tuple[tuple[PositionDifference, ...], float, float, int]:
    diff = np.abs(ours - theirs)
    diff = np.where(np.isnan(diff), np.inf, diff)  # a NaN on either side is a failure, not a pass
    scale = np.maximum(np.maximum(np.abs(ours), np.abs(theirs)), _RELATIVE_FLOOR)
    rel = np.where(np.isfinite(diff), diff / np.where(np.isfinite(scale), scale, 1.0), np.inf)
    abs_by_position = diff.max(axis=(0, 2))
    rel_by_position = rel.max(axis=(0, 2))
    positions = tuple(
        PositionDifference(t, float(a), float(r))
        for t, (a, r) in enumerate(zip(abs_by_position, rel_by_position, strict=True))
    )
    worst = int(np.argmax(abs_by_position))
    return positions, float(abs_by_position.max()), float(rel_by_position.max()), worst


def _config_notes(spec: ReformerSpec, sources: Mapping[str, str]) -> list[str]:
    notes = []
    # Nothing to say when config.gin or --set gave the value, or verify already reports it contradicted.
    given = sources.get("layer_norm_eps") in ("config.gin", "--set", "contradicted")
    if not math.isclose(spec.layer_norm_eps, TRAX_LAYER_NORM_EPS) and not given:
        notes.append(
            f"layer_norm_eps is {spec.layer_norm_eps:g}; Trax's LayerNorm uses {TRAX_LAYER_NORM_EPS:g} unless "
            "config.gin binds LayerNorm.epsilon (trax >= 1.3.7): both sides ran with the config's value"
        )
    return notes


def compare_numerics(
    leaves: Sequence[Array],
    spec: ReformerSpec,
    model: Path | ConvertedModel | Mapping[str, Array],
    input_ids: Array | None = None,
    *,
    atol: float | None = None,
    seed: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_length: int = DEFAULT_MAX_LENGTH,
    assumed: Mapping[str, Any] | None = None,
    leaf_dtypes: Sequence[str | None] | None = None,
    sources: Mapping[str, str] | None = None,
) -> NumericsReport:
    """Compare Trax's forward pass (the reference) with the converted Hugging Face model.

    ``leaves``: the checkpoint's arrays in Trax's flat order, as float32. ``model``: a converted model
    (directory, .safetensors or .bin) or its state_dict. ``input_ids`` are what Trax would be fed
    (Hugging Face gets them shifted right); by default ``batch_size`` random sequences drawn with
    ``seed``, of :func:`choose_sequence_length`. ``seed`` is also the ``hash_seed`` used when the
    config sets none. ``atol`` defaults to ``DEFAULT_ATOL``: weights stored in 16 bits are rounded alike
    for the reference (``leaf_dtypes``: the stored dtype of each leaf's tensor, when the model's tensors are
    not all stored alike). ``assumed``: config values no source gave, named in the report as not proved;
    ``sources``: where the config's values came from (a value config.gin or --set gave needs no note).
    """
    from reformer_tools import hf

    seed = DEFAULT_SEED if seed is None else seed
    atol = DEFAULT_ATOL if atol is None else atol
    state_dict, stored = _state_dict(model)
    weights_dtype = _weights_dtype(stored)
    original = leaves
    # The converted model holds rounded weights: the reference computes with the same rounding, each array
    # as its own tensor is stored, so the comparison tests the conversion; the rounding's own effect is
    # measured separately below.
    rounded, rounding_note = _rounding(leaves, stored, leaf_dtypes)
    if any(rounded):
        leaves = [
            leaf if dtype is None else as_float32(cast(np.asarray(leaf, dtype=np.float32), "float32", dtype), dtype)
            for leaf, dtype in zip(leaves, rounded, strict=True)
        ]

    ids = (
        make_input_ids(spec, choose_sequence_length(spec, max_length), batch_size=batch_size, seed=seed)
        if input_ids is None
        else check_input_ids(spec, input_ids)
    )
    seq_len = ids.shape[1]
    lsh_layers = [i for i, kind in enumerate(spec.attn_layers) if kind == "lsh"]
    hash_seed = spec.hash_seed if spec.hash_seed is not None else seed
    config = spec.to_config_dict()
    notes = _config_notes(spec, sources or {})
    rotations: list[Array | None] = [None] * spec.num_layers
    if lsh_layers:
        config["hash_seed"] = hash_seed
        if spec.hash_seed is None:
            notes.append(
                f"hash_seed is unset in the config; Hugging Face ran with hash_seed={hash_seed} for this check"
            )
    hf_model = hf.reformer_lm(config, state_dict)

    if lsh_layers and not _buckets_agree(spec, seq_len):
        first = lsh_layers[0]
        lsh = (
            f"verified only up to the first LSH layer (layer {first}): num_buckets is unset and at length {seq_len} "
            f"Hugging Face picks {hf_default_num_buckets(spec, seq_len)} buckets where Trax picks "
            f"{trax_default_num_buckets(seq_len, spec.lsh_attn_chunk_length)}, so no shared rotations can make them "
            f"agree; compared the hidden states entering layer {first}. Set num_buckets in config.json to compare "
            "the whole model"
        )
        ours = trax_hidden_states(leaves, spec, ids, first)
        theirs = hf.reformer_lm_hidden_states(hf_model, shift_right(ids), first)
        compared: Literal["log_probs", "hidden_states"] = "hidden_states"
        layers_compared = first
    else:
        if lsh_layers:
            shape = (
                spec.num_attention_heads,
                spec.attention_head_size,
                spec.num_hashes,
                rotation_size(lsh_num_buckets(spec, seq_len)) // 2,
            )
            shared = hf.lsh_rotations(hash_seed, shape)
            rotations = [shared if kind == "lsh" else None for kind in spec.attn_layers]
            layers = ", ".join(map(str, lsh_layers))
            if seq_len <= spec.lsh_attn_chunk_length:
                lsh = (
                    f"LSH layers {layers}: the sequence ({seq_len}) fits in one LSH chunk, so hashing cannot change "
                    "the result; both sides attend over the whole sequence"
                )
            else:
                lsh = (
                    f"LSH layers {layers}: Hugging Face ran with hash_seed={hash_seed}, which draws the same random "
                    f"rotations {shape} (torch.manual_seed then torch.randn) before every LSH layer; the reference "
                    "hashed with exactly those, so both sides bucket alike. Trax's own rotations come from JAX's RNG "
                    "and cannot be reproduced"
                )
        else:
            lsh = "no LSH layers: nothing depends on random rotations"
        ours = trax_log_probs(leaves, spec, ids, lsh_rotations=rotations)
        theirs = hf.reformer_lm_log_probs(hf_model, shift_right(ids))
        compared = "log_probs"
        layers_compared = spec.num_layers
        if original is not leaves:
            unrounded = trax_log_probs(original, spec, ids, lsh_rotations=rotations)
            rounding_effect = float(np.nanmax(np.abs(unrounded - ours)))
            notes.append(
                f"{rounding_note}. The rounding itself moves Trax's log-probabilities by up to "
                f"{rounding_effect:.3g} from the checkpoint's {leaf_dtype(original)} weights"
            )
            rounding_note = None
    if rounding_note is not None:
        notes.append(rounding_note)

    positions, max_abs, max_rel, worst = _differences(ours, theirs)
    return NumericsReport(
        ok=max_abs <= atol,
        atol=atol,
        compared=compared,
        layers_compared=layers_compared,
        num_layers=spec.num_layers,
        batch_size=ids.shape[0],
        sequence_length=seq_len,
        seed=seed,
        max_abs_diff=max_abs,
        max_rel_diff=max_rel,
        worst_position=worst,
        positions=positions,
        lsh=lsh,
        notes=tuple(notes),
        weights_dtype=weights_dtype,
        assumed=dict(assumed or {}),
    )
