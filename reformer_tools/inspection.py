"""What ``inspect`` reports: every array with its Hugging Face keys, totals, and what else the checkpoint holds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from reformer_tools.checkpoint import Leaf, TraxCheckpoint
from reformer_tools.mapper import Alignment, align, split_leaves

if TYPE_CHECKING:
    from reformer_tools.resolve import ResolvedConfig


@dataclass(frozen=True)
class Inspection:
    """A checkpoint's arrays, and the Hugging Face keys they become under its config (if one is known)."""

    checkpoint: TraxCheckpoint
    resolved: ResolvedConfig | None
    alignment: Alignment | None

    @property
    def leaves(self) -> list[Leaf]:
        return self.checkpoint.leaves

    @property
    def hf_keys(self) -> dict[int, tuple[str, ...]]:
        return {} if self.alignment is None else self.alignment.hf_keys_for()

    @property
    def ok(self) -> bool:
        """False only when the config disagrees with the arrays (exit 1)."""
        return self.alignment is None or self.alignment.ok

    @property
    def total_parameters(self) -> int:
        return sum(leaf.size for leaf in self.leaves)

    @property
    def total_bytes(self) -> int:
        return sum(leaf.nbytes for leaf in self.leaves)

    def groups(self) -> list[tuple[str, list[Leaf]]]:
        """The arrays by model part (embeddings, layer i, head) when the layout is recognized."""
        layout = split_leaves(self.leaves)
        if layout is None:
            return [("weights", list(self.leaves))]
        groups = [("embeddings", list(layout.front))]
        for i, layer in enumerate(layout.layers):
            groups.append((f"layer {i}", [*layer.norm, *layer.attention, *layer.attention_biases, *layer.feed_forward]))
        groups.append(("head", list(layout.head)))
        return groups

    def to_json(self) -> dict[str, Any]:
        checkpoint = self.checkpoint
        keys = self.hf_keys
        return {
            "ok": self.ok,
            "file": str(checkpoint.path),
            "format": checkpoint.format.value,
            "description": checkpoint.description,
            "step": checkpoint.step,
            "version_timestamp": checkpoint.version_timestamp,
            **config_json(self.resolved),
            "total_parameters": self.total_parameters,
            "total_bytes": self.total_bytes,
            "arrays": [
                {
                    "path": leaf.path,
                    "shape": list(leaf.shape),
                    "dtype": leaf.dtype,
                    "bytes": leaf.nbytes,
                    "hf_key": keys[leaf.index][0] if leaf.index in keys else None,
                    "hf_keys": list(keys.get(leaf.index, ())),
                }
                for leaf in self.leaves
            ],
            "problems": None if self.alignment is None else self.alignment.to_json(),
            "metadata": {item.key: item.summary for item in checkpoint.metadata},
            "weight_files": [str(p) for p in checkpoint.weight_files],
            "sha256": checkpoint.digests(),
        }


def inspect_checkpoint(checkpoint: TraxCheckpoint, resolved: ResolvedConfig | None) -> Inspection:
    alignment = None if resolved is None else align(resolved.spec, checkpoint.leaves)
    return Inspection(checkpoint, resolved, alignment)


def config_json(resolved: ResolvedConfig | None) -> dict[str, Any]:
    """The fields every command's JSON carries about its config: where it came from, what was assumed."""
    if resolved is None:
        return {"config_source": None, "trax_releases": None, "assumed": {}, "unresolved": {}, "warnings": []}
    return {
        "config_source": resolved.description,
        "trax_releases": str(resolved.releases),
        "assumed": resolved.provenance()["assumed"],
        "unresolved": dict(resolved.unresolved),
        "warnings": list(resolved.warnings),
    }


def collapse_paths(leaves: Sequence[Leaf], depth: int) -> list[tuple[str, list[Leaf]]]:
    """Leaves grouped by the first ``depth`` indices of their path in a nested tree."""
    import re

    groups: dict[str, list[Leaf]] = {}
    order: list[str] = []
    for leaf in leaves:
        parts = re.findall(r"\[[^\]]*\]", leaf.path)
        root = leaf.path[: len(leaf.path) - len("".join(parts))]
        prefix = root + "".join(parts[:depth])
        if prefix not in groups:
            groups[prefix] = []
            order.append(prefix)
        groups[prefix].append(leaf)
    return [(prefix, groups[prefix]) for prefix in order]
