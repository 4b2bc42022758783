"""config.gin -> Hugging Face config values: real Trax gin files, operative configs, every mapping rule.

Fixtures and where each came from: tests/fixtures/gin/README.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reformer_tools import spec
from reformer_tools.errors import ConfigError, ExitCode
from reformer_tools.gin_config import GinMacro, GinReference, GinSettings, attention_disagreements, read_gin
from reformer_tools.trax_defaults import WHOLE_SEQUENCE
from tests.conftest import FIXTURES, TRAX_FIXTURES, invoke

GIN = FIXTURES / "gin"
ZEN = Path(__file__).parent.parent / "examples" / "zen-reformer"

ReadText = Callable[[str], GinSettings]


@pytest.fixture
def gin_text(tmp_path: Path) -> ReadText:
    """Write a gin snippet (dedented) to a file and read it."""

    def read(text: str) -> GinSettings:
        path = tmp_path / "config.gin"
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return read_gin(path)

    return read


def has_note(gin: GinSettings, *fragments: str) -> bool:
    return any(all(fragment in note for fragment in fragments) for note in gin.notes)


def model_keys(gin: GinSettings) -> dict[str, Any]:
    return {k: v for k, v in gin.overrides.items() if k != "layer_norm_eps"}


def other_notes(gin: GinSettings) -> list[str]:
    """Notes besides the one every snippet without ReformerLM.attention_type gets."""
    return [note for note in gin.notes if "attention_type is not bound" not in note]


LOCAL_LSH_12 = ("local", "local", "lsh", "local") * 3

# ------------------------------------------- gin files in the layouts Trax used (written for these tests)


def test_enwik8_v1_2_4_old_axial_names_macros_and_cycled_attention() -> None:
    gin = read_gin(GIN / "enwik8_trax124_style.gin")
    assert gin.overrides == {
        "hidden_size": 1024,
        "feed_forward_size": 4096,
        "attention_head_size": 128,  # %key_depth
        "num_attention_heads": 8,
        "vocab_size": 258,
        "hidden_dropout_prob": 0.2,
        "axial_pos_embds": True,
        "axial_pos_shape": [128, 512],
        "axial_pos_embds_dim": [256, 768],
        "max_position_embeddings": 65536,
        "hidden_act": "relu",
        "local_attn_chunk_length": 128,
        "local_num_chunks_before": 1,
        "local_attention_probs_dropout_prob": 0.2,
        "lsh_attn_chunk_length": 256,
        "lsh_num_chunks_before": 1,
        "lsh_num_chunks_after": 0,
        "num_hashes": 2,
        "num_buckets": 512,
        "lsh_attention_probs_dropout_prob": 0.2,
        "attn_layers": list(LOCAL_LSH_12),
    }
    assert gin.attention_kinds == LOCAL_LSH_12
    assert gin.notes == ()
    # bindings: as written, macros replaced by their values, references kept as references
    assert gin.bindings["ReformerLM.n_layers"] == 12
    assert gin.bindings["ReformerLM.share_qk"] is False
    assert gin.bindings["ReformerLM.ff_activation"] == GinReference("trax.layers.Relu")
    assert [r.name for r in gin.bindings["ReformerLM.attention_type"]] == [
        "SelfAttention",
        "SelfAttention",
        "LSHSelfAttention",
        "SelfAttention",
    ]
    assert gin.bindings["train.checkpoints_at"][-1] == 100000  # a continued line


def test_enwik8_master_pos_axial_shape_without_pos_type_is_plain_positions() -> None:
    """pos_axial_shape set but pos_type unbound (as in Trax's own enwik8 config): Trax uses PositionalEncoding."""
    gin = read_gin(GIN / "enwik8_master_style.gin")
    assert gin.overrides["axial_pos_embds"] is False
    assert gin.overrides["max_position_embeddings"] == 65536
    assert "axial_pos_shape" not in gin.overrides
    assert "axial_pos_embds_dim" not in gin.overrides
    assert has_note(gin, "pos_type is not bound", "PositionalEncoding", "(128, 512)")
    assert gin.overrides["hidden_size"] == 768
    assert gin.overrides["attention_head_size"] == 64
    assert gin.attention_kinds == LOCAL_LSH_12


def test_copy_config_fixed_base_positions_and_single_lsh_type() -> None:
    gin = read_gin(GIN / "copy_task_style.gin")
    assert has_note(gin, "pos_type = 'fixed-base'", "does not have")
    assert "axial_pos_embds" not in gin.overrides
    assert gin.overrides["max_position_embeddings"] == 64  # %double_seq
    assert gin.overrides["vocab_size"] == 13  # %tokens
    assert gin.attention_kinds == ("lsh", "lsh", "lsh")
    assert gin.overrides["num_buckets"] == [32, 32]
    assert gin.overrides["num_hashes"] == 2
    assert gin.overrides["lsh_attn_chunk_length"] == 16
    assert "hidden_act" not in gin.overrides  # not bound: Trax's FastGelu is infer's default already
    # TransformerLM's bindings in the same file are not the model's
    assert gin.overrides["hidden_size"] == 256
    assert "TransformerLM.max_len" in gin.bindings


def test_crime_and_punishment_colab() -> None:
    """The settings of the colab (trax 1.2.3) whose model Hugging Face published as reformer-crime-and-punishment."""
    gin = read_gin(GIN / "crime_and_punishment_style.gin")
    assert model_keys(gin) == {
        "hidden_size": 256,
        "feed_forward_size": 512,
        "attention_head_size": 64,
        "num_attention_heads": 2,
        "vocab_size": 320,
        "hidden_dropout_prob": 0.05,
        "axial_pos_embds": True,
        "axial_pos_shape": [512, 1024],
        "axial_pos_embds_dim": [64, 192],
        "max_position_embeddings": 524288,
        "hidden_act": "relu",
        "local_attn_chunk_length": 64,
        "local_num_chunks_before": 1,
        "local_attention_probs_dropout_prob": 0.05,
        "lsh_attn_chunk_length": 64,
        "lsh_num_chunks_before": 1,
        "lsh_num_chunks_after": 0,
        "num_hashes": 1,
        "num_buckets": [64, 128],
        "lsh_attention_probs_dropout_prob": 0.0,
        "attn_layers": ["local", "lsh"] * 3,
    }
    # attention_dropout 0.0 is what trax 1.2.3 used; later releases would pass dropout 0.05 instead
    assert has_note(gin, "LSHSelfAttention.attention_dropout 0.0 differs from ReformerLM.dropout 0.05")


def test_first_reformer_colab_v1_attention_is_not_representable(gin_text: ReadText) -> None:
    """Trax 1.2's first attention classes (used by the January 2020 colabs): no Hugging Face equivalent."""
    gin = gin_text(
        """
        kinds = [@TimeBinCausalAttention, @LSHCausalAttention]
        ReformerLM.n_layers = 2
        ReformerLM.attention_type = %kinds
        ReformerLM.share_qk = False
        TimeBinCausalAttention.bin_length = 64
        LSHCausalAttention.n_buckets = 1024
        ReformerLM.axial_pos_shape = (512, 1024)
        ReformerLM.d_axial_pos_embs = (64, 192)
        """
    )
    assert gin.attention_kinds is None
    assert has_note(gin, "@TimeBinCausalAttention, @LSHCausalAttention", "first attention implementation")
    assert "attn_layers" not in gin.overrides
    assert not any(key.startswith(("local_", "lsh_", "num_")) for key in gin.overrides)


# ------------------------------------------------------- operative configs with Trax-written checkpoints


def _resolve(fixture: str, gin_file: str) -> Any:
    from reformer_tools.loader import load_checkpoint
    from reformer_tools.resolve import resolve_config

    checkpoint = load_checkpoint(TRAX_FIXTURES / fixture / "model.pkl", data=False)
    return resolve_config(checkpoint, None, GIN / gin_file)


def _fields(spec: Any, *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    return {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name != "raw" and f.name not in skip}


def test_operative_config_v1_4_1_with_its_checkpoint_gives_the_reference_config() -> None:
    from reformer_tools.spec import load_spec

    resolved = _resolve("t141_mixed_axial", "operative_v1.4.1_mixed.gin")
    assert _fields(resolved.spec) == _fields(load_spec(TRAX_FIXTURES / "t141_mixed_axial" / "config.json"))
    assert not any("says" in message for message in resolved.notes)  # gin and weights agree
    assert not any("cannot be told apart" in message for message in resolved.notes)  # kinds confirmed
    assert resolved.gin.attention_kinds == ("local", "lsh", "local", "lsh")


def test_operative_config_v1_2_4_with_its_checkpoint() -> None:
    from reformer_tools.spec import load_spec

    resolved = _resolve("t124_local_axial", "operative_v1.2.4_local.gin")
    lsh_only = ("lsh_attn_chunk_length", "num_hashes", "num_buckets")  # the reference json carries unused ones
    expected = load_spec(TRAX_FIXTURES / "t124_local_axial" / "config.json")
    assert _fields(resolved.spec, skip=lsh_only) == _fields(expected, skip=lsh_only)
    assert resolved.gin.overrides["local_num_chunks_before"] == 1
    assert resolved.gin.notes == ()


def test_operative_config_shared_qk_is_reported_per_layer() -> None:
    resolved = _resolve("t141_local_shareqk", "operative_v1.4.1_shareqk.gin")
    assert resolved.gin.attention_kinds == ("local-shared-qk", "local-shared-qk")
    assert "attn_layers" not in resolved.gin.overrides
    per_layer = [m for m in resolved.notes if m.startswith("layer ") and "says shared-QK local attention" in m]
    assert len(per_layer) == 2
    assert has_note(resolved.gin, "layers 0, 1", "share_qk=True", "cannot represent")


def test_shared_qk_named_by_gin_is_refused_by_convert_not_converted_as_lsh(tmp_path: Path) -> None:

    # Trax writes config.gin beside its checkpoints: it is found without --gin.
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(TRAX_FIXTURES / "t141_local_shareqk" / "model.pkl", run / "model.pkl")
    shutil.copy(GIN / "operative_v1.4.1_shareqk.gin", run / "config.gin")
    result = invoke(["convert", run / "model.pkl", "-o", tmp_path / "hf", "-q"])
    assert result.exit_code == 3
    assert "shared query/key local attention" in result.stderr
    assert not (tmp_path / "hf").exists()
    # Without config.gin the same shapes read as LSH, and the caveat says so.
    (run / "config.gin").unlink()
    inspected = invoke(["inspect", run / "model.pkl"])
    assert "cannot be told apart without config.gin" in inspected.stderr


def test_gin_beside_the_checkpoint_gives_a_model_that_matches_trax(tmp_path: Path) -> None:

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(TRAX_FIXTURES / "t141_mixed_axial" / "model.pkl", run / "model.pkl")
    shutil.copy(GIN / "operative_v1.4.1_mixed.gin", run / "config.gin")
    assert invoke(["convert", run / "model.pkl", "-o", tmp_path / "hf", "-q"]).exit_code == 0
    result = invoke(["verify", run / "model.pkl", tmp_path / "hf", "--numerics", "--json"])
    assert result.exit_code == 0, result.stdout
    assert json.loads(result.stdout)["numerics"]["complete"] is True


def test_operative_config_format_headers_and_module_qualified_references() -> None:
    gin = read_gin(GIN / "operative_v1.4.1_mixed.gin")
    assert gin.bindings["train.model"] == GinReference("trax.models.ReformerLM")
    assert gin.bindings["ReformerLM.attention_type"] == [
        GinReference("trax.layers.SelfAttention"),
        GinReference("trax.layers.LSHSelfAttention"),
    ]
    assert gin.bindings["LSHSelfAttention.share_qk"] == "unused"
    assert gin.notes == ()


def test_cli_with_a_good_and_a_broken_gin(tmp_path: Path) -> None:
    checkpoint = TRAX_FIXTURES / "t141_mixed_axial" / "model.pkl"
    result = invoke(["inspect", checkpoint, "--gin", GIN / "operative_v1.4.1_mixed.gin"])
    assert result.exit_code == 0, result.output
    bad = tmp_path / "config.gin"
    bad.write_text("ReformerLM.d_model = 32\nReformerLM.d_ff = = 64\n", encoding="utf-8")
    result = invoke(["inspect", checkpoint, "--gin", bad])
    assert result.exit_code == ExitCode.USAGE  # the user named the file: a usage error
    assert f"{bad}: gin syntax error at line 2" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    beside = tmp_path / "beside"
    beside.mkdir()
    shutil.copy(checkpoint, beside / "model.pkl")
    shutil.copy(bad, beside / "config.gin")
    found = invoke(["inspect", beside / "model.pkl"])
    assert found.exit_code == ExitCode.UNREADABLE  # part of the checkpoint's directory, not the user's typing
    assert f"{beside / 'config.gin'}: gin syntax error at line 2" in found.stderr


# ---------------------------------------------------------------------------- parsing: names and macros


def test_module_qualified_names_and_block_syntax(gin_text: ReadText) -> None:
    gin = gin_text(
        """
        import trax.models
        from __gin__ import dynamic_registration
        trax.models.ReformerLM.d_model = 64
        trax.layers.SelfAttention.chunk_len = 32
        ReformerLM:
            d_ff = 128
            attention_type = @trax.layers.SelfAttention
            n_layers = 2
        """
    )
    assert gin.overrides["hidden_size"] == 64
    assert gin.overrides["feed_forward_size"] == 128
    assert gin.overrides["local_attn_chunk_length"] == 32
    assert gin.attention_kinds == ("local", "local")
    assert "trax.models.ReformerLM.d_model" in gin.bindings
    assert "ReformerLM.d_ff" in gin.bindings


def test_macros_resolve_late_chained_scoped_and_in_containers(gin_text: ReadText) -> None:
    gin = gin_text(
        """
        ReformerLM.d_model = %width
        ReformerLM.pos_axial_shape = (%rows, 16)
        ReformerLM.pos_d_axial_embs = %dims
        ReformerLM.pos_type = 'axial'
        ReformerLM.vocab_size = %big/vocab
        width = %half_width
        half_width = 32
        width = 48  # the last definition wins, as in gin
        rows = 8
        dims = [16, 32]
        big/vocab = 1000
        vocab = 5
        """
    )
    assert gin.overrides["hidden_size"] == 48
    assert gin.overrides["axial_pos_shape"] == [8, 16]
    assert gin.overrides["axial_pos_embds_dim"] == [16, 32]
    assert gin.overrides["vocab_size"] == 1000
    assert gin.bindings["ReformerLM.pos_axial_shape"] == (8, 16)


def test_undefined_and_cyclic_macros_are_noted_not_used(gin_text: ReadText) -> None:
    gin = gin_text(
        """
        ReformerLM.d_model = %nowhere
        ReformerLM.d_ff = %a
        a = %b
        b = %a
        """
    )
    assert gin.bindings["ReformerLM.d_model"] == GinMacro("nowhere")
    assert "hidden_size" not in gin.overrides
    assert "feed_forward_size" not in gin.overrides
    assert has_note(gin, "%nowhere is not defined")
    assert has_note(gin, "refers to itself")
    assert not has_note(gin, "is not a positive integer")  # the macro note suffices


def test_shared_macros_are_resolved_once(gin_text: ReadText) -> None:
    lines = [f"m{i} = [%m{i + 1}, %m{i + 1}]" for i in range(15)] + ["m15 = 1", "x.y = %m0"]
    gin = gin_text("\n".join(lines))
    assert isinstance(gin.bindings["x.y"], list)


def test_macros_expanding_to_a_huge_value_are_refused(tmp_path: Path) -> None:
    """40 lines that stand for 2**40 values: refused before anything walks them."""
    path = tmp_path / "config.gin"
    lines = [f"m{i} = [%m{i + 1}, %m{i + 1}]" for i in range(40)] + ["m40 = 1", "SelfAttention.chunk_len = %m0"]
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"SelfAttention\.chunk_len: macros expand to more than 1,000,000 values"):
        read_gin(path)


def test_includes_are_reported_not_followed(gin_text: ReadText, tmp_path: Path) -> None:
    (tmp_path / "base.gin").write_text("ReformerLM.d_model = 999\n", encoding="utf-8")
    gin = gin_text(
        """
        include 'base.gin'
        ReformerLM.d_ff = 64
        """
    )
    assert "hidden_size" not in gin.overrides
    assert gin.overrides["feed_forward_size"] == 64
    assert has_note(gin, "include 'base.gin' (line 2) not followed")


# ------------------------------------------------------------------------------------------ scopes


def test_model_scope_from_train_model_reference(gin_text: ReadText) -> None:
    gin = gin_text(
        """
        train.model = @big/trax.models.ReformerLM
        ReformerLM.d_model = 64
        ReformerLM.d_ff = 100
        big/ReformerLM.d_model = 128
        small/ReformerLM.d_model = 16
        ReformerLM.attention_type = @SelfAttention
        ReformerLM.n_layers = 1
        SelfAttention.chunk_len = 8
        big/SelfAttention.chunk_len = 64
        """
    )
    assert gin.overrides["hidden_size"] == 128  # the more specific scope wins
    assert gin.overrides["feed_forward_size"] == 100  # unscoped bindings still apply
    assert gin.overrides["local_attn_chunk_length"] == 64  # attention runs in the model's scope
    assert has_note(gin, "scopes the model does not run in", "small/ReformerLM.d_model")


def test_nested_scope_prefixes_apply(gin_text: ReadText) -> None:
    gin = gin_text(
        """
        train.model = @a/b/ReformerLM
        a/ReformerLM.d_model = 40
        a/b/ReformerLM.d_ff = 80
        b/ReformerLM.d_ff = 1  # "b" alone is not a prefix of a/b
        """
    )
    assert gin.overrides["hidden_size"] == 40
    assert gin.overrides["feed_forward_size"] == 80
    assert has_note(gin, "b/ReformerLM.d_ff")


def test_scoped_attention_reference_replaces_the_scope(gin_text: ReadText) -> None:
    gin = gin_text(
        """
        ReformerLM.attention_type = [@wide/SelfAttention, @LSHSelfAttention]
        ReformerLM.n_layers = 4
        SelfAttention.chunk_len = 8
        wide/SelfAttention.chunk_len = 32
        LSHSelfAttention.chunk_len = 16
        """
    )
    assert gin.overrides["local_attn_chunk_length"] == 32
    assert gin.overrides["lsh_attn_chunk_length"] == 16
    assert gin.attention_kinds == ("local", "lsh", "local", "lsh")


def test_one_class_in_two_scopes_with_different_settings_is_noted(gin_text: ReadText) -> None:
    gin = gin_text(
        """
        ReformerLM.attention_type = [@a/SelfAttention, @b/SelfAttention]
        ReformerLM.n_layers = 2
        a/SelfAttention.chunk_len = 8
        b/SelfAttention.chunk_len = 16
        """
    )
    assert gin.overrides["local_attn_chunk_length"] == 8
    assert has_note(gin, "SelfAttention has different bindings in scopes a, b")


def test_other_models_are_noted(gin_text: ReadText) -> None:
    gin = gin_text("train.model = @trax.models.TransformerLM\nTransformerLM.d_model = 64\n")
    assert has_note(gin, "train.model is @trax.models.TransformerLM, not ReformerLM")
    assert has_note(gin, "binds no ReformerLM parameter")
    assert model_keys(gin) == {}


# --------------------------------------------------------------------------------- ReformerLM mapping


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    d_model=st.integers(1, 2**31),
    d_ff=st.integers(1, 2**31),
    d_head=st.integers(1, 4096),
    n_heads=st.integers(1, 512),
    vocab=st.integers(1, 2**31),
    max_len=st.integers(1, 2**31),
    dropout=st.floats(0, 1, exclude_max=True),
    ff_chunk=st.integers(0, 2**20),
)
def test_sizes_round_trip(
    gin_text: ReadText,
    d_model: int,
    d_ff: int,
    d_head: int,
    n_heads: int,
    vocab: int,
    max_len: int,
    dropout: float,
    ff_chunk: int,
) -> None:
    gin = gin_text(
        f"""
        ReformerLM.d_model = {d_model}
        ReformerLM.d_ff = {d_ff}
        ReformerLM.d_attention_key = {d_head}
        ReformerLM.d_attention_value = {d_head}
        ReformerLM.n_heads = {n_heads}
        ReformerLM.vocab_size = {vocab}
        ReformerLM.max_len = {max_len}
        ReformerLM.dropout = {dropout!r}
        ReformerLM.ff_chunk_size = {ff_chunk}
        """
    )
    assert model_keys(gin) == {
        "hidden_size": d_model,
        "feed_forward_size": d_ff,
        "attention_head_size": d_head,
        "num_attention_heads": n_heads,
        "vocab_size": vocab,
        "max_position_embeddings": max_len,
        "hidden_dropout_prob": dropout,
        "chunk_size_feed_forward": ff_chunk,
    }
    assert other_notes(gin) == []


