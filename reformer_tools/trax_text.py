"""Trax's text encoders, written independently, and a check of a written tokenizer against them."""

from __future__ import annotations

import bisect
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Final, Protocol

from reformer_tools._unicode13 import ALNUM_RANGES, CJK_RANGES
from reformer_tools.errors import VocabularyError
from reformer_tools.untrusted import printable
from reformer_tools.vocab import Vocabulary

SAMPLE_TEXTS: Final[tuple[str, ...]] = (
    "",
    " ",
    "Hello world.",
    "  leading and trailing  ",
    "multiple   spaces",
    "tab\tseparated\tvalues",
    "line one\nline two\n",
    "windows\r\nline ends",
    "snake_case_words __dunder__ _",
    "back\\slash \\\\ \\u \\10; C:\\path",
    "digits 0123456789, 3.14159 and 1,000,000",
    "café naïve résumé cafe\u0301 Straße ΟΔΟΣ İstanbul",
    "Привет, мир! Съешь же ещё этих булок",
    "中文测试 日本語 한국어",
    "emoji 😀 👍🏽 👨\u200d👩\u200d👧 🇫🇷 ❤️ 🫠",
    "<pad> <EOS> [UNK] [CLS] <unk> </s>",
    "non\u00a0breaking\u3000space zero\u200bwidth",
    "control \x00\x7f\x0b and private \ue000 and \ufffd",
    "fullwidth ＡＢＣ１２３ ﬁ ½ Ⅻ",
    "The quick brown fox jumps over the lazy dog.",
)

_STARTS: Final = [first for first, _ in ALNUM_RANGES]


@lru_cache(maxsize=65536)
def is_alnum(ch: str) -> bool:
    """A letter or number (Unicode category L* or N*) as tensor2tensor's tokenizer saw it (Unicode 13.0)."""
    code = ord(ch)
    index = bisect.bisect_right(_STARTS, code) - 1
    return index >= 0 and code <= ALNUM_RANGES[index][1]


