"""Read Trax's ``config.gin`` into Hugging Face ``ReformerConfig`` values: what gin binds, nothing assumed.

Parsed with gin-config's own parser and a delegate that records references and macros instead of
looking them up, so nothing is imported or registered. docs/configuration.md explains the rules
(scopes, macros, old and new names, what each binding becomes).
"""

from __future__ import annotations

import io
import math
import re
import reprlib
import tokenize
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
from gin import config_parser

from reformer_tools.errors import ConfigError
from reformer_tools.spec import read_config_file
from reformer_tools.trax_defaults import WHOLE_SEQUENCE

#: Macros can share values, so a short file can stand for a huge one; no real config comes near this.
MAX_VALUE_ITEMS: Final = 1_000_000
#: Brackets nested in the text, and containers nested in a value once macros are resolved. Real configs
#: nest two or three deep; gin's parser and Python's hashing recurse once per level, so the file is
#: measured before either sees it.
MAX_NESTING: Final = 100
#: String literals written side by side (gin joins them, in time quadratic in their number); real configs have one.
MAX_ADJACENT_STRINGS: Final = 1000

#: ReformerLM defaults that are the same in every release (v1.2.0 through master).
_LM_DEFAULTS: Final[dict[str, int]] = {"max_len": 2048, "d_attention_key": 64, "d_attention_value": 64}

#: Trax activation layers with an exact Hugging Face ACT2FN equivalent.
ACTIVATIONS: Final[dict[str, str]] = {
    "Relu": "relu",
    "FastGelu": "gelu_fast",  # 0.5x(1 + tanh(0.7978845608x(1 + 0.044715x²))): HF's gelu_fast, term for term
    "Gelu": "gelu",  # exact, erf-based
    "Sigmoid": "sigmoid",
    "Tanh": "tanh",
    "Swish": "silu",  # x * sigmoid(x)
    "LeakyRelu": "leaky_relu",  # slope 0.01, both sides' default
}