@pytest.mark.parametrize(
    ("binding", "note"),
    [
        ("ReformerLM.d_model = 'big'", "ReformerLM.d_model = 'big' is not a positive integer"),
        ("ReformerLM.d_model = True", "ReformerLM.d_model = True is not a positive integer"),
        ("ReformerLM.d_model = 0", "is not a positive integer"),
        ("ReformerLM.d_ff = 1.5", "ReformerLM.d_ff = 1.5 is not a positive integer"),
        ("ReformerLM.dropout = 1.0", "is not a dropout rate"),
        ("ReformerLM.ff_chunk_size = -1", "is not a non-negative integer"),
        ("ReformerLM.max_len = [1]", "ReformerLM.max_len = [1] is not a positive integer"),
    ],
)
def test_values_trax_could_not_run_with_are_refused(gin_text: ReadText, binding: str, note: str) -> None:
    # As in a config.json: ignoring them would pass a default off as assumed for a value the file did set.
    with pytest.raises(ConfigError, match=re.escape(note)):
        gin_text(binding)


def test_an_impossible_value_refuses_the_file_in_every_command(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(ZEN / "model.pkl.gz", run / "model.pkl.gz")
    text = (ZEN / "config.gin").read_text(encoding="utf-8") + "\nSelfAttention.chunk_len = -5\n"
    (run / "config.gin").write_text(text, encoding="utf-8")
    for command in (["inspect"], ["verify"], ["convert", "-o", tmp_path / "hf"]):
        result = invoke([command[0], run / "model.pkl.gz", *command[1:]])
        assert result.exit_code == 3, result.stderr  # found beside the checkpoint: part of it, unreadable
        assert "SelfAttention.chunk_len = -5 is not a positive integer" in result.stderr
    (run / "given.gin").write_text(text, encoding="utf-8")
    (run / "config.gin").unlink()
    result = invoke(["inspect", run / "model.pkl.gz", "--gin", run / "given.gin"])
    assert result.exit_code == 2  # typed by the user: a usage error
    assert not (tmp_path / "hf").exists()


def test_empty_file_sets_nothing(gin_text: ReadText) -> None:
    gin = gin_text("# nothing\n")
    assert gin.overrides == {}
    assert gin.attention_kinds is None
    assert gin.bindings == {}


def test_layer_norm_epsilon_only_when_bound(gin_text: ReadText) -> None:
    """LayerNorm is a gin configurable from trax 1.3.7; unbound, its default is assumed (see test_resolve)."""
    assert "layer_norm_eps" not in gin_text("ReformerLM.d_model = 8").overrides
    assert gin_text("LayerNorm.epsilon = 1e-05").overrides["layer_norm_eps"] == 1e-5
    assert not has_note(gin_text("LayerNorm.epsilon = 1e-06\nLayerNorm.center = True"), "LayerNorm")
    with pytest.raises(ConfigError, match=r"LayerNorm\.epsilon = 0 is not a small positive number"):
        gin_text("LayerNorm.epsilon = 0")
    rms = gin_text("LayerNorm.center = False")
    assert any("RMS normalization" in reason for reason in rms.unrepresentable)  # invisible in the weights: refused


def test_d_attention_value_must_equal_the_key_size(gin_text: ReadText) -> None:
    assert has_note(gin_text("ReformerLM.d_attention_value = 32"), "d_attention_value 32 differs", "64")
    assert other_notes(gin_text("ReformerLM.d_attention_key = 32\nReformerLM.d_attention_value = 32")) == []


@pytest.mark.parametrize(
    ("reference", "hidden_act"),
    [
        ("@trax.layers.Relu", "relu"),
        ("@Relu", "relu"),
        ("@trax.layers.FastGelu", "gelu_fast"),
        ("@FastGelu", "gelu_fast"),
        ("@trax.layers.Gelu", "gelu"),
        ("@Tanh", "tanh"),
    ],
)
def test_activations(gin_text: ReadText, reference: str, hidden_act: str) -> None:
    assert gin_text(f"ReformerLM.ff_activation = {reference}").overrides["hidden_act"] == hidden_act


@pytest.mark.parametrize("value", ["@trax.layers.Selu", "@Relu()", "'relu'"])
def test_other_activations_are_unrepresentable(gin_text: ReadText, value: str) -> None:
    gin = gin_text(f"ReformerLM.ff_activation = {value}")
    assert "hidden_act" not in gin.overrides
    assert any("ff_activation" in r and "has no Hugging Face equivalent" in r for r in gin.unrepresentable)


def test_leaky_relu_converts_only_with_its_default_slope(gin_text: ReadText) -> None:
    assert gin_text("ReformerLM.ff_activation = @LeakyRelu").overrides["hidden_act"] == "leaky_relu"
    assert gin_text("ReformerLM.ff_activation = @Swish").overrides["hidden_act"] == "silu"
    steep = gin_text("ReformerLM.ff_activation = @LeakyRelu\nLeakyRelu.a = 0.2")
    assert any("LeakyRelu.a = 0.2" in r for r in steep.unrepresentable)


@pytest.mark.parametrize(
    ("binding", "note"),
    [
        ("ReformerLM.ff_use_sru = 2", "SRU layers"),
        ("ReformerLM.ff_use_sru = (1, 32)", "SRU layers"),
        ("ReformerLM.ff_sparsity = 16", "sparse feed-forward"),
        ("ReformerLM.ff_sparsity = '64 64 0.1 0.3'", "sparse feed-forward"),
        ("ReformerLM.loss_sparsity = 4", "sparse output layer"),
        ("ReformerLM.n_chunks = 2", "input chunks"),
    ],
)
def test_unsupported_feed_forward_and_output_options(gin_text: ReadText, binding: str, note: str) -> None:
    assert has_note(gin_text(binding), note)


@pytest.mark.parametrize(
    "binding",
    [
        "ReformerLM.ff_use_sru = 0",
        "ReformerLM.ff_sparsity = 0",
        "ReformerLM.loss_sparsity = 4\nReformerLM.loss_sparsity_type = None",
        "ReformerLM.attention_chunk_size = 128",  # batch chunking: same numbers
        "ReformerLM.n_chunks = 0",
    ],
)
def test_neutral_options_make_no_note(gin_text: ReadText, binding: str) -> None:
    assert other_notes(gin_text(binding)) == []


# ------------------------------------------------------------------------------------------ positions


def test_old_axial_names(gin_text: ReadText) -> None:
    gin = gin_text(
        """
        ReformerLM.axial_pos_shape = (64, 32)
        ReformerLM.d_axial_pos_embs = [100, 28]
        ReformerLM.max_len = 2048
        """
    )
    assert model_keys(gin) == {
        "axial_pos_embds": True,
        "axial_pos_shape": [64, 32],
        "axial_pos_embds_dim": [100, 28],
        "max_position_embeddings": 2048,
    }


@pytest.mark.parametrize("empty", ["()", "[]", "None"])
def test_old_empty_axial_shape_is_plain_positions(gin_text: ReadText, empty: str) -> None:
    gin = gin_text(f"ReformerLM.axial_pos_shape = {empty}\nReformerLM.max_len = 512")
    assert model_keys(gin) == {"axial_pos_embds": False, "max_position_embeddings": 512}


@pytest.mark.parametrize("special", ["fixed-base", "infinite", "infinite-affine", "time-bin"])
def test_old_special_encodings_are_noted(gin_text: ReadText, special: str) -> None:
    gin = gin_text(f"ReformerLM.axial_pos_shape = '{special}'")
    assert has_note(gin, f"axial_pos_shape = '{special}'", "does not have")
    assert "axial_pos_embds" not in gin.overrides


def test_new_names_axial(gin_text: ReadText) -> None:
    gin = gin_text(
        """
        ReformerLM.pos_type = 'axial'
        ReformerLM.pos_axial_shape = (8, 8)
        ReformerLM.pos_d_axial_embs = (16, 16)
        ReformerLM.max_len = 64
        """
    )
    assert model_keys(gin) == {
        "axial_pos_embds": True,
        "axial_pos_shape": [8, 8],
        "axial_pos_embds_dim": [16, 16],
        "max_position_embeddings": 64,
    }
    assert other_notes(gin) == []


def test_new_names_pos_type_none_ignores_the_axial_shape(gin_text: ReadText) -> None:
    gin = gin_text(
        """
        ReformerLM.pos_type = None
        ReformerLM.pos_axial_shape = (8, 8)
        ReformerLM.pos_d_axial_embs = (16, 16)
        ReformerLM.max_len = 100
        """
    )
    assert model_keys(gin) == {"axial_pos_embds": False, "max_position_embeddings": 100}
    assert has_note(gin, "pos_type is None", "ignored pos_axial_shape (8, 8)")


@pytest.mark.parametrize("special", ["fixed-base", "infinite", "infinite-affine", "time-bin", "no"])
def test_new_special_encodings_are_noted(gin_text: ReadText, special: str) -> None:
    gin = gin_text(f"ReformerLM.pos_type = '{special}'\nReformerLM.pos_axial_shape = (8, 8)")
    assert has_note(gin, f"pos_type = '{special}'", "does not have")
    assert "axial_pos_embds" not in gin.overrides
    assert gin.positions == special


def test_sin_cos_is_named_for_the_resolver_to_materialise(gin_text: ReadText) -> None:
    gin = gin_text("ReformerLM.pos_type = 'sin-cos'\nReformerLM.max_len = 300")
    assert gin.positions == "sin-cos"
    assert gin.overrides == {"max_position_embeddings": 300}
    assert not has_note(gin, "does not have")


def test_other_pos_type_strings_are_axial_as_in_trax(gin_text: ReadText) -> None:
    gin = gin_text("ReformerLM.pos_type = 'ax'\nReformerLM.pos_axial_shape = (4,)\nReformerLM.pos_d_axial_embs = (8,)")
    assert gin.overrides["axial_pos_shape"] == [4]
    assert has_note(gin, "pos_type = 'ax'", "as 'axial'")


@pytest.mark.parametrize(
    "bindings",
    [
        "ReformerLM.pos_type = 'axial'\nReformerLM.pos_axial_shape = (8, 8)",  # no depths
        "ReformerLM.pos_type = 'axial'\nReformerLM.pos_axial_shape = (8, 8)\nReformerLM.pos_d_axial_embs = (16,)",
        "ReformerLM.axial_pos_shape = (8, -8)\nReformerLM.d_axial_pos_embs = (16, 16)",
    ],
)
def test_broken_axial_settings_are_noted(gin_text: ReadText, bindings: str) -> None:
    gin = gin_text(bindings)
    assert has_note(gin, "are not two lists of positive integers of the same length")
    assert "axial_pos_embds" not in gin.overrides


def test_max_len_differing_from_the_axial_product_is_noted(gin_text: ReadText) -> None:
    gin = gin_text(
        "ReformerLM.axial_pos_shape = (8, 8)\nReformerLM.d_axial_pos_embs = (16, 16)\nReformerLM.max_len = 2048"
    )
    assert gin.overrides["max_position_embeddings"] == 64
    assert has_note(gin, "max_len = 2048 is unused with axial positions")


def test_both_generations_of_names_read_the_new_ones(gin_text: ReadText) -> None:
    gin = gin_text("ReformerLM.axial_pos_shape = (8, 8)\nReformerLM.pos_type = None\nReformerLM.max_len = 9")
    assert gin.overrides["axial_pos_embds"] is False
    assert has_note(gin, "no Trax release accepts both")


# ---------------------------------------------------------------------------------- local attention


def test_local_chunk_len_none_is_the_whole_sequence(gin_text: ReadText) -> None:
    gin = gin_text(
        """
        ReformerLM.attention_type = @SelfAttention
        ReformerLM.n_layers = 2
        ReformerLM.max_len = 1024
        SelfAttention.chunk_len = None
        SelfAttention.n_chunks_before = 3  # ignored by Trax without chunks
        """
    )
    assert gin.overrides["local_attn_chunk_length"] is WHOLE_SEQUENCE  # the resolver makes it max_len
    assert gin.overrides["local_num_chunks_before"] == 0
    assert gin.overrides["local_num_chunks_after"] == 0


def test_unbound_local_settings_are_left_to_the_resolver(gin_text: ReadText) -> None:
    gin = gin_text("ReformerLM.attention_type = @SelfAttention\nReformerLM.n_layers = 1")
    assert not any(key.startswith("local_") for key in gin.overrides)
    assert not has_note(gin, "assumed")


def test_hugging_face_local_attention_is_unchunked_up_to_the_chunk_length() -> None:
    """The claim behind the chunk_len=None rule, read from the installed transformers (not imported: slow)."""
    import importlib.util

    spec = importlib.util.find_spec("transformers.models.reformer.modeling_reformer")
    assert spec is not None
    assert spec.origin is not None
    source = Path(spec.origin).read_text(encoding="utf-8")
    local = source[source.index("class LocalSelfAttention") :]
    local = local[: local.index("\nclass ")]
    assert "do_standard_self_attention = sequence_length <= self.chunk_length" in local


def test_local_chunk_len_alone_binds_only_the_chunk(gin_text: ReadText) -> None:
    gin = gin_text("ReformerLM.attention_type = @SelfAttention\nReformerLM.n_layers = 1\nSelfAttention.chunk_len = 64")
    assert gin.overrides["local_attn_chunk_length"] == 64
    assert "local_num_chunks_before" not in gin.overrides  # Trax's 0, not Hugging Face's 1: assumed by the resolver


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunk=st.integers(1, 2**20), before=st.integers(0, 8), after=st.integers(0, 8), rate=st.floats(0, 0.99))
def test_local_settings_round_trip(gin_text: ReadText, chunk: int, before: int, after: int, rate: float) -> None:
    gin = gin_text(
        f"""
        ReformerLM.attention_type = @SelfAttention
        ReformerLM.n_layers = 3
        SelfAttention.chunk_len = {chunk}
        SelfAttention.n_chunks_before = {before}
        SelfAttention.n_chunks_after = {after}
        SelfAttention.attention_dropout = {rate!r}
        """
    )
    assert model_keys(gin) == {
        "local_attn_chunk_length": chunk,
        "local_num_chunks_before": before,
        "local_num_chunks_after": after,
        "local_attention_probs_dropout_prob": rate,
        "attn_layers": ["local"] * 3,
    }


