"""A converted directory reads and writes text: tokenizer, generation config, model card (issue 9).

The vocabularies and Trax's ids for them are tests/fixtures/vocab/ (made by trax 1.4.1, README there).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from reformer_tools.errors import ExitCode
from reformer_tools.output import previous_output
from tests.conftest import FIXTURES, invoke
from tests.trax_writer import Encoding, random_leaves, tiny_spec, write_trainer_jun_18_2020

VOCAB = FIXTURES / "vocab"
TEXTS: list[str] = json.loads((VOCAB / "texts.json").read_text(encoding="utf-8"))

# fixture -> options that choose it
CASES: dict[str, list[str]] = {
    "char0": ["--vocab-type", "char"],
    "char2": ["--vocab-type", "char", "--reserved-ids", "2"],
    "subword": ["--vocab", str(VOCAB / "tiny.subword")],
    "sp_unigram": ["--vocab", str(VOCAB / "tiny_unigram.model")],
    "sp_bpe": ["--vocab", str(VOCAB / "tiny_bpe.model")],
    "bert": ["--vocab", str(VOCAB / "tiny_bert_vocab.txt"), "--vocab-type", "bert"],
    "bert_lowercase": ["--vocab", str(VOCAB / "tiny_bert_vocab.txt"), "--vocab-type", "bert-lowercase"],
}


def trax_ids(name: str) -> list[list[int]]:
    ids: list[list[int]] = json.loads(gzip.decompress((VOCAB / f"{name}.trax.json.gz").read_bytes()))["ids"]
    return ids


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Trax 1.4.1-style Trainer checkpoint with room for every fixture vocabulary (512 ids)."""
    spec = tiny_spec(("local", "local"), vocab=512)
    path = tmp_path_factory.mktemp("ckpt") / "model.pkl.gz"
    write_trainer_jun_18_2020(path, random_leaves(spec, seed=3), enc=Encoding(protocol=5, state_jax="array"))
    return path


def convert(checkpoint: Path, out: Path, *options: str) -> dict[str, Any]:
    result = invoke(["convert", checkpoint, "-o", out, "--json", *options])
    assert result.exit_code == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


FRESH_INTERPRETER = """
import json, sys
from transformers import AutoTokenizer, GenerationConfig
directories, texts = sys.argv[1:], json.loads(sys.stdin.read())
found = {}
for directory in directories:
    tokenizer = AutoTokenizer.from_pretrained(directory)
    generation = GenerationConfig.from_pretrained(directory)
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    with_specials = tokenizer(texts[1])["input_ids"]
    found[directory] = {"ids": ids, "first": with_specials[0], "pad": generation.pad_token_id,
                        "eos": generation.eos_token_id, "class": type(tokenizer).__name__}
assert not [m for m in sys.modules if m.startswith("reformer_tools")]
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def loaded_by_transformers(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every case converted, then loaded in one fresh interpreter (transformers' import costs seconds)."""
    root = tmp_path_factory.mktemp("outputs")
    outs = {name: root / name for name in CASES}
    for name, out in outs.items():
        convert(checkpoint, out, *CASES[name])
    result = subprocess.run(
        [sys.executable, "-c", FRESH_INTERPRETER, *map(str, outs.values())],
        input=json.dumps(TEXTS[:40]),
        capture_output=True,
        text=True,
        check=False,
        cwd=root,  # not the repository: nothing of reformer-tools on the path
    )
    assert result.returncode == 0, result.stderr
    found: dict[str, Any] = json.loads(result.stdout)
    return {name: (out, found[str(out)]) for name, out in outs.items()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_output_loads_with_plain_transformers_and_gives_trax_s_ids(
    name: str, loaded_by_transformers: dict[str, Any]
) -> None:
    out, loaded = loaded_by_transformers[name]
    texts = TEXTS[:40]
    expected = trax_ids(name)[:40]
    exact = sum(a == b for a, b in zip(loaded["ids"], expected, strict=True))
    if name == "subword":  # texts with characters outside the tiny alphabet differ as documented
        from reformer_tools.tokenizer_files import text_divergence
        from reformer_tools.vocab import load_vocabulary

        vocab = load_vocabulary(VOCAB / "tiny.subword")
        representable = [i for i, text in enumerate(texts) if text_divergence(vocab, text) is None]
        assert all(loaded["ids"][i] == expected[i] for i in representable)
    elif name == "sp_unigram":  # texts holding a control piece's own text, as documented
        assert exact >= len(texts) - sum("<pad>" in t or "</s>" in t for t in texts)
    else:
        assert exact == len(texts)
    assert loaded["first"] == 0  # Trax's ReformerLM feeds 0 first (ShiftRight)
    config = json.loads((out / "config.json").read_text())
    assert loaded["pad"] == config["pad_token_id"]
    assert loaded["eos"] == config.get("eos_token_id")
    assert previous_output(out) is not None  # every file written is one `convert --force` may replace


def test_char_with_two_reserved_ids_sets_pad_and_eos(checkpoint: Path, tmp_path: Path) -> None:
    convert(checkpoint, tmp_path / "hf", *CASES["char2"])
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["pad_token_id"], config["eos_token_id"]) == (0, 1)
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert (generation["pad_token_id"], generation["eos_token_id"]) == (0, 1)
    assert config["reformer_tools"]["vocabulary"]["type"] == "char"


