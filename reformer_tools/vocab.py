"""What a Trax model's token ids mean: its vocabulary file (or bytes), read safely and described as data."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, get_args

from reformer_tools.errors import VocabularyError
from reformer_tools.untrusted import printable

VocabType = Literal["char", "subword", "sentencepiece", "bert", "bert-lowercase"]
VOCAB_TYPES: Final[tuple[VocabType, ...]] = get_args(VocabType)

# Trax's published vocabularies are far smaller (en_32k.subword 0.3 MB, a T5 SentencePiece model 0.8 MB).
MAX_VOCAB_FILE_BYTES: Final = 64 * 1024 * 1024
MAX_TOKENS: Final = 4_000_000
MAX_RESERVED_IDS: Final = 1024
MAX_EXTRA_IDS: Final = 100_000
BYTE_VOCAB_SIZE: Final = 256

# tensor2tensor's reserved tokens (text_encoder.RESERVED_TOKENS), as its vocab files name them.
PAD_NAMES: Final = ("<pad>", "<pad>_")
EOS_NAMES: Final = ("<EOS>", "<EOS>_")

SentencePieceModelType = Literal["unigram", "bpe", "word", "char"]
_SP_MODEL_TYPES: Final[dict[int, SentencePieceModelType]] = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}
# ModelProto.SentencePiece.Type
SP_NORMAL: Final = 1
SP_UNKNOWN: Final = 2
SP_CONTROL: Final = 3
SP_USER_DEFINED: Final = 4
SP_UNUSED: Final = 5
SP_BYTE: Final = 6


@dataclass(frozen=True, slots=True)
class SentencePieceModel:
    """The parts of a SentencePiece ``ModelProto`` that decide its ids (read without protobuf)."""

    model_type: SentencePieceModelType
    pieces: tuple[str, ...]
    scores: tuple[float, ...]
    kinds: tuple[int, ...]  # ModelProto.SentencePiece.Type per piece
    unk_id: int
    bos_id: int  # -1: none
    eos_id: int
    pad_id: int
    byte_fallback: bool
    unk_surface: str
    normalizer_name: str
    precompiled_charsmap: bytes
    add_dummy_prefix: bool
    remove_extra_whitespaces: bool
    escape_whitespaces: bool
    treat_whitespace_as_suffix: bool
    split_digits: bool


@dataclass(frozen=True, slots=True)
class Vocabulary:
    """What the model's ids mean.

    ``tokens`` are the file's entries in id order (subtoken strings, WordPiece entries or SentencePiece
    pieces; empty for ``char``, whose 256 byte values are the tokens). Trax adds ``reserved_ids`` to every
    id the vocabulary gives (``trax.data.Tokenize(n_reserved_ids=...)``); ``extra_ids`` only extend the
    size (the sentinel ids t5's ``SentencePieceVocabulary`` appends when Trax's ``_get_vocab`` is given
    ``extra_ids``, which ``Tokenize`` never does). No command sets ``extra_ids``: there is no option and no
    config.gin binding for it, so it is 0 unless a library caller of :func:`load_vocabulary` gives it; a
    converted model records it so that ``verify`` reads the same vocabulary back. ``size`` counts every id
    the vocabulary can produce: reserved + base + extra.
    """

    type: VocabType
    source: Path | None
    reserved_ids: int
    size: int
    pad_id: int | None
    eos_id: int | None
    extra_ids: int = 0
    tokens: tuple[str, ...] = ()
    sha256: str | None = None
    data: bytes = field(default=b"", repr=False)
    sentencepiece: SentencePieceModel | None = field(default=None, repr=False)

    @property
    def base_size(self) -> int:
        """Ids of the vocabulary itself, before reserved and extra ids."""
        return self.size - self.reserved_ids - self.extra_ids

    @property
    def alphabet(self) -> frozenset[str]:
        """tensor2tensor's alphabet of a subword vocabulary: every character of every subtoken plus the
        escape characters. Characters outside it are written as ``\\NNN;`` escapes."""
        if self.type != "subword":
            return frozenset()
        return frozenset("".join(self.tokens)) | SUBWORD_ESCAPE_CHARS

    def describe(self) -> str:
        """One line for people: type, file, sizes."""
        where = printable(str(self.source)) if self.source else "bytes"
        extras = f", {self.reserved_ids} reserved" if self.reserved_ids else ""
        extras += f", {self.extra_ids} extra" if self.extra_ids else ""
        return f"{self.type} vocabulary ({where}): {self.size} ids{extras}"


SUBWORD_ESCAPE_CHARS: Final = frozenset("\\_u;0123456789")


def detect_vocab_type(path: Path) -> VocabType:
    """The vocabulary type from the file's content (never its name)."""
    data = _read(path)
    return _detect(data, path)