def test_attention_dropout_falls_back_to_reformer_dropout(gin_text: ReadText) -> None:
    gin = gin_text(
        """
        ReformerLM.attention_type = [@SelfAttention, @LSHSelfAttention]
        ReformerLM.n_layers = 2
        ReformerLM.dropout = 0.1
        LSHSelfAttention.chunk_len = 8
        """
    )
    assert gin.overrides["hidden_dropout_prob"] == 0.1
    assert gin.overrides["local_attention_probs_dropout_prob"] == 0.1
    assert gin.overrides["lsh_attention_probs_dropout_prob"] == 0.1


def test_shared_qk_local_attention(gin_text: ReadText) -> None:
    gin = gin_text(
        """
        ReformerLM.attention_type = [@SelfAttention, @LSHSelfAttention]
        ReformerLM.n_layers = 4
        SelfAttention.share_qk = True
        SelfAttention.chunk_len = 8
        LSHSelfAttention.chunk_len = 8
        """
    )
    assert gin.attention_kinds == ("local-shared-qk", "lsh", "local-shared-qk", "lsh")
    assert "attn_layers" not in gin.overrides
    assert has_note(gin, "layers 0, 2", "shared-QK local attention")


def test_trax_1_2_reformer_share_qk_beats_the_attention_binding(gin_text: ReadText) -> None:
    gin = gin_text(
        """
        ReformerLM.attention_type = @SelfAttention
        ReformerLM.n_layers = 1
        ReformerLM.share_qk = True
        SelfAttention.share_qk = False
        """
    )
    assert gin.attention_kinds == ("local-shared-qk",)
    assert has_note(gin, "SelfAttention.share_qk = False is overridden by ReformerLM.share_qk = True")


