"""Train the zen-reformer example with real Trax 1.4.1 and record what Trax itself outputs.

    /work/traxvenv/bin/python examples/zen-reformer/make_example.py

A tiny ``trax.models.ReformerLM`` (byte-level ``char`` vocabulary with 2 reserved ids, local
attention in chunks of 64 with 1 chunk before, ReLU feed-forward, axial positions) is trained by
``trax.supervised.trainer_lib.train`` on the Zen of Python: the text ``import this`` prints, decoded
here from the ``this`` module's ROT13 source (public domain, part of every Python).

Everything about the run is bound through gin (``GIN`` below), so the operative ``config.gin`` that
Trax writes beside the checkpoint records the model's settings and the data pipeline's
``trax.data.Tokenize(vocab_type='char', n_reserved_ids=2)``. Training runs in a subprocess, so that
config holds only what training called. Its outputs are kept as Trax wrote them: ``model.pkl.gz``
(``Trainer.save_state``) and ``config.gin`` (``Trainer.save_gin``). Trax's gzip writer stamps the
wall clock into the gzip header; the run pins ``gzip``'s clock to 0 so a rebuild is byte-identical.

Afterwards this script parses that ``config.gin``, builds ``ReformerLM(mode='eval')`` from it, loads
the checkpoint, and records Trax's greedy continuations of a few prompts and its output on one
256-token input (``trax_outputs.json``, ``input_ids.npy``, ``logits.npy``).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.metadata
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import gin
import jax
import numpy as np
import trax
from trax import fastmath, shapes
from trax.supervised import trainer_lib

HERE = Path(__file__).resolve().parent
SEQ_LEN = 256  # training windows, and the length every eval-mode call uses (4 chunks of 64)
STEPS = 3000
PROMPTS = ("Beautiful is", "Errors should", "Namespaces are")
N_NEW = 40  # greedy tokens per prompt

#: The whole run, bound through gin. ZenOfPython is this script's data source (below).
GIN = f"""
train.model = @trax.models.ReformerLM
train.inputs = @trax.data.make_inputs
train.use_loop = False
train.steps = {STEPS}
train.eval_frequency = 500
train.eval_steps = 1
train.random_seed = 20240601
train.save_graphs = False
train.optimizer = @trax.optimizers.Adafactor

multifactor.constant = 1.0
multifactor.factors = 'constant * linear_warmup * rsqrt_decay'
multifactor.warmup_steps = 200

make_inputs.train_stream = [
    @ZenOfPython(),
    @trax.data.Tokenize(),
    @trax.data.ConcatenateToLMInput(),
    @trax.data.Batch(),
    @trax.data.AddLossWeights(),
]
ZenOfPython.length = {SEQ_LEN}
ZenOfPython.line_start_prob = 0.5
ZenOfPython.seed = 1
Tokenize.vocab_type = 'char'
Tokenize.n_reserved_ids = 2
Batch.batch_size = 8

ReformerLM.vocab_size = 258
ReformerLM.d_model = 48
ReformerLM.d_ff = 96
ReformerLM.d_attention_key = 24
ReformerLM.d_attention_value = 24
ReformerLM.n_heads = 2
ReformerLM.n_layers = 2
ReformerLM.dropout = 0.05
ReformerLM.max_len = {SEQ_LEN}
ReformerLM.ff_activation = @trax.layers.Relu
ReformerLM.attention_type = @trax.layers.SelfAttention
ReformerLM.pos_type = 'axial'
ReformerLM.pos_axial_shape = (16, 16)
ReformerLM.pos_d_axial_embs = (24, 24)
SelfAttention.chunk_len = 64
SelfAttention.n_chunks_before = 1
"""


# ------------------------------------------------------------------ data


def zen_of_python() -> str:
    """The text ``import this`` prints, decoded from the module's ROT13 source."""
    with contextlib.redirect_stdout(io.StringIO()):
        import this  # prints the Zen on import
    return "".join(this.d.get(c, c) for c in this.s)