def load_vocabulary(
    path: Path | None,
    vocab_type: VocabType | None = None,
    reserved_ids: int = 0,
    extra_ids: int = 0,
) -> Vocabulary:
    """Read a Trax vocabulary: ``path`` None means ``char`` (bytes). Raises VocabularyError."""
    if vocab_type is not None and vocab_type not in VOCAB_TYPES:
        raise VocabularyError(
            f"unknown vocabulary type {printable(str(vocab_type))!r}; one of {', '.join(VOCAB_TYPES)}"
        )
    if not 0 <= reserved_ids <= MAX_RESERVED_IDS:
        raise VocabularyError(f"reserved ids must be between 0 and {MAX_RESERVED_IDS}, not {reserved_ids}")
    if not 0 <= extra_ids <= MAX_EXTRA_IDS:
        raise VocabularyError(f"extra ids must be between 0 and {MAX_EXTRA_IDS}, not {extra_ids}")
    if path is None:
        if vocab_type not in (None, "char"):
            raise VocabularyError(f"a {vocab_type} vocabulary needs its vocabulary file")
        return Vocabulary(
            type="char",
            source=None,
            reserved_ids=reserved_ids,
            extra_ids=extra_ids,
            size=reserved_ids + BYTE_VOCAB_SIZE + extra_ids,
            pad_id=0 if reserved_ids >= 1 else None,
            eos_id=1 if reserved_ids >= 2 else None,
        )
    if vocab_type == "char":
        raise VocabularyError(f"{printable(str(path))}: a char vocabulary has no file (it is UTF-8 bytes)")
    data = _read(path)
    detected = _detect(data, path)
    if vocab_type is None:
        vocab_type = detected
    elif (vocab_type == "sentencepiece") != (detected == "sentencepiece"):
        raise VocabularyError(f"{printable(str(path))}: is a {detected} vocabulary, not {vocab_type}")
    digest = hashlib.sha256(data).hexdigest()
    sp: SentencePieceModel | None = None
    if vocab_type == "sentencepiece":
        sp = parse_sentencepiece_model(data, path)
        tokens = sp.pieces
        own_pad = sp.pad_id if sp.pad_id >= 0 else None
        own_eos = sp.eos_id if sp.eos_id >= 0 else None
    elif vocab_type == "subword":
        tokens = _subword_tokens(_text(data, path), path)
        own_pad = 0 if tokens[0] in PAD_NAMES else None
        own_eos = 1 if len(tokens) > 1 and tokens[1] in EOS_NAMES else None
    else:
        tokens = _bert_tokens(_text(data, path), path)
        own_pad = tokens.index("[PAD]") if "[PAD]" in tokens else None
        own_eos = None
    if reserved_ids:
        # Trax's convention for reserved ids (Tokenize's docstring): 0 pads, 1 ends the sequence.
        pad_id: int | None = 0
        eos_id = 1 if reserved_ids >= 2 else (None if own_eos is None else own_eos + reserved_ids)
    else:
        pad_id, eos_id = own_pad, own_eos
    return Vocabulary(
        type=vocab_type,
        source=path,
        reserved_ids=reserved_ids,
        extra_ids=extra_ids,
        size=reserved_ids + len(tokens) + extra_ids,
        pad_id=pad_id,
        eos_id=eos_id,
        tokens=tokens,
        sha256=digest,
        data=data,
        sentencepiece=sp,
    )


def _read(path: Path) -> bytes:
    name = printable(str(path))
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_VOCAB_FILE_BYTES + 1)
    except FileNotFoundError:
        raise VocabularyError(f"{name}: no such vocabulary file") from None
    except IsADirectoryError:
        raise VocabularyError(f"{name}: is a directory, not a vocabulary file") from None
    except OSError as error:
        raise VocabularyError(
            f"{name}: cannot read the vocabulary: {printable(error.strerror or str(error))}"
        ) from None
    if len(data) > MAX_VOCAB_FILE_BYTES:
        raise VocabularyError(f"{name}: larger than {MAX_VOCAB_FILE_BYTES // (1024 * 1024)} MiB; not a vocabulary")
    if not data:
        raise VocabularyError(f"{name}: empty vocabulary file")
    return data


