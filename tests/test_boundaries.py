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


@pytest.mark.parametrize(
    "args",
    [[], ["--help"], ["-h"], ["--version"], ["convert", "--help"], ["inspect", "--help"], ["verify", "--help"]],
)
def test_help_imports_no_numpy_torch_transformers_or_loader(args: list[str]) -> None:
    # --help must start fast (#12): numpy alone is ~0.1 s of imports, the loader pulls it in.
    code = (
        f"sys.argv = ['reformer-tools', *{args!r}]\n"
        "from reformer_tools.cli import main\n"
        "try:\n    main()\nexcept SystemExit as done:\n    assert done.code in (0, None, 2), done.code\n"
    )
    probe = f"import sys\n{code}\nprint('modules:', *sorted(sys.modules), file=sys.__stderr__)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    loaded = set(result.stderr.rpartition("modules:")[2].split())
    heavy = {name for name in loaded if name.split(".")[0] in ("numpy", "torch", "transformers")}
    assert not heavy, sorted(heavy)[:5]
    assert "reformer_tools.loader" not in loaded
    assert "reformer_tools.cli" in loaded  # the probe did see the modules
