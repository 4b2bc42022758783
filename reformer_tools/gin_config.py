"""Read Trax's ``config.gin`` into Hugging Face ``ReformerConfig`` values.

Trax writes the operative gin config (``gin.operative_config_str()``) beside every checkpoint; its
bindings carry what the weights cannot show: chunk lengths, hashing, activation, dropout, and
whether 3 attention arrays are LSH or shared-QK local attention.

Parsing uses gin-config's own ``ConfigParser`` with a delegate that records ``@references`` and
``%macros`` instead of looking them up, so nothing is registered or imported and Trax is not needed.
Macros resolve against definitions in the same file; gin binds them late, so the last definition
wins wherever it stands. ``include`` statements are not followed, only reported: gin resolves them
against search paths this tool cannot know, and the config.gin Trax saves never has any
(``operative_config_str`` writes imports, macros and bindings only). Imports carry no values.

Scopes follow gin: a configurable called in scope ``a/b`` takes the bindings of scopes ``""``, ``a``
and ``a/b``, the most specific winning. ReformerLM runs in the scope of the ``train.model``
reference (normally none); an attention class in the scope of its ``attention_type`` reference if
that has one (gin then replaces the scope), else in ReformerLM's. Scoped bindings of these
configurables that never apply are reported. Module-qualified names match by their last part, as
gin matches ``trax.layers.SelfAttention`` and ``SelfAttention`` alike.

``overrides`` holds what gin binds, translated, and values derived from it (max_position_embeddings
from the axial shape; a whole-sequence chunk length). A parameter gin leaves unbound is ambiguous:
in a hand-written file it has Trax's default, but in an operative config it may have been passed
from Python, which gin does not log. So Trax defaults are applied only where the model is known to
call the class from gin (it is named in ``attention_type``) and only if they are the same in every
Trax release and differ from Hugging Face's: SelfAttention's ``chunk_len=None`` and
``n_chunks_before=0``; each is named in ``notes``. Defaults that changed between releases are not
guessed: LSHSelfAttention's ``chunk_len`` (None up to 1.3.4, 128 from 1.3.5) and ``n_buckets``
(256 up to 1.3.4, None from 1.3.5) get a note instead. Unbound ``n_layers`` or ``attention_type``
leave ``attention_kinds`` None (the weights decide). ``layer_norm_eps`` is 1e-6, Trax's LayerNorm epsilon,
unless gin binds ``LayerNorm.epsilon`` (possible from 1.3.7). Values of the wrong type are noted and skipped,
never passed on.

Checked against google/trax v1.2.4, v1.3.4, v1.3.6, v1.4.1 and master (2024):

- SelfAttention with ``chunk_len=None`` attends over the whole sequence. Hugging Face's
  LocalSelfAttention does unchunked attention whenever the input is no longer than
  ``local_attn_chunk_length``, so that becomes the longest input the positions allow, with 0 chunks
  before and after. The same holds for LSHSelfAttention with ``chunk_len=None`` (up to 1.3.4).
- ReformerLM's ``share_qk`` exists only in 1.2.x, where DecoderBlock passes it to every attention
  layer (so it beats ``SelfAttention.share_qk``); later, ``SelfAttention.share_qk`` decides.
- Up to 1.3.5 the attention layers take ``attention_dropout`` from gin; from 1.3.6 ReformerLM passes
  its ``dropout`` instead. A bound ``attention_dropout`` is used, else ``dropout``.
- Positions, old names (up to 1.3.7): empty ``axial_pos_shape`` means learned PositionalEncoding,
  a few strings mean fixed encodings, anything else axial. New names (1.3.8 on): ``pos_type`` None
  means PositionalEncoding *even if* ``pos_axial_shape`` is set (the enwik8 configs do exactly
  that), a few strings mean fixed encodings, any other string axial.
- ``ff_chunk_size`` and ``attention_chunk_size`` only split work into chunks; the numbers are the same.
"""

from __future__ import annotations

import io
import math
import reprlib
import tokenize
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from gin import config_parser

from reformer_tools.errors import ConfigError
from reformer_tools.spec import HF_DEFAULTS, read_config_file

#: Macros can share values, so a short file can stand for a huge one; no real config comes near this.
MAX_VALUE_ITEMS: Final = 1_000_000

#: LayerNorm's epsilon in every Trax release (fixed up to 1.3.6; a gin-configurable default from 1.3.7).
TRAX_LAYER_NORM_EPS: Final = 1e-6

#: ReformerLM defaults that are the same in every release (v1.2.0 through master).
_LM_DEFAULTS: Final[dict[str, int]] = {"max_len": 2048, "d_attention_key": 64, "d_attention_value": 64}