def _detect(data: bytes, path: Path) -> VocabType:
    name = printable(str(path))
    if _looks_like_sentencepiece(data):
        return "sentencepiece"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise VocabularyError(f"{name}: neither a SentencePiece model nor a UTF-8 text vocabulary") from None
    lines = [line.rstrip() for line in text.split("\n")]
    lines = [line for line in lines if line]
    if not lines:
        raise VocabularyError(f"{name}: no tokens in the vocabulary file")
    quoted = sum(1 for line in lines if len(line) >= 2 and line[0] == line[-1] and line[0] in "'\"")
    if quoted >= 0.9 * len(lines):
        return "subword"  # tensor2tensor's store_to_file quotes every subtoken
    stripped = [line.strip() for line in lines]
    if "[UNK]" in stripped or sum(1 for line in stripped if line.startswith("##")) >= 0.05 * len(lines):
        # An uncased WordPiece vocabulary has no capital letters: its model saw lowercased text.
        return "bert" if _has_capitals(stripped) else "bert-lowercase"
    if sum(1 for line in lines if line.endswith("_")) >= 0.3 * len(lines):
        return "subword"  # unquoted subtokens: every word ends with t2t's "_" terminator
    raise VocabularyError(
        f"{name}: cannot tell which vocabulary this is (not a SentencePiece model, quoted subwords or "
        "WordPiece); give the vocabulary type"
    )


def _has_capitals(tokens: list[str]) -> bool:
    specials = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
    return any(
        ch.isupper() for token in tokens if token not in specials and not token.startswith("[unused") for ch in token
    )


def _text(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise VocabularyError(f"{printable(str(path))}: not UTF-8 text (byte {error.start})") from None


def _subword_tokens(text: str, path: Path) -> tuple[str, ...]:
    # As tensor2tensor reads them: one subtoken a line ("\n" only), trailing whitespace stripped, one
    # pair of enclosing quotes removed. Empty lines are subtokens too (they keep their id).
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) > MAX_TOKENS:
        raise VocabularyError(f"{printable(str(path))}: more than {MAX_TOKENS} subtokens")
    tokens = []
    for line in lines:
        token = line.rstrip()
        if token.startswith(("'", '"')) and token.endswith(token[0]):
            token = token[1:-1]
        tokens.append(token)
    if not any(tokens):
        raise VocabularyError(f"{printable(str(path))}: no subtokens in the vocabulary file")
    return tuple(tokens)


def _bert_tokens(text: str, path: Path) -> tuple[str, ...]:
    # As trax's BertEncoder reads vocab.txt: readline() until EOF, each entry strip()ped.
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) > MAX_TOKENS:
        raise VocabularyError(f"{printable(str(path))}: more than {MAX_TOKENS} WordPiece entries")
    tokens = tuple(line.strip() for line in lines)
    if "[UNK]" not in tokens:
        raise VocabularyError(
            f"{printable(str(path))}: a WordPiece vocabulary needs [UNK] (Trax fails on unknown words)"
        )
    return tokens


# --- SentencePiece ModelProto, read with the protobuf wire format (no protobuf, no sentencepiece) ---------


def _looks_like_sentencepiece(data: bytes) -> bool:
    # ModelProto starts with its pieces: field 1, length-delimited (0x0a), each a SentencePiece message
    # whose first field is the piece string (0x0a) as well.
    if len(data) < 4 or data[0] != 0x0A:
        return False
    try:
        length, pos = _varint(data, 1)
    except VocabularyError:
        return False
    return 0 < length <= len(data) - pos and data[pos] == 0x0A


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = 0
    for shift in range(0, 70, 7):
        if pos >= len(data):
            raise VocabularyError("truncated SentencePiece model")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
    raise VocabularyError("corrupt SentencePiece model (a varint longer than 10 bytes)")