@gin.configurable(module="zen_reformer")
def ZenOfPython(length=256, line_start_prob=0.5, seed=1):  # Trax's CamelCase for stream functions
    """A trax.data stream function: endless ``length``-character windows of the Zen, read cyclically.

    A window starts at the beginning of a line with probability ``line_start_prob``, else at any
    character. ``seed`` fixes the sequence of windows.
    """
    text = zen_of_python() + "\n\n"
    assert text.isascii()  # one byte, so one id, per character
    line_starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n" and i + 1 < len(text)]
    cycled = text * (length // len(text) + 2)

    def stream(generator=None):
        del generator
        rng = np.random.RandomState(seed)
        while True:
            if rng.rand() < line_start_prob:
                start = line_starts[rng.randint(len(line_starts))]
            else:
                start = rng.randint(len(text))
            yield cycled[start : start + length]

    return stream


# ------------------------------------------------------------------ determinism


class _FixedClock(types.SimpleNamespace):
    """Stands in for the ``time`` module inside ``gzip`` only: the header MTIME becomes 0."""

    def time(self) -> float:
        return 0.0


@contextlib.contextmanager
def pinned_gzip_clock():
    saved = gzip.time
    gzip.time = _FixedClock()
    try:
        yield
    finally:
        gzip.time = saved


# ------------------------------------------------------------------ training (in a subprocess)


def _train(out_dir: Path) -> None:
    gin.parse_config(GIN)
    with tempfile.TemporaryDirectory() as tmp, pinned_gzip_clock():
        start = time.time()
        state = trainer_lib.train(output_dir=tmp)
        seconds = time.time() - start
        for name in ("model.pkl.gz", "config.gin"):
            shutil.copyfile(Path(tmp) / name, out_dir / name)
    history = state.history
    summary = {
        "steps": int(state.step),
        "seconds": round(seconds, 1),
        "eval": {m: [float(v) for _, v in history.get("eval", "metrics/" + m)][-1:] for m in ("loss", "accuracy")},
    }
    (out_dir / "_train_summary.json").write_text(json.dumps(summary))


# ------------------------------------------------------------------ Trax's own outputs


def ids_of(text: str) -> list[int]:
    """Trax's ids for ``text`` through the same Tokenize call the pipeline made."""
    tokenize = trax.data.Tokenize(vocab_type="char", n_reserved_ids=2)
    return [int(i) for i in next(tokenize(iter([text])))]


def text_of(ids) -> str:
    return trax.data.detokenize(np.asarray(ids), vocab_type="char", n_reserved_ids=2)


def eval_model_from_gin(config_gin: Path, checkpoint: Path):
    """ReformerLM(mode='eval') exactly as config.gin says, with the checkpoint's weights."""
    gin.clear_config()
    gin.parse_config_file(str(config_gin))
    model = trax.models.ReformerLM(mode="eval")
    model.init_from_file(str(checkpoint), weights_only=True, input_signature=shapes.ShapeDtype((1, SEQ_LEN), np.int32))
    return model


def run(model, ids: np.ndarray) -> np.ndarray:
    return np.asarray(model(ids, rng=fastmath.random.get_prng(0)), dtype=np.float32)


def greedy(model, prompt: str, n_new: int) -> list[int]:
    """Argmax each next token, feeding the whole prefix each step (zero-padded to SEQ_LEN: attention is
    causal, so what follows the prefix does not matter). Trax's ReformerLM starts with ShiftRight, so
    output position t predicts token t from tokens 0..t-1."""
    ids = ids_of(prompt)
    for _ in range(n_new):
        x = np.zeros((1, SEQ_LEN), np.int32)
        x[0, : len(ids)] = ids
        ids.append(int(np.argmax(run(model, x)[0, len(ids)])))
    return ids


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def dumps(obj) -> str:
    """Indented JSON with each list of ids on one line."""
    text = json.dumps(obj, indent=2)
    return re.sub(r"\[([\d,\s]+)\]", lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)


def say(line: str) -> None:
    sys.stdout.write(line + "\n")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--train":
        _train(Path(sys.argv[2]))
        return
    for stale in ("model.pkl.gz", "config.gin", "trax_outputs.json", "input_ids.npy", "logits.npy"):
        (HERE / stale).unlink(missing_ok=True)
    subprocess.run([sys.executable, __file__, "--train", str(HERE)], check=True)
    summary = json.loads((HERE / "_train_summary.json").read_text())
    (HERE / "_train_summary.json").unlink()

    model = eval_model_from_gin(HERE / "config.gin", HERE / "model.pkl.gz")

    continuations = []
    for prompt in PROMPTS:
        ids = greedy(model, prompt, N_NEW)
        n = len(ids_of(prompt))
        continuations.append(
            {"prompt": prompt, "prompt_ids": ids[:n], "new_ids": ids[n:], "continuation": text_of(ids[n:])}
        )
        say(f"{prompt!r} -> {text_of(ids[n:])!r}")

    text = zen_of_python()
    input_ids = np.asarray([ids_of(text)[:SEQ_LEN]], np.int32)
    logits = run(model, input_ids)
    np.save(HERE / "input_ids.npy", input_ids)
    np.save(HERE / "logits.npy", logits)
    logp = log_softmax(logits)
    nll = -float(np.take_along_axis(logp, input_ids[..., None].astype(np.int64), -1).mean())

    outputs = {
        "trax": {
            "trax": importlib.metadata.version("trax"),
            "jax": jax.__version__,
            "gin-config": importlib.metadata.version("gin-config"),
            "python": platform.python_version(),
        },
        "model": "ReformerLM(mode='eval') built by gin.parse_config_file('config.gin'), weights from "
        "model.pkl.gz (Layer.init_from_file(weights_only=True), input signature (1, 256) int32)",
        "vocabulary": "trax.data.Tokenize(vocab_type='char', n_reserved_ids=2): id = UTF-8 byte + 2; 0 pad, 1 EOS",
        "training": {
            "steps": summary["steps"],
            "batch": "8 windows of 256 characters of the Zen of Python (see ZenOfPython in make_example.py)",
            "last_eval_loss": summary["eval"]["loss"][-1],
            "last_eval_accuracy": summary["eval"]["accuracy"][-1],
        },
        "greedy": {
            "method": "eval mode; each step the whole prefix, zero-padded to 256, and the argmax at position "
            "len(prefix) (Trax's ReformerLM begins with ShiftRight: position t predicts token t)",
            "max_new_tokens": N_NEW,
            "continuations": continuations,
        },
        "logits": {
            "input_ids": "input_ids.npy: int32 (1, 256), the first 256 bytes of the Zen of Python as Trax ids",
            "logits": "logits.npy: float32 (1, 256, 258), Trax's raw eval-mode output (ReformerLM ends with "
            "Dense; log_softmax gives log-probabilities); position t predicts input_ids[0, t] from "
            "input_ids[0, :t]",
            "hf_input": "Hugging Face's Reformer has no ShiftRight: feed [0] + input_ids[0, :-1] to compare",
            "mean_nll_of_input": round(nll, 6),
        },
        "files": {name: sha256(HERE / name) for name in ("model.pkl.gz", "config.gin", "input_ids.npy", "logits.npy")},
    }
    (HERE / "trax_outputs.json").write_text(dumps(outputs) + "\n")
    say(f"trained {summary['steps']} steps in {summary['seconds']} s; eval {summary['eval']}; nll {nll:.4f}")


if __name__ == "__main__":
    main()