#: Trax activation layers with an exact Hugging Face ACT2FN equivalent.
ACTIVATIONS: Final[dict[str, str]] = {
    "Relu": "relu",
    "FastGelu": "gelu_new",  # 0.5x(1 + tanh(0.7978845608(x + 0.044715x³))): HF's gelu_new
    "Gelu": "gelu",  # exact, erf-based
    "Sigmoid": "sigmoid",
    "Tanh": "tanh",
}

_LOCAL: Final = "SelfAttention"
_LSH: Final = "LSHSelfAttention"
_MODEL: Final = "ReformerLM"
#: Trax 1.2's first attention implementation (ComputeAttentionHeads layout).
_V1_ATTENTION: Final = frozenset(
    {"DotProductCausalAttention", "TimeBinCausalAttention", "LSHCausalAttention", "MemoryEfficientCausalAttention"}
)
#: Fixed (weightless or special) position encodings Hugging Face's Reformer does not have.
_OLD_SPECIAL_POSITIONS: Final = frozenset({"fixed-base", "infinite", "infinite-affine", "time-bin"})
_NEW_SPECIAL_POSITIONS: Final = _OLD_SPECIAL_POSITIONS | {"sin-cos", "no"}

_KIND_WORDS: Final = {
    "local": "local attention (SelfAttention, 4 attention arrays)",
    "lsh": "LSH attention (LSHSelfAttention, 3 attention arrays)",
}
_WEIGHT_WORDS: Final = {"local": "4 attention arrays (local attention)", "lsh": "3 attention arrays (LSH attention)"}

_short = reprlib.Repr()
_short.maxlist = _short.maxtuple = 6
_short.maxdict = 4
_short.maxstring = _short.maxother = 60
_short.maxlevel = 3


@dataclass(frozen=True, repr=False)
class GinReference:
    """A ``@[scope/]module.Name[()]`` value, as written."""

    selector: str
    scope: str = ""
    evaluate: bool = False

    @property
    def name(self) -> str:
        """The configurable's own name, without its module."""
        return self.selector.rsplit(".", 1)[-1]

    def __repr__(self) -> str:
        return f"@{self.scope + '/' if self.scope else ''}{self.selector}{'()' if self.evaluate else ''}"


@dataclass(frozen=True, repr=False)
class GinMacro:
    """A ``%NAME`` the file does not define (defined ones are replaced by their values)."""

    name: str

    def __repr__(self) -> str:
        return f"%{self.name}"


@dataclass(frozen=True)
class GinSettings:
    """What a config.gin says about the model, in Hugging Face's terms."""

    path: Path
    bindings: dict[str, Any]  # "scope/Configurable.param" as written -> value (macros resolved)
    overrides: dict[str, Any]  # Hugging Face ReformerConfig keys -> values derived from gin
    attention_kinds: tuple[str, ...] | None  # per decoder layer: "local", "lsh" or "local-shared-qk"
    notes: tuple[str, ...]  # one-line messages: unsupported or ignored settings, assumptions


def read_gin(path: Path) -> GinSettings:
    """Parse ``path`` and translate the model's bindings. Bad input raises ``ConfigError``."""
    path = Path(path)
    text = _read_text(path)
    statements, macro_definitions, includes = _parse(text, path)
    try:
        macros = _Macros(macro_definitions)
        bindings = [_Binding(b.scope, b.selector, b.arg, macros.resolve(b.value)) for b in statements]
        sizes: dict[int, int] = {}
        for binding in bindings:
            if _size(binding.value, sizes) > MAX_VALUE_ITEMS:
                raise ConfigError(f"{path}: {binding.key}: macros expand to more than {MAX_VALUE_ITEMS:,} values")
        translation = _Translation(_Table(bindings))
        translation.run()
    except RecursionError:
        raise ConfigError(f"{path}: macros or values nested too deeply") from None
    notes = [
        f"include {name!r} (line {line}) not followed: only this file's bindings are read" for name, line in includes
    ]
    notes += [f"macro %{name} is not defined in this file; bindings using it are ignored" for name in macros.undefined]
    notes += [f"macro %{name} refers to itself; bindings using it are ignored" for name in macros.cyclic]
    notes += translation.notes
    return GinSettings(
        path=path,
        bindings={b.key: b.value for b in bindings},
        overrides=translation.overrides,
        attention_kinds=translation.kinds,
        notes=tuple(dict.fromkeys(notes)),
    )