@pytest.mark.parametrize("attention", ["SelfAttention", "LSHSelfAttention"])
def test_attention_biases_are_noted(gin_text: ReadText, attention: str) -> None:
    gin = gin_text(f"ReformerLM.attention_type = @{attention}\nReformerLM.n_layers = 1\n{attention}.bias = True")
    assert has_note(gin, f"{attention}.bias = True", "no biases")


# ------------------------------------------------------------------------------------------ LSH attention


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    chunk=st.integers(1, 2**16),
    before=st.integers(0, 4),
    after=st.integers(0, 4),
    hashes=st.integers(1, 16),
    buckets=st.one_of(
        st.integers(1, 2**15).map(lambda n: 2 * n), st.lists(st.integers(1, 512), min_size=1, max_size=3)
    ),
)
def test_lsh_settings_round_trip(
    gin_text: ReadText, chunk: int, before: int, after: int, hashes: int, buckets: int | list[int]
) -> None:
    gin = gin_text(
        f"""
        ReformerLM.attention_type = @trax.layers.LSHSelfAttention
        ReformerLM.n_layers = 2
        LSHSelfAttention.chunk_len = {chunk}
        LSHSelfAttention.n_chunks_before = {before}
        LSHSelfAttention.n_chunks_after = {after}
        LSHSelfAttention.n_hashes = {hashes}
        LSHSelfAttention.n_buckets = {buckets}
        LSHSelfAttention.attention_dropout = 0.0
        """
    )
    assert model_keys(gin) == {
        "lsh_attn_chunk_length": chunk,
        "lsh_num_chunks_before": before,
        "lsh_num_chunks_after": after,
        "num_hashes": hashes,
        "num_buckets": buckets,
        "lsh_attention_probs_dropout_prob": 0.0,
        "attn_layers": ["lsh", "lsh"],
    }
    assert gin.notes == ()


