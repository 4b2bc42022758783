"""Tokenizer files for converted models give Trax's ids and decodings (fixtures made by trax 1.4.1)."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reformer_tools.errors import ExitCode, VocabularyError
from reformer_tools.tokenizer_files import (
    check_vocab_size,
    known_divergences,
    text_divergence,
    tokenizer_files,
)
from reformer_tools.trax_text import SAMPLE_TEXTS, check_tokenizer, trax_encoder, written_prediction
from reformer_tools.vocab import Vocabulary, detect_vocab_type, load_vocabulary, parse_sentencepiece_model

FIXTURES = Path(__file__).parent / "fixtures" / "vocab"
TEXTS: list[str] = json.loads((FIXTURES / "texts.json").read_text(encoding="utf-8"))
EXAMPLE_CONFIG = Path(__file__).parent.parent / "examples" / "tiny-reformer" / "config.json"

# fixture name -> (vocabulary file, type given, reserved ids)
CASES: dict[str, tuple[str | None, str | None, int]] = {
    "char0": (None, "char", 0),
    "char2": (None, "char", 2),
    "subword": ("tiny.subword", None, 0),
    "sp_unigram": ("tiny_unigram.model", None, 0),
    "sp_bpe": ("tiny_bpe.model", None, 0),
    "bert": ("tiny_bert_vocab.txt", "bert", 0),
    "bert_lowercase": ("tiny_bert_vocab.txt", "bert-lowercase", 0),
}


@cache
def vocabulary(name: str) -> Vocabulary:
    file, vocab_type, reserved = CASES[name]
    return load_vocabulary(FIXTURES / file if file else None, vocab_type, reserved_ids=reserved)  # type: ignore[arg-type]


@cache
def trax(name: str) -> dict[str, Any]:
    return json.loads(gzip.decompress((FIXTURES / f"{name}.trax.json.gz").read_bytes()))


def write(vocab: Vocabulary, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for file_name, data in tokenizer_files(vocab, model_max_length=None, vocab_size=vocab.size).items():
        (directory / file_name).write_bytes(data)
    return directory


@cache
def hf_tokenizer(name: str) -> Any:
    import tempfile

    from transformers import AutoTokenizer

    directory = write(vocabulary(name), Path(tempfile.mkdtemp(prefix=f"tok-{name}-")))
    return AutoTokenizer.from_pretrained(str(directory))


def may_differ(name: str, text: str) -> bool:
    """The documented divergences (known_divergences) that a fixture text can reach."""
    vocab = vocabulary(name)
    if text_divergence(vocab, text) is not None:
        return True
    # the unigram model does not know '<' and '>': the literal text of its control pieces can match them
    return name == "sp_unigram" and ("<pad>" in text or "</s>" in text)


@pytest.mark.parametrize("name", list(CASES))
def test_ids_and_decodings_equal_trax(name: str) -> None:
    tokenizer = hf_tokenizer(name)
    expected = trax(name)
    exact = reachable = 0
    for text, ids, decoded in zip(TEXTS, expected["ids"], expected["decoded"], strict=True):
        got = tokenizer(text, add_special_tokens=False)["input_ids"]
        back = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if got == ids and back == decoded:
            exact += 1
        else:
            # every difference is one the code says this vocabulary and text can reach
            assert may_differ(name, text), (text, ids, got, decoded, back)
            reachable += 1
    assert exact + reachable == len(TEXTS)
    # the statement is tight: texts it does not flag are all exact, and most texts are exact
    expected_exact = {"subword": 64, "sp_unigram": 308}.get(name, len(TEXTS))
    assert exact == expected_exact


@pytest.mark.parametrize("name", list(CASES))
def test_decoding_arbitrary_ids_as_trax(name: str) -> None:
    tokenizer = hf_tokenizer(name)
    vocab = vocabulary(name)
    for case in trax(name)["decode_cases"]:
        if case["text"] is None:
            # Trax itself fails on these ids (reserved ids of a byte vocabulary)
            assert name.startswith("char")
            assert any(i < vocab.reserved_ids for i in case["ids"])
            continue
        back = tokenizer.decode(case["ids"], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if name == "sp_bpe" and "\ufffd" in case["text"]:
            continue  # invalid UTF-8 from byte pieces: documented divergence
        if name.startswith("sp") and vocab.eos_id in case["ids"][:-1]:
            continue  # t5 stops at the first EOS: documented divergence
        assert back == case["text"], case


@pytest.mark.parametrize("name", list(CASES))
def test_independent_encoder_equals_trax(name: str) -> None:
    if name.startswith("sp"):
        pytest.importorskip("sentencepiece")
    encoder = trax_encoder(vocabulary(name))
    expected = trax(name)
    assert [encoder.encode(text) for text in TEXTS] == expected["ids"]
    assert [encoder.decode(ids) for ids in expected["ids"]] == expected["decoded"]


def test_special_tokens_start_with_zero_and_config_ids() -> None:
    for name in CASES:
        tokenizer = hf_tokenizer(name)
        vocab = vocabulary(name)
        ids = tokenizer("Hello world")["input_ids"]
        assert ids[0] == 0
        assert ids[1:] == tokenizer("Hello world", add_special_tokens=False)["input_ids"]
        assert tokenizer.pad_token_id == vocab.pad_id
        assert tokenizer.eos_token_id == vocab.eos_id
    assert (vocabulary("char2").pad_id, vocabulary("char2").eos_id) == (0, 1)
    assert (vocabulary("char0").pad_id, vocabulary("char0").eos_id) == (None, None)
    assert (vocabulary("subword").pad_id, vocabulary("subword").eos_id) == (0, 1)
    assert (vocabulary("sp_unigram").pad_id, vocabulary("sp_unigram").eos_id) == (0, 1)
    assert (vocabulary("sp_bpe").pad_id, vocabulary("sp_bpe").eos_id) == (None, 2)


def test_sizes_and_files() -> None:
    assert vocabulary("char2").size == 258
    assert vocabulary("subword").size == len(trax_vocab_lines("tiny.subword"))
    assert vocabulary("sp_unigram").size == 300
    files = tokenizer_files(vocabulary("sp_unigram"), model_max_length=2048, vocab_size=320)
    assert files["spiece.model"] == (FIXTURES / "tiny_unigram.model").read_bytes()
    assert json.loads(files["tokenizer_config.json"])["model_max_length"] == 2048
    # deterministic: the same vocabulary always writes the same bytes
    assert files == tokenizer_files(vocabulary("sp_unigram"), model_max_length=2048, vocab_size=320)
    assert set(tokenizer_files(vocabulary("char0"), model_max_length=None, vocab_size=256)) == {
        "tokenizer.json",
        "tokenizer_config.json",
    }


def trax_vocab_lines(file: str) -> list[str]:
    return (FIXTURES / file).read_text(encoding="utf-8").splitlines()


def test_larger_vocabulary_than_the_model_is_refused() -> None:
    check_vocab_size(vocabulary("char2"), 258)
    check_vocab_size(vocabulary("char2"), 320)  # Trax pads vocab_size up
    with pytest.raises(VocabularyError) as refused:
        check_vocab_size(vocabulary("char2"), 257)
    # it names only options that exist (there is no --extra-ids) and extra ids only when there are any
    assert str(refused.value) == (
        "the char vocabulary has 258 ids (2 reserved + 256 tokens) but the model only 257; wrong vocabulary, "
        "or wrong reserved ids (--reserved-ids, config.gin's Tokenize.n_reserved_ids)?"
    )
    extra = load_vocabulary(FIXTURES / "tiny_unigram.model", extra_ids=100)
    assert extra.size == 400
    with pytest.raises(VocabularyError, match=r"400 ids \(0 reserved \+ 300 tokens \+ 100 extra\)"):
        tokenizer_files(extra, model_max_length=None, vocab_size=320)
    assert VocabularyError("x").exit_code == ExitCode.USAGE


@pytest.mark.parametrize(
    ("file", "expected"),
    [
        ("tiny.subword", "subword"),
        ("tiny_unigram.model", "sentencepiece"),
        ("tiny_bpe.model", "sentencepiece"),
        ("tiny_bert_vocab.txt", "bert"),
    ],
)
def test_detect_vocab_type_from_content(file: str, expected: str, tmp_path: Path) -> None:
    renamed = tmp_path / "vocab.bin"  # the name says nothing
    shutil.copy(FIXTURES / file, renamed)
    assert detect_vocab_type(renamed) == expected


def test_detect_lowercase_wordpiece_and_unquoted_subwords(tmp_path: Path) -> None:
    lower = tmp_path / "a"
    lower.write_text("[PAD]\n[UNK]\nhello\n##s\nworld\n", encoding="utf-8")
    assert detect_vocab_type(lower) == "bert-lowercase"
    unquoted = tmp_path / "b"
    unquoted.write_text("<pad>_\n<EOS>_\nthe_\nof_\na\nb\n_\n", encoding="utf-8")
    assert detect_vocab_type(unquoted) == "subword"


def test_sentencepiece_model_read_without_protobuf() -> None:
    model = parse_sentencepiece_model((FIXTURES / "tiny_bpe.model").read_bytes())
    assert (model.model_type, model.unk_id, model.bos_id, model.eos_id, model.pad_id) == ("bpe", 0, 1, 2, -1)
    assert model.byte_fallback
    assert not model.precompiled_charsmap
    unigram = parse_sentencepiece_model((FIXTURES / "tiny_unigram.model").read_bytes())
    assert (unigram.model_type, unigram.pad_id, unigram.eos_id, unigram.unk_id) == ("unigram", 0, 1, 2)
    assert unigram.pieces[:3] == ("<pad>", "</s>", "<unk>")
    assert len(unigram.precompiled_charsmap) > 100_000


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty vocabulary file"),
        (b"\x0a\x05\x0a\x03abc\x12", "truncated"),
        (b"\xff\xfe\x00garbage\x80", "neither a SentencePiece model nor a UTF-8 text vocabulary"),
        (b"hello\nworld\n", "cannot tell which vocabulary"),
        (b"\x0a\x04\x0a\x02ab\x1a\x02\x08\x05", "bos id 1 outside the 1 pieces"),
        (b"\x0a\x10\x0a\x01a\x18" + b"\x80" * 11 + b"\x01", "varint longer than 10 bytes"),
    ],
)
def test_bad_vocabulary_files(content: bytes, message: str, tmp_path: Path) -> None:
    path = tmp_path / "vocab"
    path.write_bytes(content)
    with pytest.raises(VocabularyError, match=message):
        load_vocabulary(path)


def test_bad_paths_and_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(VocabularyError, match="no such vocabulary file"):
        load_vocabulary(tmp_path / "missing")
    with pytest.raises(VocabularyError, match="is a directory"):
        load_vocabulary(tmp_path)
    hostile = tmp_path / "\x1b[31mred"
    hostile.write_bytes(b"")
    with pytest.raises(VocabularyError) as caught:
        load_vocabulary(hostile)
    assert "\x1b" not in str(caught.value)
    with pytest.raises(VocabularyError, match="needs its vocabulary file"):
        load_vocabulary(None, "subword")
    with pytest.raises(VocabularyError, match="unknown vocabulary type"):
        load_vocabulary(None, "words")  # type: ignore[arg-type]
    with pytest.raises(VocabularyError, match="is a sentencepiece vocabulary, not subword"):
        load_vocabulary(FIXTURES / "tiny_bpe.model", "subword")
    with pytest.raises(VocabularyError, match="reserved ids"):
        load_vocabulary(None, reserved_ids=-1)
    big = tmp_path / "big"
    big.write_bytes(b"'a_'\n" * 1000)
    monkeypatch.setattr("reformer_tools.vocab.MAX_VOCAB_FILE_BYTES", 100)
    with pytest.raises(VocabularyError, match="larger than"):
        load_vocabulary(big)


def test_wordpiece_without_unk_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\nhello\n##s\n##x\n", encoding="utf-8")
    with pytest.raises(VocabularyError, match=r"needs \[UNK\]"):
        load_vocabulary(path, "bert")


def test_known_divergences_are_stated() -> None:
    subword = known_divergences(vocabulary("subword"))
    assert any("outside the subword vocabulary's alphabet" in line for line in subword)
    assert text_divergence(vocabulary("subword"), "tab\there") is not None
    assert text_divergence(vocabulary("subword"), "the quick brown fox_\n") is None
    assert text_divergence(vocabulary("char2"), "\t😀") is None
    for name in CASES:
        assert known_divergences(vocabulary(name))


def test_check_tokenizer_on_the_sample(tmp_path: Path) -> None:
    kinds = "".join(SAMPLE_TEXTS)
    for ch in (" ", "\t", "\n", "_", "\\", "7", "é", "ж", "中", "😀"):
        assert ch in kinds
    assert "" in SAMPLE_TEXTS
    report = check_tokenizer(write(vocabulary("bert"), tmp_path / "bert"), vocabulary("bert"))
    assert report.ok
    assert report.texts == len(SAMPLE_TEXTS)
    report = check_tokenizer(write(vocabulary("subword"), tmp_path / "subword"), vocabulary("subword"))
    assert report.ok  # every text that differs is one the documented divergence predicts
    assert report.documented > 0
    assert report.ids_equal + report.documented >= report.texts
    assert "outside the alphabet" in (report.documented_reason or "")
    payload = report.to_json()
    assert payload["documented"] == report.documented
    json.dumps(payload)
    # A unigram SentencePiece model whose control pieces' text the tokenizer matches: such texts have no exact
    # prediction, so they are reported as not compared, neither passed nor failed.
    report = check_tokenizer(write(vocabulary("sp_unigram"), tmp_path / "unigram"), vocabulary("sp_unigram"))
    assert report.ok
    assert report.not_compared == sum("<pad>" in text or "</s>" in text for text in SAMPLE_TEXTS) > 0
    assert report.ids_equal + report.not_compared == report.texts
    assert "control pieces" in (report.not_compared_reason or "")


def test_loads_in_a_fresh_interpreter_without_reformer_tools(tmp_path: Path) -> None:
    directory = write(vocabulary("subword"), tmp_path / "out")
    shutil.copy(EXAMPLE_CONFIG, directory / "config.json")  # model_type "reformer" must not pick another class
    text = "Hello world_ 42"
    expected = trax_encoder(vocabulary("subword")).encode(text)
    code = f"""