def test_sentencepiece_keeps_its_model_file(checkpoint: Path, tmp_path: Path) -> None:
    convert(checkpoint, tmp_path / "hf", *CASES["sp_bpe"])
    assert (tmp_path / "hf" / "spiece.model").read_bytes() == (VOCAB / "tiny_bpe.model").read_bytes()


def test_a_vocabulary_larger_than_the_model_is_refused(tmp_path: Path) -> None:
    spec = tiny_spec(("local",), vocab=100)
    path = tmp_path / "model.pkl.gz"
    write_trainer_jun_18_2020(path, random_leaves(spec, seed=1), enc=Encoding(protocol=5))
    result = invoke(["convert", path, "-o", tmp_path / "hf", "--vocab", VOCAB / "tiny.subword"])
    assert result.exit_code == ExitCode.USAGE
    assert "but the model only 100" in result.stderr
    assert not (tmp_path / "hf").exists()


def test_config_gin_tokenize_bindings_find_the_vocabulary_beside_the_checkpoint(
    checkpoint: Path, tmp_path: Path
) -> None:
    shutil.copy(checkpoint, tmp_path / "model.pkl.gz")
    shutil.copy(VOCAB / "tiny.subword", tmp_path / "tiny.subword")
    (tmp_path / "config.gin").write_text(
        "train/data.Tokenize.vocab_file = 'tiny.subword'\ntrain/data.Tokenize.vocab_dir = 'gs://nowhere/'\n",
        encoding="utf-8",
    )
    result = invoke(["convert", tmp_path / "model.pkl.gz", "-o", tmp_path / "hf"])
    assert result.exit_code == 0, result.stderr
    assert "vocabulary: subword vocabulary" in result.stderr
    assert "config.gin (Tokenize.vocab_file = 'tiny.subword')" in result.stderr
    assert (tmp_path / "hf" / "tokenizer.json").is_file()
    inspect = invoke(["inspect", tmp_path / "model.pkl.gz"])
    assert "vocabulary: subword vocabulary" in inspect.stderr  # inspect shows the vocabulary it would use


def test_a_named_vocabulary_that_is_not_there_is_said_and_skipped(checkpoint: Path, tmp_path: Path) -> None:
    shutil.copy(checkpoint, tmp_path / "model.pkl.gz")
    (tmp_path / "config.gin").write_text("Tokenize.vocab_file = 'en_32k.subword'\n", encoding="utf-8")
    result = invoke(["convert", tmp_path / "model.pkl.gz", "-o", tmp_path / "hf"])
    assert result.exit_code == 0, result.stderr
    assert "'en_32k.subword'" in result.stderr
    assert "--vocab FILE" in result.stderr
    assert not (tmp_path / "hf" / "tokenizer.json").exists()