def attention_disagreements(gin: GinSettings, weight_kinds: Sequence[str]) -> list[str]:
    """One message per layer whose attention in ``gin`` differs from the weights' ("local"/"lsh")."""
    kinds = gin.attention_kinds
    if kinds is None:
        return []
    if len(kinds) != len(weight_kinds):
        return [f"{gin.path} says {len(kinds)} decoder layers; the weights have {len(weight_kinds)}"]
    messages = []
    for index, (said, found) in enumerate(zip(kinds, weight_kinds, strict=True)):
        if said == "local-shared-qk":
            if found == "lsh":
                messages.append(
                    f"layer {index}: {gin.path} says shared-QK local attention (SelfAttention, share_qk=True), "
                    "not LSH: both have 3 attention arrays, and Hugging Face's Reformer has no shared-QK local "
                    "attention"
                )
            else:
                messages.append(
                    f"layer {index}: {gin.path} says shared-QK local attention (3 attention arrays); "
                    f"the weights have {_WEIGHT_WORDS.get(found, repr(found))}"
                )
        elif said != found:
            messages.append(
                f"layer {index}: {gin.path} says {_KIND_WORDS.get(said, said)}; "
                f"the weights have {_WEIGHT_WORDS.get(found, repr(found))}"
            )
    return messages


# ------------------------------------------------------------------------------------------ reading


def _read_text(path: Path) -> str:
    data = read_config_file(path, "config.gin")
    if b"\0" in data:
        raise ConfigError(f"{path}: binary data, not a gin config")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ConfigError(f"{path}: not a gin config (not UTF-8 text at line {line})") from None


@dataclass(frozen=True)
class _Binding:
    scope: str
    selector: str  # as written, maybe module-qualified
    arg: str
    value: Any

    @property
    def configurable(self) -> str:
        return self.selector.rsplit(".", 1)[-1]

    @property
    def key(self) -> str:
        return f"{self.scope + '/' if self.scope else ''}{self.selector}.{self.arg}"


class _Delegate:
    """gin's ParserDelegate protocol: records references and macros instead of looking them up."""

    def configurable_reference(self, scoped_configurable_name: str, evaluate: bool) -> GinReference:
        scope, _, selector = scoped_configurable_name.rpartition("/")
        return GinReference(selector, scope, bool(evaluate))

    def macro(self, macro_name: str) -> GinMacro:
        return GinMacro(macro_name)


def _parse(text: str, path: Path) -> tuple[list[_Binding], dict[str, Any], list[tuple[str, int]]]:
    """Bindings in file order, macro definitions, and includes (file name, line)."""
    bindings: list[_Binding] = []
    macros: dict[str, Any] = {}
    includes: list[tuple[str, int]] = []
    try:
        for statement in config_parser.ConfigParser(text, _Delegate()):
            if isinstance(statement, config_parser.BindingStatement):
                if statement.arg_name:
                    bindings.append(_Binding(statement.scope, statement.selector, statement.arg_name, statement.value))
                else:  # `NAME = value` (or `scope/NAME = value`) defines a macro, as in gin.parse_config
                    name = f"{statement.scope}/{statement.selector}" if statement.scope else statement.selector
                    macros[name] = statement.value
            elif isinstance(statement, config_parser.IncludeStatement):
                includes.append((statement.filename, statement.location.line_num))
    except SyntaxError as error:  # gin's own errors, and tokenize's IndentationError
        where = f" at line {error.lineno}" if error.lineno else ""
        raise ConfigError(f"{path}: gin syntax error{where}: {_one_line(error.msg)}") from None
    except tokenize.TokenError as error:  # an unclosed bracket, string or continuation at the end of the file
        message, position = (*error.args, None, None)[:2]
        opened = _unclosed_bracket_line(text)
        if opened is not None:
            raise ConfigError(
                f"{path}: gin syntax error at line {opened}: bracket not closed by the end of the file"
            ) from None
        where = f" at line {position[0]}" if isinstance(position, tuple) and position else ""
        raise ConfigError(f"{path}: gin syntax error{where}: {_one_line(str(message))}") from None
    except RecursionError:
        raise ConfigError(f"{path}: gin syntax error: values nested too deeply") from None
    except ValueError as error:  # scope/selector checks outside the tokenizer
        raise ConfigError(f"{path}: gin syntax error: {_one_line(str(error))}") from None
    return bindings, macros, includes


def _unclosed_bracket_line(text: str) -> int | None:
    """Where the outermost bracket still open at the end of ``text`` was opened (tokenize says only EOF)."""
    depth, opened = 0, None
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type == tokenize.OP and token.string in ("(", "[", "{"):
                opened = token.start[0] if depth == 0 else opened
                depth += 1
            elif token.type == tokenize.OP and token.string in (")", "]", "}"):
                depth = max(depth - 1, 0)
    except (tokenize.TokenError, SyntaxError):
        pass
    return opened if depth else None