import json, sys
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained({str(directory)!r})
ids = tok({text!r}, add_special_tokens=False).input_ids
assert ids == {expected!r}, ids
assert tok({text!r}).input_ids == [0] + ids
assert tok.decode(ids) == {text!r}
assert 'reformer_tools' not in sys.modules
print(type(tok).__name__)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr[-2000:]


@cache
def _fast(name: str) -> Any:
    """The tokenizer as transformers loads it (from tokenizer_config.json too: special tokens are never
    matched in text, which the bare tokenizers library would do with '<EOS>')."""
    import tempfile

    from transformers import AutoTokenizer

    directory = write(vocabulary(name), Path(tempfile.mkdtemp(prefix=f"tokenizer-{name}-")))
    return AutoTokenizer.from_pretrained(str(directory))


SUBWORD_POOL = [
    *sorted(vocabulary("subword").alphabet),
    " ",
    "\n",
    "\t",
    "_",
    "\\",
    "é",
    "中",
    "😀",
    "\ue000",
    "\u0301",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(SUBWORD_POOL), max_size=16).map("".join))
def test_subword_differs_only_where_stated(text: str) -> None:
    tokenizer = _fast("subword")
    encoder = trax_encoder(vocabulary("subword"))
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if text_divergence(vocabulary("subword"), text) is None:
        assert ids == encoder.encode(text)
        assert tokenizer.decode(ids, skip_special_tokens=False) == encoder.decode(ids) == text


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=24))
def test_char_is_exact_on_any_text(text: str) -> None:
    tokenizer = _fast("char2")
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert ids == [b + 2 for b in text.encode("utf-8", "surrogatepass")]
    assert tokenizer.decode(ids) == text


