"""Verification: the checkpoint against its config, its arrays' health, and a converted output.

One pass over the source arrays computes each array's audit (NaN, Inf,
all-zero) and, when a converted model is given, compares every tensor it
should hold with the mapper's transform of the source, value by value.
Everything found is collected; nothing stops at the first problem.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import numpy as np
import numpy.typing as npt

from reformer_tools.checkpoint import Leaf, TraxCheckpoint
from reformer_tools.converted import ConvertedModel
from reformer_tools.dtypes import DTYPES, OUTPUT_DTYPES, as_float32, cast
from reformer_tools.errors import ConfigError, OutputRejectedError, VocabularyError
from reformer_tools.mapper import Alignment, Assignment, align, hf_shapes
from reformer_tools.spec import SIN_COS_KEY, ReformerSpec, spec_from_dict
from reformer_tools.untrusted import printable, shown

if TYPE_CHECKING:
    from reformer_tools.numerics import NumericsReport
    from reformer_tools.resolve import ConfigSources, ResolvedConfig
    from reformer_tools.trax_text import TokenizerCheck
    from reformer_tools.vocab import Vocabulary

#: Config fields that change the weights' shapes or the forward pass.
NUMERIC_FIELDS: Final = (
    "hidden_act",
    "layer_norm_eps",
    "local_attn_chunk_length",
    "local_num_chunks_before",
    "local_num_chunks_after",
    "lsh_attn_chunk_length",
    "lsh_num_chunks_before",
    "lsh_num_chunks_after",
    "num_hashes",
    "num_buckets",
    "is_decoder",
)
SHAPE_FIELDS: Final = (
    "vocab_size",
    "hidden_size",
    "num_attention_heads",
    "attention_head_size",
    "feed_forward_size",
    "attn_layers",
    "axial_pos_embds",
    "axial_pos_shape",
    "axial_pos_embds_dim",
    "max_position_embeddings",
)


@dataclass(frozen=True)
class ArrayAudit:
    """Health of one source array."""

    path: str
    hf_key: str | None
    dtype: str
    nan: int
    inf: int
    all_zero: bool
    zero_is_suspicious: bool  # weights and scales; zero biases are normal at init

    @property
    def ok(self) -> bool:
        return not (self.nan or self.inf or (self.all_zero and self.zero_is_suspicious))


Status = Literal["equal", "different", "shape", "dtype", "missing"]


@dataclass(frozen=True)
class TensorComparison:
    hf_key: str
    trax_path: str
    status: Status
    max_abs_diff: float | None = None
    detail: str = ""
    cast_to: str | None = None  # compared after casting the source to this, the dtype the output declares


@dataclass(frozen=True)
class StoredDtypes:
    """The dtypes an output's tensors are stored in, and the one cast it declares, if any.

    A tensor may be stored in another dtype than its source only as the output declares: every tensor
    stored alike, and config.json's ``torch_dtype`` (or ``dtype``), where present, naming that dtype.
    """

    counts: dict[str, int]
    declared: str | None  # the dtype every source may have been cast to
    why_not: str = ""  # why no cast is declared, for a tensor stored otherwise than its source

    @classmethod
    def of(cls, converted: ConvertedModel) -> StoredDtypes:
        counts: dict[str, int] = {}
        for _, stored in converted.items():
            counts[stored.dtype] = counts.get(stored.dtype, 0) + 1
        if not counts:
            return cls(counts, None, "the output holds no tensors")
        if len(counts) != 1:
            shown_counts = ", ".join(f"{n} {dtype}" for dtype, n in sorted(counts.items()))
            return cls(counts, None, f"the output's tensors are stored in several dtypes ({shown_counts})")
        (only,) = counts
        config = converted.config if isinstance(converted.config, dict) else {}
        for key in ("torch_dtype", "dtype"):
            said = config.get(key)
            if said is not None and said != only:
                return cls(counts, None, f"its config.json says {key} {shown(said, 40)}, every tensor is {only}")
        if only not in OUTPUT_DTYPES:
            return cls(counts, None, f"{only} is not a dtype a conversion writes ({', '.join(OUTPUT_DTYPES)})")
        return cls(counts, only)


@dataclass
class ConvertedReport:
    path: str
    comparisons: list[TensorComparison] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    config_differences: list[str] = field(default_factory=list)
    config_problems: list[str] = field(default_factory=list)
    dtypes: StoredDtypes | None = None

    @property
    def equal_after_cast(self) -> dict[str, int]:
        """Equal tensors compared after the declared cast, by that dtype."""
        out: dict[str, int] = {}
        for c in self.comparisons:
            if c.status == "equal" and c.cast_to is not None:
                out[c.cast_to] = out.get(c.cast_to, 0) + 1
        return out

    @property
    def ok(self) -> bool:
        return (
            all(c.status == "equal" for c in self.comparisons)
            and not self.unexpected
            and not self.config_problems
            and not self.config_differences
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "ok": self.ok,
            "compared": len(self.comparisons),
            "equal": sum(c.status == "equal" for c in self.comparisons),
            "differences": [
                {"hf_key": c.hf_key, "trax_path": c.trax_path, "status": c.status, "max_abs_diff": c.max_abs_diff}
                | ({"detail": c.detail} if c.detail else {})
                for c in self.comparisons
                if c.status != "equal"
            ],
            "equal_after_cast": self.equal_after_cast,
            "stored_dtypes": {} if self.dtypes is None else dict(sorted(self.dtypes.counts.items())),
            "declared_dtype": None if self.dtypes is None else self.dtypes.declared,
            "unexpected": self.unexpected,
            "config_differences": self.config_differences,
            "config_problems": self.config_problems,
        }


#: Where the checkpoint's own config can take a value from, for people (config.gin is named by its path).
_SOURCE_NAMES: Final = {
    "weights": "the checkpoint's weight shapes",
    "--set": "--set",
    "trax": "Trax's ReformerLM (every one is)",
    "vocabulary": "the vocabulary",
}


def _shown_value(value: Any) -> str:
    import json

    return json.dumps(list(value) if isinstance(value, tuple) else value, default=str)


@dataclass(frozen=True)
class SourceDifference:
    """A value the verified config gives otherwise than the checkpoint's own sources resolve it."""

    key: str
    verified: Any  # the verified config's (the converted model's config.json)
    own: Any  # what the checkpoint's sources resolve it to (None: they cannot tell)
    source: str  # of ``own``: weights, config.gin, --set, trax, vocabulary; assumed; unresolved
    where: str  # ``source`` for people
    recorded: str | None = None  # the source the converted model's config.json records for the key

    @property
    def given(self) -> bool:
        """A source gave the checkpoint's value (not assumed, not unknown): a difference is a failure."""
        return self.source not in ("assumed", "unresolved")

    def message(self, verified_from: str) -> str:
        mine = f"{self.key}: {_shown_value(self.verified)} in {verified_from}"
        if self.given:
            hint = (
                f" (it records {self.recorded} as its source: give the same --set to verify that override)"
                if self.recorded == "--set" and self.source != "--set"
                else ""
            )
            return f"{mine}, {_shown_value(self.own)} from {self.where}{hint}"
        if self.source == "unresolved":
            return f"{mine}; the checkpoint's sources do not give it and cannot assume it ({self.where}): not proved"
        return (
            f"{mine}; the checkpoint's sources do not give it and would assume {_shown_value(self.own)} "
            f"({self.where}): not proved"
        )

    def to_json(self, verified_from: str) -> dict[str, Any]:
        return {
            "key": self.key,
            "verified": _shown_jsonable(self.verified),
            "checkpoint": _shown_jsonable(self.own),
            "source": self.source,
            "where": self.where,
            "recorded_source": self.recorded,
            "message": self.message(verified_from),
        }