def test_lsh_unbound_settings_are_left_to_the_resolver(gin_text: ReadText) -> None:
    gin = gin_text("ReformerLM.attention_type = @LSHSelfAttention\nReformerLM.n_layers = 1")
    assert not any(key.startswith("lsh_attn") or key == "num_buckets" for key in gin.overrides)


def test_lsh_chunk_len_none_and_n_buckets_none(gin_text: ReadText) -> None:
    gin = gin_text(
        """
        ReformerLM.attention_type = @LSHSelfAttention
        ReformerLM.n_layers = 1
        ReformerLM.max_len = 256
        LSHSelfAttention.chunk_len = None
        LSHSelfAttention.n_buckets = None
        """
    )
    assert gin.overrides["lsh_attn_chunk_length"] is WHOLE_SEQUENCE
    assert gin.overrides["lsh_num_chunks_before"] == 0
    assert gin.overrides["num_buckets"] is None


def test_lsh_odd_bucket_count_is_refused_as_trax_does(gin_text: ReadText) -> None:
    with pytest.raises(ConfigError, match="n_buckets = 7 is not an even positive integer"):
        gin_text("ReformerLM.attention_type = @LSHSelfAttention\nLSHSelfAttention.n_buckets = 7")


# ---------------------------------------------------------------------------- attention types and layers


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pattern=st.lists(st.sampled_from(["local", "lsh"]), min_size=1, max_size=5), repeats=st.integers(1, 6))
def test_attention_types_cycle_over_the_layers(gin_text: ReadText, pattern: list[str], repeats: int) -> None:
    classes = {"local": "@trax.layers.SelfAttention", "lsh": "@LSHSelfAttention"}
    gin = gin_text(
        f"""
        ReformerLM.attention_type = [{", ".join(classes[k] for k in pattern)}]
        ReformerLM.n_layers = {len(pattern) * repeats}
        SelfAttention.chunk_len = 8
        LSHSelfAttention.chunk_len = 8
        LSHSelfAttention.n_buckets = 4
        """
    )
    assert gin.attention_kinds == tuple(pattern * repeats)
    assert gin.overrides["attn_layers"] == pattern * repeats


