"""Shared fixtures. Each section belongs to one group of tests; keep them delimited."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from click.testing import CliRunner, Result

if TYPE_CHECKING:
    from reformer_tools.spec import ReformerSpec
    from tests.trax_writer import Written

# ---------------------------------------------------------------- core fixtures

FIXTURES = Path(__file__).parent / "fixtures"
TRAX_FIXTURES = FIXTURES / "trax"
#: Real Trax-written models whose layout Hugging Face can represent.
CONVERTIBLE = ("hf2020_local_axial", "t124_local_axial", "t141_local_axial", "t141_mixed_axial")
#: Every checkpoint file of a fixture directory, relative to it.
CHECKPOINT_FILES = (
    "model.pkl",
    "trainer_lib/model.pkl",
    "trainer_lib/model.pkl.gz",
    "loop_checkpoint/model.pkl.gz",
    "layer_save_to_file/model.pkl.gz",
)


def fixture_checkpoints(name: str) -> list[Path]:
    """Every checkpoint file Trax wrote for one fixture model."""
    return [TRAX_FIXTURES / name / f for f in CHECKPOINT_FILES if (TRAX_FIXTURES / name / f).exists()]


def invoke(args: Sequence[str | Path]) -> Result:
    """Run the CLI in-process; stdout and stderr stay separate."""
    from reformer_tools.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


# ------------------------------------------- synthetic Trax checkpoints (tests/trax_writer.py)
# Owned by the loader format tests (tests/test_loader_formats.py); other tests may use them.


@pytest.fixture
def trax_spec() -> ReformerSpec:
    """A tiny two-layer (local, lsh) ReformerLM config with axial positions."""
    from tests.trax_writer import tiny_spec

    return tiny_spec()


@pytest.fixture
def trax_leaves(trax_spec: ReformerSpec) -> list[np.ndarray]:
    """Random float32 weights for ``trax_spec``, in Trax's flat order."""
    from tests.trax_writer import random_leaves

    return random_leaves(trax_spec, seed=0)


@pytest.fixture
def write_trax_checkpoint(
    tmp_path: Path, trax_spec: ReformerSpec, trax_leaves: list[np.ndarray]
) -> Callable[[str], Written]:
    """Write ``trax_leaves`` in one Trax format: 'weights-tree' (HF script's input), 'trainer-2020'
    (Jan-13-2020 pickle), 'trainer' (Jun-18-2020 gzip), 'loop' (Mar-10-2021 npy side files),
    'sharded' (Oct-28-2020 shard files) or 'save-to-file'."""
    from tests import trax_writer as tw

    def write(kind: str) -> Written:
        directory = tmp_path / kind
        directory.mkdir()
        tree = tw.nest_hf2020(trax_spec, trax_leaves)
        writers: dict[str, Callable[[], Written]] = {
            "weights-tree": lambda: tw.write_weights_only(directory / "model.pkl", tree, enc=tw.Encoding()),
            "trainer-2020": lambda: tw.write_trainer_jan_13_2020(directory / "model.pkl", tree, enc=tw.Encoding()),
            "trainer": lambda: tw.write_trainer_jun_18_2020(
                directory / "model.pkl.gz", trax_leaves, enc=tw.Encoding(protocol=5, state_jax="array")
            ),
            "loop": lambda: tw.write_loop_mar_10_2021(directory, trax_leaves, enc=tw.Encoding(protocol=5)),
            "sharded": lambda: tw.write_loop_sharded(
                directory / "model.pkl.gz", trax_leaves, max_shard_size=50, enc=tw.Encoding(protocol=5)
            ),
            "save-to-file": lambda: tw.write_save_to_file(
                directory / "model.pkl.gz", trax_leaves, enc=tw.Encoding(protocol=5, jax="array")
            ),
        }
        return writers[kind]()

    return write