def _shown_jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


@dataclass
class SourcesCheck:
    """The config verified (a converted model's own config.json) against the checkpoint's own sources.

    ``verify CKPT OUT`` without ``--config`` runs the converted model with its config.json; that file says
    nothing about the checkpoint, so the checkpoint's own config (weights, config.gin, --set, Trax's
    defaults) is resolved too, and every field that changes shapes or outputs is compared. A difference
    from a value a source gave is a failure; a value the checkpoint's sources only assume (or cannot tell)
    is not proved by any check on the weights, and a different one is a warning.
    """

    verified_from: str
    own_from: str = ""
    differences: list[SourceDifference] = field(default_factory=list)
    #: Values of the verified config the checkpoint's sources do not give (assumed there, or unknown).
    unconfirmed: dict[str, Any] = field(default_factory=dict)
    #: Keys whose verified value a checkpoint source gave, alike.
    confirmed: dict[str, str] = field(default_factory=dict)
    not_resolved: str | None = None  # why the checkpoint's own config could not be resolved (nothing compared)
    refused: str | None = None  # the checkpoint's own sources name a layout Hugging Face cannot represent

    @property
    def conflicts(self) -> list[SourceDifference]:
        return [d for d in self.differences if d.given]

    @property
    def warnings(self) -> list[SourceDifference]:
        return [d for d in self.differences if not d.given]

    @property
    def ok(self) -> bool:
        return not self.conflicts and self.refused is None

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "verified": self.verified_from,
            "checkpoint": self.own_from,
            "conflicts": [d.to_json(self.verified_from) for d in self.conflicts],
            "warnings": [d.to_json(self.verified_from) for d in self.warnings],
            "unconfirmed": {key: _shown_jsonable(value) for key, value in self.unconfirmed.items()},
            "not_resolved": self.not_resolved,
            "refused": self.refused,
        }


