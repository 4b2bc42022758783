"""Where every config value comes from: the weights, config.json, config.gin, --set, or Trax's defaults.

A value that came from none of the first four is *assumed*: it takes the default of the Trax releases
that can have written the checkpoint (``trax_defaults``), and is declared as such wherever the
config goes (stderr, ``--json``, the output's metadata and ``config.json``). Where those releases
disagree on a value the model's outputs depend on, nothing is guessed: the command stops and says
which values to give.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from reformer_tools.checkpoint import TraxCheckpoint
from reformer_tools.errors import (
    ConfigError,
    UnreadableCheckpointError,
    UnsupportedLayoutError,
    UsageError,
    WeightlessPositionsError,
)
from reformer_tools.infer import read_weight_shapes
from reformer_tools.mapper import WEIGHTLESS_POSITIONS, split_leaves
from reformer_tools.spec import HF_DEFAULTS, SIN_COS_KEY, ReformerSpec, read_config_json, spec_from_dict
from reformer_tools.trax_defaults import (
    ANY_RELEASE,
    OUTPUT_FIELDS,
    REFORMER_LM_FACTS,
    SIN_COS,
    TRAINING_FIELDS,
    WHOLE_SEQUENCE,
    Assumption,
    Releases,
    releases_for,
    trax_defaults,
)
from reformer_tools.untrusted import printable

if TYPE_CHECKING:
    from reformer_tools.gin_config import GinSettings
    from reformer_tools.vocab import VocabType, Vocabulary

#: Where a value came from. "trax" marks what every Trax ReformerLM is (causal, untied output, pad id 0).
Source = Literal["weights", "config.json", "config.gin", "--set", "assumed", "trax", "vocabulary"]
#: The key in a written config.json that records where its values came from.
PROVENANCE_KEY: Final = "reformer_tools"
_SETTABLE_EXTRA: Final = (
    SIN_COS_KEY,
    "hidden_dropout_prob",
    "local_attention_probs_dropout_prob",
    "lsh_attention_probs_dropout_prob",
    "chunk_size_feed_forward",
    "chunk_size_lm_head",
    "pad_token_id",
    "eos_token_id",
    "bos_token_id",
    "tie_word_embeddings",
    "use_cache",
)


@dataclass(frozen=True)
class ResolvedConfig:
    """The config a command runs with, and the origin of every value in it."""

    spec: ReformerSpec
    description: str  # for people: "config.json path", "the weight shapes and .../config.gin"
    sources: dict[str, Source]
    assumed: dict[str, Assumption]
    releases: Releases
    notes: tuple[str, ...] = ()
    gin: GinSettings | None = None
    unresolved: dict[str, str] = field(default_factory=dict)  # key -> why no value could be assumed
    vocabulary: ChosenVocabulary | None = None
    #: Sources that contradict each other on a value the outputs depend on: shown even with --quiet.
    warnings: tuple[str, ...] = ()

    @property
    def gin_path(self) -> Path | None:
        return None if self.gin is None else self.gin.path

    @classmethod
    def given(cls, spec: ReformerSpec, description: str = "the given config") -> ResolvedConfig:
        """A config taken as it is: every value given, nothing assumed (for library callers with a spec)."""
        return cls(spec, description, dict.fromkeys(spec.to_config_dict(), "config.json"), {}, ANY_RELEASE)

    @property
    def assumed_values(self) -> dict[str, Any]:
        return {key: assumption.value for key, assumption in self.assumed.items()}

    def provenance(self) -> dict[str, Any]:
        """What a converted model records about its config (config.json, metadata, model card)."""
        return {
            "config_source": self.description,
            "trax_releases": str(self.releases),
            "release_evidence": list(self.releases.evidence),
            "assumed": {key: _jsonable(value) for key, value in self.assumed_values.items()},
            "assumed_because": {key: assumption.why for key, assumption in self.assumed.items()},
            "sources": dict(sorted(self.sources.items())),
            "warnings": list(self.warnings),
        }

    def config_dict(self) -> dict[str, Any]:
        """The ``config.json`` to write: the spec, plus the provenance of its values."""
        config = self.spec.to_config_dict()
        config[PROVENANCE_KEY] = self.provenance()
        return config


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


# ------------------------------------------------------------------- --set


def parse_settings(items: Iterable[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` options: VALUE is JSON when it parses as JSON, else a string."""
    settings: dict[str, Any] = {}
    known = set(HF_DEFAULTS) | set(_SETTABLE_EXTRA)
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--set {printable(item, 80)!r}: expected KEY=VALUE (e.g. --set num_buckets=64)")
        if key not in known:
            raise UsageError(f"--set {printable(key, 60)}: not a setting (one of: {', '.join(sorted(known))})")
        try:
            settings[key] = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            settings[key] = text
    return settings


