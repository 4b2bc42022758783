"""What Trax chose for the settings a checkpoint does not show: defaults by release, releases by evidence.

``releases_for`` places a checkpoint in a range of Trax releases from what it shows (its container,
``version_timestamp``, keys, how its position table is stored). ``trax_defaults`` gives, for that
range, the value Trax's ``ReformerLM`` used for each setting the weights cannot show, when every
release in the range agrees; when they disagree, it says so instead of picking one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from reformer_tools.checkpoint import TraxCheckpoint


@dataclass(frozen=True)
class WholeSequence:
    """Trax's ``chunk_len=None``: attention over the whole sequence, however long it is.

    Hugging Face attends unchunked whenever the input is no longer than the chunk length, so this
    becomes a chunk length of ``max_position_embeddings`` (the longest input the positions allow)
    with no chunks before or after.
    """

    def __repr__(self) -> str:
        return "None (the whole sequence)"


WHOLE_SEQUENCE: Final = WholeSequence()
#: Trax's fixed sinusoidal positional encoding (``pos_type='sin-cos'``), the one weightless encoding
#: that converts: as a fixed table in Hugging Face's learned-position slot.
SIN_COS: Final = "sin-cos"

#: tl.LayerNorm's epsilon in every Trax release (fixed up to 1.3.6; a gin-configurable default from 1.3.7).
TRAX_LAYER_NORM_EPS: Final = 1e-6

# ------------------------------------------------------------------------------------ releases

#: Every trax release on PyPI, oldest first, then "master" for code after the last release.
RELEASES: Final = (
    "1.0.0",
    "1.0.1",
    "1.1.0",
    "1.1.1",
    "1.1.2",
    "1.1.3",
    "1.1.4",
    "1.2.0",
    "1.2.1",
    "1.2.2",
    "1.2.3",
    "1.2.4",
    "1.3.0",
    "1.3.1",
    "1.3.2",
    "1.3.3",
    "1.3.4",
    "1.3.5",
    "1.3.6",
    "1.3.7",
    "1.3.8",
    "1.3.9",
    "1.4.0",
    "1.4.1",
    "master",
)
_RANK: Final = {release: i for i, release in enumerate(RELEASES)}
FIRST: Final = RELEASES[0]
LAST: Final = RELEASES[-1]


@dataclass(frozen=True)
class Releases:
    """The Trax releases (inclusive) that can have written a checkpoint, and why."""

    first: str
    last: str
    evidence: tuple[str, ...] = ()

    def __str__(self) -> str:
        if self.first == self.last:
            return f"trax {self.first}"
        return f"trax {self.first} to {self.last}"

    def narrowed(self, first: str, last: str, why: str) -> Releases:
        """These releases, and only those from ``first`` to ``last`` (``why``); all of them if none is."""
        return _narrow([(self.first, self.last, why) for why in self.evidence] + [(first, last, why)])

    def overlaps(self, first: str, last: str) -> bool:
        return _RANK[first] <= _RANK[self.last] and _RANK[self.first] <= _RANK[last]

    def within(self, first: str, last: str) -> bool:
        return _RANK[first] <= _RANK[self.first] and _RANK[self.last] <= _RANK[last]


ANY_RELEASE: Final = Releases(FIRST, LAST)


def _narrow(clues: Sequence[tuple[str, str, str]]) -> Releases:
    """The releases every clue allows; where clues contradict (a file assembled by hand), all of them."""
    first, last = FIRST, LAST
    for low, high, _ in clues:
        first = max(first, low, key=_RANK.__getitem__)
        last = min(last, high, key=_RANK.__getitem__)
    evidence = tuple(why for _, _, why in clues)
    if _RANK[first] > _RANK[last]:
        return Releases(FIRST, LAST, (*evidence, "these clues contradict each other: any release assumed"))
    return Releases(first, last, evidence)


#: version_timestamp -> the releases whose Trainer or Loop wrote it. A stamp only master wrote between two
#: releases spans both (defaults that changed in between cannot be assumed for it).
_VERSION_STAMPS: Final[dict[str, tuple[str, str, str]]] = {
    "Jan-13-2020": (
        "1.2.0",
        "1.3.0",
        "trax.supervised.Trainer, a pickle with nested weights (and master to 2020-06-22)",
    ),
    "Jun-18-2020": ("1.3.0", LAST, "trax.supervised.Trainer, a gzip pickle with flat weights"),
    "Jun-29-2020": ("1.3.0", "1.3.4", "training.Loop"),
    "Aug-21-2020": ("1.3.4", "1.3.5", "training.Loop on master between 1.3.4 and 1.3.5"),
    "Sep-17-2020": ("1.3.5", "1.3.6", "training.Loop"),
    "Oct-28-2020": ("1.3.7", "1.3.8", "training.Loop (and master to 2021-03-10)"),
    "Mar-10-2021": ("1.3.8", LAST, "training.Loop"),
}

Clue = tuple[str, str, str]  # (earliest release, latest release, what shows it)


def releases_for(checkpoint: TraxCheckpoint) -> Releases:
    """The Trax releases that can have written ``checkpoint``, from what it shows."""
    from reformer_tools.checkpoint import CheckpointFormat

    clues: list[Clue] = []
    stamp = checkpoint.version_timestamp
    if stamp in _VERSION_STAMPS:
        low, high, writer = _VERSION_STAMPS[stamp]
        clues.append((low, high, f"version_timestamp {stamp!r}: {writer}"))
    keys = {item.key for item in checkpoint.metadata}
    flat = checkpoint.format in (
        CheckpointFormat.GZIP_FLAT,
        CheckpointFormat.GZIP_SHARDED,
        CheckpointFormat.NPY_SIDE_FILE,
        CheckpointFormat.NPY_STREAM,
    )
    if checkpoint.format is CheckpointFormat.PICKLE_TREE and "tuple layout" in checkpoint.description:
        clues.append((FIRST, "1.1.4", "a tuple (opt_state, step, history, state): trax.supervised.Trainer up to 1.1"))
    if flat:
        clues.append(("1.3.0", LAST, "flat weights: trax 1.3 or later (2020-06-22 on)"))
    if checkpoint.format is CheckpointFormat.GZIP_FLAT and stamp is None:
        clues.append(("1.3.8", LAST, "flat weights and no version stamp: Layer.save_to_file (2021-01-24 on)"))
    if checkpoint.format is CheckpointFormat.NPY_STREAM:
        clues.append(("1.3.8", LAST, "a .weights.npy.gz stream: training.Loop from 1.3.8"))
    if "flat_eval_state" in keys:
        clues.append(("1.3.5", LAST, "a flat_eval_state entry: training.Loop from 1.3.5"))
    if "slots_per_task" in keys:
        clues.append(("1.3.4", LAST, "a slots_per_task entry: training.Loop from 2020-08-21"))
    clues.extend(_weight_clues(checkpoint))
    return _narrow(clues)


def _weight_clues(checkpoint: TraxCheckpoint) -> list[Clue]:
    """What the weights' layout dates: efficient attention, the position table's shape and wrapping."""
    if not checkpoint.leaves_known:
        return []
    from reformer_tools.mapper import split_leaves

    layout = split_leaves(checkpoint.leaves)
    if layout is None:
        return []
    clues: list[Clue] = [("1.2.3", LAST, "(heads, d_model, d_head) attention projections: efficient attention")]
    positions = layout.front[1:]
    learned = len(positions) == 1 and len(positions[0].shape) in (2, 3)
    if learned:
        if len(positions[0].shape) == 3:
            clues.append(("1.2.0", "1.3.8", "a (1, max_len, d) position table: up to 1.3.7 (master to 2021-03-30)"))
        else:
            clues.append(("1.3.8", LAST, "a (max_len, d) position table: 1.3.8 on"))
    if positions and checkpoint.format.value == "pickle-weights-tree":
        first = positions[0].path
        wrapped = first == "weights[3][1]" if learned else first.startswith("weights[3][1][")
        unwrapped = first == "weights[3]" if learned else first.startswith("weights[3][0]")
        if wrapped:
            clues.append(("1.3.8", LAST, "the positional encoder wrapped in shape assertions: 1.3.8 on"))
        elif unwrapped:
            clues.append((FIRST, "1.3.8", "the positional encoder without shape assertions: up to 1.3.7"))
    return clues


# ------------------------------------------------------------------------------------ defaults


@dataclass(frozen=True)
class TraxDefault:
    """One default of Trax's ReformerLM, in Hugging Face's terms, and the releases that had it."""

    key: str
    value: Any
    first: str
    last: str
    trax: str  # what Trax had, in its own terms


@dataclass(frozen=True)
class Assumption:
    """A value no source gave, taken from Trax's defaults; ``why`` says whose."""

    value: Any
    why: str