def check_against_sources(
    resolved: ResolvedConfig, own: ResolvedConfig, verified_from: str, recorded: Mapping[str, Any] | None = None
) -> SourcesCheck:
    """Every field that changes shapes or outputs, in the verified config against the checkpoint's own.

    ``recorded``: the sources the verified config.json records (``reformer_tools.sources``), for hints.
    """
    check = SourcesCheck(verified_from, own.description)
    recorded = recorded or {}
    for key in (*SHAPE_FIELDS, *NUMERIC_FIELDS):
        verified, mine = getattr(resolved.spec, key), getattr(own.spec, key)
        if key in own.unresolved:
            source, where = "unresolved", own.unresolved[key]
        elif key in own.assumed:
            source, where = "assumed", own.assumed[key].why
        elif key in own.sources:
            source = own.sources[key]
            where = f"{own.gin_path}" if source == "config.gin" else _SOURCE_NAMES.get(source, source)
        else:
            continue  # no source, no default: Hugging Face's stands in on both sides (a layer kind not used)
        difference = SourceDifference(key, verified, mine if source != "unresolved" else None, source, where)
        if not difference.given:
            check.unconfirmed[key] = verified
            if source == "unresolved" or verified != mine:
                check.differences.append(difference)
        elif verified != mine:
            said = recorded.get(key)
            check.differences.append(replace(difference, recorded=said if isinstance(said, str) else None))
        else:
            check.confirmed[key] = source
    return check