# -------------------------------------------------------------- resolution


def find_gin(checkpoint: TraxCheckpoint, gin_path: Path | None) -> Path | None:
    """--gin, else the config.gin Trax writes next to its checkpoints."""
    if gin_path is not None:
        return gin_path
    candidate = checkpoint.path.parent / "config.gin"
    return candidate if candidate.is_file() else None


@dataclass(frozen=True)
class VocabularySources:
    """What the command line says about the vocabulary: --vocab, --vocab-type, --reserved-ids."""

    path: Path | None = None
    vocab_type: str | None = None
    reserved_ids: int | None = None

    @property
    def given(self) -> bool:
        return self.path is not None or self.vocab_type is not None


@dataclass(frozen=True)
class ChosenVocabulary:
    """The vocabulary a model's ids mean, and how it was found (for people: one line)."""

    vocabulary: Vocabulary
    source: str


@dataclass(frozen=True)
class ConfigSources:
    """Where a command's config may come from: --config, --gin, --set, and the vocabulary options."""

    config_path: Path | None = None
    gin_path: Path | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    vocabulary: VocabularySources = field(default_factory=VocabularySources)

    def resolve(self, checkpoint: TraxCheckpoint | None, *, complete: bool = True) -> ResolvedConfig:
        return resolve_config(
            checkpoint, self.config_path, self.gin_path, self.settings, complete=complete, vocabulary=self.vocabulary
        )


def resolve_config(
    checkpoint: TraxCheckpoint | None,
    config_path: Path | None = None,
    gin_path: Path | None = None,
    settings: Mapping[str, Any] | None = None,
    *,
    complete: bool = True,
    vocabulary: VocabularySources | None = None,
) -> ResolvedConfig:
    """The config to use, with the origin of every value.

    Without ``config_path`` the shapes say what they can, config.gin (``gin_path``, or the one beside the
    checkpoint) adds what it binds, ``settings`` (--set) override single values, and Trax's defaults for
    the checkpoint's releases fill the rest. ``complete``: a value the model's outputs depend on that no
    source gives and no default can be assumed for is an error (exit 2); otherwise it is listed in
    ``unresolved`` and Hugging Face's default stands in (for shape-only uses such as ``inspect``).
    ``checkpoint`` None (a config.json only, before the checkpoint is read): any Trax release.
    """
    if checkpoint is None and config_path is None:
        raise ValueError("without a checkpoint, only a config.json can be resolved")
    builder = _Builder(ANY_RELEASE if checkpoint is None else releases_for(checkpoint))
    if config_path is not None:
        description = str(config_path)
        builder.take_config_json(read_config_json(config_path))
        if checkpoint is not None:
            builder.check_config_against_gin(config_path, find_gin(checkpoint, gin_path), found=gin_path is None)
    else:
        assert checkpoint is not None
        gin_file = find_gin(checkpoint, gin_path)
        description = "the weight shapes" + (f" and {gin_file}" if gin_file else "")
        builder.take_weights_and_gin(checkpoint, gin_file, found=gin_path is None)
    where = checkpoint.path.parent if checkpoint is not None else config_path.parent if config_path else Path()
    chosen = choose_vocabulary(vocabulary or VocabularySources(), builder.gin, where, builder.notes)
    if chosen is not None:
        builder.take_vocabulary(chosen.vocabulary)
    builder.take_settings(settings or {})
    builder.note_sources()
    builder.fill(complete=complete)
    spec = builder.spec(description)
    if checkpoint is not None and not spec.sin_cos_positions:
        layout = split_leaves(checkpoint.leaves)
        if layout is not None and len(layout.front) == 1:  # named in every command, with or without --config
            raise WeightlessPositionsError(f"{checkpoint.path}: {WEIGHTLESS_POSITIONS}")
    if chosen is not None:
        from reformer_tools.tokenizer_files import check_vocab_size

        check_vocab_size(chosen.vocabulary, spec.vocab_size)
    return ResolvedConfig(
        spec,
        description,
        builder.sources,
        builder.assumed,
        builder.releases,
        tuple(dict.fromkeys(builder.notes)),
        builder.gin,
        builder.unresolved,
        chosen,
        tuple(dict.fromkeys(builder.warnings)),
    )


