"""Where a command's model config comes from: --config, or the shapes plus config.gin."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from reformer_tools.errors import ReformerToolsError
from reformer_tools.infer import infer_config
from reformer_tools.loader import TraxCheckpoint
from reformer_tools.spec import ReformerSpec, load_spec


@dataclass(frozen=True)
class ResolvedSpec:
    spec: ReformerSpec
    source: str  # "config.json" path, or a description of the inference
    messages: list[str] = field(default_factory=list)  # what was inferred, defaulted, overridden
    gin: Any = None  # the GinSettings read, if any


def find_gin(checkpoint: TraxCheckpoint, gin_path: Path | None) -> Path | None:
    """--gin, else the config.gin Trax writes next to its checkpoints."""
    if gin_path is not None:
        return gin_path
    candidate = checkpoint.path.parent / "config.gin"
    return candidate if candidate.is_file() else None


def resolve_spec(
    checkpoint: TraxCheckpoint, config_path: Path | None, gin_path: Path | None, *, required: bool
) -> ResolvedSpec | None:
    """The spec to use. Without --config, infer it; None if that fails and it is optional."""
    if config_path is not None:
        return ResolvedSpec(load_spec(config_path), str(config_path))
    gin_file = find_gin(checkpoint, gin_path)
    gin = None
    overrides: dict[str, Any] = {}
    if gin_file is not None:
        from reformer_tools.gin_config import read_gin

        gin = read_gin(gin_file)
        overrides = dict(gin.overrides)
    try:
        inferred = infer_config(
            checkpoint.leaves, overrides, kinds_confirmed=gin is not None and gin.attention_kinds is not None
        )
    except ReformerToolsError:
        if required:
            raise
        return None
    spec = inferred.spec
    messages = [f"config inferred from the weight shapes: {', '.join(sorted(inferred.inferred))}"]
    if gin is not None:
        messages.append(f"from {gin_file}: {', '.join(sorted(overrides)) or 'nothing applicable'}")
        messages.extend(gin.notes)
        for key, value in sorted(inferred.inferred.items()):
            if key in overrides and overrides[key] != value:
                messages.append(
                    f"{gin_file} says {key}={overrides[key]!r}; the weights say {value!r}; using the weights"
                )
        if gin.attention_kinds is not None:
            from reformer_tools.gin_config import attention_disagreements

            messages.extend(attention_disagreements(gin, inferred.spec.attn_layers))
            spec = _with_shared_qk_from_gin(spec, gin.attention_kinds)
    if inferred.defaulted:
        messages.append(
            "defaulted (not visible in the weights"
            + ("" if gin is None else " or config.gin")
            + "): "
            + ", ".join(f"{k}={v!r}" for k, v in sorted(inferred.defaulted.items()))
        )
    messages.extend(inferred.caveats)
    source = "the config inferred from the weight shapes" + (f" and {gin_file}" if gin_file else "")
    return ResolvedSpec(spec, source, messages, gin)


def _with_shared_qk_from_gin(spec: ReformerSpec, gin_kinds: tuple[str, ...]) -> ReformerSpec:
    """Three attention arrays are LSH or shared-QK local attention; config.gin tells which.

    Where it says shared-QK local, the layer is marked local, so the mapper names
    the layout Hugging Face cannot represent instead of converting it as LSH.
    """
    if len(gin_kinds) != spec.num_layers:
        return spec
    kinds = tuple(
        "local" if said == "local-shared-qk" and found == "lsh" else found
        for said, found in zip(gin_kinds, spec.attn_layers, strict=True)
    )
    return replace(spec, attn_layers=kinds)