@dataclass
class VerifyReport:
    checkpoint: str
    resolved: ResolvedConfig
    alignment: Alignment
    audits: list[ArrayAudit] = field(default_factory=list)
    converted: ConvertedReport | None = None
    numerics: NumericsReport | None = None
    numerics_skipped: str | None = None  # why --numerics could not run
    tokenizer: TokenizerCheck | None = None
    tokenizer_skipped: str | None = None  # why the tokenizer was not checked (none written, no vocabulary known)
    #: The verified config against the checkpoint's own sources, when it is a converted model's config.json.
    sources: SourcesCheck | None = None

    @property
    def failed_audits(self) -> list[ArrayAudit]:
        return [audit for audit in self.audits if not audit.ok]

    @property
    def ok(self) -> bool:
        return (
            self.alignment.ok
            and not self.failed_audits
            and (self.converted is None or self.converted.ok)
            and (self.numerics is None or self.numerics.ok)
            and self.numerics_skipped is None
            and (self.tokenizer is None or self.tokenizer.ok)
            and (self.sources is None or self.sources.ok)
        )

    @property
    def config_source(self) -> str:
        return self.resolved.description

    def failures(self) -> list[str]:
        """Each kind of failure, counted (empty when ``ok``)."""
        alignment = self.alignment
        counted = (
            (len(alignment.mismatches), "shape mismatches"),
            (len(alignment.missing), "missing"),
            (len(alignment.unused), "unused"),
            (len(alignment.problems), "unsupported"),
            (len(self.failed_audits), "unhealthy arrays"),
        )
        failures = [f"{count} {what}" for count, what in counted if count]
        if self.sources is not None and self.sources.conflicts:
            failures.append(f"{len(self.sources.conflicts)} config values contradict the checkpoint's own sources")
        if self.sources is not None and self.sources.refused is not None:
            failures.append("the checkpoint's own sources describe a model Hugging Face cannot represent")
        if self.converted is not None and not self.converted.ok:
            converted = self.converted
            differ = sum(c.status != "equal" for c in converted.comparisons)
            parts = (
                (differ, "tensors"),
                (len(converted.unexpected), "unexpected"),
                (len(converted.config_problems) + len(converted.config_differences), "config"),
            )
            failures.append("converted output differs: " + ", ".join(f"{n} {what}" for n, what in parts if n))
        if self.numerics is not None and not self.numerics.ok:
            numerics = self.numerics
            what = "log-probabilities" if numerics.complete else "hidden states"
            failures.append(f"{what} differ by {numerics.max_abs_diff:.3g} (tolerance {numerics.atol:g})")
        if self.numerics_skipped is not None:
            failures.append(f"numerics not run ({self.numerics_skipped})")
        if self.tokenizer is not None and not self.tokenizer.ok:
            tokenizer = self.tokenizer
            mismatches = (tokenizer.load_error, tokenizer.first_id_mismatch, tokenizer.first_decoding_mismatch)
            if any(m is not None for m in mismatches):
                failures.append("tokenizer differs from Trax's encoder")
            if tokenizer.first_start_mismatch is not None:
                failures.append("tokenizer does not start every text with id 0")
        return failures

    def to_json(self) -> dict[str, Any]:
        from reformer_tools.inspection import config_json

        dtypes: dict[str, int] = {}
        for audit in self.audits:
            dtypes[audit.dtype] = dtypes.get(audit.dtype, 0) + 1
        return {
            "ok": self.ok,
            "checkpoint": self.checkpoint,
            **config_json(self.resolved),
            **self.alignment.to_json(),
            "arrays": {
                "count": len(self.audits),
                "dtypes": dtypes,
                "nan": [{"path": a.path, "hf_key": a.hf_key, "count": a.nan} for a in self.audits if a.nan],
                "inf": [{"path": a.path, "hf_key": a.hf_key, "count": a.inf} for a in self.audits if a.inf],
                "all_zero": [
                    {"path": a.path, "hf_key": a.hf_key, "suspicious": a.zero_is_suspicious}
                    for a in self.audits
                    if a.all_zero
                ],
            },
            "converted": None if self.converted is None else self.converted.to_json(),
            "numerics": None if self.numerics is None else self.numerics.to_json(),
            "numerics_skipped": self.numerics_skipped,
            "tokenizer": None if self.tokenizer is None else self.tokenizer.to_json(),
            "tokenizer_skipped": self.tokenizer_skipped,
            "checkpoint_sources": None if self.sources is None else self.sources.to_json(),
        }


def audit_array(leaf: Leaf, array: npt.NDArray[Any], assignment: Assignment | None) -> ArrayAudit:
    """Count NaN/Inf and detect all-zero arrays, without copying large arrays twice."""
    values = as_float32(array, leaf.dtype) if leaf.dtype == "bfloat16" else array
    if values.dtype.kind == "f":
        nan = int(np.count_nonzero(np.isnan(values)))
        inf = int(np.count_nonzero(np.isinf(values)))
    else:
        nan = inf = 0
    all_zero = values.size > 0 and not np.any(values)
    return ArrayAudit(
        leaf.path,
        assignment.slot.hf_key if assignment is not None else None,
        leaf.dtype,
        nan,
        inf,
        bool(all_zero),
        zero_is_suspicious=assignment is None or not assignment.slot.rule.zero_ok,
    )


