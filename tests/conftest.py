"""Shared fixtures. Each section belongs to one group of tests; keep them delimited."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

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


@pytest.fixture
def example_dir() -> Path:
    return TRAX_FIXTURES / "t141_local_axial"