def test_an_enwik8_dataset_means_bytes_after_two_reserved_ids(checkpoint: Path, tmp_path: Path) -> None:
    shutil.copy(checkpoint, tmp_path / "model.pkl.gz")
    (tmp_path / "config.gin").write_text("data_streams.dataset_name = 't2t_enwik8_l65k'\n", encoding="utf-8")
    convert(tmp_path / "model.pkl.gz", tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["reformer_tools"]["vocabulary"] | {"source": ""} == {
        "type": "char",
        "reserved_ids": 2,
        "extra_ids": 0,
        "file": None,
        "sha256": None,
        "source": "",
    }


def test_the_model_card_says_where_everything_came_from(checkpoint: Path, tmp_path: Path) -> None:
    convert(checkpoint, tmp_path / "hf", *CASES["char2"])
    card = (tmp_path / "hf" / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: text-generation\n")
    assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() in card
    assert "gzip-flat-weights" in card
    assert "trax 1.3.0 to master" in card
    assert "Assumed values" in card
    assert "char vocabulary" in card
    assert "AutoTokenizer.from_pretrained" in card


def test_verify_checks_the_tokenizer_and_fails_on_a_changed_one(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "hf"
    convert(checkpoint, out, *CASES["sp_bpe"])
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS[:30]), encoding="utf-8")
    result = invoke(["verify", checkpoint, out, "--text", texts, "--json"])
    assert result.exit_code == 0, result.stdout
    report = json.loads(result.stdout)["tokenizer"]
    assert report["ok"] is True
    assert report["texts"] > 30
    tokenizer = json.loads((out / "tokenizer.json").read_text())
    vocab: dict[str, int] = tokenizer["model"]["vocab"]
    first, second = [piece for piece in vocab if piece.startswith("▁")][:2]
    vocab[first], vocab[second] = vocab[second], vocab[first]  # two pieces swap their ids
    (out / "tokenizer.json").write_text(json.dumps(tokenizer), encoding="utf-8")
    swapped = invoke(["verify", checkpoint, out, "--json"])
    assert swapped.exit_code == ExitCode.VERIFICATION_FAILED
    assert json.loads(swapped.stdout)["tokenizer"]["ok"] is False
    (out / "tokenizer.json").write_text("{not json", encoding="utf-8")
    unreadable = invoke(["verify", checkpoint, out, "--json"])
    assert unreadable.exit_code == ExitCode.VERIFICATION_FAILED  # a damaged output is a failed check, not a crash
    assert json.loads(unreadable.stdout)["tokenizer"]["load_error"]


def test_without_a_vocabulary_the_output_has_no_tokenizer_and_says_so(checkpoint: Path, tmp_path: Path) -> None:
    convert(checkpoint, tmp_path / "hf")
    assert not (tmp_path / "hf" / "tokenizer.json").exists()
    assert (tmp_path / "hf" / "generation_config.json").is_file()
    verify = invoke(["verify", checkpoint, tmp_path / "hf"])
    assert "tokenizer not checked" in verify.stdout


@pytest.mark.parametrize(
    ("name", "version"),
    [
        ("model.pkl", "X)\n\n## Verification\n\n- Weights: all verified OK\n<!--"),  # markup from the file
        ("model.pkl", "Jun\ud800"),  # a lone surrogate, which the pickle's text may hold
        ("m\udcff.pkl", "Jun-18-2020"),  # a file name that is not UTF-8
    ],
)
def test_text_from_the_checkpoint_is_shown_literally_in_the_card(name: str, version: str, tmp_path: Path) -> None:
    import pickle

    spec = tiny_spec(("local",), vocab=16)
    path = tmp_path / name
    path.write_bytes(pickle.dumps({"flat_weights": random_leaves(spec, seed=1), "version_timestamp": version}))
    config = tmp_path / "config.json"
    config.write_text(json.dumps(spec.to_config_dict()), encoding="utf-8")
    result = invoke(["convert", path, "--config", config, "-o", tmp_path / "hf"])
    assert result.exit_code == 0, result.stderr
    card = (tmp_path / "hf" / "README.md").read_text(encoding="utf-8")
    assert "## Verification" not in card.splitlines()  # only convert --verify may write that section
    assert not re.search(r"(?<!\\)<!--", card)  # shown, escaped; never an HTML comment hiding the rest
    lines = [line for line in card.splitlines() if line.startswith("- Trax format:")]
    assert len(lines) == 1  # the description stays on its line
    json.loads((tmp_path / "hf" / "config.json").read_text(encoding="ascii"))