def _fields(data: bytes) -> list[tuple[int, int, int | bytes]]:
    """Every (field number, wire type, value) of one message; varints as int, fixed32 as its 4 bytes."""
    out: list[tuple[int, int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise VocabularyError(f"corrupt SentencePiece model (wire type {wire})")
        if pos > len(data) or number == 0:
            raise VocabularyError("truncated or corrupt SentencePiece model")
        out.append((number, wire, value))
    return out


def _signed(value: int) -> int:
    # int32 fields are encoded as 64-bit two's complement varints
    return value - (1 << 64) if value >= 1 << 63 else value


def parse_sentencepiece_model(data: bytes, path: Path | None = None) -> SentencePieceModel:
    """Parse a SentencePiece ``.model`` file (``sentencepiece_model.proto``'s ModelProto)."""
    name = printable(str(path)) if path else "SentencePiece model"
    try:
        return _parse_sentencepiece(data)
    except VocabularyError as error:
        raise VocabularyError(f"{name}: {error}") from None
    except (UnicodeDecodeError, struct.error, ValueError):
        raise VocabularyError(f"{name}: corrupt SentencePiece model") from None


def _parse_sentencepiece(data: bytes) -> SentencePieceModel:
    pieces: list[str] = []
    scores: list[float] = []
    kinds: list[int] = []
    trainer: dict[int, int | bytes] = {}
    normalizer: dict[int, int | bytes] = {}
    for number, wire, value in _fields(data):
        if number == 1 and isinstance(value, bytes):
            piece, score, kind = "", 0.0, SP_NORMAL
            for sub_number, _, sub_value in _fields(value):
                if sub_number == 1 and isinstance(sub_value, bytes):
                    piece = sub_value.decode("utf-8")
                elif sub_number == 2 and isinstance(sub_value, bytes) and len(sub_value) == 4:
                    score = struct.unpack("<f", sub_value)[0]
                elif sub_number == 3 and isinstance(sub_value, int):
                    kind = sub_value
            if kind not in range(1, 7):
                raise VocabularyError(f"piece {len(pieces)} has unknown type {kind}")
            pieces.append(piece)
            scores.append(score)
            kinds.append(kind)
            if len(pieces) > MAX_TOKENS:
                raise VocabularyError(f"more than {MAX_TOKENS} pieces")
        elif number == 2 and isinstance(value, bytes):
            trainer = {n: v for n, _, v in _fields(value)}
        elif number == 3 and isinstance(value, bytes):
            normalizer = {n: v for n, _, v in _fields(value)}
        elif wire == 2 and number not in (4, 5):
            raise VocabularyError(f"not a SentencePiece model (field {number})")
    if not pieces:
        raise VocabularyError("no pieces (not a SentencePiece model)")

    def integer(spec: dict[int, int | bytes], number: int, default: int) -> int:
        value = spec.get(number, default)
        return _signed(value) if isinstance(value, int) else default

    def text(spec: dict[int, int | bytes], number: int, default: str) -> str:
        value = spec.get(number)
        return value.decode("utf-8") if isinstance(value, bytes) else default

    model_number = integer(trainer, 3, 1)
    if model_number not in _SP_MODEL_TYPES:
        raise VocabularyError(f"unknown model type {model_number}")
    charsmap = normalizer.get(2, b"")
    model = SentencePieceModel(
        model_type=_SP_MODEL_TYPES[model_number],
        pieces=tuple(pieces),
        scores=tuple(scores),
        kinds=tuple(kinds),
        unk_id=integer(trainer, 40, 0),
        bos_id=integer(trainer, 41, 1),
        eos_id=integer(trainer, 42, 2),
        pad_id=integer(trainer, 43, -1),
        byte_fallback=bool(integer(trainer, 35, 0)),
        unk_surface=text(trainer, 44, " \u2047 "),
        normalizer_name=text(normalizer, 1, ""),
        precompiled_charsmap=charsmap if isinstance(charsmap, bytes) else b"",
        add_dummy_prefix=bool(integer(normalizer, 3, 1)),
        remove_extra_whitespaces=bool(integer(normalizer, 4, 1)),
        escape_whitespaces=bool(integer(normalizer, 5, 1)),
        treat_whitespace_as_suffix=bool(integer(trainer, 24, 0)),
        split_digits=bool(integer(trainer, 25, 0)),
    )
    for label, index in (("unk", model.unk_id), ("bos", model.bos_id), ("eos", model.eos_id), ("pad", model.pad_id)):
        if index >= len(pieces) or index < -1:
            raise VocabularyError(f"{label} id {index} outside the {len(pieces)} pieces")
    if model.unk_id < 0 or kinds[model.unk_id] != SP_UNKNOWN:
        raise VocabularyError("the unknown piece is missing")
    return model