def _one_line(message: str, limit: int = 200) -> str:
    """gin's messages can span lines and quote whole tokens; keep one short line."""
    text = " ".join(str(message).split()) or "invalid syntax"
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _Macros:
    """Resolves ``%NAME`` against the file's definitions; each macro is resolved once (no blow-up)."""

    def __init__(self, definitions: dict[str, Any]) -> None:
        self._definitions = definitions
        self._resolved: dict[str, Any] = {}
        self._active: list[str] = []
        self.undefined: list[str] = []
        self.cyclic: list[str] = []

    def resolve(self, value: Any) -> Any:
        if isinstance(value, GinMacro):
            return self._macro(value)
        if isinstance(value, list):
            return [self.resolve(item) for item in value]
        if isinstance(value, tuple):
            return tuple(self.resolve(item) for item in value)
        if isinstance(value, dict):
            resolved = {}
            for key, item in value.items():
                new_key = self.resolve(key)
                try:
                    resolved[new_key] = self.resolve(item)
                except TypeError:  # a macro key resolved to an unhashable value; keep it unresolved
                    resolved[key] = self.resolve(item)
            return resolved
        return value

    def _macro(self, macro: GinMacro) -> Any:
        name = macro.name
        if name in self._resolved:
            return self._resolved[name]
        if name not in self._definitions:
            if name not in self.undefined:
                self.undefined.append(name)
            return macro
        if name in self._active:
            if name not in self.cyclic:
                self.cyclic.append(name)
            return macro
        self._active.append(name)
        try:
            value = self.resolve(self._definitions[name])
        finally:
            self._active.pop()
        self._resolved[name] = value
        return value


def _size(value: Any, memo: dict[int, int]) -> int:
    """Items in ``value`` counted as a tree; shared containers (from macros) are sized once."""
    if not isinstance(value, list | tuple | dict):
        return 1
    known = memo.get(id(value))
    if known is None:
        items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
        known = memo[id(value)] = 1 + sum(_size(item, memo) for item in items)
    return known