def test_layers_not_a_multiple_of_the_types_are_noted(gin_text: ReadText) -> None:
    gin = gin_text("ReformerLM.attention_type = [@SelfAttention, @LSHSelfAttention]\nReformerLM.n_layers = 3")
    assert gin.attention_kinds == ("local", "lsh", "local")
    assert has_note(gin, "n_layers 3 is not a multiple of the 2 attention types")


def test_unbound_n_layers_leaves_kinds_to_the_weights(gin_text: ReadText) -> None:
    gin = gin_text("ReformerLM.attention_type = @SelfAttention\nSelfAttention.chunk_len = 16")
    assert gin.attention_kinds is None
    assert gin.overrides["local_attn_chunk_length"] == 16
    assert has_note(gin, "n_layers is not bound")


def test_unbound_attention_type_translates_only_bound_attention_settings(gin_text: ReadText) -> None:
    """A Python caller may have passed attention_type (even a partial with chunk_len): assume no defaults."""
    gin = gin_text(
        """
        ReformerLM.n_layers = 2
        SelfAttention.n_chunks_after = 0
        SelfAttention.attention_dropout = 0.1
        LSHSelfAttention.n_hashes = 4
        """
    )
    assert gin.attention_kinds is None
    assert model_keys(gin) == {
        "local_num_chunks_after": 0,
        "local_attention_probs_dropout_prob": 0.1,
        "num_hashes": 4,
    }
    assert has_note(gin, "attention_type is not bound", "left to the weights")
    assert not has_note(gin, "is not bound: Trax's default is 128")