# -------------------------------------------------------------- vocabulary

#: Datasets whose vocabulary Trax did not name because the dataset fixes it: t2t's enwik8 problems are
#: UTF-8 bytes after t2t's two reserved ids (0 pads, 1 ends a sequence).
_KNOWN_DATASETS: Final[tuple[tuple[str, VocabType, int], ...]] = (("enwik8", "char", 2),)


def choose_vocabulary(
    given: VocabularySources, gin: GinSettings | None, directory: Path, notes: list[str]
) -> ChosenVocabulary | None:
    """The vocabulary the command line names, else the one config.gin names (found beside the checkpoint),
    else one a known dataset implies; None (with a note) when nothing says."""
    from reformer_tools.vocab import VOCAB_TYPES, load_vocabulary

    bound = dict(gin.vocabulary) if gin is not None else {}
    reserved = given.reserved_ids
    gin_reserved = bound.get("n_reserved_ids")
    if reserved is None:
        reserved = gin_reserved if isinstance(gin_reserved, int) else 0
    elif isinstance(gin_reserved, int) and gin_reserved != reserved:
        notes.append(
            f"--reserved-ids {reserved}; config.gin says Tokenize.n_reserved_ids = {gin_reserved}; using {reserved}"
        )
    vocab_type: Any = given.vocab_type
    if given.given:
        vocabulary = load_vocabulary(given.path, vocab_type, reserved)
        where = f"--vocab {given.path}" if given.path is not None else f"--vocab-type {given.vocab_type}"
        return ChosenVocabulary(vocabulary, where)
    if "vocab_type" in bound or "vocab_file" in bound:
        gin_type = bound.get("vocab_type", "subword")  # Tokenize's default
        if gin_type == "char":
            return ChosenVocabulary(
                load_vocabulary(None, "char", reserved), "config.gin (Tokenize.vocab_type = 'char')"
            )
        name = bound.get("vocab_file")
        if not isinstance(name, str):
            notes.append(f"config.gin says Tokenize.vocab_type = {gin_type!r} but names no vocab_file: no tokenizer")
            return None
        candidates = [directory / Path(name).name]
        vocab_dir = bound.get("vocab_dir")
        if isinstance(vocab_dir, str) and "://" not in vocab_dir:
            candidates.insert(0, Path(vocab_dir) / name)
        found = next((path for path in candidates if path.is_file()), None)
        if found is None:
            notes.append(
                f"config.gin names the vocabulary {printable(name, 80)!r} (Tokenize.vocab_file); it is not beside the "
                "checkpoint: pass --vocab FILE to include a tokenizer"
            )
            return None
        vocabulary = load_vocabulary(found, gin_type if gin_type in VOCAB_TYPES else None, reserved)
        return ChosenVocabulary(
            vocabulary, f"config.gin (Tokenize.vocab_file = {printable(name, 80)!r}), found at {found}"
        )
    dataset = bound.get("dataset_name")
    if isinstance(dataset, str):
        for fragment, known_type, known_reserved in _KNOWN_DATASETS:
            if fragment in dataset:
                vocabulary = load_vocabulary(
                    None, known_type, known_reserved if given.reserved_ids is None else reserved
                )
                return ChosenVocabulary(
                    vocabulary, f"config.gin's dataset {printable(dataset, 60)!r}: UTF-8 bytes after 2 reserved ids"
                )
    if given.reserved_ids is not None:
        notes.append("--reserved-ids without a vocabulary (--vocab, --vocab-type or config.gin) changes nothing")
    return None


