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

from reformer_tools.errors import (
    ConfigError,
    UnreadableCheckpointError,
    UnsupportedLayoutError,
    UsageError,
)
from reformer_tools.infer import read_weight_shapes
from reformer_tools.loader import TraxCheckpoint
from reformer_tools.spec import HF_DEFAULTS, ReformerSpec, read_config_json, spec_from_dict
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

#: Where a value came from. "trax" marks what every Trax ReformerLM is (causal, untied output, pad id 0).
Source = Literal["weights", "config.json", "config.gin", "--set", "assumed", "trax"]
#: The key in a written config.json that records where its values came from.
PROVENANCE_KEY: Final = "reformer_tools"
#: Settable with --set besides ReformerConfig's own keys: Trax's pos_type, for weightless positions.
TRAX_POS_TYPE: Final = "trax_pos_type"
_SETTABLE_EXTRA: Final = (
    TRAX_POS_TYPE,
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
class ConfigSources:
    """Where a command's config may come from: --config, --gin and --set."""

    config_path: Path | None = None
    gin_path: Path | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)

    def resolve(self, checkpoint: TraxCheckpoint | None, *, complete: bool = True) -> ResolvedConfig:
        return resolve_config(checkpoint, self.config_path, self.gin_path, self.settings, complete=complete)


def resolve_config(
    checkpoint: TraxCheckpoint | None,
    config_path: Path | None = None,
    gin_path: Path | None = None,
    settings: Mapping[str, Any] | None = None,
    *,
    complete: bool = True,
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
    else:
        assert checkpoint is not None
        gin_file = find_gin(checkpoint, gin_path)
        description = "the weight shapes" + (f" and {gin_file}" if gin_file else "")
        builder.take_weights_and_gin(checkpoint, gin_file, found=gin_path is None)
    builder.take_settings(settings or {})
    builder.fill(complete=complete)
    spec = builder.spec(description)
    return ResolvedConfig(
        spec,
        description,
        builder.sources,
        builder.assumed,
        builder.releases,
        tuple(dict.fromkeys(builder.notes)),
        builder.gin,
        builder.unresolved,
    )


class _Builder:
    """Collects values source by source; a later source overrides an earlier one."""

    def __init__(self, releases: Releases) -> None:
        self.releases = releases
        self.values: dict[str, Any] = {}
        self.sources: dict[str, Source] = {}
        self.assumed: dict[str, Assumption] = {}
        self.unresolved: dict[str, str] = {}
        self.notes: list[str] = []
        self.gin: GinSettings | None = None
        self._weightless = False  # the weights hold no positional encoding

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
            bound = ", ".join(sorted(gin.overrides)) or "nothing applicable"
            self.notes.append(f"from {gin_file}: {bound}")
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
                self.put(TRAX_POS_TYPE, gin.positions, "config.gin")
        for key, value in weight_values.items():
            self.put(key, value, "weights")
        self.notes.append(f"config inferred from the weight shapes: {', '.join(sorted(shapes.values))}")
        if shapes.positions == "none":
            self._weightless_positions()
        elif "lsh" in shapes.attention_kinds and (gin is None or gin.attention_kinds is None):
            layers = ", ".join(str(i) for i, kind in enumerate(shapes.attention_kinds) if kind == "lsh")
            self.notes.append(
                f"layers {layers}: 3 attention projections read as LSH attention; shared-QK local attention has the "
                "same shapes and cannot be told apart without config.gin (pass --gin or --config to be sure)"
            )

    def _weightless_positions(self) -> None:
        """No positional-encoding arrays: only Trax's sin-cos encoding can be converted, and only if named
        (by config.gin or --set trax_pos_type=sin-cos; checked in ``fill`` once every source is in)."""
        self._weightless = True
        self.put("axial_pos_embds", False, "weights")

    def take_settings(self, settings: Mapping[str, Any]) -> None:
        for key, value in settings.items():
            self.put(key, value, "--set")

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
        pos_type = self.values.get(TRAX_POS_TYPE)
        if pos_type is not None and pos_type != SIN_COS:
            raise UnsupportedLayoutError(
                f"the positional encoding is Trax's {printable(str(pos_type), 40)!r}, which has no weights and no "
                "Hugging Face counterpart; only 'sin-cos' can be converted (as a fixed table)"
            )
        if self._weightless and pos_type is None:
            raise UnsupportedLayoutError(
                "the checkpoint has no positional-encoding weights: Trax used a fixed encoding (pos_type "
                "'sin-cos', 'fixed-base', 'infinite', 'time-bin' or 'no'), which Hugging Face's Reformer does not "
                "have; Trax's sin-cos can be converted as a fixed table: if it is sin-cos, say so with --set "
                "trax_pos_type=sin-cos or a config.gin binding ReformerLM.pos_type = 'sin-cos'"
            )
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