class _Table:
    """Bindings by (scope, configurable), looked up as gin does for a call in a given scope."""

    def __init__(self, bindings: Sequence[_Binding]) -> None:
        self._bindings = bindings
        self._by_scope: dict[tuple[str, str], dict[str, Any]] = {}
        for binding in bindings:  # later bindings of the same parameter win, as in gin
            self._by_scope.setdefault((binding.scope, binding.configurable), {})[binding.arg] = binding.value
        self._consulted: set[tuple[str, str]] = set()

    def params(self, configurable: str, scope: tuple[str, ...]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for depth in range(len(scope) + 1):
            key = ("/".join(scope[:depth]), configurable)
            self._consulted.add(key)
            values.update(self._by_scope.get(key, {}))
        return values

    def never_applied(self, configurables: Iterable[str]) -> list[str]:
        """Keys of scoped bindings of ``configurables`` that no lookup used."""
        wanted = set(configurables)
        return [
            b.key
            for b in self._bindings
            if b.scope and b.configurable in wanted and (b.scope, b.configurable) not in self._consulted
        ]


# ------------------------------------------------------------------------------------- translation


def _show(value: Any) -> str:
    return _short.repr(value)


def _is_positive_int(value: Any) -> bool:
    return type(value) is int and value > 0


def _is_count(value: Any) -> bool:
    return type(value) is int and value >= 0


def _is_rate(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value) and 0 <= value < 1


def _is_int_list(value: Any) -> bool:
    return isinstance(value, list | tuple) and bool(value) and all(_is_positive_int(v) for v in value)


def _scope_of(reference: GinReference, default: tuple[str, ...]) -> tuple[str, ...]:
    """gin calls a scoped reference in its own scope (replacing the current one)."""
    return tuple(reference.scope.split("/")) if reference.scope else default


class _Translation:
    """Trax bindings -> Hugging Face overrides, attention kinds and notes."""

    def __init__(self, table: _Table) -> None:
        self.table = table
        self.overrides: dict[str, Any] = {}
        self.notes: list[str] = []
        self.kinds: tuple[str, ...] | None = None
        self._defaults_used: list[str] = []  # Trax defaults applied for unbound parameters
        self.model_scope: tuple[str, ...] = ()
        self.lm: dict[str, Any] = {}
        self.seq_len: int | None = None  # the longest input the positions allow, if gin says

    def run(self) -> None:
        self._model()
        self.lm = self.table.params(_MODEL, self.model_scope)
        if not self.lm:
            self.notes.append("config.gin binds no ReformerLM parameter; is it the model's?")
        self._sizes()
        self._positions()
        self._feed_forward()
        self._attention()
        self._layer_norm()
        if self._defaults_used:
            self.notes.append(
                "assumed Trax's defaults (the same in every release) for what config.gin does not bind, though a "
                "value passed in Python would not show in it: " + ", ".join(self._defaults_used)
            )
        ignored = self.table.never_applied((_MODEL, _LOCAL, _LSH, "LayerNorm"))
        if ignored:
            shown = ", ".join(ignored[:5]) + (f" and {len(ignored) - 5} more" if len(ignored) > 5 else "")
            self.notes.append(f"bindings in scopes the model does not run in, ignored: {shown}")

    def _set(self, hf_key: str, value: Any) -> None:
        self.overrides[hf_key] = list(value) if isinstance(value, tuple) else value

    def _take(self, params: dict[str, Any], name: str, hf_key: str, check: Any, what: str, owner: str) -> bool:
        """Copy ``params[name]`` to ``hf_key`` if bound and valid; note it if invalid."""
        if name not in params:
            return False
        value = params[name]
        if check(value):
            self._set(hf_key, value)
            return True
        if not isinstance(value, GinMacro):  # undefined macros are noted once already
            self.notes.append(f"{owner}.{name} = {_show(value)} is not {what}; ignored")
        return False

    def _layer_norm(self) -> None:
        """1e-6 is fixed up to 1.3.6; from 1.3.7 LayerNorm is a configurable, so gin may bind it."""
        params = self.table.params("LayerNorm", self.model_scope)
        self._set("layer_norm_eps", TRAX_LAYER_NORM_EPS)
        self._take(
            params, "epsilon", "layer_norm_eps", lambda v: _is_rate(v) and v > 0, "a small positive number", "LayerNorm"
        )
        if params.get("center") is False:
            self.notes.append(
                "LayerNorm.center = False: RMS normalization (for the final norm at least), which Hugging Face's "
                "Reformer does not have"
            )

    # -- model

    def _model(self) -> None:
        model = self.table.params("train", ()).get("model")
        if isinstance(model, GinReference):
            if model.name != _MODEL:
                self.notes.append(
                    f"train.model is {model!r}, not ReformerLM: only ReformerLM's bindings are read, if there are any"
                )
            else:
                self.model_scope = _scope_of(model, ())

    def _sizes(self) -> None:
        lm = self.lm
        for name, hf_key in (
            ("d_model", "hidden_size"),
            ("d_ff", "feed_forward_size"),
            ("d_attention_key", "attention_head_size"),
            ("n_heads", "num_attention_heads"),
            ("vocab_size", "vocab_size"),
        ):
            self._take(lm, name, hf_key, _is_positive_int, "a positive integer", _MODEL)
        key = lm.get("d_attention_key", _LM_DEFAULTS["d_attention_key"])
        value = lm.get("d_attention_value", _LM_DEFAULTS["d_attention_value"])
        if key != value:
            self.notes.append(
                f"ReformerLM.d_attention_value {_show(value)} differs from d_attention_key {_show(key)}: "
                "Hugging Face's Reformer has one head size for queries, keys and values"
            )
        self._take(lm, "dropout", "hidden_dropout_prob", _is_rate, "a dropout rate in [0, 1)", _MODEL)
        if lm.get("n_chunks"):  # trax 1.2: the input arrives as several concatenated chunks
            self.notes.append(
                f"ReformerLM.n_chunks = {_show(lm['n_chunks'])}: Trax joined that many input chunks; "
                "the converted model takes one sequence"
            )

    # -- positions

    def _positions(self) -> None:
        lm = self.lm
        new = [name for name in ("pos_type", "pos_axial_shape", "pos_d_axial_embs") if name in lm]
        old = [name for name in ("axial_pos_shape", "d_axial_pos_embs") if name in lm]
        if new and old:
            self.notes.append(
                f"ReformerLM binds both {', '.join(old)} (Trax up to 1.3.7) and {', '.join(new)} (1.3.8 on); "
                "no Trax release accepts both; reading the pos_* names"
            )
        if new:
            self._new_positions(lm)
        elif old:
            self._old_positions(lm)
        else:  # learned PositionalEncoding by default, but a Python caller may have passed others
            self._plain_positions(flag=False)

    def _new_positions(self, lm: dict[str, Any]) -> None:
        pos_type = lm.get("pos_type")
        if not pos_type:  # trax: `if not pos_type: PositionalEncoding(...)`
            shape = lm.get("pos_axial_shape")
            if shape:
                self.notes.append(
                    f"ReformerLM.pos_type is {'None' if 'pos_type' in lm else 'not bound (None)'}, so Trax used "
                    f"learned PositionalEncoding of max_len positions and ignored pos_axial_shape {_show(shape)}"
                )
            self._plain_positions()
        elif isinstance(pos_type, str) and pos_type in _NEW_SPECIAL_POSITIONS:
            self._special_positions(f"ReformerLM.pos_type = {pos_type!r}")
        else:
            if pos_type != "axial":
                self.notes.append(f"ReformerLM.pos_type = {_show(pos_type)}: Trax treats any such value as 'axial'")
            self._axial_positions("pos_axial_shape", "pos_d_axial_embs")

    def _old_positions(self, lm: dict[str, Any]) -> None:
        shape = lm.get("axial_pos_shape")
        if not shape:  # trax: `if not axial_pos_shape: PositionalEncoding(...)`
            self._plain_positions()
        elif isinstance(shape, str) and shape in _OLD_SPECIAL_POSITIONS:
            self._special_positions(f"ReformerLM.axial_pos_shape = {shape!r}")
        else:
            self._axial_positions("axial_pos_shape", "d_axial_pos_embs")

    def _max_len(self) -> int | None:
        if "max_len" not in self.lm:
            return None
        value = self.lm["max_len"]
        if _is_positive_int(value):
            return int(value)
        if not isinstance(value, GinMacro):
            self.notes.append(f"ReformerLM.max_len = {_show(value)} is not a positive integer; ignored")
        return None

    def _plain_positions(self, *, flag: bool = True) -> None:
        if flag:
            self._set("axial_pos_embds", False)
        max_len = self._max_len()
        if max_len is not None:
            self._set("max_position_embeddings", max_len)
            self.seq_len = max_len

    def _special_positions(self, binding: str) -> None:
        self.notes.append(f"{binding}: a fixed position encoding Hugging Face's Reformer does not have")
        max_len = self._max_len()
        if max_len is not None:
            self._set("max_position_embeddings", max_len)
            self.seq_len = max_len

    def _axial_positions(self, shape_name: str, dims_name: str) -> None:
        shape: Any = self.lm.get(shape_name)
        dims: Any = self.lm.get(dims_name)
        if not _is_int_list(shape) or not _is_int_list(dims) or len(shape) != len(dims):
            self.notes.append(
                f"ReformerLM.{shape_name} = {_show(shape)} and {dims_name} = {_show(dims)} are not two lists of "
                "positive integers of the same length (Trax would have refused them); positions left to the weights"
            )
            return
        self._set("axial_pos_embds", True)
        self._set("axial_pos_shape", shape)
        self._set("axial_pos_embds_dim", dims)
        self.seq_len = math.prod(shape)
        self._set("max_position_embeddings", self.seq_len)
        max_len = self._max_len()
        if max_len is not None and max_len != self.seq_len:
            self.notes.append(
                f"ReformerLM.max_len = {max_len} is unused with axial positions; "
                f"max_position_embeddings = {self.seq_len}, the product of {shape_name}"
            )

    # -- feed-forward

    def _feed_forward(self) -> None:
        lm = self.lm
        if "ff_activation" in lm:
            activation = lm["ff_activation"]
            if isinstance(activation, GinReference) and not activation.evaluate and activation.name in ACTIVATIONS:
                self._set("hidden_act", ACTIVATIONS[activation.name])
            elif not isinstance(activation, GinMacro):
                self.notes.append(
                    f"ReformerLM.ff_activation = {_show(activation)} has no Hugging Face equivalent "
                    f"(known: {', '.join(ACTIVATIONS)}); left to the default"
                )
        self._take(lm, "ff_chunk_size", "chunk_size_feed_forward", _is_count, "a non-negative integer", _MODEL)
        if lm.get("ff_use_sru"):
            self.notes.append(
                f"ReformerLM.ff_use_sru = {_show(lm['ff_use_sru'])}: SRU layers, which Hugging Face's Reformer "
                "does not have"
            )
        if lm.get("ff_sparsity"):
            self.notes.append(
                f"ReformerLM.ff_sparsity = {_show(lm['ff_sparsity'])}: a sparse feed-forward block, which Hugging "
                "Face's Reformer does not have"
            )
        loss_type = lm.get("loss_sparsity_type", "mult")
        if lm.get("loss_sparsity") and loss_type not in (None, "None"):
            self.notes.append(
                f"ReformerLM.loss_sparsity = {_show(lm['loss_sparsity'])} ({_show(loss_type)}): a sparse output "
                "layer, which Hugging Face's Reformer does not have"
            )

    # -- attention

    def _attention(self) -> None:
        lm = self.lm
        if "n_layers" in lm:
            n_layers = lm["n_layers"] if _is_positive_int(lm["n_layers"]) else None
            if n_layers is None and not isinstance(lm["n_layers"], GinMacro):
                self.notes.append(f"ReformerLM.n_layers = {_show(lm['n_layers'])} is not a positive integer; ignored")
        else:  # a Python caller may have passed it: the weights decide the count
            n_layers = None
        if "attention_type" not in lm:
            # A Python caller may have passed it (e.g. a functools.partial with chunk_len), and then gin's
            # operative config lacks what the caller passed: translate what is bound, assume no defaults.
            if lm:
                self.notes.append(
                    "ReformerLM.attention_type is not bound (Trax's default: SelfAttention from 1.3, "
                    "DotProductCausalAttention in 1.2); attention kinds left to the weights"
                )
            if self.table.params(_LOCAL, self.model_scope):
                self._local_overrides([GinReference(_LOCAL)], [], defaults=False)
            if self.table.params(_LSH, self.model_scope):
                self._lsh_overrides([GinReference(_LSH)], defaults=False)
            return
        value = lm["attention_type"]
        references = list(value) if isinstance(value, list | tuple) else [value]
        if not references:
            self.notes.append("ReformerLM.attention_type is an empty list (Trax would have refused it)")
            return
        unusable = [
            r for r in references if not (isinstance(r, GinReference) and not r.evaluate and r.name in (_LOCAL, _LSH))
        ]
        if unusable:
            self._note_unusable(unusable)
        local = [r for r in references if isinstance(r, GinReference) and r.name == _LOCAL and not r.evaluate]
        lsh = [r for r in references if isinstance(r, GinReference) and r.name == _LSH and not r.evaluate]
        shared = self._local_overrides(local, lsh) if local else False
        if lsh:
            self._lsh_overrides(lsh)
        if unusable:
            return
        if n_layers is None:
            if "n_layers" not in lm:
                self.notes.append("ReformerLM.n_layers is not bound: attention types per layer left to the weights")
            return
        if n_layers % len(references):
            self.notes.append(
                f"ReformerLM.n_layers {n_layers} is not a multiple of the {len(references)} attention types "
                "(Trax would have refused it); cycling through them anyway"
            )
        per_type = [("local-shared-qk" if shared else "local") if r.name == _LOCAL else "lsh" for r in references]
        self.kinds = tuple(per_type[i % len(per_type)] for i in range(n_layers))
        if shared:
            layers = ", ".join(str(i) for i, kind in enumerate(self.kinds) if kind == "local-shared-qk")
            self.notes.append(
                f"layers {layers}: SelfAttention with share_qk=True is shared-QK local attention, which Hugging Face's "
                "Reformer cannot represent (its LocalSelfAttention has separate query and key)"
            )
        else:
            self._set("attn_layers", list(self.kinds))

    def _note_unusable(self, references: list[Any]) -> None:
        names = list(dict.fromkeys(_show(r) for r in references))
        if all(isinstance(r, GinReference) and r.name in _V1_ATTENTION for r in references):
            self.notes.append(
                f"ReformerLM.attention_type uses {', '.join(names)}: Trax 1.2's first attention implementation, "
                "which Hugging Face's Reformer cannot represent"
            )
        else:
            self.notes.append(
                f"ReformerLM.attention_type uses {', '.join(names)}: Hugging Face's Reformer represents only "
                "SelfAttention (local) and LSHSelfAttention classes (not called with ())"
            )

    def _attention_dropout(self, params: dict[str, Any], owner: str, hf_key: str) -> None:
        if self._take(params, "attention_dropout", hf_key, _is_rate, "a dropout rate in [0, 1)", owner):
            dropout = self.lm.get("dropout")
            if _is_rate(dropout) and dropout != params["attention_dropout"]:
                self.notes.append(
                    f"{owner}.attention_dropout {params['attention_dropout']} differs from ReformerLM.dropout "
                    f"{dropout}, which Trax 1.3.6 on passes to attention instead; using attention_dropout"
                )
        elif _is_rate(self.lm.get("dropout")):
            self._set(hf_key, self.lm["dropout"])

    def _settings(self, name: str, references: list[GinReference]) -> dict[str, Any]:
        """The bindings of the first reference's scope; a note if other scopes differ."""
        scopes = list(dict.fromkeys(_scope_of(r, self.model_scope) for r in references))
        settings = [self.table.params(name, scope) for scope in scopes]
        if any(s != settings[0] for s in settings[1:]):
            self.notes.append(
                f"{name} has different bindings in scopes {', '.join('/'.join(s) or '(none)' for s in scopes)}; "
                f"Hugging Face has one set for all layers: using {'/'.join(scopes[0]) or 'the unscoped'} ones"
            )
        return settings[0]

    def _whole_sequence(self, owner: str, prefix: str, bound: bool) -> int:
        """Chunk length for ``chunk_len=None``: the whole sequence (returned)."""
        if self.seq_len is None:
            self.seq_len = _LM_DEFAULTS["max_len"]
            self._defaults_used.append(f"ReformerLM.max_len={self.seq_len}")
        self._set(f"{prefix}_attn_chunk_length", self.seq_len)
        self._set(f"{prefix}_num_chunks_before", 0)
        self._set(f"{prefix}_num_chunks_after", 0)
        self.notes.append(
            f"{owner}.chunk_len is None{'' if bound else ' (Trax default)'}: Trax attends over the whole sequence; "
            f"Hugging Face does the same unchunked attention when the input is no longer than "
            f"{prefix}_attn_chunk_length, so {prefix}_attn_chunk_length = {self.seq_len} (the longest input the "
            "positions allow), no chunks before or after"
        )
        return self.seq_len

    def _local_overrides(self, local: list[GinReference], lsh: list[GinReference], *, defaults: bool = True) -> bool:
        """Overrides for SelfAttention layers; True if they share query and key.

        ``defaults``: the model is known to call SelfAttention from gin, so an unbound parameter
        has Trax's default (the same in every release).
        """
        params = self._settings(_LOCAL, local)
        chunk = params.get("chunk_len")
        if chunk is None and ("chunk_len" in params or defaults):
            length = self._whole_sequence(_LOCAL, "local", "chunk_len" in params)
            if lsh:
                self._note_padding(lsh, length)
        else:
            self._take(params, "chunk_len", "local_attn_chunk_length", _is_positive_int, "a positive integer", _LOCAL)
            for name, hf_key in (
                ("n_chunks_before", "local_num_chunks_before"),
                ("n_chunks_after", "local_num_chunks_after"),
            ):
                if name in params:
                    self._take(params, name, hf_key, _is_count, "a non-negative integer", _LOCAL)
                elif defaults:  # Trax's default is 0 chunks; Hugging Face's is 1 before
                    self._set(hf_key, 0)
                    if HF_DEFAULTS[hf_key] != 0:
                        self._defaults_used.append(f"SelfAttention.{name}=0")
        self._attention_dropout(params, _LOCAL, "local_attention_probs_dropout_prob")
        if params.get("bias") is True:
            self.notes.append("SelfAttention.bias = True: Hugging Face's attention has no biases")
        if "share_qk" in self.lm:  # trax 1.2: DecoderBlock passes ReformerLM.share_qk to every attention layer
            shared = self.lm["share_qk"]
            if "share_qk" in params and params["share_qk"] != shared:
                self.notes.append(
                    f"SelfAttention.share_qk = {_show(params['share_qk'])} is overridden by ReformerLM.share_qk = "
                    f"{_show(shared)} (Trax 1.2 passes it to the attention layers)"
                )
        else:
            shared = params.get("share_qk", False)
        if type(shared) is not bool and not isinstance(shared, GinMacro):
            self.notes.append(f"share_qk = {_show(shared)} is not true or false; read as {bool(shared)}")
        return bool(shared) and not isinstance(shared, GinMacro)

    def _note_padding(self, lsh: list[GinReference], local_chunk: int) -> None:
        lsh_chunk: Any = self.table.params(_LSH, _scope_of(lsh[0], self.model_scope)).get("chunk_len")
        if _is_positive_int(lsh_chunk):
            self.notes.append(
                f"with local_attn_chunk_length {local_chunk} and lsh_attn_chunk_length {lsh_chunk}, Hugging Face pads "
                f"inputs longer than {min(lsh_chunk, local_chunk)} tokens to a multiple of "
                f"{math.lcm(lsh_chunk, local_chunk)} before the layers (and drops the padding after)"
            )

    def _lsh_overrides(self, lsh: list[GinReference], *, defaults: bool = True) -> None:
        """Overrides for LSHSelfAttention layers; ``defaults`` as for SelfAttention (notes only: they vary)."""
        params = self._settings(_LSH, lsh)
        if "chunk_len" in params and params["chunk_len"] is None:
            self._whole_sequence(_LSH, "lsh", True)
        else:
            if "chunk_len" not in params and defaults:
                self.notes.append(
                    "LSHSelfAttention.chunk_len is not bound: Trax's default is 128 from 1.3.5 and None (whole "
                    "sequence) before, so it depends on the Trax release; pass --config to set lsh_attn_chunk_length"
                )
            self._take(params, "chunk_len", "lsh_attn_chunk_length", _is_positive_int, "a positive integer", _LSH)
            for name, hf_key in (
                ("n_chunks_before", "lsh_num_chunks_before"),
                ("n_chunks_after", "lsh_num_chunks_after"),
            ):
                self._take(params, name, hf_key, _is_count, "a non-negative integer", _LSH)
        self._take(params, "n_hashes", "num_hashes", _is_positive_int, "a positive integer", _LSH)
        if "n_buckets" not in params:
            if defaults:
                self.notes.append(
                    "LSHSelfAttention.n_buckets is not bound: Trax's default is 256 up to 1.3.4 and None (from the "
                    "input length) from 1.3.5, so it depends on the Trax release; pass --config to set num_buckets"
                )
        elif params["n_buckets"] is None:
            self._set("num_buckets", None)
            self.notes.append(
                "LSHSelfAttention.n_buckets is None: Trax picks 2·length/chunk_len buckets per input (factorized "
                "above 128), Hugging Face a power of two on first use; they can differ, so set num_buckets to agree"
            )
        else:
            self._take(
                params,
                "n_buckets",
                "num_buckets",
                lambda v: (_is_positive_int(v) and v % 2 == 0) or _is_int_list(v),
                "an even positive integer or a list of positive integers",
                _LSH,
            )
        self._attention_dropout(params, _LSH, "lsh_attention_probs_dropout_prob")
        if params.get("bias") is True:
            self.notes.append("LSHSelfAttention.bias = True: Hugging Face's attention has no biases")
