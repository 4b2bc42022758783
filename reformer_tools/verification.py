"""Verification reports: the checkpoint against its config (and, later, outputs and numerics)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reformer_tools.loader import TraxCheckpoint
from reformer_tools.mapper import Alignment, align
from reformer_tools.spec import ReformerSpec


@dataclass
class VerifyReport:
    checkpoint: str
    config_source: str
    alignment: Alignment

    @property
    def ok(self) -> bool:
        return self.alignment.ok

    @property
    def tensor_count(self) -> int:
        return sum(len(a.slot.hf_keys) for a in self.alignment.assignments)

    def to_json(self) -> dict[str, Any]:
        alignment = self.alignment
        return {
            "ok": self.ok,
            "checkpoint": self.checkpoint,
            "config_source": self.config_source,
            "mismatches": [
                {"hf_key": m.hf_key, "trax_path": m.trax_path, "expected": list(m.expected), "actual": list(m.actual)}
                for m in alignment.mismatches
            ],
            "missing": [slot.hf_key for slot in alignment.missing],
            "unused": [leaf.path for leaf in alignment.unused],
            "unsupported": list(alignment.problems),
            "notes": list(alignment.notes),
        }


def verify_checkpoint(checkpoint: TraxCheckpoint, spec: ReformerSpec, config_source: str) -> VerifyReport:
    """Every array's shape against what the config implies, every disagreement at once."""
    return VerifyReport(str(checkpoint.path), config_source, align(spec, checkpoint.leaves))