class _Builder:
    """Collects values source by source; a later source overrides an earlier one."""

    def __init__(self, releases: Releases) -> None:
        self.releases = releases
        self.values: dict[str, Any] = {}
        self.sources: dict[str, Source] = {}
        self.assumed: dict[str, Assumption] = {}
        self.unresolved: dict[str, str] = {}
        self.notes: list[str] = []
        self.warnings: list[str] = []
        self.gin: GinSettings | None = None

    def put(self, key: str, value: Any, source: Source) -> None:
        self.values[key] = value
        self.sources[key] = source
        self.assumed.pop(key, None)

    # -- sources

    def take_config_json(self, data: dict[str, Any]) -> None:
        previous = data.get(PROVENANCE_KEY)
        for key, value in data.items():
            if key != PROVENANCE_KEY:
                self.put(key, value, "config.json")
        if isinstance(previous, dict):
            # A config.json this tool wrote: what was assumed then is still assumed now.
            assumed = previous.get("assumed")
            why = previous.get("assumed_because")
            if isinstance(assumed, dict):
                for key in assumed:
                    if key in self.values:
                        reason = why.get(key) if isinstance(why, dict) else None
                        self.sources[key] = "assumed"
                        self.assumed[key] = Assumption(
                            self.values[key], str(reason or "assumed when this config.json was written")
                        )

    def check_config_against_gin(self, config_path: Path, gin_file: Path | None, *, found: bool) -> None:
        """With --config, config.gin (--gin, or the one beside the checkpoint) still names the vocabulary, and
        where it binds a value the config.json contradicts, that is said (the config.json is used)."""
        if gin_file is None:
            return
        try:
            gin = _read_gin(gin_file, found=False)
        except ConfigError as error:
            if not found:
                raise
            self.notes.append(f"{error}; not read, since {config_path} gives the model's settings")
            return
        self.gin = gin
        for reason in gin.unrepresentable:
            self.warnings.append(f"{gin_file}: {reason}; {config_path} describes a model without it")
        for key, value in sorted(gin.overrides.items()):
            given = self.values.get(key)
            if value is WHOLE_SEQUENCE or self.sources.get(key) != "config.json" or _jsonable(given) == value:
                continue
            self.warnings.append(
                f"{gin_file} says {key}={json.dumps(value, default=str)}; "
                f"{config_path} says {json.dumps(_jsonable(given), default=str)}; "
                f"using {config_path}: if config.gin is the model's, the model computes something else"
            )

    def take_weights_and_gin(self, checkpoint: TraxCheckpoint, gin_file: Path | None, *, found: bool) -> None:
        shapes = read_weight_shapes(checkpoint.leaves)
        gin = _read_gin(gin_file, found=found) if gin_file is not None else None
        weight_values = dict(shapes.values)
        if gin is not None:
            from reformer_tools.gin_config import attention_disagreements

            self.gin = gin
            if gin.unrepresentable:
                raise UnsupportedLayoutError(f"{gin_file}: {gin.unrepresentable[0]}")
            for key, value in gin.overrides.items():
                self.put(key, value, "config.gin")
            self.notes.extend(gin.notes)
            for key, value in sorted(weight_values.items()):
                if key in gin.overrides and gin.overrides[key] != value:
                    self.notes.append(
                        f"{gin_file} says {key}={gin.overrides[key]!r}; the weights say {value!r}; using the weights"
                    )
            if gin.attention_kinds is not None:
                self.notes.extend(attention_disagreements(gin, shapes.attention_kinds))
                weight_values["attn_layers"] = _shared_qk_from_gin(shapes.attention_kinds, gin.attention_kinds)
            if shapes.positions == "none" and gin.positions not in (None, "axial", "learned"):
                self.put(SIN_COS_KEY, gin.positions, "config.gin")
        for key, value in weight_values.items():
            self.put(key, value, "weights")
        if shapes.positions == "none":
            # No positional-encoding arrays: only Trax's sin-cos converts, and only if something names it.
            self.put("axial_pos_embds", False, "weights")
        elif "lsh" in shapes.attention_kinds and (gin is None or gin.attention_kinds is None):
            layers = ", ".join(str(i) for i, kind in enumerate(shapes.attention_kinds) if kind == "lsh")
            self.notes.append(
                f"layers {layers}: 3 attention projections read as LSH attention; shared-QK local attention has the "
                "same shapes and cannot be told apart without config.gin (pass --gin or --config to be sure)"
            )

    def take_vocabulary(self, vocabulary: Vocabulary) -> None:
        """Its padding and end-of-sequence ids: the vocabulary says what its ids mean (--set still wins)."""
        for key, value in (("pad_token_id", vocabulary.pad_id), ("eos_token_id", vocabulary.eos_id)):
            if value is None:
                continue
            if self.sources.get(key) == "config.json" and self.values.get(key) != value:
                self.notes.append(f"{key}: {self.values[key]!r} in config.json; the vocabulary's is {value}; using it")
            self.put(key, value, "vocabulary")

    def take_settings(self, settings: Mapping[str, Any]) -> None:
        for key, value in settings.items():
            self.put(key, value, "--set")

    def note_sources(self) -> None:
        """Which values config.gin and the weights gave, as finally taken (a later source may have won)."""
        if self.gin is not None:
            from_gin = sorted(key for key, source in self.sources.items() if source == "config.gin")
            self.notes.append(f"from {self.gin.path}: {', '.join(from_gin) or 'nothing the weights do not show'}")
        from_weights = sorted(key for key, source in self.sources.items() if source == "weights")
        if from_weights:
            self.notes.append(f"config inferred from the weight shapes: {', '.join(from_weights)}")

    # -- what nobody said

    def fill(self, *, complete: bool) -> None:
        for key, value in REFORMER_LM_FACTS.items():
            if key not in self.values:
                self.put(key, value, "trax")
        kinds = self.values.get("attn_layers", HF_DEFAULTS["attn_layers"])
        kinds = kinds if isinstance(kinds, list | tuple) else []
        self._check_positions()
        wanted = [
            key
            for key, kinds_needing in (*OUTPUT_FIELDS.items(), *TRAINING_FIELDS.items())
            if key not in self.values and (kinds_needing is None or kinds_needing in kinds)
        ]
        assumed, unknown = trax_defaults(self.releases, wanted)
        for key, assumption in assumed.items():
            self.put(key, assumption.value, "assumed")
            self.assumed[key] = assumption
        if unknown and complete:
            raise ConfigError(_unknown_message(unknown, self.releases))
        self.unresolved = dict(unknown)
        self._whole_sequence()

    def _check_positions(self) -> None:
        pos_type = self.values.get(SIN_COS_KEY)
        if pos_type is not None and pos_type != SIN_COS:
            raise UnsupportedLayoutError(
                f"the positional encoding is Trax's {printable(str(pos_type), 40)!r}, which has no weights and no "
                "Hugging Face counterpart; only 'sin-cos' can be converted (as a fixed table)"
            )

        if pos_type == SIN_COS:
            self.releases = self.releases.narrowed("1.3.8", "master", "Trax's sin-cos positions: 1.3.8 on")
        if pos_type == SIN_COS and "max_position_embeddings" not in self.values:
            assumed, unknown = trax_defaults(self.releases, ["max_position_embeddings"])
            for key, assumption in assumed.items():
                self.put(key, assumption.value, "assumed")
                self.assumed[key] = assumption
            if unknown:
                raise ConfigError(_unknown_message(unknown, self.releases))

    def _whole_sequence(self) -> None:
        """Trax's chunk_len=None becomes a chunk as long as the longest input the positions allow."""
        length = self.values.get("max_position_embeddings", HF_DEFAULTS["max_position_embeddings"])
        for prefix in ("local", "lsh"):
            key = f"{prefix}_attn_chunk_length"
            if self.values.get(key) is WHOLE_SEQUENCE:
                self.values[key] = length
                for side in ("before", "after"):
                    look = f"{prefix}_num_chunks_{side}"
                    if self.values.get(look, 0) != 0 and self.sources.get(look) == "assumed":
                        self.values[look] = 0
                self.notes.append(
                    f"{key}: Trax's chunk_len=None attends over the whole sequence; Hugging Face does the same "
                    f"unchunked attention for inputs no longer than the chunk, so {key} = {length} (the longest input "
                    "the positions allow), no chunks before or after"
                )
                if key in self.assumed:
                    self.assumed[key] = replace(self.assumed[key], value=length)

    def spec(self, description: str) -> ReformerSpec:
        try:
            return spec_from_dict(self.values)
        except ConfigError as error:
            raise ConfigError(f"{description}: {error}") from None


