"""Everything in an output directory besides the weights: config.json, generation_config.json, the tokenizer
and the model card (README.md). Pure: bytes in, bytes out."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from reformer_tools import __version__
from reformer_tools.untrusted import printable

if TYPE_CHECKING:
    from reformer_tools.checkpoint import TraxCheckpoint
    from reformer_tools.resolve import ResolvedConfig


def _dump(payload: Mapping[str, Any]) -> bytes:
    # ASCII: paths and checkpoint text may hold lone surrogates, which UTF-8 cannot carry.
    return (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode("ascii")


_MARKUP: Final = re.compile(r"([\\`*_\[\]<>|&~])")


def _literal(text: str) -> str:
    """Text from a checkpoint, a file name or a path as Markdown that shows it as it is: one line, no markup,
    no HTML (a version stamp could otherwise add a heading or a comment that hides the rest of the card)."""
    return _MARKUP.sub(r"\\\1", printable(text, 300))


def _json_value(value: Any) -> str:
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def config_json(resolved: ResolvedConfig, dtype: str | None) -> bytes:
    """config.json: the spec, where its values came from, and the vocabulary (so ``verify`` can check it)."""
    config = resolved.config_dict()
    if dtype is not None:
        config["torch_dtype"] = dtype
    if resolved.vocabulary is not None:
        vocabulary = resolved.vocabulary.vocabulary
        config["reformer_tools"]["vocabulary"] = {
            "type": vocabulary.type,
            "reserved_ids": vocabulary.reserved_ids,
            "extra_ids": vocabulary.extra_ids,
            "file": None if vocabulary.source is None else vocabulary.source.name,
            "sha256": vocabulary.sha256,
            "source": resolved.vocabulary.source,
        }
    return _dump(config)


def generation_config_json(resolved: ResolvedConfig) -> bytes:
    """generation_config.json: the special ids generation needs; greedy, without the cache (see README)."""
    spec = resolved.spec.to_config_dict()
    payload: dict[str, Any] = {"_from_model_config": False, "use_cache": False}
    for key in ("pad_token_id", "eos_token_id", "bos_token_id"):
        if spec.get(key) is not None:
            payload[key] = spec[key]
    return _dump(payload)


def tokenizer_files(resolved: ResolvedConfig) -> dict[str, bytes]:
    if resolved.vocabulary is None:
        return {}
    from reformer_tools.tokenizer_files import tokenizer_files as files

    spec = resolved.spec
    return files(
        resolved.vocabulary.vocabulary, model_max_length=spec.max_position_embeddings, vocab_size=spec.vocab_size
    )


@dataclass(frozen=True)
class Verification:
    """Figures a card reports when the conversion was checked before it was written (``convert --verify``)."""

    tensors: int = 0  # tensors read back and found equal to their source arrays
    numerics: dict[str, Any] | None = None
    tokenizer: dict[str, Any] | None = None


def model_card(
    checkpoint: TraxCheckpoint,
    resolved: ResolvedConfig,
    *,
    dtype: str | None,
    verification: Verification | None = None,
) -> bytes:
    """README.md for the output directory: what it is, where it came from, what was assumed, how to use it."""
    spec = resolved.spec
    vocabulary = resolved.vocabulary
    tags = ["reformer", "trax", "text-generation", "reformer-tools"]
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags:",
        *(f"- {tag}" for tag in tags),
        "---",
        "",
        "# Reformer converted from Trax",
        "",
        f"A `trax.models.ReformerLM` checkpoint converted for `transformers.ReformerModelWithLMHead` by "
        f"reformer-tools {__version__}: {spec.num_layers} layers ({', '.join(spec.attn_layers)}), hidden size "
        f"{spec.hidden_size}, {spec.num_attention_heads} heads of {spec.attention_head_size}, feed-forward "
        f"{spec.feed_forward_size}, vocabulary {spec.vocab_size}, up to {spec.max_position_embeddings} positions.",
        "",
        "## Source",
        "",
        f"- Trax format: `{checkpoint.format.value}` ({_literal(checkpoint.description)})",
        f"- Trax releases that write this: {resolved.releases}",
    ]
    if checkpoint.step is not None:
        lines.append(f"- training step: {checkpoint.step}")
    lines += ["", "| file | sha256 |", "|---|---|"]
    lines += [f"| {_literal(name)} | `{digest}` |" for name, digest in sorted(checkpoint.digests().items())]
    lines += [
        "",
        "## Configuration",
        "",
        f"Taken from {_literal(resolved.description)}.",
    ]
    if resolved.warnings:
        lines += ["", "**Sources that disagree:**", ""]
        lines += [f"- {_literal(message)}" for message in resolved.warnings]
    if resolved.assumed:
        lines += [
            "",
            "**Assumed values.** These were not in the checkpoint, a config.gin, a config.json or a `--set` option: "
            "they are Trax's defaults for the releases above. If the model was trained with other values, it "
            "computes something else, and no check on the weights can tell.",
            "",
            "| setting | value | why |",
            "|---|---|---|",
            *(f"| `{key}` | `{_json_value(a.value)}` | {_literal(a.why)} |" for key, a in resolved.assumed.items()),
        ]
    else:
        lines += ["", "No value was assumed: every setting came from the checkpoint or a configuration given."]
    lines += ["", "## Vocabulary", ""]
    if vocabulary is None:
        lines.append("No vocabulary was given, so this directory has no tokenizer: ids only.")
    else:
        from reformer_tools.tokenizer_files import known_divergences

        lines.append(f"{_literal(vocabulary.vocabulary.describe())}, from {_literal(vocabulary.source)}.")
        divergences = known_divergences(vocabulary.vocabulary)
        if divergences:
            lines += ["", "Where the tokenizer can differ from Trax's encoder:", ""]
            lines += [f"- {text}" for text in divergences]
    lines += ["", "## Use", "", "```python", "from transformers import ReformerModelWithLMHead"]
    if vocabulary is not None:
        lines += [
            "from transformers import AutoTokenizer",
            "",
            'tokenizer = AutoTokenizer.from_pretrained("PATH")',
            'model = ReformerModelWithLMHead.from_pretrained("PATH")',
            "# The tokenizer starts every text with id 0: Trax's ReformerLM shifts its input right, so its",
            "# first position always sees 0.",
            'inputs = tokenizer("Your text", return_tensors="pt")',
            "output = model.generate(**inputs, max_new_tokens=20, do_sample=False)",
            "print(tokenizer.decode(output[0], skip_special_tokens=True))",
        ]
    else:
        lines += [
            "import torch",
            "",
            'model = ReformerModelWithLMHead.from_pretrained("PATH")',
            "# Trax's ReformerLM shifts its input right: feed [0] + ids to get Trax's prediction after ids.",
            "ids = torch.tensor([[0, 5, 6, 7]])",
            "log_probs = model(ids).logits.log_softmax(-1)",
        ]
    lines.append("```")
    if dtype in ("float16", "bfloat16"):
        lines += [
            "",
            f"The weights are stored as {dtype}. Hugging Face keeps the axial position weights in float32, so load "
            f"with `ReformerModelWithLMHead.from_pretrained(PATH, dtype=torch.float32)` to run on a CPU (or "
            f"`.to(torch.{dtype})` on a device that computes in {dtype}).",
        ]
    if verification is not None:
        lines += [
            "",
            "## Verification",
            "",
            "Checked by `reformer-tools convert --verify` before these files were put in place, against a second "
            "read of the checkpoint:",
            "",
            f"- Weights: all {verification.tensors} tensors, read back from the written files, equal the "
            "checkpoint's arrays after their transform.",
        ]
        if verification.numerics is not None:
            n = verification.numerics
            what = "log-probabilities" if n["complete"] else f"hidden states entering layer {n['layers_compared']}"
            lines.append(
                f"- Outputs: on {n['batch_size']} x {n['sequence_length']} tokens, max abs difference of "
                f"{what} from an independent NumPy implementation of Trax's ReformerLM: "
                f"{n['max_abs_diff']:.3g} (tolerance {n['atol']:g}). Proved: {n['proved']}."
            )
        if verification.tokenizer is not None:
            t = verification.tokenizer
            line = (
                f"- Tokenizer: {t['ids_equal']} of {t['texts']} texts give Trax's ids, {t['decodings_equal']} decode "
                "as Trax decodes"
            )
            if t.get("documented"):
                line += f"; {t['documented']} differ exactly as a documented divergence predicts"
            if t.get("not_compared"):
                line += f"; {t['not_compared']} not compared (a documented divergence with no exact prediction)"
            lines.append(line + ".")
    lines += ["", f"Converted with reformer-tools {__version__}.", ""]
    return "\n".join(lines).encode("utf-8", errors="backslashreplace")