def compare_tensor(
    key: str,
    path: str,
    expected: npt.NDArray[Any],
    dtype: str,
    converted: ConvertedModel,
    dtypes: StoredDtypes | None = None,
) -> TensorComparison:
    """The converted tensor against what it must hold (``expected``, a storage array of ``dtype``: a leaf's
    transform, or a computed tensor), bit for bit: as stored, or after the cast the output declares
    (``dtypes``; a tensor stored otherwise than its source and than that is a ``dtype`` difference)."""
    stored = converted.tensors.get(key)
    if stored is None:
        return TensorComparison(key, path, "missing")
    if stored.shape != tuple(expected.shape):
        return TensorComparison(key, path, "shape", detail=f"{list(stored.shape)} instead of {list(expected.shape)}")
    detail = ""
    cast_to = None
    if stored.dtype != dtype:
        dtypes = dtypes or StoredDtypes.of(converted)
        if stored.dtype not in OUTPUT_DTYPES:
            return TensorComparison(key, path, "dtype", detail=f"{printable(stored.dtype, 40)} instead of {dtype}")
        if stored.dtype != dtypes.declared:
            return TensorComparison(
                key,
                path,
                "dtype",
                detail=f"{stored.dtype} instead of {dtype}, a cast the output does not declare: {dtypes.why_not}",
            )
        expected = cast(expected, dtype, stored.dtype)
        detail = f"compared after casting {dtype} to {stored.dtype}"
        cast_to = stored.dtype
    actual = converted.load(key)
    if _bitwise_equal(expected, actual):
        return TensorComparison(key, path, "equal", 0.0, detail, cast_to)
    diff = np.abs(as_float32(actual, stored.dtype).astype(np.float64) - as_float32(expected, stored.dtype))
    return TensorComparison(key, path, "different", float(np.nanmax(diff)) if diff.size else 0.0, detail, cast_to)