class TextEncoder(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ByteEncoder:
    """``ByteTextEncoder(num_reserved_ids=0)`` behind ``Tokenize(n_reserved_ids=...)``."""

    def __init__(self, reserved_ids: int) -> None:
        self.reserved_ids = reserved_ids

    def encode(self, text: str) -> list[int]:
        return [byte + self.reserved_ids for byte in text.encode("utf-8")]

    def decode(self, ids: Sequence[int]) -> str:
        values = [i - self.reserved_ids for i in ids]
        for value in values:
            if not 0 <= value < 256:
                # Trax packs each id as one byte: reserved ids and ids past the bytes raise.
                raise ValueError(f"id {value + self.reserved_ids} is not a byte")
        return bytes(values).decode("utf-8", "replace")


def split_words(text: str) -> list[str]:
    """tensor2tensor's tokenizer: runs of letters/numbers and of everything else; a single space between
    two runs of letters/numbers is dropped (the words imply it)."""
    if not text:
        return []
    words: list[str] = []
    start = 0
    for pos in range(1, len(text)):
        if is_alnum(text[pos]) != is_alnum(text[pos - 1]):
            word = text[start:pos]
            if word != " " or start == 0:
                words.append(word)
            start = pos
    words.append(text[start:])
    return words


def join_words(words: Sequence[str]) -> str:
    out: list[str] = []
    for i, word in enumerate(words):
        if i and is_alnum(words[i - 1][0]) and is_alnum(word[0]):
            out.append(" ")
        out.append(word)
    return "".join(out)


_UNESCAPE: Final = re.compile(r"\\u|\\\\|\\([0-9]+);")


def _unescape_match(match: re.Match[str]) -> str:
    if match.group(1) is None:
        return "_" if match.group(0) == "\\u" else "\\"
    try:
        return chr(int(match.group(1)))
    except (ValueError, OverflowError):
        return "\u3013"  # tensor2tensor's "undefined character"


class SubwordEncoder:
    """tensor2tensor's ``SubwordTextEncoder`` read from a vocab file, as Trax uses it."""

    def __init__(self, tokens: Sequence[str], reserved_ids: int = 0) -> None:
        self.tokens = tuple(tokens)
        self.reserved_ids = reserved_ids
        self.ids = {token: i for i, token in enumerate(self.tokens) if token}
        self.max_len = max(len(token) for token in self.tokens)
        self.alphabet = frozenset("".join(self.tokens)) | frozenset("\\_u;0123456789")

    def escape(self, word: str) -> str:
        word = word.replace("\\", "\\\\").replace("_", "\\u")
        return "".join(c if c in self.alphabet and c != "\n" else f"\\{ord(c)};" for c in word) + "_"

    def _word_ids(self, escaped: str) -> list[int]:
        out = []
        start = 0
        while start < len(escaped):
            for end in range(min(len(escaped), start + self.max_len), start, -1):
                index = self.ids.get(escaped[start:end])
                if index is not None:
                    out.append(index + self.reserved_ids)
                    start = end
                    break
            else:
                # Trax asserts here: a character of the alphabet that is no subtoken of its own.
                raise ValueError(f"cannot encode {printable(escaped[start:])!r} with this vocabulary")
        return out

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for word in split_words(text):
            ids.extend(self._word_ids(self.escape(word)))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        pieces = []
        for i in ids:
            index = i - self.reserved_ids
            pieces.append(self.tokens[index] if 0 <= index < len(self.tokens) else "")
        words = [_UNESCAPE.sub(_unescape_match, part) for part in "".join(pieces).split("_") if part]
        return join_words(words)


class WrittenSubwordPrediction(SubwordEncoder):
    """What the subword tokenizer ``convert`` writes gives, as its documented divergence predicts.

    Trax's encoder, word boundaries included, except that a character outside the alphabet is written as
    ``oov_escape`` says (the escape of U+FFFD, :func:`tokenizer_files.subword_oov_escape`), and decoding
    turns only the escapes in ``decoded`` (``\\10;``, ``\\65533;``) back into characters: any other
    ``\\NNN;`` stays text, and so counts as no letter where Trax joins words with a space.
    """

    def __init__(
        self,
        tokens: Sequence[str],
        reserved_ids: int,
        oov_escape: Callable[[str], str],
        decoded: Sequence[int],
    ) -> None:
        super().__init__(tokens, reserved_ids)
        self.oov_escape = oov_escape
        codes = "|".join(f"0*{code}" for code in decoded)
        self.unescape = re.compile(rf"\\u|\\\\|\\({codes});")

    def escape(self, word: str) -> str:
        word = word.replace("\\", "\\\\").replace("_", "\\u")
        return (
            "".join(
                c if c in self.alphabet and c != "\n" else "\\10;" if c == "\n" else self.oov_escape(c) for c in word
            )
            + "_"
        )

    def decode(self, ids: Sequence[int]) -> str:
        pieces = []
        for i in ids:
            index = i - self.reserved_ids
            pieces.append(self.tokens[index] if 0 <= index < len(self.tokens) else "")
        words = [self.unescape.sub(_unescape_match, part) for part in "".join(pieces).split("_") if part]
        return join_words(words)


def written_prediction(vocab: Vocabulary) -> TextEncoder | None:
    """What the tokenizer written for ``vocab`` gives where ``tokenizer_files.text_divergence`` says it may
    differ from Trax; None where nothing is documented to differ (every difference is then a failure)."""
    if vocab.type != "subword":
        return None
    from reformer_tools.tokenizer_files import SUBWORD_DECODED_ESCAPES, subword_oov_escape

    return WrittenSubwordPrediction(
        vocab.tokens, vocab.reserved_ids, subword_oov_escape(vocab), SUBWORD_DECODED_ESCAPES
    )


# --- BERT, as trax.data.text_encoder.BertEncoder tokenizes -------------------------------------------


def _bert_punctuation(ch: str) -> bool:
    code = ord(ch)
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(ch: str) -> bool:
    code = ord(ch)
    return any(first <= code <= last for first, last in CJK_RANGES)


class BertEncoder:
    """WordPiece over BERT's basic tokenizer (clean, CJK spacing, optional lowercase + accent strip)."""

    def __init__(self, tokens: Sequence[str], lowercase: bool, reserved_ids: int = 0) -> None:
        self.vocab = {token: i for i, token in enumerate(tokens)}
        self.inverse = dict(enumerate(tokens))
        self.lowercase = lowercase
        self.reserved_ids = reserved_ids

    def words(self, text: str) -> list[str]:
        cleaned = []
        for ch in text:
            if ch in "\t\n\r " or unicodedata.category(ch) == "Zs":
                cleaned.append(" ")
            elif ch in "\x00\ufffd" or unicodedata.category(ch) in ("Cc", "Cf"):
                continue
            elif _is_cjk(ch):
                cleaned.append(f" {ch} ")
            else:
                cleaned.append(ch)
        out: list[str] = []
        for word in "".join(cleaned).split():
            if self.lowercase:
                word = unicodedata.normalize("NFD", word.lower())
                word = "".join(c for c in word if unicodedata.category(c) != "Mn")
            current = ""
            for ch in word:
                if _bert_punctuation(ch):
                    if current:
                        out.append(current)
                    out.append(ch)
                    current = ""
                else:
                    current += ch
            if current:
                out.append(current)
        return " ".join(out).split()

    def pieces(self, word: str) -> list[str]:
        if len(word) > 200:
            return ["[UNK]"]
        out = []
        start = 0
        while start < len(word):
            for end in range(len(word), start, -1):
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    out.append(piece)
                    start = end
                    break
            else:
                return ["[UNK]"]
        return out

    def encode(self, text: str) -> list[int]:
        return [self.vocab[piece] + self.reserved_ids for word in self.words(text) for piece in self.pieces(word)]

    def decode(self, ids: Sequence[int]) -> str:
        tokens = [self.inverse[i - self.reserved_ids] for i in ids]  # KeyError as in Trax
        if not tokens:
            return ""
        out = [tokens[0]]
        for token in tokens[1:]:
            out.append(token.lstrip("#") if token.startswith("##") else " " + token)
        return "".join(out)


class SentencePieceEncoder:
    """Google's sentencepiece library, as t5's ``SentencePieceVocabulary`` (what Trax calls) uses it."""

    def __init__(self, model: bytes, reserved_ids: int = 0) -> None:
        try:
            import sentencepiece  # type: ignore[import-not-found,import-untyped,unused-ignore]
        except ImportError:
            raise VocabularyError(
                "checking a SentencePiece tokenizer needs the sentencepiece package (pip install sentencepiece)"
            ) from None
        self.processor: Any = sentencepiece.SentencePieceProcessor()
        self.processor.LoadFromSerializedProto(model)
        self.reserved_ids = reserved_ids

    def encode(self, text: str) -> list[int]:
        return [int(i) + self.reserved_ids for i in self.processor.EncodeAsIds(text)]

    def decode(self, ids: Sequence[int]) -> str:
        size = self.processor.GetPieceSize()
        unk = self.processor.unk_id()
        eos = self.processor.eos_id()
        clean = [unk if i - self.reserved_ids >= size else i - self.reserved_ids for i in ids]
        if eos >= 0 and eos in clean:
            clean = clean[: clean.index(eos) + 1]  # t5 decodes up to the first EOS
        return str(self.processor.DecodeIds(clean))


def trax_encoder(vocab: Vocabulary) -> TextEncoder:
    """The independent encoder for ``vocab``."""
    if vocab.type == "char":
        return ByteEncoder(vocab.reserved_ids)
    if vocab.type == "subword":
        return SubwordEncoder(vocab.tokens, vocab.reserved_ids)
    if vocab.type == "sentencepiece":
        return SentencePieceEncoder(vocab.data, vocab.reserved_ids)
    return BertEncoder(vocab.tokens, lowercase=vocab.type == "bert-lowercase", reserved_ids=vocab.reserved_ids)


@dataclass(frozen=True, slots=True)
class TokenizerCheck:
    """How a written tokenizer compares with Trax's encoder (independent implementation) on some texts."""

    vocab_type: str
    texts: int
    ids_equal: int
    decodings_equal: int
    first_id_mismatch: str | None = None
    first_decoding_mismatch: str | None = None
    expected_ids: tuple[int, ...] | None = None  # Trax's ids for first_id_mismatch (None: Trax cannot encode it)
    actual_ids: tuple[int, ...] | None = None  # the tokenizer's (None: it raised)
    #: Texts that differ exactly as the documented divergence predicts (``written_prediction``; the first names
    #: why), and for the first text that differs where a divergence is documented but not as predicted, the
    #: predicted ids.
    documented: int = 0
    documented_reason: str | None = None
    predicted_ids: tuple[int, ...] | None = None
    #: Texts that differ where a divergence is documented that no exact prediction exists for (a unigram
    #: SentencePiece model's control-piece text): not compared, so neither passed nor failed.
    not_compared: int = 0
    not_compared_reason: str | None = None
    #: With special tokens on, every text must start with id 0 (Trax's ReformerLM shifts its input right, so
    #: its first position sees 0): how many do, and the first that does not.
    starts_with_zero: int = 0
    first_start_mismatch: str | None = None
    #: Why the written tokenizer could not even be loaded (nothing else was compared then).
    load_error: str | None = None

    @property
    def ok(self) -> bool:
        """The tokenizer loads, every text gives Trax's ids and decoding (or differs exactly as documented),
        and with special tokens every text starts with id 0."""
        return (
            self.load_error is None
            and self.first_id_mismatch is None
            and self.first_decoding_mismatch is None
            and self.first_start_mismatch is None
        )

    def to_json(self) -> dict[str, Any]:
        payload = asdict(self)
        payload["ok"] = self.ok
        for key in ("expected_ids", "actual_ids", "predicted_ids"):
            if payload[key] is not None:
                payload[key] = list(payload[key])
        return payload


def _ids(encode: Callable[[str], Any], text: str) -> list[int] | None:
    """``encode(text)`` as a list of ids, or None if it raises (a text the encoder cannot represent)."""
    try:
        return list(encode(text))
    except (ValueError, KeyError):  # Trax's encoders: no subtoken spells a word, an unknown WordPiece
        return None


def _tokenizer_ids(tokenizer: Any, text: str, *, special: bool) -> list[int] | None:
    try:
        return list(tokenizer(text, add_special_tokens=special)["input_ids"])
    except Exception:  # the tokenizers library raises its own (untyped) errors, e.g. a WordPiece without [UNK]
        return None


def check_tokenizer(directory: Path, vocab: Vocabulary, texts: Sequence[str] = SAMPLE_TEXTS) -> TokenizerCheck:
    """Load ``directory`` with ``transformers.AutoTokenizer`` and compare, on every text, its ids (no special
    tokens) and its decoding of Trax's ids with Trax's encoder, and its ids with special tokens (id 0 first).

    A text ``tokenizer_files.text_divergence`` says may differ counts as documented only if the tokenizer gives
    exactly what ``written_prediction`` predicts; anything else is a mismatch.
    """
    from transformers import AutoTokenizer

    from reformer_tools.tokenizer_files import text_divergence

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
    except Exception as error:  # a damaged tokenizer.json fails in many ways, some of them untyped
        reason = printable(" ".join(f"{type(error).__name__}: {error}".split()), 300)
        return TokenizerCheck(vocab.type, len(texts), 0, 0, load_error=reason)
    encoder = trax_encoder(vocab)
    prediction = written_prediction(vocab)
    ids_equal = decodings_equal = documented = starts_with_zero = not_compared = 0
    documented_reason: str | None = None
    not_compared_reason: str | None = None
    first_ids: str | None = None
    first_decoding: str | None = None
    first_start: str | None = None
    expected_ids: tuple[int, ...] | None = None
    actual_ids: tuple[int, ...] | None = None
    predicted_ids: tuple[int, ...] | None = None
    for text in texts:
        expected = _ids(encoder.encode, text)
        actual = _tokenizer_ids(tokenizer, text, special=False)
        with_specials = _tokenizer_ids(tokenizer, text, special=True)
        if actual is not None and with_specials == [0, *actual]:
            starts_with_zero += 1
        elif first_start is None and (actual is not None or with_specials is not None):
            first_start = text
        if expected is None or actual is None:
            if expected is None and actual is None:
                # Trax fails on it (a character of the alphabet that is no subtoken) and so does the tokenizer
                documented += 1
                documented_reason = documented_reason or "Trax cannot encode it, and the tokenizer refuses it too"
            elif first_ids is None:
                first_ids = text
                expected_ids = None if expected is None else tuple(expected)
                actual_ids = None if actual is None else tuple(actual)
            continue
        try:
            want: str | None = encoder.decode(expected)
        except (ValueError, KeyError):
            want = None  # Trax cannot decode these ids itself
        got = tokenizer.decode(expected, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        same_ids, same_text = actual == expected, want is None or got == want
        ids_equal += same_ids
        decodings_equal += same_text
        if same_ids and same_text:
            continue
        divergence = text_divergence(vocab, text)
        if divergence is not None and prediction is None:
            not_compared += 1
            not_compared_reason = not_compared_reason or divergence
            continue
        predicted = _ids(prediction.encode, text) if divergence is not None and prediction is not None else None
        if divergence is not None and prediction is not None and predicted is not None:
            as_predicted = actual == predicted
            decoded_as_predicted = want is None or got == prediction.decode(expected)
            if as_predicted and decoded_as_predicted:
                documented += 1
                documented_reason = documented_reason or divergence
                continue
            same_ids, same_text = as_predicted, decoded_as_predicted
        if not same_ids and first_ids is None:
            first_ids, expected_ids, actual_ids = text, tuple(expected), tuple(actual)
            predicted_ids = None if predicted is None else tuple(predicted)
        if not same_text and first_decoding is None:
            first_decoding = text
    return TokenizerCheck(
        vocab_type=vocab.type,
        texts=len(texts),
        ids_equal=ids_equal,
        decodings_equal=decodings_equal,
        first_id_mismatch=first_ids,
        first_decoding_mismatch=first_decoding,
        expected_ids=expected_ids,
        actual_ids=actual_ids,
        documented=documented,
        documented_reason=documented_reason,
        predicted_ids=predicted_ids,
        not_compared=not_compared,
        not_compared_reason=not_compared_reason,
        starts_with_zero=starts_with_zero,
        first_start_mismatch=first_start,
    )
