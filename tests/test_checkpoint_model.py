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


def test_the_loader_keeps_the_names_its_importers_use() -> None:
    # Transitional: the homes are reformer_tools.checkpoint, .dtypes, .byte_source, .npy_records and .global_scan.
    from reformer_tools import checkpoint, dtypes, loader

    assert loader.Leaf is checkpoint.Leaf
    assert loader.TraxCheckpoint is checkpoint.TraxCheckpoint
    assert loader.CheckpointFormat is checkpoint.CheckpointFormat
    assert loader.MetadataItem is checkpoint.MetadataItem
    assert loader.as_float32 is dtypes.as_float32
    for name in ("load_checkpoint", "scan_globals", "is_gzip", "side_file_candidates"):
        assert callable(getattr(loader, name))