def _read_gin(path: Path, *, found: bool) -> GinSettings:
    from reformer_tools.gin_config import read_gin

    try:
        return read_gin(path)
    except ConfigError as error:
        if not found:
            raise
        # Found beside the checkpoint, not typed by the user: part of the checkpoint, and unreadable.
        raise UnreadableCheckpointError(str(error)) from None


def _shared_qk_from_gin(weight_kinds: Sequence[str], gin_kinds: Sequence[str]) -> list[str]:
    """Three attention arrays are LSH or shared-QK local attention; config.gin tells which.

    Where it says shared-QK local, the layer is marked local, so the mapper names the layout
    Hugging Face cannot represent instead of converting it as LSH.
    """
    if len(gin_kinds) != len(weight_kinds):
        return list(weight_kinds)
    return [
        "local" if said == "local-shared-qk" and found == "lsh" else found
        for said, found in zip(gin_kinds, weight_kinds, strict=True)
    ]


def _unknown_message(unknown: Mapping[str, str], releases: Releases) -> str:
    keys = list(unknown)
    example = " ".join(f"--set {key}=..." for key in keys)
    reasons = "; ".join(dict.fromkeys(unknown.values()))
    return (
        f"cannot tell {', '.join(keys)} for this checkpoint ({releases}): {reasons}. "
        f"Give them with {example}, a config.gin (--gin) or a config.json (--config)"
    )


def describe_assumed(resolved: ResolvedConfig) -> str | None:
    """One line for stderr naming every assumed value, or None when nothing was assumed."""
    if not resolved.assumed:
        return None
    shown = ", ".join(f"{key}={_show(value)}" for key, value in resolved.assumed_values.items())
    return (
        f"assumed Trax's defaults ({resolved.releases}), not read from the checkpoint, config.gin, --config or --set: "
        f"{shown}. A model trained with other values computes something else: give those with --set KEY=VALUE "
        "or --config"
    )


def _show(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:g}"
    return json.dumps(_jsonable(value))