_TOKENIZE: Final = "Tokenize"
#: trax.data.Tokenize's parameters that say what the ids mean, and what a usable value is.
_TOKENIZE_PARAMS: Final[dict[str, Any]] = {
    "vocab_type": lambda v: isinstance(v, str),
    "vocab_file": lambda v: isinstance(v, str) and bool(v),
    "vocab_dir": lambda v: isinstance(v, str),
    "n_reserved_ids": lambda v: type(v) is int and v >= 0,
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
    notes: tuple[str, ...]  # one-line messages: ignored or doubtful settings
    #: What gin says the model computes that Hugging Face's Reformer cannot, though the weights would not show it.
    unrepresentable: tuple[str, ...] = ()
    #: The positional encoding gin names: "axial", "learned" or a weightless pos_type ("sin-cos", ...).
    positions: str | None = None
    #: What trax.data.Tokenize was bound to (vocab_type, vocab_file, vocab_dir, n_reserved_ids), or a dataset_name.
    vocabulary: dict[str, Any] = field(default_factory=dict)


def read_gin(path: Path) -> GinSettings:
    """Parse ``path`` and translate the model's bindings. Bad input raises ``ConfigError``."""
    path = Path(path)
    text = _read_text(path)
    _check_nesting(text, path)
    _check_adjacent_strings(text, path)
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
    except _TooDeep:
        raise ConfigError(f"{path}: macros or values nested more than {MAX_NESTING} deep") from None
    if translation.invalid:
        # As a config.json with such a value is refused: Trax could not have run with it, so the file is not
        # the model's config, and the default that would stand in for it would be passed off as assumed.
        more = f" (and {len(translation.invalid) - 1} more)" if len(translation.invalid) > 1 else ""
        raise ConfigError(f"{path}: {translation.invalid[0]}{more}")
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
        unrepresentable=tuple(dict.fromkeys(translation.unrepresentable)),
        positions=translation.positions,
        vocabulary=translation.vocabulary,
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


def _check_nesting(text: str, path: Path) -> None:
    """Refuse brackets nested deeper than ``MAX_NESTING`` before any recursive parser meets them."""
    brackets = np.frombuffer(re.sub(r"[^][(){}]+", "", text).encode("ascii"), dtype=np.uint8)
    depth = np.cumsum(np.isin(brackets, _OPENING).astype(np.int64) - np.isin(brackets, _CLOSING))
    if depth.size and int(depth.max()) > MAX_NESTING:
        line = text.count("\n", 0, _position_of_bracket(text, int(np.argmax(depth > MAX_NESTING)))) + 1
        raise ConfigError(f"{path}: brackets nested more than {MAX_NESTING} deep at line {line}")


_OPENING: Final = np.frombuffer(b"([{", dtype=np.uint8)
_CLOSING: Final = np.frombuffer(b")]}", dtype=np.uint8)


def _check_adjacent_strings(text: str, path: Path) -> None:
    """Refuse long runs of adjacent string literals: gin's parser joins them in quadratic time."""
    run = 0
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type == tokenize.STRING:
                run += 1
                if run > MAX_ADJACENT_STRINGS:
                    raise ConfigError(
                        f"{path}: more than {MAX_ADJACENT_STRINGS} adjacent string literals at line {token.start[0]}"
                    )
            elif token.type not in (tokenize.NL, tokenize.COMMENT):
                run = 0
    except (tokenize.TokenError, SyntaxError):
        pass  # gin's own parser reports malformed text, with its line


def _position_of_bracket(text: str, index: int) -> int:
    """Where the ``index``-th bracket of ``text`` is."""
    for count, match in enumerate(re.finditer(r"[][(){}]", text)):
        if count == index:
            return match.start()
    return len(text)


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


class _TooDeep(Exception):
    """A value nests containers deeper than ``MAX_NESTING`` once its macros are resolved."""


class _Macros:
    """Resolves ``%NAME`` against the file's definitions; each macro is resolved once (no blow-up).

    Nesting is counted through macros too: each macro may nest a value ``MAX_NESTING`` deep in
    the text, so a chain of them could build a value far deeper than the file shows.
    """

    def __init__(self, definitions: dict[str, Any]) -> None:
        self._definitions = definitions
        self._resolved: dict[str, tuple[Any, int]] = {}  # name -> (value, its nesting depth)
        self._active: list[str] = []
        self.undefined: list[str] = []
        self.cyclic: list[str] = []

    def resolve(self, value: Any) -> Any:
        return self._resolve(value, 0)[0]

    def _resolve(self, value: Any, depth: int) -> tuple[Any, int]:
        """The value with its macros replaced, and how deeply it nests containers (``depth``: how deep it sits)."""
        if isinstance(value, GinMacro):
            return self._macro(value, depth)
        if not isinstance(value, list | tuple | dict):
            return value, 0
        if depth + 1 > MAX_NESTING:
            raise _TooDeep
        pairs = value.items() if isinstance(value, dict) else ((None, item) for item in value)
        height = 0
        keys, items = [], []
        for key, item in pairs:
            new_key, key_height = (None, 0) if key is None else self._resolve(key, depth + 1)
            new_item, item_height = self._resolve(item, depth + 1)
            height = max(height, key_height, item_height)
            keys.append((key, new_key))
            items.append(new_item)
        if isinstance(value, list):
            return items, height + 1
        if isinstance(value, tuple):
            return tuple(items), height + 1
        resolved = {}
        for (key, new_key), item in zip(keys, items, strict=True):
            try:
                resolved[new_key] = item
            except TypeError:  # a macro key resolved to an unhashable value; keep it unresolved
                resolved[key] = item
        return resolved, height + 1

    def _macro(self, macro: GinMacro, depth: int) -> tuple[Any, int]:
        name = macro.name
        if name in self._resolved:
            value, height = self._resolved[name]
            if depth + height > MAX_NESTING:
                raise _TooDeep
            return value, height
        if name not in self._definitions:
            if name not in self.undefined:
                self.undefined.append(name)
            return macro, 0
        if name in self._active:
            if name not in self.cyclic:
                self.cyclic.append(name)
            return macro, 0
        self._active.append(name)
        try:
            resolved = self._resolve(self._definitions[name], depth)
        finally:
            self._active.pop()
        self._resolved[name] = resolved
        return resolved


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

    def in_any_scope(self, configurable: str) -> dict[str, dict[str, Any]]:
        """Every scope's bindings of ``configurable``, unscoped first."""
        found = {scope: values for (scope, name), values in self._by_scope.items() if name == configurable}
        return dict(sorted(found.items(), key=lambda item: (item[0] != "", item[0])))

    def all_bindings(self) -> list[tuple[str, Any]]:
        return [(b.key, b.value) for b in self._bindings]

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
        self.unrepresentable: list[str] = []
        self.invalid: list[str] = []  # values Trax could not have run with: the file is refused
        self.vocabulary: dict[str, Any] = {}
        self.kinds: tuple[str, ...] | None = None
        self.model_scope: tuple[str, ...] = ()
        self.lm: dict[str, Any] = {}
        self.positions: str | None = None  # "axial", "learned" or the weightless pos_type gin names

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
        self._vocabulary()
        ignored = self.table.never_applied((_MODEL, _LOCAL, _LSH, "LayerNorm"))
        if ignored:
            shown = ", ".join(ignored[:5]) + (f" and {len(ignored) - 5} more" if len(ignored) > 5 else "")
            self.notes.append(f"bindings in scopes the model does not run in, ignored: {shown}")

    def _set(self, hf_key: str, value: Any) -> None:
        self.overrides[hf_key] = list(value) if isinstance(value, tuple) else value

    # -- vocabulary

    def _vocabulary(self) -> None:
        """What trax.data.Tokenize was told (in any scope: it runs in the data pipeline's), or a dataset whose
        vocabulary is known."""
        scoped = self.table.in_any_scope(_TOKENIZE)
        settings: dict[str, Any] = {}
        for name, check in _TOKENIZE_PARAMS.items():
            values = {repr(bound[name]): bound[name] for bound in scoped.values() if name in bound}
            if len(values) > 1:
                self.notes.append(
                    f"Tokenize.{name} has different values in different scopes ({', '.join(values)}); using the first"
                )
            if values:
                value = next(iter(values.values()))
                if value is None:  # Trax's operative config lists the defaults: None is "not given"
                    continue
                if check(value):
                    settings[name] = value
                elif not isinstance(value, GinMacro):
                    self.invalid.append(f"Tokenize.{name} = {_show(value)} is not usable")
        for key, value in self.table.all_bindings():
            if key.endswith(".dataset_name") and isinstance(value, str) and "vocab_type" not in settings:
                settings.setdefault("dataset_name", value)
        self.vocabulary = settings

    def _take(self, params: dict[str, Any], name: str, hf_key: str, check: Any, what: str, owner: str) -> bool:
        """Copy ``params[name]`` to ``hf_key`` if bound and valid; note it if invalid."""
        if name not in params:
            return False
        value = params[name]
        if check(value):
            self._set(hf_key, value)
            return True
        if not isinstance(value, GinMacro):  # undefined macros are noted once already
            self.invalid.append(f"{owner}.{name} = {_show(value)} is not {what}")
        return False

    def _layer_norm(self) -> None:
        """1e-6 is fixed up to 1.3.6; from 1.3.7 LayerNorm is a configurable, so gin may bind it."""
        params = self.table.params("LayerNorm", self.model_scope)
        self._take(
            params, "epsilon", "layer_norm_eps", lambda v: _is_rate(v) and v > 0, "a small positive number", "LayerNorm"
        )
        if params.get("center") is False:
            self.unrepresentable.append(
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
            self._special_positions(f"ReformerLM.pos_type = {pos_type!r}", pos_type)
        else:
            if pos_type != "axial":
                self.notes.append(f"ReformerLM.pos_type = {_show(pos_type)}: Trax treats any such value as 'axial'")
            self._axial_positions("pos_axial_shape", "pos_d_axial_embs")

    def _old_positions(self, lm: dict[str, Any]) -> None:
        shape = lm.get("axial_pos_shape")
        if not shape:  # trax: `if not axial_pos_shape: PositionalEncoding(...)`
            self._plain_positions()
        elif isinstance(shape, str) and shape in _OLD_SPECIAL_POSITIONS:
            self._special_positions(f"ReformerLM.axial_pos_shape = {shape!r}", shape)
        else:
            self._axial_positions("axial_pos_shape", "d_axial_pos_embs")

    def _max_len(self) -> int | None:
        if "max_len" not in self.lm:
            return None
        value = self.lm["max_len"]
        if _is_positive_int(value):
            return int(value)
        if not isinstance(value, GinMacro):
            self.invalid.append(f"ReformerLM.max_len = {_show(value)} is not a positive integer")
        return None

    def _plain_positions(self, *, flag: bool = True) -> None:
        if flag:
            self._set("axial_pos_embds", False)
            self.positions = "learned"
        max_len = self._max_len()
        if max_len is not None:
            self._set("max_position_embeddings", max_len)

    def _special_positions(self, binding: str, name: str) -> None:
        """A weightless encoding: sin-cos can be materialised (see ``resolve``); the others cannot."""
        self.positions = name
        if name != "sin-cos":
            self.notes.append(f"{binding}: a fixed position encoding Hugging Face's Reformer does not have")
        max_len = self._max_len()
        if max_len is not None:
            self._set("max_position_embeddings", max_len)

    def _axial_positions(self, shape_name: str, dims_name: str) -> None:
        shape: Any = self.lm.get(shape_name)
        dims: Any = self.lm.get(dims_name)
        if not _is_int_list(shape) or not _is_int_list(dims) or len(shape) != len(dims):
            self.notes.append(
                f"ReformerLM.{shape_name} = {_show(shape)} and {dims_name} = {_show(dims)} are not two lists of "
                "positive integers of the same length (Trax would have refused them); positions left to the weights"
            )
            return
        self.positions = "axial"
        self._set("axial_pos_embds", True)
        self._set("axial_pos_shape", shape)
        self._set("axial_pos_embds_dim", dims)
        positions = math.prod(shape)
        self._set("max_position_embeddings", positions)
        max_len = self._max_len()
        if max_len is not None and max_len != positions:
            self.notes.append(
                f"ReformerLM.max_len = {max_len} is unused with axial positions; "
                f"max_position_embeddings = {positions}, the product of {shape_name}"
            )

    # -- feed-forward

    def _feed_forward(self) -> None:
        lm = self.lm
        if "ff_activation" in lm:
            activation = lm["ff_activation"]
            if isinstance(activation, GinReference) and not activation.evaluate and activation.name in ACTIVATIONS:
                self._set("hidden_act", ACTIVATIONS[activation.name])
                slope = self.table.params(activation.name, _scope_of(activation, self.model_scope)).get("a", 0.01)
                if activation.name == "LeakyRelu" and slope != 0.01:
                    self.unrepresentable.append(
                        f"LeakyRelu.a = {_show(slope)}: Hugging Face's leaky_relu has the slope 0.01 only"
                    )
            elif not isinstance(activation, GinMacro):
                self.unrepresentable.append(
                    f"ReformerLM.ff_activation = {_show(activation)} has no Hugging Face equivalent "
                    f"(known: {', '.join(ACTIVATIONS)})"
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
        """Attention kinds per layer (when gin says), and the settings of both attention classes.

        Bindings of SelfAttention and LSHSelfAttention are read whether or not ``attention_type`` names
        the class: the weights decide which layers are which, and the settings apply to those.
        """
        lm = self.lm
        if "n_layers" in lm:
            n_layers = lm["n_layers"] if _is_positive_int(lm["n_layers"]) else None
            if n_layers is None and not isinstance(lm["n_layers"], GinMacro):
                self.invalid.append(f"ReformerLM.n_layers = {_show(lm['n_layers'])} is not a positive integer")
        else:  # a Python caller may have passed it: the weights decide the count
            n_layers = None
        value = lm.get("attention_type")
        references = list(value) if isinstance(value, list | tuple) else [] if value is None else [value]
        if "attention_type" not in lm and lm:
            self.notes.append(
                "ReformerLM.attention_type is not bound (Trax's default: SelfAttention from 1.3, "
                "DotProductCausalAttention in 1.2); attention kinds left to the weights"
            )
        elif "attention_type" in lm and not references:
            self.notes.append("ReformerLM.attention_type is an empty list (Trax would have refused it)")
        unusable = [
            r for r in references if not (isinstance(r, GinReference) and not r.evaluate and r.name in (_LOCAL, _LSH))
        ]
        if unusable:
            self._note_unusable(unusable)
        local = [r for r in references if isinstance(r, GinReference) and r.name == _LOCAL and not r.evaluate]
        lsh = [r for r in references if isinstance(r, GinReference) and r.name == _LSH and not r.evaluate]
        # A class attention_type does not name may still be bound: the weights may show it is used.
        shared = False
        if local or self.table.params(_LOCAL, self.model_scope):
            shared = self._local_overrides(local or [GinReference(_LOCAL)])
        if lsh or self.table.params(_LSH, self.model_scope):
            self._lsh_overrides(lsh or [GinReference(_LSH)])
        if unusable or not references:
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

    def _chunking(self, owner: str, prefix: str, params: dict[str, Any]) -> None:
        """Chunk length and look-around; ``chunk_len=None`` is whole-sequence attention (see WHOLE_SEQUENCE)."""
        if "chunk_len" in params and params["chunk_len"] is None:
            self._set(f"{prefix}_attn_chunk_length", WHOLE_SEQUENCE)
            self._set(f"{prefix}_num_chunks_before", 0)
            self._set(f"{prefix}_num_chunks_after", 0)
            return
        self._take(params, "chunk_len", f"{prefix}_attn_chunk_length", _is_positive_int, "a positive integer", owner)
        for name in ("n_chunks_before", "n_chunks_after"):
            hf_key = f"{prefix}_num_{name.removeprefix('n_')}"
            self._take(params, name, hf_key, _is_count, "a non-negative integer", owner)

    def _local_overrides(self, local: list[GinReference]) -> bool:
        """Overrides for SelfAttention layers; True if they share query and key."""
        params = self._settings(_LOCAL, local)
        self._chunking(_LOCAL, "local", params)
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

    def _lsh_overrides(self, lsh: list[GinReference]) -> None:
        """Overrides for LSHSelfAttention layers."""
        params = self._settings(_LSH, lsh)
        self._chunking(_LSH, "lsh", params)
        self._take(params, "n_hashes", "num_hashes", _is_positive_int, "a positive integer", _LSH)
        if "n_buckets" not in params:
            pass
        elif params["n_buckets"] is None:
            self._set("num_buckets", None)
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
