"""Where config values come from: Trax's defaults by release, declared as assumed; configs that cannot be right.

The Trax-written models in tests/fixtures/trax_defaults/ (README there) were built with ReformerLM's own
defaults, with sin-cos positions, with chunked local attention, and with LSH defaults, and saved without
a config.gin: they are what people share.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from reformer_tools.errors import ConfigError, ExitCode, UnsupportedLayoutError, UsageError
from reformer_tools.loader import load_checkpoint
from reformer_tools.resolve import parse_settings, resolve_config
from reformer_tools.trax_defaults import Releases, releases_for, trax_defaults
from tests.conftest import FIXTURES, TRAX_FIXTURES, invoke

DEFAULTS = FIXTURES / "trax_defaults"
FILES = ("model.pkl", "trainer_lib/model.pkl.gz", "loop_checkpoint/model.pkl.gz", "layer_save_to_file/model.pkl.gz")
EXAMPLE = Path(__file__).parent.parent / "examples" / "tiny-reformer"


def trax_log_probs(fixture: Path) -> np.ndarray:
    logits = np.load(fixture / "logits.npy").astype(np.float64)
    peak = logits.max(-1, keepdims=True)
    return logits - peak - np.log(np.exp(logits - peak).sum(-1, keepdims=True))


def hf_log_probs(model_dir: Path, fixture: Path) -> np.ndarray:
    from transformers import ReformerModelWithLMHead

    model = ReformerModelWithLMHead.from_pretrained(model_dir).eval()
    with torch.no_grad():
        logits = model(torch.tensor(np.load(fixture / "hf_input_ids.npy"))).logits
    return logits.double().log_softmax(-1).numpy()


# ------------------------------------------------------- acceptance: Trax's own defaults, no config at all


@pytest.mark.parametrize("name", FILES)
def test_a_model_built_with_trax_defaults_converts_to_trax_s_outputs_without_any_config(
    name: str, tmp_path: Path
) -> None:
    fixture = DEFAULTS / "lm_defaults"
    out = tmp_path / "hf"
    result = invoke(["convert", fixture / name, "-o", out, "--json"])
    assert result.exit_code == 0, result.stderr
    assert np.abs(hf_log_probs(out, fixture) - trax_log_probs(fixture)).max() < 1e-4  # inputs of 200 tokens
    assumed = json.loads(result.stdout)["assumed"]
    assert assumed["hidden_act"] == "gelu_fast"  # tl.FastGelu
    assert assumed["local_attn_chunk_length"] == 256  # SelfAttention(chunk_len=None): the whole sequence
    assert assumed["local_num_chunks_before"] == 0
    assert assumed["layer_norm_eps"] == 1e-6


def test_assumed_values_are_declared_everywhere_the_config_goes(tmp_path: Path) -> None:
    fixture = DEFAULTS / "lm_chunked_relu"  # trained with chunk 16 and relu; nothing in the file says so
    out = tmp_path / "hf"
    result = invoke(["convert", fixture / "trainer_lib" / "model.pkl.gz", "-o", out, "-q"])
    assert result.exit_code == 0, result.stderr
    assert "warning: assumed Trax's defaults" in result.stderr  # -q hides notes, never this
    assert "local_attn_chunk_length=256" in result.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["reformer_tools"]["assumed"]["local_attn_chunk_length"] == 256
    assert "SelfAttention(chunk_len=None)" in config["reformer_tools"]["assumed_because"]["local_attn_chunk_length"]
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "np") as weights:
        provenance = json.loads(weights.metadata()["reformer_tools_config"])
    assert provenance["assumed"]["hidden_act"] == "gelu_fast"
    card = (out / "README.md").read_text()
    assert "Assumed values" in card
    assert "local_attn_chunk_length" in card
    # the model really differs from Trax's: a check on the weights cannot find out, and says so
    assert np.abs(hf_log_probs(out, fixture) - trax_log_probs(fixture)).max() > 1e-2
    verify = invoke(["verify", fixture / "trainer_lib" / "model.pkl.gz", out, "--numerics", "--json"])
    assert verify.exit_code == 0, verify.stderr
    document = json.loads(verify.stdout)
    assert "local_attn_chunk_length" in document["assumed"]
    assert "local_attn_chunk_length" in document["numerics"]["assumed"]
    assert "are not proved" in document["numerics"]["proved"]


def test_the_gin_trax_wrote_gives_the_model_without_assumptions(tmp_path: Path) -> None:
    fixture = DEFAULTS / "lm_chunked_relu"
    out = tmp_path / "hf"
    result = invoke(["convert", fixture / "with_gin" / "model.pkl.gz", "-o", out, "--json"])
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert not any(key in document["assumed"] for key in ("hidden_act", "local_attn_chunk_length", "layer_norm_eps"))
    assert np.abs(hf_log_probs(out, fixture) - trax_log_probs(fixture)).max() < 1e-4


def test_set_gives_single_values_and_they_are_not_assumed(tmp_path: Path) -> None:
    fixture = DEFAULTS / "lm_chunked_relu"
    out = tmp_path / "hf"
    args = ["--set", "hidden_act=relu", "--set", "local_attn_chunk_length=16", "--set", "local_num_chunks_before=1"]
    result = invoke(["convert", fixture / "trainer_lib" / "model.pkl.gz", "-o", out, *args, "--json"])
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert not {"hidden_act", "local_attn_chunk_length", "local_num_chunks_before"} & set(document["assumed"])
    assert np.abs(hf_log_probs(out, fixture) - trax_log_probs(fixture)).max() < 1e-4


def test_a_chunked_local_model_without_config_lists_the_chunk_as_assumed(tmp_path: Path) -> None:
    out = tmp_path / "hf"
    result = invoke(["convert", EXAMPLE / "model.pkl.gz", "-o", out, "--json"])
    assert result.exit_code == 0, result.stderr
    assert "local_attn_chunk_length" in json.loads(result.stdout)["assumed"]
    numerics = invoke(["verify", EXAMPLE / "model.pkl.gz", out, "--numerics", "--json"])
    assert "local_attn_chunk_length" in json.loads(numerics.stdout)["numerics"]["assumed"]


def test_inspect_json_carries_the_assumed_values() -> None:
    result = invoke(["inspect", DEFAULTS / "lm_defaults" / "model.pkl", "--json"])
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["assumed"]["hidden_act"] == "gelu_fast"
    assert document["trax_releases"] == "trax 1.3.8 to master"


# ------------------------------------------------------------------------------- releases and defaults


@pytest.mark.parametrize(
    ("path", "first", "last"),
    [
        (TRAX_FIXTURES / "t124_local_axial" / "trainer_lib" / "model.pkl", "1.2.3", "1.3.0"),
        (TRAX_FIXTURES / "t141_local_axial" / "trainer_lib" / "model.pkl.gz", "1.3.0", "master"),
        (TRAX_FIXTURES / "t141_local_axial" / "loop_checkpoint" / "model.pkl.gz", "1.3.8", "master"),
        (TRAX_FIXTURES / "t141_local_axial" / "layer_save_to_file" / "model.pkl.gz", "1.3.8", "master"),
        (DEFAULTS / "lm_defaults" / "model.pkl", "1.3.8", "master"),  # (max_len, d) table inside shape assertions
        (DEFAULTS / "lm_lsh_defaults" / "trainer_lib" / "model.pkl.gz", "1.3.8", "master"),
    ],
)
def test_checkpoints_are_placed_in_the_releases_that_can_write_them(path: Path, first: str, last: str) -> None:
    releases = releases_for(load_checkpoint(path, data=False))
    assert (releases.first, releases.last) == (first, last), releases.evidence


def test_lsh_defaults_changed_at_1_3_5_and_are_not_guessed_across_it() -> None:
    assumed, unknown = trax_defaults(
        Releases("1.3.0", "master"), ["lsh_attn_chunk_length", "num_buckets", "num_hashes"]
    )
    assert set(unknown) == {"lsh_attn_chunk_length", "num_buckets"}
    assert assumed["num_hashes"].value == 1
    late, none = trax_defaults(Releases("1.3.8", "master"), ["lsh_attn_chunk_length", "num_buckets"])
    assert not none
    assert late["lsh_attn_chunk_length"].value == 128
    assert late["num_buckets"].value is None
    early, unusable = trax_defaults(Releases("1.2.3", "1.3.4"), ["lsh_attn_chunk_length", "num_buckets"])
    assert "set in training" in unusable["lsh_attn_chunk_length"]  # chunk_len=None could not run then
    assert early["num_buckets"].value == 256


def test_an_lsh_checkpoint_from_either_side_of_1_3_5_stops_and_names_the_values(
    write_trax_checkpoint: Any, tmp_path: Path
) -> None:
    written = write_trax_checkpoint("trainer")  # Jun-18-2020: trax 1.3.0 to master; axial positions date nothing
    result = invoke(["convert", written.path, "-o", tmp_path / "hf"])
    assert result.exit_code == ExitCode.USAGE
    assert result.stderr.count("\n") == 1
    for name in ("lsh_attn_chunk_length", "num_buckets", "--set", "--gin", "--config"):
        assert name in result.stderr
    assert not (tmp_path / "hf").exists()
    given = invoke(
        ["convert", written.path, "-o", tmp_path / "hf", "--set", "lsh_attn_chunk_length=3", "--set", "num_buckets=2"]
    )
    assert given.exit_code == 0, given.stderr


def test_a_loop_checkpoint_from_1_3_8_on_assumes_that_release_s_lsh_defaults(write_trax_checkpoint: Any) -> None:
    resolved = resolve_config(load_checkpoint(write_trax_checkpoint("loop").path))
    assert resolved.assumed["lsh_attn_chunk_length"].value == 128
    assert resolved.assumed["num_buckets"].value is None
    assert "1.3.8" in resolved.assumed["num_buckets"].why


# -------------------------------------------------------------------------------------------- sin-cos


@pytest.mark.parametrize("name", FILES)
def test_sin_cos_positions_convert_when_named(name: str, tmp_path: Path) -> None:
    fixture = DEFAULTS / "lm_sincos"
    out = tmp_path / "hf"
    result = invoke(
        ["convert", fixture / name, "-o", out, "--set", "trax_pos_type=sin-cos", "--set", "max_position_embeddings=256"]
    )
    assert result.exit_code == 0, result.stderr
    assert np.abs(hf_log_probs(out, fixture) - trax_log_probs(fixture)).max() < 1e-4
    from safetensors.numpy import load_file

    table = load_file(str(out / "model.safetensors"))["reformer.embeddings.position_embeddings.embedding.weight"]
    assert np.abs(table - np.load(fixture / "sincos_table.npy")).max() < 1e-6  # Trax's own table
    verify = invoke(["verify", fixture / name, out, "--numerics"])
    assert verify.exit_code == 0, verify.stdout


def test_sin_cos_named_by_config_gin_converts(tmp_path: Path) -> None:
    fixture = DEFAULTS / "lm_sincos"
    shutil.copy(fixture / "trainer_lib" / "model.pkl.gz", tmp_path / "model.pkl.gz")
    (tmp_path / "config.gin").write_text("ReformerLM.pos_type = 'sin-cos'\n", encoding="utf-8")
    result = invoke(["convert", tmp_path / "model.pkl.gz", "-o", tmp_path / "hf", "--json"])
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["assumed"]["max_position_embeddings"] == 2048  # any length will do: every row is exact
    assert np.abs(hf_log_probs(tmp_path / "hf", fixture) - trax_log_probs(fixture)).max() < 1e-4


@pytest.mark.parametrize("command", ["inspect", "convert", "verify"])
@pytest.mark.parametrize("with_config", [False, True])
def test_weightless_positions_not_named_are_exit_3_naming_sin_cos(
    command: str, with_config: bool, tmp_path: Path
) -> None:
    fixture = DEFAULTS / "lm_sincos"
    args = [command, fixture / "model.pkl"]
    if with_config:
        config = json.loads((fixture / "config.json").read_text())
        config.pop("trax_pos_type", None)
        (tmp_path / "config.json").write_text(json.dumps(config))
        args += ["--config", tmp_path / "config.json"]
    if command == "convert":
        args += ["-o", tmp_path / "hf"]
    result = invoke(args)
    assert result.exit_code == ExitCode.UNREADABLE, result.output
    assert "sin-cos" in result.stderr
    assert result.stderr.count("\n") == 1


# ------------------------------------------------------------------------------ configs that cannot be right


def _config(tmp_path: Path, **changes: Any) -> Path:
    config = json.loads((TRAX_FIXTURES / "t141_local_axial" / "config.json").read_text())
    config.update(changes)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_hidden_layers": 3}, "num_hidden_layers is 3 but attn_layers lists 2 layers"),
        ({"hidden_act": "mish"}, "hidden_act 'mish' is not an activation Trax's ReformerLM can have"),
        ({"max_position_embeddings": 4096}, "has 64 positions but max_position_embeddings is 4096"),
        ({"local_attn_chunk_length": 0}, "local_attn_chunk_length must be positive"),
        ({"local_num_chunks_after": 1}, "local_num_chunks_after must be 0 in a causal model"),
        ({"is_decoder": False}, "is_decoder must be true"),
        ({"num_buckets": 7}, "must be even"),
        ({"tie_word_embeddings": True}, "tie_word_embeddings must be false"),
        ({"hidden_dropout_prob": 1.5}, "hidden_dropout_prob must be a probability"),
        ({"eos_token_id": 999}, "eos_token_id must be null or token ids"),
        ({"layer_norm_eps": 0}, "layer_norm_eps must be a positive number"),
    ],
)
def test_impossible_configs_are_refused_in_every_command(changes: dict[str, Any], message: str, tmp_path: Path) -> None:
    config = _config(tmp_path, **changes)
    checkpoint = TRAX_FIXTURES / "t141_local_axial" / "model.pkl"
    for args in (
        ["inspect", checkpoint, "--config", config],
        ["verify", checkpoint, "--config", config, "--numerics"],
        ["convert", checkpoint, "--config", config, "-o", tmp_path / "hf"],
    ):
        result = invoke(args)
        assert result.exit_code == ExitCode.USAGE, (args[0], result.output)
        assert message in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1
    assert not (tmp_path / "hf").exists()


def test_a_config_that_disagrees_with_the_weights_fails_inspect_too(tmp_path: Path) -> None:
    config = _config(tmp_path, feed_forward_size=48)
    result = invoke(["inspect", TRAX_FIXTURES / "t141_local_axial" / "model.pkl", "--config", config, "--json"])
    assert result.exit_code == ExitCode.VERIFICATION_FAILED
    problems = json.loads(result.stdout)["problems"]
    assert len(problems["mismatches"]) == 6


# -------------------------------------------------------------------------------------------------- gin


def test_lsh_bindings_apply_to_the_layers_the_weights_show_even_if_attention_type_disagrees(tmp_path: Path) -> None:
    fixture = TRAX_FIXTURES / "t141_mixed_axial"
    shutil.copy(fixture / "model.pkl", tmp_path / "model.pkl")
    (tmp_path / "config.gin").write_text(
        "ReformerLM.attention_type = @SelfAttention\n"
        "ReformerLM.n_layers = 4\n"
        "LSHSelfAttention.chunk_len = 16\n"
        "LSHSelfAttention.n_buckets = 4\n"
        "LSHSelfAttention.n_hashes = 2\n",
        encoding="utf-8",
    )
    resolved = resolve_config(load_checkpoint(tmp_path / "model.pkl"))
    spec = resolved.spec
    assert spec.attn_layers == ("local", "lsh", "local", "lsh")  # the weights win
    assert (spec.lsh_attn_chunk_length, spec.num_buckets, spec.num_hashes) == (16, 4, 2)
    assert resolved.sources["num_buckets"] == "config.gin"
    assert any("says local attention" in note for note in resolved.notes)  # the disagreement is still reported


def test_settings_gin_cannot_express_in_hugging_face_are_refused(tmp_path: Path) -> None:
    shutil.copy(TRAX_FIXTURES / "t141_local_axial" / "model.pkl", tmp_path / "model.pkl")
    (tmp_path / "config.gin").write_text("ReformerLM.ff_activation = @trax.layers.Elu\n", encoding="utf-8")
    with pytest.raises(UnsupportedLayoutError, match="Elu has no Hugging Face equivalent"):
        resolve_config(load_checkpoint(tmp_path / "model.pkl"))


# ------------------------------------------------------------------------------------------------ --set


def test_set_values_are_json_or_strings() -> None:
    assert parse_settings(["num_buckets=[64, 128]", "hidden_act=relu", "hash_seed=null", "num_hashes=2"]) == {
        "num_buckets": [64, 128],
        "hidden_act": "relu",
        "hash_seed": None,
        "num_hashes": 2,
    }
    with pytest.raises(UsageError, match="not a setting"):
        parse_settings(["hiden_act=relu"])
    with pytest.raises(UsageError, match="expected KEY=VALUE"):
        parse_settings(["hidden_act"])


def test_set_overrides_a_config_json_value(tmp_path: Path) -> None:
    resolved = resolve_config(
        load_checkpoint(TRAX_FIXTURES / "t141_local_axial" / "model.pkl"),
        TRAX_FIXTURES / "t141_local_axial" / "config.json",
        settings={"hidden_act": "gelu"},
    )
    assert resolved.spec.hidden_act == "gelu"
    assert resolved.sources["hidden_act"] == "--set"
    assert not resolved.assumed


def test_a_minimal_config_json_gets_trax_s_defaults_declared(tmp_path: Path) -> None:
    full = json.loads((TRAX_FIXTURES / "t141_local_axial" / "config.json").read_text())
    shapes = ("vocab_size", "hidden_size", "num_attention_heads", "attention_head_size", "feed_forward_size")
    shapes += ("attn_layers", "axial_pos_embds", "axial_pos_shape", "axial_pos_embds_dim", "max_position_embeddings")
    (tmp_path / "config.json").write_text(json.dumps({key: full[key] for key in shapes}))
    resolved = resolve_config(
        load_checkpoint(TRAX_FIXTURES / "t141_local_axial" / "model.pkl"), tmp_path / "config.json"
    )
    assert resolved.spec.is_decoder  # a fact of ReformerLM, not an assumption
    assert resolved.assumed["hidden_act"].value == "gelu_fast"  # Trax's, not Hugging Face's relu
    assert resolved.assumed["layer_norm_eps"].value == 1e-6  # Trax's, not Hugging Face's 1e-12


def test_config_errors_name_the_file(tmp_path: Path) -> None:
    config = _config(tmp_path, hidden_act="mish")
    with pytest.raises(ConfigError, match=str(config)):
        resolve_config(load_checkpoint(TRAX_FIXTURES / "t141_local_axial" / "model.pkl"), config)


ZEN = Path(__file__).parent.parent / "examples" / "zen-reformer"


def test_with_config_the_gin_still_names_the_vocabulary_and_witnesses_contradictions(tmp_path: Path) -> None:
    converted = tmp_path / "first"
    assert invoke(["convert", ZEN / "model.pkl.gz", "-o", converted, "-q"]).exit_code == 0
    # A config.json that agrees with config.gin: no warning, and config.gin's Tokenize still gives the tokenizer.
    again = invoke(["convert", ZEN / "model.pkl.gz", "--config", converted / "config.json", "-o", tmp_path / "a"])
    assert again.exit_code == 0, again.stderr
    assert "warning" not in again.stderr
    assert (tmp_path / "a" / "tokenizer.json").is_file()
    # One that contradicts it: said loudly (stderr even with -q, --json, config.json, card); --config is used.
    config = json.loads((converted / "config.json").read_text())
    (tmp_path / "edited.json").write_text(json.dumps({**config, "hidden_act": "gelu", "layer_norm_eps": 1e-12}))
    args = ["convert", ZEN / "model.pkl.gz", "--config", tmp_path / "edited.json", "-o", tmp_path / "b", "-q"]
    result = invoke([*args, "--json"])
    assert result.exit_code == 0, result.stderr
    edited = tmp_path / "edited.json"
    assert f'config.gin says hidden_act="relu"; {edited} says "gelu"' in result.stderr
    assert f"config.gin says layer_norm_eps=1e-06; {edited} says 1e-12" in result.stderr
    assert len(json.loads(result.stdout)["warnings"]) == 2
    written = json.loads((tmp_path / "b" / "config.json").read_text())
    assert (written["hidden_act"], written["layer_norm_eps"]) == ("gelu", 1e-12)
    assert len(written["reformer_tools"]["warnings"]) == 2
    assert "**Sources that disagree:**" in (tmp_path / "b" / "README.md").read_text()


def test_the_config_gin_note_lists_only_what_config_gin_gave() -> None:
    result = invoke(["inspect", ZEN / "model.pkl.gz"])
    assert result.exit_code == 0, result.stderr
    (gin_line,) = [line for line in result.stderr.splitlines() if line.startswith("from ") and "config.gin" in line]
    (weights_line,) = [line for line in result.stderr.splitlines() if "from the weight shapes" in line]
    gin_keys = set(gin_line.split(": ", 1)[1].split(", "))
    weight_keys = set(weights_line.split(": ", 1)[1].split(", "))
    assert "hidden_act" in gin_keys
    assert "vocab_size" in weight_keys
    assert not gin_keys & weight_keys  # the weights win where both say something