#: Settings that change the model's outputs, and the attention kind they matter for (None: every model).
OUTPUT_FIELDS: Final[dict[str, str | None]] = {
    "hidden_act": None,
    "layer_norm_eps": None,
    "local_attn_chunk_length": "local",
    "local_num_chunks_before": "local",
    "local_num_chunks_after": "local",
    "lsh_attn_chunk_length": "lsh",
    "lsh_num_chunks_before": "lsh",
    "lsh_num_chunks_after": "lsh",
    "num_hashes": "lsh",
    "num_buckets": "lsh",
}
#: Settings that matter only when training (dropout is off in eval mode), as OUTPUT_FIELDS.
TRAINING_FIELDS: Final[dict[str, str | None]] = {
    "hidden_dropout_prob": None,
    "local_attention_probs_dropout_prob": "local",
    "lsh_attention_probs_dropout_prob": "lsh",
}
#: What every Trax ReformerLM is, whatever its settings: causal, an output layer of its own, 0 as padding.
REFORMER_LM_FACTS: Final[dict[str, Any]] = {
    "is_decoder": True,
    "tie_word_embeddings": False,
    "pad_token_id": 0,
    "use_cache": False,
}

#: A default no model can have run with: the value was set when it was trained, so it cannot be assumed.
UNUSABLE: Final = "unusable"