@pytest.mark.parametrize(
    ("value", "note"),
    [
        ("@trax.layers.CausalFavor", "@trax.layers.CausalFavor: Hugging Face's Reformer represents only"),
        ("[@SelfAttention, @PureLSHSelfAttention]", "@PureLSHSelfAttention"),
        ("@SelfAttention()", "@SelfAttention()"),
        ("'local'", "'local'"),
        ("@DotProductCausalAttention", "Trax 1.2's first attention implementation"),
        ("[]", "empty list"),
    ],
)
def test_unrepresentable_attention_types(gin_text: ReadText, value: str, note: str) -> None:
    gin = gin_text(f"ReformerLM.attention_type = {value}\nReformerLM.n_layers = 2")
    assert gin.attention_kinds is None
    assert "attn_layers" not in gin.overrides
    assert has_note(gin, note)


# ---------------------------------------------------------------------------------- disagreements


def _settings_with(kinds: tuple[str, ...] | None) -> GinSettings:
    return GinSettings(Path("config.gin"), {}, {}, kinds, ())


def test_disagreements_none_when_gin_is_silent_or_agrees() -> None:
    assert attention_disagreements(_settings_with(None), ["local", "lsh"]) == []
    assert attention_disagreements(_settings_with(("local", "lsh")), ["local", "lsh"]) == []


