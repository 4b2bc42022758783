"""The checkpoint data model is importable on its own: mapper and infer need it, not the unpickler or threads."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = (
    "reformer_tools.loader",
    "reformer_tools.safe_pickle",
    "reformer_tools.allowlist",
    "reformer_tools.byte_source",
    "reformer_tools.gzip_stream",
    "reformer_tools.prefetch",
    "reformer_tools.global_scan",
    "reformer_tools.summaries",
    "threading",
    "click",
    "rich",
    "torch",
    "transformers",
)


@pytest.mark.parametrize("module", ["reformer_tools.checkpoint", "reformer_tools.dtypes"])
def test_the_data_model_imports_nothing_heavy(module: str) -> None:
    code = f"import sys, {module}; print(sorted(set({HEAVY!r}) & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout


@pytest.mark.parametrize("module", ["reformer_tools.mapper", "reformer_tools.infer"])
def test_the_mapper_and_inference_do_not_pull_in_the_unpickler(module: str) -> None:
    unwanted = ("reformer_tools.loader", "reformer_tools.safe_pickle", "reformer_tools.byte_source", "threading")
    code = f"import sys, {module}; print(sorted(set({unwanted!r}) & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout
