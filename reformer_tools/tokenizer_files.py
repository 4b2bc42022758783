"""Tokenizer files for a converted model: a standard ``tokenizer.json`` that gives Trax's ids.

Everything is built from the ``tokenizers`` library's stock components (normalizers, pre-tokenizers,
models, decoders), so ``AutoTokenizer.from_pretrained`` loads it with no code of ours. The JSON is written
here directly (no ``tokenizers`` import), deterministically.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any, Final

from reformer_tools._unicode13 import ALNUM_RANGES, CJK_RANGES
from reformer_tools.errors import VocabularyError
from reformer_tools.vocab import (
    SP_BYTE,
    SP_CONTROL,
    SP_NORMAL,
    SP_UNKNOWN,
    SP_UNUSED,
    SP_USER_DEFINED,
    Vocabulary,
)

JsonDict = dict[str, Any]

# WordPiece's cap on a word's length; tensor2tensor has none.
_NO_WORD_LIMIT: Final = 1_000_000_000
# A character outside a subword vocabulary's alphabet is written as this escape (U+FFFD's, see
# SUBWORD_OOV_DIVERGENCE) instead of its own code point.
_OOV_CODE: Final = 0xFFFD

SUBWORD_OOV_DIVERGENCE: Final = (
    "a character outside the subword vocabulary's alphabet is encoded as the escape of U+FFFD (\\65533;) "
    "where Trax writes its own code point (\\NNN;); decoding turns \\65533; and \\10; back into characters "
    "but leaves any other \\NNN; escape as text"
)


def check_vocab_size(vocab: Vocabulary, vocab_size: int) -> None:
    """Raise VocabularyError when the vocabulary's ids (reserved + tokens + extra) exceed the model's."""
    if vocab.size > vocab_size:
        parts = f"{vocab.reserved_ids} reserved + {vocab.base_size} tokens"
        parts += f" + {vocab.extra_ids} extra" if vocab.extra_ids else ""
        raise VocabularyError(
            f"the {vocab.type} vocabulary has {vocab.size} ids ({parts}) but the model only {vocab_size}; "
            "wrong vocabulary, or wrong reserved ids (--reserved-ids, config.gin's Tokenize.n_reserved_ids)?"
        )


def tokenizer_files(vocab: Vocabulary, *, model_max_length: int | None, vocab_size: int) -> dict[str, bytes]:
    """Every tokenizer file to write into the output directory, by name."""
    check_vocab_size(vocab, vocab_size)
    if vocab.type == "char":
        spec = _char(vocab)
    elif vocab.type == "subword":
        spec = _subword(vocab)
    elif vocab.type == "sentencepiece":
        spec = _sentencepiece(vocab)
    else:
        spec = _bert(vocab)
    tokenizer, specials = spec
    config: JsonDict = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        # Trax's decoding adds no "clean up" of spaces before punctuation, and its text may contain
        # "<pad>" or "[CLS]" as plain characters: never match special tokens in text.
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": True,
        "model_max_length": model_max_length
        if model_max_length is not None
        else 1_000_000_000_000_000_019_884_624_838_656,
        "padding_side": "right",
        "model_input_names": ["input_ids", "attention_mask"],
        "added_tokens_decoder": {
            str(token["id"]): {key: value for key, value in token.items() if key != "id"}
            for token in tokenizer["added_tokens"]
        },
    }
    config.update(specials)
    files = {
        "tokenizer.json": _dump(tokenizer),
        "tokenizer_config.json": _dump(config),
    }
    if specials:
        files["special_tokens_map.json"] = _dump(specials)
    if vocab.type == "sentencepiece":
        files["spiece.model"] = vocab.data
    elif vocab.type == "subword" and vocab.source is not None:
        files["vocab.subword"] = vocab.data
    elif vocab.type in ("bert", "bert-lowercase"):
        files["vocab.txt"] = vocab.data
    return files


def known_divergences(vocab: Vocabulary) -> tuple[str, ...]:
    """Where the written tokenizer can differ from Trax for this vocabulary, one line each."""
    out: list[str] = []
    if vocab.type == "char":
        out.append(
            "decoding reserved ids (or ids past the 256 bytes) raises in Trax; the tokenizer writes their "
            "names (or drops them with skip_special_tokens=True)"
        )
    elif vocab.type == "subword":
        missing = [c for c in sorted(vocab.alphabet) if c not in vocab.tokens and c != "\n"]
        out.append(SUBWORD_OOV_DIVERGENCE)
        if missing:
            shown = "".join(missing[:20])
            out.append(
                f"characters of the alphabet that are no subtoken ({len(missing)}: {shown!r}): Trax fails "
                "(AssertionError) on some words with them, the tokenizer raises"
            )
        duplicates = len(vocab.tokens) - len({t for t in vocab.tokens if t}) - vocab.tokens.count("")
        if duplicates:
            out.append(f"{duplicates} repeated subtokens: decoding their first ids gives '' instead of the text")
    elif vocab.type == "sentencepiece":
        out.append(
            "decoding: t5 (Trax's SentencePiece wrapper) drops everything after the first EOS id; "
            "the tokenizer decodes all ids"
        )
        sp = vocab.sentencepiece
        if sp is not None:
            reachable = _reachable_control_pieces(vocab)
            if reachable:
                out.append(
                    f"text containing a control piece's own text ({', '.join(reachable)}) is encoded as that piece "
                    "(a character of it has no piece, and the unknown path scores lower); SentencePiece never "
                    "produces control pieces"
                )
            if sp.byte_fallback:
                out.append(
                    "decoding byte pieces that are not valid UTF-8: each byte of the invalid run becomes U+FFFD, "
                    "SentencePiece replaces only each maximal invalid sequence"
                )
            if SP_USER_DEFINED in sp.kinds:
                out.append("user-defined pieces are matched as added tokens, before normalization")
    else:
        out.append(
            "characters assigned after Unicode 13.0 (Python 3.9's database) may be classified differently "
            "(punctuation, control, whitespace, accents, case): the tokenizer uses its regex engine's tables"
        )
        if vocab.type == "bert-lowercase":
            out.append("a final capital sigma after a case-ignorable character lowercases to σ, Trax gives ς")
        if any(token.startswith("###") for token in vocab.tokens):
            out.append("decoding a first token that starts with '###' drops one '#' (Trax keeps it)")
    return tuple(out)


#: The ``\\NNN;`` escapes the written subword tokenizer's decoder turns back into characters (any other stays
#: text): a newline, and what it writes for a character outside the alphabet.
SUBWORD_DECODED_ESCAPES: Final = (10, _OOV_CODE)


def subword_oov_escape(vocab: Vocabulary) -> Callable[[str], str]:
    """The escape the written subword tokenizer writes for a character outside the alphabet (see
    SUBWORD_OOV_DIVERGENCE): U+FFFD's for every one, except the marker character its normalizer uses, which
    it writes as Trax does (its own code point)."""
    (mark,) = _private_chars(1, vocab.alphabet)
    replacement = f"\\{_OOV_CODE};"

    def escape(ch: str) -> str:
        return f"\\{ord(ch)};" if ch == mark else replacement

    return escape


def _reachable_control_pieces(vocab: Vocabulary) -> list[str]:
    """Control pieces of a unigram SentencePiece model whose text the tokenizer can match (one of their
    characters has no piece of its own, so the unknown path scores lower than the piece)."""
    sp = vocab.sentencepiece
    if sp is None or sp.model_type != "unigram":
        return []
    singles = {p for p, kind in zip(sp.pieces, sp.kinds, strict=True) if kind == SP_NORMAL and len(p) == 1}
    return [p for p, kind in zip(sp.pieces, sp.kinds, strict=True) if kind == SP_CONTROL and set(p) - singles]


def text_divergence(vocab: Vocabulary, text: str) -> str | None:
    """Why ``text`` may encode differently from Trax with this vocabulary, or None if it cannot."""
    if vocab.type == "subword":
        alphabet = vocab.alphabet
        outside = sorted({c for c in text if c not in alphabet and c != "\n"})
        if outside:
            return f"{len(outside)} characters outside the alphabet: {''.join(outside[:10])!r}"
    elif vocab.type == "sentencepiece":
        held = [piece for piece in _reachable_control_pieces(vocab) if piece in text]
        if held:
            return f"it holds the text of the control pieces {', '.join(held)}"
    return None


# --- char: UTF-8 bytes -------------------------------------------------------------------------------


def _byte_chars() -> list[str]:
    # The ByteLevel pre-tokenizer's byte -> character table (printable bytes stand for themselves).
    kept = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table = {}
    extra = 0
    for byte in range(256):
        if byte in kept:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def _reserved_names(count: int) -> list[str]:
    names = ["<pad>", "<EOS>"][:count]
    return names + [f"<reserved_{i}>" for i in range(len(names), count)]


def _added(index: int, content: str, special: bool = True) -> JsonDict:
    return {
        "id": index,
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": special,
    }


def _char(vocab: Vocabulary) -> tuple[JsonDict, JsonDict]:
    reserved = _reserved_names(vocab.reserved_ids)
    chars = _byte_chars()
    model_vocab = {name: i for i, name in enumerate(reserved)}
    model_vocab.update({ch: byte + vocab.reserved_ids for byte, ch in enumerate(chars)})
    start = reserved[0] if reserved else chars[0]
    tokenizer = _tokenizer(
        added=[_added(i, name) for i, name in enumerate(reserved)],
        normalizer=None,
        pre_tokenizer={"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        model={
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": model_vocab,
            "merges": [],
        },
        decoder={"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        start=(start, 0),
    )
    return tokenizer, _specials(vocab, reserved)


def _specials(vocab: Vocabulary, names: list[str], *, pad: str | None = None, eos: str | None = None) -> JsonDict:
    out: JsonDict = {}
    if vocab.pad_id is not None:
        out["pad_token"] = pad if pad is not None else names[vocab.pad_id]
    if vocab.eos_id is not None:
        out["eos_token"] = eos if eos is not None else names[vocab.eos_id]
    return out


# --- subword: tensor2tensor's SubwordTextEncoder ------------------------------------------------------


def _class(ranges: Iterable[tuple[int, int]], negate: bool = False) -> str:
    body = "".join(f"\\x{{{a:x}}}" if a == b else f"\\x{{{a:x}}}-\\x{{{b:x}}}" for a, b in ranges)
    return f"[{'^' if negate else ''}{body}]"


def _ranges(chars: Iterable[str]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for code in sorted({ord(c) for c in chars}):
        if out and out[-1][1] == code - 1:
            out[-1] = (out[-1][0], code)
        else:
            out.append((code, code))
    return out


def _private_chars(count: int, avoid: frozenset[str]) -> list[str]:
    # Markers for the pipeline: private-use characters (not letters or numbers) outside the alphabet.
    out = [chr(code) for code in range(0xE000, 0xF900) if chr(code) not in avoid][:count]
    if len(out) < count:
        raise VocabularyError("the subword alphabet uses the whole private-use area; cannot write a tokenizer")
    return out


def _replace(pattern: str, content: str, regex: bool = False) -> JsonDict:
    return {"type": "Replace", "pattern": {"Regex" if regex else "String": pattern}, "content": content}


def _subword(vocab: Vocabulary) -> tuple[JsonDict, JsonDict]:
    alphabet = vocab.alphabet
    # The first marker is the one subword_oov_escape names: keep them in step.
    mark, real, word_end, separator, backslash = _private_chars(5, alphabet)
    alnum = _class(ALNUM_RANGES)
    other = _class(ALNUM_RANGES, negate=True)
    r = vocab.reserved_ids
    normalizer = {
        "type": "Sequence",
        "normalizers": [
            # 1. the marker character, if the text has it, becomes mark+real: every other mark is ours
            _replace(mark, mark + real),
            # 2. end every word (run of letters/numbers or of other characters) with mark+word_end; a single
            #    space between two runs of letters/numbers is the end itself (t2t drops it)
            _replace(f"{alnum}+\\K(?: (?={alnum}))?|{other}+\\K", mark + word_end, regex=True),
            # 3. t2t's escapes, now that words are delimited
            _replace("\\", "\\\\"),
            _replace("_", "\\u"),
            _replace("\n", "\\10;"),
            _replace(mark + real, f"\\{ord(mark)};"),
            _replace(mark + word_end, "_"),
            # 4. outside the alphabet (see SUBWORD_OOV_DIVERGENCE)
            _replace(_class(_ranges(alphabet), negate=True), f"\\{_OOV_CODE};", regex=True),
        ],
    }
    model_vocab: dict[str, int] = {}
    for index, token in enumerate(vocab.tokens):
        if token:
            model_vocab.pop(token, None)
            model_vocab[token] = index + r  # a repeated subtoken keeps its last id, as in t2t
    reserved = _reserved_names(r)
    unk = "<no subtoken>"
    while unk in model_vocab:
        unk += "!"
    decoder = {
        "type": "Sequence",
        "decoders": [
            # reserved ids decode to nothing in Trax
            *([_replace(f"^(?:{'|'.join(map(_regex_literal, reserved))})$", "", regex=True)] if reserved else []),
            {"type": "Fuse"},
            _replace("_", separator),
            _replace("\\\\", backslash),
            _replace("\\u", "_"),
            _replace("\\\\0*10;", "\n", regex=True),
            _replace(f"\\\\0*{_OOV_CODE};", chr(_OOV_CODE), regex=True),
            _replace(backslash, "\\"),
            # a space between two words that both start with a letter or number
            _replace(
                f"\\G(?:[^{separator}]*{separator}+)*?{alnum}[^{separator}]*\\K{separator}+(?={alnum})", " ", regex=True
            ),
            _replace(separator, ""),
        ],
    }
    names = {i + r: token for i, token in enumerate(vocab.tokens)}
    names.update(dict(enumerate(reserved)))
    added = [_added(i, name) for i, name in enumerate(reserved)]
    pad = names.get(vocab.pad_id) if vocab.pad_id is not None else None
    eos = names.get(vocab.eos_id) if vocab.eos_id is not None else None
    for special_id, special in ((vocab.pad_id, pad), (vocab.eos_id, eos)):
        if special_id is not None and special_id >= r and special:
            added.append(_added(special_id, special))
    tokenizer = _tokenizer(
        added=added,
        normalizer=normalizer,
        pre_tokenizer={"type": "Split", "pattern": {"String": "_"}, "behavior": "MergedWithPrevious", "invert": False},
        model={
            "type": "WordPiece",
            # A word no subtoken sequence spells: Trax fails (AssertionError); with an unknown token
            # missing from the vocabulary, the tokenizer raises too.
            "unk_token": unk,
            "continuing_subword_prefix": "",
            "max_input_chars_per_word": _NO_WORD_LIMIT,
            "vocab": model_vocab,
        },
        decoder=decoder,
        start=(names.get(0, ""), 0),
    )
    return tokenizer, _specials(vocab, [], pad=pad, eos=eos) if (pad or eos) else {}


def _regex_literal(text: str) -> str:
    return "".join(f"\\x{{{ord(c):x}}}" for c in text)


# --- bert: trax's BertEncoder --------------------------------------------------------------------------


def _bert(vocab: Vocabulary) -> tuple[JsonDict, JsonDict]:
    lowercase = vocab.type == "bert-lowercase"
    r = vocab.reserved_ids
    cjk = _class(CJK_RANGES)
    steps: list[JsonDict] = [
        # BERT's _clean_text: drop NUL, U+FFFD and control/format characters (tab, CR, LF are whitespace)
        _replace("[[\\x{0}\\x{fffd}\\p{Cc}\\p{Cf}]&&[^\\t\\n\\r]]", "", regex=True),
        _replace("[\\t\\n\\r\\p{Zs}]", " ", regex=True),
    ]
    if lowercase:
        steps += [
            # Python's str.lower() writes a word-final capital sigma as ς
            _replace("(?<=\\p{Cased})\\x{3a3}(?!\\p{Case_Ignorable}*\\p{Cased})", "\u03c2", regex=True),
            {"type": "Lowercase"},
            {"type": "NFD"},
            _replace("\\p{Mn}", "", regex=True),
        ]
    model_vocab: dict[str, int] = {}
    for index, token in enumerate(vocab.tokens):
        model_vocab.pop(token, None)
        model_vocab[token] = index + r
    reserved = _reserved_names(r)
    names = {i + r: token for i, token in enumerate(vocab.tokens)}
    names.update(dict(enumerate(reserved)))
    specials = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") if t in model_vocab]
    added = [_added(i, name) for i, name in enumerate(reserved)]
    added += [_added(model_vocab[t], t) for t in specials]
    tokenizer = _tokenizer(
        added=added,
        normalizer={"type": "Sequence", "normalizers": steps},
        pre_tokenizer={
            "type": "Sequence",
            "pretokenizers": [
                {"type": "WhitespaceSplit"},
                {
                    "type": "Split",
                    "pattern": {"Regex": "[!-/:-@\\[-`{-~\\p{P}]"},
                    "behavior": "Isolated",
                    "invert": False,
                },
                # BERT puts spaces around CJK ideographs: each is a word of its own
                {"type": "Split", "pattern": {"Regex": cjk}, "behavior": "Isolated", "invert": False},
            ],
        },
        model={
            "type": "WordPiece",
            "unk_token": "[UNK]",
            "continuing_subword_prefix": "##",
            "max_input_chars_per_word": 200,
            "vocab": model_vocab,
        },
        decoder={
            "type": "Sequence",
            "decoders": [
                # Trax strips every leading '#' of a continuation piece, WordPiece's decoder two
                _replace("^#{3,}", "##", regex=True),
                {"type": "WordPiece", "prefix": "##", "cleanup": False},
            ],
        },
        start=(names.get(0, ""), 0),
    )
    out: JsonDict = {"unk_token": "[UNK]"}
    if vocab.pad_id is not None:
        out["pad_token"] = names[vocab.pad_id]
    for key, token in (("cls_token", "[CLS]"), ("sep_token", "[SEP]"), ("mask_token", "[MASK]")):
        if token in model_vocab:
            out[key] = token
    return tokenizer, out


# --- sentencepiece -------------------------------------------------------------------------------------


def _sentencepiece(vocab: Vocabulary) -> tuple[JsonDict, JsonDict]:
    sp = vocab.sentencepiece
    if sp is None:
        raise VocabularyError("a sentencepiece vocabulary without its model")
    if sp.model_type not in ("unigram", "bpe"):
        raise VocabularyError(f"SentencePiece {sp.model_type} models are not supported (unigram and BPE are)")
    if sp.treat_whitespace_as_suffix:
        raise VocabularyError("SentencePiece models that treat whitespace as a suffix are not supported")
    r = vocab.reserved_ids
    reserved = _reserved_names(r)
    # Reserved ids come first: placeholder pieces with a space, which normalized text never has.
    pieces = [f"<reserved {i}>" for i in range(r)] + list(sp.pieces)
    kinds = [SP_CONTROL] * r + list(sp.kinds)
    scores = [0.0] * r + list(sp.scores)
    unk_id = sp.unk_id + r
    normalizers: list[JsonDict] = []
    if sp.precompiled_charsmap:
        normalizers.append({"type": "Precompiled", "precompiled_charsmap": _base64(sp.precompiled_charsmap)})
    if sp.remove_extra_whitespaces:
        normalizers.append(_replace("\\A +| +\\z", "", regex=True))
        normalizers.append(_replace(" {2,}", " ", regex=True))
    if sp.add_dummy_prefix:
        normalizers.append({"type": "Prepend", "prepend": " "})
    if sp.escape_whitespaces:
        normalizers.append(_replace(" ", "\u2581"))
    unreachable = min(sp.scores, default=0.0) - 1e6
    if sp.model_type == "unigram":
        vocab_list = [
            [piece, score if kind in (SP_NORMAL, SP_USER_DEFINED, SP_UNKNOWN) else unreachable]
            for piece, score, kind in zip(pieces, scores, kinds, strict=True)
        ]
        model: JsonDict = {"type": "Unigram", "unk_id": unk_id, "vocab": vocab_list, "byte_fallback": sp.byte_fallback}
    else:
        model_vocab = {piece: i for i, piece in enumerate(pieces)}
        ranked = sorted(
            (i for i, kind in enumerate(kinds) if kind in (SP_NORMAL, SP_USER_DEFINED) and len(pieces[i]) > 1),
            key=lambda i: (-scores[i], i),
        )
        merges = []
        for i in ranked:
            piece = pieces[i]
            for cut in range(1, len(piece)):
                left, right = piece[:cut], piece[cut:]
                if _mergeable(left, model_vocab, kinds) and _mergeable(right, model_vocab, kinds):
                    merges.append([left, right])
        model = {
            "type": "BPE",
            "dropout": None,
            "unk_token": pieces[unk_id],
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": sp.byte_fallback,
            "ignore_merges": False,
            "vocab": model_vocab,
            "merges": merges,
        }
    hidden = [pieces[i] for i, kind in enumerate(kinds) if kind == SP_CONTROL]
    decoders: list[JsonDict] = []
    if hidden:
        # control pieces (pad, EOS, BOS) decode to nothing in SentencePiece
        decoders.append(_replace(f"^(?:{'|'.join(map(_regex_literal, hidden))})$", "", regex=True))
    decoders.append(_replace(f"^{_regex_literal(pieces[unk_id])}$", sp.unk_surface, regex=True))
    decoders.append(_replace("\u2581", " "))
    if sp.byte_fallback:
        decoders.append({"type": "ByteFallback"})
    decoders.append({"type": "Fuse"})
    if sp.add_dummy_prefix:
        decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    added = [_added(i, pieces[i]) for i, kind in enumerate(kinds) if kind == SP_CONTROL and i < r]
    added += [_added(i, pieces[i]) for i, kind in enumerate(kinds) if kind in (SP_CONTROL, SP_UNKNOWN) and i >= r]
    added += [_added(i, pieces[i], special=False) for i, kind in enumerate(kinds) if kind == SP_USER_DEFINED]
    tokenizer = _tokenizer(
        added=added,
        normalizer={"type": "Sequence", "normalizers": normalizers},
        pre_tokenizer=None,
        model=model,
        decoder={"type": "Sequence", "decoders": decoders},
        start=(pieces[0], 0),
    )
    out: JsonDict = {"unk_token": pieces[unk_id]}
    if vocab.pad_id is not None:
        out["pad_token"] = pieces[vocab.pad_id]
    if vocab.eos_id is not None:
        out["eos_token"] = pieces[vocab.eos_id]
    del reserved
    return tokenizer, out


def _mergeable(piece: str, model_vocab: dict[str, int], kinds: list[int]) -> bool:
    index = model_vocab.get(piece)
    return index is not None and kinds[index] not in (SP_CONTROL, SP_UNUSED, SP_BYTE, SP_UNKNOWN)


def _base64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode("ascii")


# --- shared ---------------------------------------------------------------------------------------------


def _tokenizer(
    *,
    added: list[JsonDict],
    normalizer: JsonDict | None,
    pre_tokenizer: JsonDict | None,
    model: JsonDict,
    decoder: JsonDict,
    start: tuple[str, int],
) -> JsonDict:
    token, index = start
    # Trax's ReformerLM shifts its input right: the first position sees id 0. With special tokens on, the
    # tokenizer starts every sequence with that id, so generate() continues as Trax would.
    template = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": token, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [
            {"SpecialToken": {"id": token, "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
            {"Sequence": {"id": "B", "type_id": 0}},
        ],
        "special_tokens": {token: {"id": token, "ids": [index], "tokens": [token]}},
    }
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": sorted(added, key=lambda t: int(t["id"])),
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": template,
        "decoder": decoder,
        "model": model,
    }


def _dump(payload: JsonDict) -> bytes:
    return (json.dumps(payload, ensure_ascii=False, indent=2) + "\n").encode("utf-8")