# Read from Trax's source at every release tag (ReformerLM, DecoderBlock, SelfAttention, LSHSelfAttention,
# LayerNorm); SelfAttention and LSHSelfAttention exist from 1.2.3. docs/configuration.md cites the lines.
DEFAULTS: Final[tuple[TraxDefault, ...]] = (
    TraxDefault("hidden_act", "gelu_fast", FIRST, LAST, "ReformerLM(ff_activation=tl.FastGelu)"),
    TraxDefault("layer_norm_eps", TRAX_LAYER_NORM_EPS, FIRST, LAST, "tl.LayerNorm(epsilon=1e-6)"),
    TraxDefault("local_attn_chunk_length", WHOLE_SEQUENCE, FIRST, LAST, "SelfAttention(chunk_len=None)"),
    TraxDefault("local_num_chunks_before", 0, FIRST, LAST, "SelfAttention(n_chunks_before=0)"),
    TraxDefault("local_num_chunks_after", 0, FIRST, LAST, "SelfAttention(n_chunks_after=0)"),
    # chunk_len=None with n_chunks_before=1 fails Trax's own assertion: every LSH model before 1.3.5 set it.
    TraxDefault(
        "lsh_attn_chunk_length", UNUSABLE, FIRST, "1.3.4", "LSHSelfAttention(chunk_len=None), which cannot run"
    ),
    TraxDefault("lsh_attn_chunk_length", 128, "1.3.5", LAST, "LSHSelfAttention(chunk_len=128)"),
    TraxDefault("lsh_num_chunks_before", 1, FIRST, LAST, "LSHSelfAttention(n_chunks_before=1)"),
    TraxDefault("lsh_num_chunks_after", 0, FIRST, LAST, "LSHSelfAttention(n_chunks_after=0)"),
    TraxDefault("num_hashes", 1, FIRST, LAST, "LSHSelfAttention(n_hashes=1)"),
    TraxDefault("num_buckets", 256, FIRST, "1.3.4", "LSHSelfAttention(n_buckets=256)"),
    TraxDefault(
        "num_buckets", None, "1.3.5", LAST, "LSHSelfAttention(n_buckets=None): 2*length/chunk_len for each input"
    ),
    # Sin-cos tables have no length: any will do, every row being exact. ReformerLM's own max_len default.
    TraxDefault("max_position_embeddings", 2048, FIRST, LAST, "ReformerLM(max_len=2048); sin-cos has no length"),
    TraxDefault("hidden_dropout_prob", 0.1, FIRST, LAST, "ReformerLM(dropout=0.1)"),
    TraxDefault("local_attention_probs_dropout_prob", 0.0, FIRST, "1.3.5", "SelfAttention(attention_dropout=0.0)"),
    TraxDefault("local_attention_probs_dropout_prob", 0.1, "1.3.6", LAST, "ReformerLM passes its dropout=0.1"),
    TraxDefault("lsh_attention_probs_dropout_prob", 0.0, FIRST, "1.3.5", "LSHSelfAttention(attention_dropout=0.0)"),
    TraxDefault("lsh_attention_probs_dropout_prob", 0.1, "1.3.6", LAST, "ReformerLM passes its dropout=0.1"),
)


def _after(release: str) -> str:
    return RELEASES[min(_RANK[release] + 1, len(RELEASES) - 1)]


def trax_defaults(releases: Releases, keys: Iterable[str]) -> tuple[dict[str, Assumption], dict[str, str]]:
    """Trax's default for each key over ``releases``: (assumed values, keys the releases disagree on -> why)."""
    assumed: dict[str, Assumption] = {}
    unknown: dict[str, str] = {}
    for key in keys:
        candidates = [d for d in DEFAULTS if d.key == key and releases.overlaps(d.first, d.last)]
        values = {repr(d.value) for d in candidates}
        if any(d.value == UNUSABLE for d in candidates):
            unusable = next(d for d in candidates if d.value == UNUSABLE)
            unknown[key] = (
                f"Trax's default before {_after(unusable.last)} ({unusable.trax}) means it was set in training"
            )
        elif len(values) == 1:
            chosen = candidates[0]
            assumed[key] = Assumption(chosen.value, f"{releases} default: {chosen.trax}")
        elif candidates and key in TRAINING_FIELDS:
            # Training-only: take the newest release's value, and say the releases differ.
            chosen = max(candidates, key=lambda d: _RANK[d.last])
            assumed[key] = Assumption(
                chosen.value,
                f"{releases}: {chosen.trax} (earlier releases differ; training only, no effect on outputs)",
            )
        elif candidates:
            changes = ", ".join(f"{d.trax} in {d.first} to {d.last}" for d in candidates)
            unknown[key] = f"Trax's default changed within these releases ({changes})"
        else:
            unknown[key] = "no Trax default is known"
    return assumed, unknown