@pytest.mark.parametrize(
    "module", ["reformer_tools.vocab", "reformer_tools.tokenizer_files", "reformer_tools.trax_text"]
)
def test_modules_are_light(module: str) -> None:
    probe = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    heavy = {"click", "rich", "torch", "transformers", "tokenizers", "sentencepiece"}
    assert not {name for name in loaded if name.split(".")[0] in heavy}


# --- verify's tokenizer check: documented divergences exactly as predicted, id 0 first ----------------------


PREDICTION_POOL = [*SUBWORD_POOL, "\ue001", "\ue002", "\ue003", "\ue004", "\ufffd", "Ж", "x", " ", "\\1", "0;"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(PREDICTION_POOL), max_size=16).map("".join))
def test_the_written_subword_tokenizer_gives_exactly_the_prediction(text: str) -> None:
    # Where Trax and the tokenizer differ, they differ exactly as written_prediction says: its ids, and its
    # decoding of Trax's ids; and where nothing may differ, the prediction is Trax.
    tokenizer = _fast("subword")
    trax_side = trax_encoder(vocabulary("subword"))
    prediction = written_prediction(vocabulary("subword"))
    assert prediction is not None
    expected = trax_side.encode(text)
    assert tokenizer(text, add_special_tokens=False).input_ids == prediction.encode(text)
    decoded = tokenizer.decode(expected, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    assert decoded == prediction.decode(expected)
    if text_divergence(vocabulary("subword"), text) is None:
        assert prediction.encode(text) == expected
        assert prediction.decode(expected) == trax_side.decode(expected)


def _edit_tokenizer(directory: Path, change: Any) -> Path:
    path = directory / "tokenizer.json"
    payload = json.loads(path.read_text(encoding="utf-8"))
    change(payload)
    path.write_text(json.dumps(payload), encoding="utf-8")
    return directory


def _oov_encoded_as_another_escape(payload: dict[str, Any]) -> None:
    (step,) = [s for s in payload["normalizer"]["normalizers"] if s.get("content") == "\\65533;"]
    step["content"] = "\\233;"


def _oov_decoded_as_a_question_mark(payload: dict[str, Any]) -> None:
    (step,) = [s for s in payload["decoder"]["decoders"] if s.get("content") == "\ufffd"]
    step["content"] = "?"


@pytest.mark.parametrize("change", [_oov_encoded_as_another_escape, _oov_decoded_as_a_question_mark])
def test_a_subword_difference_the_divergence_does_not_predict_fails(change: Any, tmp_path: Path) -> None:
    directory = _edit_tokenizer(write(vocabulary("subword"), tmp_path / "subword"), change)
    report = check_tokenizer(directory, vocabulary("subword"))
    assert not report.ok
    assert report.documented < 10  # the texts with characters outside the alphabet no longer count as documented
    failed = report.first_id_mismatch or report.first_decoding_mismatch
    assert failed is not None
    assert text_divergence(vocabulary("subword"), failed) is not None
    if report.first_id_mismatch is not None:
        assert report.predicted_ids is not None
        assert report.actual_ids != report.predicted_ids
    assert report.to_json()["ok"] is False


def test_the_tokenizer_must_start_every_text_with_id_zero(tmp_path: Path) -> None:
    report = check_tokenizer(write(vocabulary("char2"), tmp_path / "good"), vocabulary("char2"))
    assert report.ok
    assert report.starts_with_zero == report.texts
    directory = _edit_tokenizer(write(vocabulary("char2"), tmp_path / "bad"), lambda p: p.update(post_processor=None))
    report = check_tokenizer(directory, vocabulary("char2"))
    assert not report.ok
    assert report.starts_with_zero == 0
    assert report.first_start_mismatch == SAMPLE_TEXTS[0]
    assert report.ids_equal == report.texts  # without special tokens nothing else differs


def test_a_text_neither_trax_nor_the_tokenizer_can_encode_is_no_crash(tmp_path: Path) -> None:
    # "ab" makes "a" and "b" part of the alphabet, but no subtoken spells "a" alone: Trax fails, so does the
    # tokenizer.
    path = tmp_path / "vocab.subword"
    path.write_text("'<pad>'\n'<EOS>'\n'ab_'\n'ab'\n'_'\n", encoding="utf-8")
    vocab = load_vocabulary(path, "subword")
    report = check_tokenizer(write(vocab, tmp_path / "out"), vocab, ["ab", "a"])
    assert report.ok, report
    assert (report.ids_equal, report.documented) == (1, 1)