def _bitwise_equal(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> bool:
    if a.shape != b.shape or a.dtype.itemsize != b.dtype.itemsize:
        return False
    view = np.dtype(f"u{a.dtype.itemsize}")
    return bool(np.array_equal(np.ascontiguousarray(a).view(view), np.ascontiguousarray(b).view(view)))


def check_converted_config(converted: ConvertedModel, spec: ReformerSpec, report: ConvertedReport) -> None:
    """The output's config.json must describe its own tensors and agree with the checkpoint's config."""
    if converted.config is None:
        if converted.path.is_dir():
            report.config_problems.append("the output directory has no config.json")
        return
    try:
        own = spec_from_dict(converted.config)
    except ConfigError as error:
        report.config_problems.append(f"its config.json is invalid: {error}")
        return
    shapes = hf_shapes(own)
    for key, stored in converted.tensors.items():
        if key in shapes and shapes[key] != stored.shape:
            report.config_problems.append(
                f"its config.json implies {key} is {list(shapes[key])}, the file holds {list(stored.shape)}"
            )
    for name in (*SHAPE_FIELDS, *NUMERIC_FIELDS):
        mine, theirs = getattr(spec, name), getattr(own, name)
        if mine != theirs:
            report.config_differences.append(f"{name}: {theirs!r} in the output, {mine!r} in the verified config")


def verify_checkpoint(
    checkpoint: TraxCheckpoint,
    resolved: ResolvedConfig,
    converted: ConvertedModel | None = None,
    *,
    on_array: Callable[[Leaf, npt.NDArray[Any]], None] | None = None,
) -> VerifyReport:
    """Shapes, array health and (optionally) a converted output, all in one pass.

    ``on_array`` sees every source array as it streams by (used to collect the
    float32 weights for ``--numerics`` without reading a side file twice).
    """
    spec = resolved.spec
    alignment = align(spec, checkpoint.leaves)
    report = VerifyReport(str(checkpoint.path), resolved, alignment)
    by_leaf = {a.leaf.index: a for a in alignment.assignments}
    dtypes = StoredDtypes.of(converted) if converted is not None else None
    if converted is not None:
        report.converted = ConvertedReport(str(converted.path), dtypes=dtypes)
        check_converted_config(converted, spec, report.converted)
    for leaf, array in checkpoint.iter_arrays():
        assignment = by_leaf.get(leaf.index)
        report.audits.append(audit_array(leaf, array, assignment))
        if converted is not None and report.converted is not None and assignment is not None:
            expected = assignment.slot.transform.apply(array)
            for key in assignment.slot.hf_keys:
                comparison = compare_tensor(key, leaf.path, expected, leaf.dtype, converted, dtypes)
                report.converted.comparisons.append(comparison)
        if on_array is not None:
            on_array(leaf, array)
    if converted is not None and report.converted is not None:
        for slot in alignment.computed:
            for key in slot.hf_keys:
                comparison = compare_tensor(key, "(computed)", slot.computed_value(spec), "float32", converted, dtypes)
                report.converted.comparisons.append(comparison)
        keys = {key for a in alignment.assignments for key in a.slot.hf_keys}
        keys |= {key for slot in alignment.computed for key in slot.hf_keys}
        report.converted.unexpected = sorted(set(converted.tensors) - keys)
    return report


def resolve_own_sources(
    checkpoint: TraxCheckpoint, resolved: ResolvedConfig, sources: ConfigSources, converted: ConvertedModel
) -> SourcesCheck:
    """Resolve the checkpoint's own config from ``sources`` (weights, config.gin, --set, Trax's defaults; its
    config.json is ignored) and compare ``resolved``, a converted model's config.json, with it.

    Sources that cannot say what the checkpoint is (weightless positions nothing names, an unusable
    config.gin or vocabulary) leave nothing compared, with the reason; sources naming a layout Hugging Face
    cannot represent are a failure, since the converted model claims to be one.
    """
    from reformer_tools.errors import UnsupportedLayoutError, WeightlessPositionsError
    from reformer_tools.resolve import PROVENANCE_KEY

    verified_from = resolved.description
    own_sources = replace(sources, config_path=None)
    try:
        try:
            own = own_sources.resolve(checkpoint, complete=False)
        except WeightlessPositionsError:
            if not resolved.spec.sin_cos_positions:
                raise
            # The weights cannot tell which weightless encoding Trax used; the converted model says sin-cos
            # (the only one that converts): take that, and compare everything else.
            settings = {SIN_COS_KEY: "sin-cos", **own_sources.settings}
            own = replace(own_sources, settings=settings).resolve(checkpoint, complete=False)
    except WeightlessPositionsError as error:
        return SourcesCheck(verified_from, not_resolved=str(error))
    except UnsupportedLayoutError as error:
        return SourcesCheck(verified_from, refused=str(error))
    except (ConfigError, VocabularyError) as error:
        return SourcesCheck(verified_from, not_resolved=str(error))
    config = converted.config if isinstance(converted.config, dict) else {}
    provenance = config.get(PROVENANCE_KEY)
    recorded = provenance.get("sources") if isinstance(provenance, dict) else None
    return check_against_sources(resolved, own, verified_from, recorded if isinstance(recorded, dict) else None)


def verify_conversion(
    checkpoint: TraxCheckpoint,
    resolved: ResolvedConfig,
    converted: ConvertedModel | None,
    *,
    numerics: bool,
    input_ids: npt.NDArray[Any] | None = None,
    atol: float | None = None,
    seed: int | None = None,
    texts: Sequence[str] = (),
    vocabulary: Vocabulary | None = None,
    own_sources: ConfigSources | None = None,
) -> VerifyReport:
    """Everything ``verify`` checks: shapes and arrays; a converted output value by value, its config and
    (for a directory) its tokenizer on built-in sample texts and ``texts``; with ``numerics``, the
    forward pass against the NumPy reference of Trax.

    ``own_sources``: when ``resolved`` is the converted model's own config.json, the checkpoint's sources,
    resolved and compared with it (:func:`resolve_own_sources`).
    """
    float32_leaves: list[npt.NDArray[np.float32]] = []
    report = verify_checkpoint(
        checkpoint,
        resolved,
        converted,
        on_array=(lambda leaf, array: float32_leaves.append(as_float32(array, leaf.dtype))) if numerics else None,
    )
    if own_sources is not None and converted is not None:
        report.sources = resolve_own_sources(checkpoint, resolved, own_sources, converted)
    if numerics:
        verify_numerics(report, float32_leaves, converted, input_ids, atol=atol, seed=seed)
    if converted is not None and converted.path.is_dir():
        from reformer_tools.trax_text import SAMPLE_TEXTS

        verify_tokenizer(report, converted.path, vocabulary, [*SAMPLE_TEXTS, *texts], converted.config)
    return report


def verify_staged_output(
    staged: Path,
    output: Path,
    checkpoint_path: Path,
    resolved: ResolvedConfig,
    *,
    torch_bin: bool = False,
    max_decompressed: int | None = None,
) -> VerifyReport:
    """``convert --verify``: a finished output, not yet in place, against a second read of the checkpoint.

    Every tensor is read back from ``staged`` and compared with its source array, and the model runs
    beside the NumPy reference of Trax; a directory's tokenizer is checked too. If anything differs,
    ``OutputRejectedError`` is raised (the output is then never put in place); otherwise a
    directory's model card is rewritten with the figures.
    """
    from reformer_tools.converted import open_converted
    from reformer_tools.loader import load_checkpoint

    # A second read: the conversion released each array as it wrote it, and this check should not
    # trust anything that conversion computed.
    checkpoint = load_checkpoint(checkpoint_path, max_decompressed=max_decompressed)
    converted = open_converted(staged, torch_bin=torch_bin)
    vocabulary = resolved.vocabulary.vocabulary if resolved.vocabulary is not None else None
    report = verify_conversion(checkpoint, resolved, converted, numerics=True, vocabulary=vocabulary)
    if report.converted is not None:
        report.converted.path = str(output)  # where it will be, not the hidden name it is checked under
    if not report.ok:
        raise OutputRejectedError(
            f"{output}: not written: the conversion differs from the checkpoint ({', '.join(report.failures())}); "
            f"run `reformer-tools verify` on the checkpoint for details"
        )
    if staged.is_dir():
        _add_verification_to_card(staged, checkpoint, resolved, converted, report)
    return report


def _add_verification_to_card(
    directory: Path,
    checkpoint: TraxCheckpoint,
    resolved: ResolvedConfig,
    converted: ConvertedModel,
    report: VerifyReport,
) -> None:
    from reformer_tools.model_files import Verification, model_card

    dtypes = {stored.dtype for _, stored in converted.items()}
    verification = Verification(
        tensors=len(report.converted.comparisons) if report.converted is not None else 0,
        numerics=report.numerics.to_json() if report.numerics is not None else None,
        tokenizer=report.tokenizer.to_json() if report.tokenizer is not None else None,
    )
    card = model_card(checkpoint, resolved, dtype=dtypes.pop() if len(dtypes) == 1 else None, verification=verification)
    (directory / "README.md").write_bytes(card)


def verify_numerics(
    report: VerifyReport,
    leaves: list[npt.NDArray[np.float32]],
    converted: ConvertedModel | None,
    input_ids: npt.NDArray[Any] | None,
    *,
    atol: float | None,
    seed: int | None,
) -> None:
    """Run the converted model and the independent NumPy reference on the same tokens.

    ``leaves`` are the checkpoint's arrays as float32, in Trax order. Without a
    converted model, the Hugging Face side gets the mapper's tensors in memory.
    """
    if not report.alignment.ok:
        report.numerics_skipped = "the checkpoint does not match the config, so there is no model to run"
        return
    from reformer_tools.numerics import compare_numerics

    model: ConvertedModel | dict[str, npt.NDArray[Any]]
    leaf_dtypes: list[str | None] | None = None
    if converted is not None:
        unreadable = sorted({stored.dtype for _, stored in converted.items() if stored.dtype not in DTYPES})
        if unreadable:
            report.numerics_skipped = (
                f"the converted model holds tensors stored as {', '.join(printable(d, 40) for d in unreadable)}, "
                "which cannot be run"
            )
            return
        model = converted
        # Each array of the reference is rounded as its own tensor is stored (the first, if it feeds several).
        leaf_dtypes = [None] * len(leaves)
        for assignment in report.alignment.assignments:
            stored = next((converted.tensors[k] for k in assignment.slot.hf_keys if k in converted.tensors), None)
            if stored is not None and assignment.leaf.index < len(leaves):
                leaf_dtypes[assignment.leaf.index] = stored.dtype
    else:
        model = {
            key: assignment.slot.transform.apply(leaves[assignment.leaf.index])
            for assignment in report.alignment.assignments
            for key in assignment.slot.hf_keys
        }
        spec = report.resolved.spec
        model |= {key: slot.computed_value(spec) for slot in report.alignment.computed for key in slot.hf_keys}
    report.numerics = compare_numerics(
        leaves,
        report.resolved.spec,
        model,
        input_ids,
        atol=atol,
        seed=seed,
        assumed=_not_proved(report),
        leaf_dtypes=leaf_dtypes,
        sources=_sources(report),
    )


def _not_proved(report: VerifyReport) -> dict[str, Any]:
    """The config values no source of the checkpoint gives: no check on the weights proves them."""
    assumed = report.resolved.assumed_values
    check = report.sources
    if check is None or check.not_resolved is not None or check.refused is not None:
        return assumed
    # Compared with the checkpoint's own sources: what they give is shown, whatever the output's record
    # says; what they only assume (or cannot tell) is not, whatever the output's config.json claims.
    return {k: v for k, v in assumed.items() if k not in check.confirmed} | check.unconfirmed


def _sources(report: VerifyReport) -> dict[str, str]:
    """Where each value of the verified config came from, as far as the checkpoint's sources confirm it."""
    sources: dict[str, str] = dict(report.resolved.sources)
    if report.sources is not None:
        sources |= report.sources.confirmed
        sources |= {d.key: "contradicted" for d in report.sources.conflicts}  # said as a failure already
    return sources


#: A text file given with --text: its lines, and the whole file as one text. Real samples are small.
MAX_TEXT_BYTES: Final = 16 * 1024 * 1024


def read_texts(path: Path) -> list[str]:
    """The texts in a UTF-8 file: every line (without its newline) and the whole file."""
    from reformer_tools.spec import read_config_file

    data = read_config_file(path, "text file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start})") from None
    return [*text.splitlines(), text]


def output_vocabulary(directory: Path, config: object) -> Vocabulary | None:
    """The vocabulary a converted directory's tokenizer was written from, as its config.json records it.

    None when nothing is recorded; VocabularyError (one line) when the record is not one this tool writes
    (a type it does not know, counts that are not small non-negative integers) or its copy of the
    vocabulary file cannot be read.
    """
    from reformer_tools.resolve import PROVENANCE_KEY
    from reformer_tools.vocab import VOCAB_TYPES, load_vocabulary

    provenance = config.get(PROVENANCE_KEY) if isinstance(config, dict) else None
    recorded = provenance.get("vocabulary") if isinstance(provenance, dict) else None
    if recorded is None:
        return None
    where = f"its config.json's {PROVENANCE_KEY}.vocabulary"
    if not isinstance(recorded, dict):
        raise VocabularyError(f"{where} is a {type(recorded).__name__}, not a record")
    vocab_type = recorded.get("type")
    if vocab_type not in VOCAB_TYPES:
        raise VocabularyError(f"{where} names the type {shown(vocab_type)}, not one of {', '.join(VOCAB_TYPES)}")
    counts = {}
    for key in ("reserved_ids", "extra_ids"):
        value = recorded.get(key, 0)
        if type(value) is not int:
            raise VocabularyError(f"{where}: {key} is {shown(value)}, not an integer")
        counts[key] = value
    copies = {
        "sentencepiece": "spiece.model",
        "subword": "vocab.subword",
        "bert": "vocab.txt",
        "bert-lowercase": "vocab.txt",
    }
    path = None if vocab_type == "char" else directory / copies[vocab_type]
    try:
        return load_vocabulary(path, vocab_type, counts["reserved_ids"], counts["extra_ids"])
    except VocabularyError as error:
        raise VocabularyError(f"{where}: {error}") from None


def verify_tokenizer(
    report: VerifyReport,
    directory: Path,
    vocabulary: Vocabulary | None,
    texts: list[str],
    config: object = None,
) -> None:
    """The written tokenizer against an independent implementation of Trax's encoder, on ``texts``.

    Without ``vocabulary``, the one the directory's ``config`` records is used; a record that cannot be
    used is reported in ``tokenizer_skipped``, with the reason.
    """
    from reformer_tools.trax_text import check_tokenizer

    if not (directory / "tokenizer.json").is_file():
        report.tokenizer_skipped = "the converted model has no tokenizer (it was converted without a vocabulary)"
        return
    if vocabulary is None:
        try:
            vocabulary = output_vocabulary(directory, config)
        except VocabularyError as error:
            report.tokenizer_skipped = f"{error}; give --vocab to check the tokenizer"
            return
    if vocabulary is None:
        report.tokenizer_skipped = "no vocabulary to check the tokenizer against: give --vocab"
        return
    report.tokenizer = check_tokenizer(directory, vocabulary, texts)