def test_disagreements_one_message_per_layer() -> None:
    messages = attention_disagreements(
        _settings_with(("local", "lsh", "local-shared-qk", "local-shared-qk", "lsh")),
        ["lsh", "local", "lsh", "local", "lsh"],
    )
    assert len(messages) == 4
    assert messages[0].startswith("layer 0: config.gin says local attention")
    assert "the weights have 3 attention arrays" in messages[0]
    assert messages[1].startswith("layer 1: config.gin says LSH attention")
    assert "the weights have 4 attention arrays" in messages[1]
    assert messages[2].startswith("layer 2: config.gin says shared-QK local attention")
    assert "not LSH" in messages[2]
    assert messages[3].startswith("layer 3: config.gin says shared-QK local attention (3 attention arrays)")


def test_disagreement_in_layer_count_is_one_message() -> None:
    messages = attention_disagreements(_settings_with(("local",) * 6), ["local"] * 4)
    assert messages == ["config.gin says 6 decoder layers; the weights have 4"]


# ---------------------------------------------------------------------------------------------- errors


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "config.gin"
    path.write_text("# comment\nReformerLM.d_model = 512\nReformerLM.d_ff = = 2048\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"config\.gin: gin syntax error at line 3: ") as caught:
        read_gin(path)
    assert caught.value.exit_code == ExitCode.USAGE
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("ReformerLM.d_model = 512\nReformerLM.attention_type = [\n  @SelfAttention,\n", 2),  # unclosed at EOF
        ("a.b = 1\nReformerLM.d_model 512\n", 2),
        ("a.b = 'x\n", 1),
        ("a.b = '''x\n\n", 1),
        ("a b.c = 1\n", 1),
        ("ReformerLM:\n  d_model = 1\n d_ff = 2\n", 3),  # inconsistent dedent
        ("a.b = 1" + "0" * 5000 + "\n", 1),  # beyond Python's int digit limit
    ],
)
def test_syntax_errors_never_leak_tracebacks(tmp_path: Path, text: str, line: int) -> None:
    path = tmp_path / "config.gin"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"gin syntax error at line {line}: ") as caught:
        read_gin(path)
    assert len(str(caught.value)) - len(str(path)) < 250  # gin quotes whole tokens; kept short


def test_deep_nesting_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.gin"
    path.write_text("a.b = " + "[" * 5000 + "]" * 5000 + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="brackets nested more than 100 deep at line 1"):
        read_gin(path)


def test_macros_cannot_nest_deeper_than_the_text_allows(tmp_path: Path) -> None:
    """Each macro may nest 100 deep; a chain of them must not build a value 100 times deeper."""
    lines = [f"M{i} = " + "[" * 60 + f"%M{i + 1}" + "]" * 60 for i in range(50)]
    path = tmp_path / "config.gin"
    path.write_text("\n".join([*lines, "M50 = 1", "ReformerLM.d_model = %M0"]) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="nested more than 100 deep"):
        read_gin(path)


def test_a_huge_deeply_nested_gin_beside_a_checkpoint_is_refused_without_crashing(tmp_path: Path) -> None:
    """7.6 MB of nested brackets once crashed the interpreter (SIGSEGV); now one line and exit 3."""
    import subprocess
    import sys

    shutil.copy(TRAX_FIXTURES / "t141_local_axial" / "model.pkl", tmp_path / "model.pkl")
    depth = 3_800_000
    (tmp_path / "config.gin").write_text("ReformerLM.d_model = " + "(" * depth + ")" * depth + "\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "reformer_tools", "inspect", str(tmp_path / "model.pkl")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == ExitCode.UNREADABLE, result.stderr
    assert result.stderr.count("\n") == 1
    assert "brackets nested more than 100 deep" in result.stderr


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config\.gin: no such file"):
        read_gin(tmp_path / "config.gin")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        read_gin(tmp_path)


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.gin"
    path.write_text("a.b = 1\n", encoding="utf-8")

    def deny(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "open", deny)  # chmod does not stop root
    with pytest.raises(ConfigError, match=r"config\.gin: permission denied"):
        read_gin(path)


def test_binary_garbage(tmp_path: Path) -> None:
    path = tmp_path / "model.pkl"
    path.write_bytes(b"\x80\x04\x95\x00\x00garbage\x00\xff" * 100)
    with pytest.raises(ConfigError, match="binary data, not a gin config"):
        read_gin(path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "config.gin"
    path.write_bytes(b"a.b = 1\nc.d = '\xe9'\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text at line 2"):
        read_gin(path)


def test_too_large(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spec, "MAX_CONFIG_BYTES", 100)
    path = tmp_path / "config.gin"
    path.write_text("a.b = 1\n" * 20, encoding="utf-8")
    with pytest.raises(ConfigError, match="larger than"):
        read_gin(path)


def test_byte_order_mark_and_crlf_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "config.gin"
    path.write_bytes("\ufeffReformerLM.d_model = 32\r\nReformerLM.d_ff = 64\r\n".encode())
    assert model_keys(read_gin(path)) == {"hidden_size": 32, "feed_forward_size": 64}


_GIN_PIECES = [
    "ReformerLM", "SelfAttention", "LSHSelfAttention", "train", ".", "d_model", "chunk_len", "attention_type",
    "model", " = ", "=", "%", "@", "/", "(", ")", "[", "]", "{", "}", ",", ":", "\n", " ", "    ", "'", '"', "1",
    "-", "0.5", "None", "True", "include", "import", "from", "as", "#", "\\\n", "$", "é", "M = ", "%M", "scope/",
]  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.lists(st.sampled_from(_GIN_PIECES), max_size=40).map("".join), st.text(max_size=200)))
def test_any_text_reads_or_raises_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.gin"
    path.write_text(text, encoding="utf-8")
    gin, message = None, ""
    try:
        gin = read_gin(path)
    except ConfigError as error:
        message = str(error)
    if gin is None:
        assert message.startswith(str(path))
        assert "\n" not in message
    else:
        assert all("\n" not in note for note in (*gin.notes, *gin.unrepresentable))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300))
def test_any_bytes_read_or_raise_config_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "config.gin"
    path.write_bytes(data)
    with contextlib.suppress(ConfigError):  # anything else fails the test
        read_gin(path)


def test_a_long_run_of_adjacent_string_literals_is_refused_quickly(tmp_path: Path) -> None:
    """gin's parser joins adjacent literals in quadratic time: 100,000 of them ran past two minutes."""
    import time

    path = tmp_path / "config.gin"
    path.write_text("a.b = " + " 'x'" * 100_000 + "\n", encoding="utf-8")
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="more than 1000 adjacent string literals at line 1"):
        read_gin(path)
    assert time.perf_counter() - started < 30  # generous: the check is one linear pass
