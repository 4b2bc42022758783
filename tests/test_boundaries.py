"""Architecture rules that must stay true: light core, lazy heavy imports, fast start."""

from __future__ import annotations

import subprocess
import sys

import pytest

CORE = [
    "reformer_tools.safe_pickle",
    "reformer_tools.loader",
    "reformer_tools.spec",
    "reformer_tools.mapper",
    "reformer_tools.infer",
    "reformer_tools.convert",
    "reformer_tools.output",
    "reformer_tools.safetensors_writer",
    "reformer_tools.verification",
    "reformer_tools.reference",
]


def imported_after(code: str) -> set[str]:
    probe = f"import sys; {code}; print(' '.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(result.stdout.split())


@pytest.mark.parametrize("module", CORE)
def test_core_modules_import_neither_the_cli_nor_heavy_libraries(module: str) -> None:
    loaded = imported_after(f"import {module}")
    assert not {name for name in loaded if name.split(".")[0] in ("click", "rich", "torch", "transformers")}


def test_help_and_inspect_do_not_import_torch_or_transformers() -> None:
    code = (
        "from click.testing import CliRunner; from reformer_tools.cli import cli; "
        "r = CliRunner().invoke(cli, ['inspect', 'tests/fixtures/trax/t141_local_axial/trainer_lib/model.pkl.gz']); "
        "assert r.exit_code == 0, r.output"
    )
    loaded = imported_after(code)
    assert not {name for name in loaded if name.split(".")[0] in ("torch", "transformers")}


def test_python_dash_m_entry_point_works() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "reformer_tools", "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    assert "Exit codes:" in result.stdout
