"""Benchmark ``reformer-tools convert`` against its floors and a naive, Hugging Face-style conversion.

Generates Trax-shaped ReformerLM checkpoints filled with random float32 weights
(no trax needed), then runs each command in its own subprocess under
``/usr/bin/time -v`` and records its wall-clock time and peak resident memory.
Each figure is the median of ``--repeat`` runs. Before every measured
run the checkpoint files are read once (``cat > /dev/null``), so every tool starts
from the same warm page cache.

Every convert figure stands next to its floor, measured in the same run and alternated with it
(the machine's load hits both alike): ``cp`` of the checkpoint's files for uncompressed formats,
ISA-L inflating the same files into nothing (``isal.igzip``, a small subprocess) for gzip ones.
The issue #12 targets are evaluated as pass/FAIL rows: gzip wall <= 1.3x inflate; peak RSS <= 0.35x
the checkpoint for every format; plain pickle <= 0.1x naive; ``--help`` <= 0.3 s; ``inspect`` faster
than a bare ``pickle.load``; a 4x checkpoint <= 4.2x the time in no more memory (<= 1.1x).

Options (``--help`` for the full text):
    --scale small|full       sizes small,smallx4 (a few MB) or enwik8,enwik8x4 (about 3 GB)
    --sizes A,B              sizes by name: small, smallx4, enwik8, enwik8x4 (default enwik8)
    --formats [SIZE=]F,...   formats pickle, gzip, npy, npy0, for every size or one (repeatable)
    --repeat N               runs per command, the median is reported (default 3)
    --bin                    also measure ``convert -o OUT.bin`` (information only)
    --check                  ``reformer-tools verify`` the first output of each tool
    --workdir DIR, --keep    where to generate the files; keep them afterwards
    --seed N                 random seed of the weights (default 0)
    --json-out FILE          every sample, median, floor, machine fact, provenance and target as JSON
    --markdown               also print the tables as Markdown, ready to paste into the README

Provenance: the sha256 of every generated checkpoint file is recorded (JSON and Markdown), and the
measured conversions write the checkpoint's sha256 into their output as always (nothing is switched off).

Examples:

    python benchmarks/bench_convert.py --scale small               # a few MB, seconds
    python benchmarks/bench_convert.py --scale full --json-out bench.json --markdown
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.metadata
import importlib.util
import json
import math
import os
import pickle
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from reformer_tools.mapper import expected_slots
from reformer_tools.spec import ReformerSpec, spec_from_dict

Array = npt.NDArray[np.float32]
HERE: Final = Path(__file__).resolve().parent
NAIVE_SCRIPT: Final = HERE / "naive_convert.py"

# ------------------------------------------------------------------ model sizes

# enwik8's layer pattern (google/reformer-enwik8): two local layers, one LSH, one local.
PATTERN: Final = ("local", "local", "lsh", "local")


@dataclass(frozen=True)
class ModelSize:
    """A ReformerLM shape: ``repeats`` times the enwik8 layer pattern."""

    name: str
    repeats: int
    hidden: int
    d_ff: int
    heads: int
    d_head: int
    axial_shape: tuple[int, int]
    axial_dims: tuple[int, int]
    default_formats: tuple[str, ...]
    base: str | None = None  # the size this one is 4x of, for the scaling check
    vocab: int = 258  # bytes + 2 special tokens, as enwik8

    def config(self) -> dict[str, Any]:
        """The ``config.json`` both tools convert with (ReformerConfig's schema)."""
        return {
            "architectures": ["ReformerModelWithLMHead"],
            "model_type": "reformer",
            "attn_layers": list(PATTERN * self.repeats),
            "hidden_size": self.hidden,
            "feed_forward_size": self.d_ff,
            "num_attention_heads": self.heads,
            "attention_head_size": self.d_head,
            "vocab_size": self.vocab,
            "axial_pos_embds": True,
            "axial_pos_shape": list(self.axial_shape),
            "axial_pos_embds_dim": list(self.axial_dims),
            "max_position_embeddings": math.prod(self.axial_shape),
            "hidden_act": "relu",
            "is_decoder": True,
            "layer_norm_eps": 1e-6,  # trax's LayerNorm epsilon
            "local_attn_chunk_length": 128,
            "lsh_attn_chunk_length": 256,
            "num_hashes": 4,
            # Trax changed this default in 1.3.5 (256 -> 2 * length / chunk): the gzip and npy formats'
            # releases straddle it, so the config must say (it does not change any weight's shape).
            "num_buckets": 256,
            "tie_word_embeddings": False,
        }

    def spec(self) -> ReformerSpec:
        return spec_from_dict(self.config())

    def parameters(self) -> int:
        return sum(math.prod(slot.source_shape) for slot in expected_slots(self.spec()).slots)


def _small(name: str, repeats: int, formats: tuple[str, ...], base: str | None = None) -> ModelSize:
    # A few MB: the same code paths as enwik8 in seconds, for trying the benchmark out.
    return ModelSize(name, repeats, 128, 512, 4, 32, (32, 64), (32, 96), formats, base)


def _enwik8(name: str, repeats: int, formats: tuple[str, ...], base: str | None = None) -> ModelSize:
    # google/reformer-enwik8's widths: 12 layers are ~149M parameters, ~597 MB in float32.
    return ModelSize(name, repeats, 1024, 4096, 8, 128, (128, 512), (256, 768), formats, base)


# gzip level 2 runs at ~30 MB/s: the 4x sizes default to the formats that are quick to generate.
_ALL_FORMATS: Final = ("pickle", "gzip", "npy", "npy0")
_QUICK_FORMATS: Final = ("pickle", "npy0")
SIZES: Final = {
    size.name: size
    for size in (
        _small("small", 1, _ALL_FORMATS),
        _small("smallx4", 4, _QUICK_FORMATS, base="small"),
        _enwik8("enwik8", 3, _ALL_FORMATS),
        _enwik8("enwik8x4", 12, _QUICK_FORMATS, base="enwik8"),
    )
}
SCALES: Final = {"small": ("small", "smallx4"), "full": ("enwik8", "enwik8x4")}

# --------------------------------------------------------------------- formats


@dataclass(frozen=True)
class Format:
    name: str
    description: str
    side_file: bool  # weights in a .npy stream: a converter need hold only one array at a time
    compressed: bool  # gzip files: the floor is inflating them; else copying them

    @property
    def floor(self) -> str:
        return "inflate" if self.compressed else "cp"


FORMATS: Final = {
    f.name: f
    for f in (
        Format("pickle", "model.pkl: plain pickle, nested weights (Trainer, trax 1.2.x, Jan-13-2020)", False, False),
        Format("gzip", "model.pkl.gz: gzip level 2 pickle, flat_weights list (Trainer, Jun-18-2020)", False, True),
        Format("npy", "model.pkl.gz + model.weights.npy.gz, gzip level 2 (training.Loop, Mar-10-2021)", True, True),
        Format("npy0", "as npy, gzip level 0 (training.Loop, memory-efficient trainer)", True, True),
    )
}


@dataclass(frozen=True)
class Checkpoint:
    """A generated checkpoint: the file tools are given, and every file that belongs to it."""

    size: ModelSize
    format: Format
    path: Path
    files: tuple[Path, ...]
    file_bytes: tuple[int, ...]  # recorded at generation: the files are deleted before the report
    config: Path
    generate_seconds: float
    file_sha256: tuple[str, ...] = ()  # provenance: what exactly was measured

    @property
    def nbytes(self) -> int:
        return sum(self.file_bytes)


def random_leaves(spec: ReformerSpec, seed: int) -> list[Array]:
    """Every weight array in Trax's flat order; random normals so gzip cannot shrink them."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(slot.source_shape, dtype=np.float32) for slot in expected_slots(spec).slots]


def nested_weights(spec: ReformerSpec, leaves: Sequence[Array]) -> list[Any]:
    """The flat leaves as trax's mid-2020 ReformerLM weight tree (4n blocks, head at [7] and [9]).

    The nesting of tests/fixtures/trax/hf2020_local_axial/weight_tree.txt, the one
    Hugging Face's script indexes.
    """
    remaining = iter(leaves)

    def take(n: int) -> tuple[Array, ...]:
        return tuple(next(remaining) for _ in range(n))

    embedding = next(remaining)
    axial = take(len(spec.axial_pos_shape))
    blocks: list[Any] = []
    for kind in spec.attn_layers:
        norm = take(2)
        attention = take(3 if kind == "lsh" else 4)
        ff_norm, dense_1, dense_2 = take(2), take(2), take(2)
        feed_forward = [ff_norm, dense_1, (), (), dense_2, ()]
        blocks += [([norm], attention), (), [[(), ([], [], feed_forward), ()], ((), [])], ()]
    final_norm, output = take(2), take(2)
    if next(remaining, None) is not None:
        raise AssertionError("leaves left over: the tree does not match expected_slots")
    return [(), embedding, (), axial, (), blocks, (), final_norm, (), output, ()]


# Metadata is kept to plain Python types: trax's History and ShapeDtype objects would
# make the naive baseline's pickle.load need trax installed. Optimizer slots are left
# empty so the checkpoint's size is the weights' size.
def _write_trainer_pickle(directory: Path, spec: ReformerSpec, leaves: list[Array], level: int) -> list[Path]:
    path = directory / "model.pkl"
    checkpoint = {
        "step": 100_000,
        "weights": nested_weights(spec, leaves),
        "loss_weights": (),
        "slots": (),
        "opt_params": {"learning_rate": 0.001},
        "state": (),
        "loss_state": (),
        "version_timestamp": "Jan-13-2020",
    }
    with open(path, "wb") as file:
        pickle.dump(checkpoint, file, protocol=3)  # Python 3.6/3.7's default, which trax 1.2.x ran on
    return [path]


def _write_flat_gzip(directory: Path, spec: ReformerSpec, leaves: list[Array], level: int) -> list[Path]:
    path = directory / "model.pkl.gz"
    checkpoint = {
        "step": 100_000,
        "flat_weights": leaves,
        "slots": (),
        "opt_params": {"learning_rate": 0.001},
        "flat_state": [],
        "version_timestamp": "Jun-18-2020",
    }
    with open(path, "wb") as file, gzip.GzipFile(fileobj=file, mode="wb", compresslevel=level) as stream:
        pickle.dump(checkpoint, stream, protocol=4)
    return [path]


def _write_side_file(directory: Path, spec: ReformerSpec, leaves: list[Array], level: int) -> list[Path]:
    path, weights = directory / "model.pkl.gz", directory / "model.weights.npy.gz"
    # training.Loop stores the compresslevel where the weights used to be "for compatibility".
    checkpoint = {
        "step": 100_000,
        "flat_weights": level,
        "flat_state": [],
        "flat_eval_state": [],
        "history": {"_values": {}},
        "slots_per_task": level,
        "version_timestamp": "Mar-10-2021",
    }
    with open(path, "wb") as file, gzip.GzipFile(fileobj=file, mode="wb", compresslevel=2) as stream:
        pickle.dump(checkpoint, stream, protocol=pickle.HIGHEST_PROTOCOL)
    # trax's np_to_file: one gzip stream of back-to-back np.save records.
    with open(weights, "wb") as file, gzip.GzipFile(fileobj=file, mode="wb", compresslevel=level) as stream:
        for leaf in leaves:
            np.save(stream, leaf, allow_pickle=False)
    return [path, weights]


Writer = Callable[[Path, ReformerSpec, list[Array], int], list[Path]]
WRITERS: Final[dict[str, tuple[Writer, int]]] = {
    "pickle": (_write_trainer_pickle, 0),
    "gzip": (_write_flat_gzip, 2),
    "npy": (_write_side_file, 2),
    "npy0": (_write_side_file, 0),
}


def generate(size: ModelSize, formats: Sequence[str], root: Path, seed: int) -> list[Checkpoint]:
    """Write ``size``'s checkpoints in every format: the same random weights in each."""
    spec = size.spec()
    size_dir = root / size.name
    size_dir.mkdir(parents=True, exist_ok=True)
    config = size_dir / "config.json"
    config.write_text(json.dumps(size.config(), indent=2) + "\n", encoding="utf-8")
    started = time.perf_counter()
    leaves = random_leaves(spec, seed)
    note(f"{size.name}: {size.parameters():,} parameters drawn in {time.perf_counter() - started:.1f} s")
    checkpoints = []
    for name in formats:
        directory = size_dir / name
        directory.mkdir(exist_ok=True)
        writer, level = WRITERS[name]
        started = time.perf_counter()
        files = writer(directory, spec, leaves, level)
        seconds = time.perf_counter() - started
        file_bytes = tuple(f.stat().st_size for f in files)
        digests = tuple(sha256_file(f) for f in files)
        checkpoint = Checkpoint(size, FORMATS[name], files[0], tuple(files), file_bytes, config, seconds, digests)
        note(f"  generated {name}: {fmt_bytes(checkpoint.nbytes)} in {seconds:.1f} s (not measured)")
        checkpoints.append(checkpoint)
    del leaves
    os.sync()  # flush the new files now, not during the first measured run
    return checkpoints


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------ measuring


@dataclass(frozen=True)
class Sample:
    wall_s: float
    peak_rss: int  # bytes
    time_elapsed_s: float  # /usr/bin/time's "Elapsed (wall clock) time", 10 ms resolution


@dataclass
class Measurement:
    """Repeated runs of one command."""

    label: str
    command: list[str]
    samples: list[Sample] = field(default_factory=list)

    @property
    def wall_s(self) -> float:
        return statistics.median(s.wall_s for s in self.samples)

    @property
    def peak_rss(self) -> int:
        return int(statistics.median(s.peak_rss for s in self.samples))

    def to_json(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "median_wall_s": round(self.wall_s, 4),
            "median_peak_rss_bytes": self.peak_rss,
            "samples": [
                {"wall_s": round(s.wall_s, 4), "peak_rss_bytes": s.peak_rss, "time_elapsed_s": s.time_elapsed_s}
                for s in self.samples
            ],
        }


class BenchmarkError(Exception):
    pass


GNU_TIME: Final = Path("/usr/bin/time")


def parse_gnu_time(text: str) -> tuple[float, int]:
    """(elapsed seconds, peak RSS bytes) from ``/usr/bin/time -v`` output."""
    elapsed = rss = None
    for line in text.splitlines():
        key, _, value = line.strip().rpartition(": ")
        if key.startswith("Elapsed (wall clock) time"):
            elapsed = sum(float(part) * 60**i for i, part in enumerate(reversed(value.split(":"))))
        elif key == "Maximum resident set size (kbytes)":
            rss = int(value) * 1024
    if elapsed is None or rss is None:
        raise BenchmarkError(f"unexpected /usr/bin/time -v output:\n{text}")
    return elapsed, rss


class Runner:
    """Runs commands one at a time, each in a fresh process under ``/usr/bin/time -v``.

    Not ``wait4`` or ``getrusage(RUSAGE_CHILDREN)`` from here: Linux carries a process's
    peak RSS across fork and exec, so a child of this (large, after generating weights)
    Python process would report at least this process's own peak. GNU time is a
    small C program, so its child's peak RSS is the command's own.
    """

    def __init__(self, log_dir: Path) -> None:
        if not GNU_TIME.exists():
            raise SystemExit(f"{GNU_TIME} not found: install GNU time (Debian/Ubuntu: apt-get install time)")
        self.log_dir = log_dir
        self.runs = 0

    def run(self, measurement: Measurement, warm: Sequence[Path] = ()) -> Sample:
        for path in warm:
            # The same warm page cache for every tool: read the input once, untimed.
            subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)
        self.runs += 1
        log, stats = self.log_dir / f"{self.runs:04d}.log", self.log_dir / f"{self.runs:04d}.time"
        command = [str(GNU_TIME), "-v", "-o", str(stats), *measurement.command]
        with open(log, "wb") as output:
            started = time.perf_counter()
            completed = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, check=False)
            wall = time.perf_counter() - started
        if completed.returncode != 0:
            tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
            raise BenchmarkError(
                f"{measurement.label} failed with exit code {completed.returncode}: {' '.join(measurement.command)}\n"
                + "\n".join(f"    {line}" for line in tail)
            )
        elapsed, rss = parse_gnu_time(stats.read_text(encoding="utf-8"))
        # The wall time is taken here (GNU time rounds to 10 ms); its own figure is kept as a cross-check.
        sample = Sample(wall, rss, elapsed)
        measurement.samples.append(sample)
        return sample


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


# --------------------------------------------------------------------- suite


@dataclass
class FormatResult:
    checkpoint: Checkpoint
    naive: Measurement
    ours_dir: Measurement
    ours_bin: Measurement | None
    load_baseline: Measurement
    inspect: Measurement
    floor: Measurement  # cp (uncompressed) or ISA-L inflate (gzip) of the same files, same run


# Inflates gzip files with ISA-L into a reused buffer and drops the bytes: the least any reader of them does.
INFLATE_CODE: Final = """
import sys
from isal import igzip
buffer = bytearray(4 << 20)
for name in sys.argv[1:]:
    with igzip.open(name, "rb") as stream:
        while stream.readinto(buffer):
            pass
"""


@dataclass
class Tools:
    python: str
    reformer_tools: str

    def help(self) -> list[str]:
        return [self.reformer_tools, "--help"]

    def floor(self, checkpoint: Checkpoint, copy_dir: Path) -> list[str]:
        """The floor of converting ``checkpoint``: copying its files, or inflating them with ISA-L."""
        files = [str(f) for f in checkpoint.files]
        if checkpoint.format.compressed:
            return [self.python, "-c", INFLATE_CODE, *files]
        return ["cp", *files, str(copy_dir)]

    def convert(self, checkpoint: Checkpoint, output: Path) -> list[str]:
        return [
            self.reformer_tools,
            "convert",
            str(checkpoint.path),
            "--config",
            str(checkpoint.config),
            "-o",
            str(output),
            "-q",
        ]

    def naive(self, checkpoint: Checkpoint, output: Path) -> list[str]:
        return [
            self.python,
            str(NAIVE_SCRIPT),
            str(checkpoint.path),
            "--config",
            str(checkpoint.config),
            "-o",
            str(output),
        ]

    def inspect(self, checkpoint: Checkpoint) -> list[str]:
        return [self.reformer_tools, "inspect", str(checkpoint.path)]

    def verify(self, checkpoint: Checkpoint, output: Path) -> list[str]:
        return [self.reformer_tools, "verify", str(checkpoint.path), str(output), "--config", str(checkpoint.config)]

    def pickle_load(self, checkpoint: Checkpoint) -> list[str]:
        """The bare minimum a Python reader does: ``pickle.load`` the file (and its side file)."""
        # Trusted input: the benchmark generated this file. The side-file variant reads the
        # arrays as trax's np_from_file does.
        opener = "open" if checkpoint.format.name == "pickle" else "gzip.open"
        code = f"import gzip, pickle; pickle.load({opener}({str(checkpoint.path)!r}, 'rb'))"
        if checkpoint.format.side_file:
            code += (
                "\nimport numpy as np\n"
                f"f = gzip.open({str(checkpoint.files[1])!r}, 'rb')\n"
                "arrays = []\n"
                "while True:\n"
                "    try:\n"
                "        arrays.append(np.load(f, allow_pickle=False))\n"
                "    except EOFError:\n"
                "        break\n"
            )
        return [self.python, "-c", code]


def measure_format(
    runner: Runner, tools: Tools, checkpoint: Checkpoint, repeat: int, *, with_bin: bool, check: bool, out_dir: Path
) -> FormatResult:
    label = f"{checkpoint.size.name}/{checkpoint.format.name}"
    warm = checkpoint.files
    naive_out, dir_out, bin_out = out_dir / "naive.bin", out_dir / "hf-model", out_dir / "ours.bin"
    copy_dir = out_dir / "cp"
    floor = Measurement(f"{label} {checkpoint.format.floor}", tools.floor(checkpoint, copy_dir))
    naive = Measurement(f"{label} naive", tools.naive(checkpoint, naive_out))
    ours_dir = Measurement(f"{label} ours -o DIR", tools.convert(checkpoint, dir_out))
    ours_bin = Measurement(f"{label} ours -o .bin", tools.convert(checkpoint, bin_out)) if with_bin else None
    load_baseline = Measurement(f"{label} pickle.load", tools.pickle_load(checkpoint))
    inspect = Measurement(f"{label} inspect", tools.inspect(checkpoint))
    # Tools alternate within each repeat, so slow drift in the machine's load hits both alike.
    for i in range(repeat):
        copy_dir.mkdir(exist_ok=True)
        runs = ((naive, naive_out), (ours_dir, dir_out), (ours_bin, bin_out), (floor, copy_dir))
        for measurement, output in runs:
            if measurement is None:
                continue
            sample = runner.run(measurement, warm)
            note(
                f"  {measurement.label:<28} run {i + 1}/{repeat}: {sample.wall_s:7.2f} s  {fmt_bytes(sample.peak_rss)}"
            )
            if check and i == 0 and measurement is not floor:
                runner.run(Measurement(f"{label} verify {output.name}", tools.verify(checkpoint, output)))
                note(f"  {'':<28} reformer-tools verify passed on {output.name}")
            _remove(output)
            os.sync()  # write back this run's output before the next run starts
            copy_dir.mkdir(exist_ok=True)
    for i in range(repeat):
        for measurement in (load_baseline, inspect):
            sample = runner.run(measurement, warm)
            note(
                f"  {measurement.label:<28} run {i + 1}/{repeat}: {sample.wall_s:7.2f} s  {fmt_bytes(sample.peak_rss)}"
            )
    _remove(copy_dir)
    return FormatResult(checkpoint, naive, ours_dir, ours_bin, load_baseline, inspect, floor)


# -------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    name: str
    subject: str
    value: float
    shown: str
    passed: bool


# Issue #12's targets.
PLAIN_NAIVE_LIMIT: Final = 0.1  # uncompressed checkpoints: convert wall <= 0.1x the naive baseline
INFLATE_LIMIT: Final = 1.3  # gzip checkpoints: convert wall <= 1.3x inflating the same files with ISA-L
RSS_LIMIT: Final = 0.35  # every format: peak RSS <= 0.35x the checkpoint's bytes
HELP_LIMIT_S: Final = 0.3
INSPECT_LIMIT: Final = 1.0  # inspect must be faster than a bare pickle.load
SCALING_TIME_LIMIT: Final = 4.2  # a 4x checkpoint: at most 4.2x the time ...
SCALING_RSS_LIMIT: Final = 1.1  # ... in the same memory (10 % for allocator and page-table noise)


def subject_of(r: FormatResult) -> str:
    return f"{r.checkpoint.size.name}/{r.checkpoint.format.name}"


def evaluate(results: Sequence[FormatResult], help_run: Measurement) -> list[Target]:
    targets = []
    for r in results:
        subject = subject_of(r)
        if r.checkpoint.format.compressed:
            ratio = r.ours_dir.wall_s / r.floor.wall_s
            name = f"convert -o DIR wall <= {INFLATE_LIMIT}x ISA-L inflate of the file"
            targets.append(Target(name, subject, ratio, f"{ratio:.2f}x", ratio <= INFLATE_LIMIT))
        else:
            ratio = r.ours_dir.wall_s / r.naive.wall_s
            name = f"convert -o DIR wall <= {PLAIN_NAIVE_LIMIT}x naive"
            targets.append(Target(name, subject, ratio, f"{ratio:.3f}x", ratio <= PLAIN_NAIVE_LIMIT))
        rss = r.ours_dir.peak_rss / r.checkpoint.nbytes
        name = f"convert -o DIR peak RSS <= {RSS_LIMIT}x checkpoint"
        targets.append(Target(name, subject, rss, f"{rss:.2f}x", rss <= RSS_LIMIT))
    for r in results:
        ratio = r.inspect.wall_s / r.load_baseline.wall_s
        name = "inspect wall < a bare pickle.load"
        targets.append(Target(name, subject_of(r), ratio, f"{ratio:.2f}x", ratio < INSPECT_LIMIT))
    targets.append(
        Target(
            f"--help wall <= {HELP_LIMIT_S} s",
            "reformer-tools --help",
            help_run.wall_s,
            f"{help_run.wall_s:.3f} s",
            help_run.wall_s <= HELP_LIMIT_S,
        )
    )
    for pair in scaling_pairs(results):
        subject = f"{pair['large']}/{pair['format']} vs {pair['small']}"
        targets.append(
            Target(
                f"4x checkpoint: time <= {SCALING_TIME_LIMIT}x",
                subject,
                pair["time_ratio"],
                f"{pair['time_ratio']:.2f}x time for {pair['bytes_ratio']:.2f}x bytes",
                pair["time_ratio"] <= SCALING_TIME_LIMIT,
            )
        )
        targets.append(
            Target(
                f"4x checkpoint: same peak RSS (<= {SCALING_RSS_LIMIT}x)",
                subject,
                pair["rss_ratio"],
                f"{pair['rss_ratio']:.2f}x RSS",
                pair["rss_ratio"] <= SCALING_RSS_LIMIT,
            )
        )
    return targets


def scaling_pairs(results: Sequence[FormatResult]) -> list[dict[str, Any]]:
    by_key = {(r.checkpoint.size.name, r.checkpoint.format.name): r for r in results}
    pairs = []
    for (size_name, fmt), large in by_key.items():
        base = SIZES[size_name].base
        small = by_key.get((base, fmt)) if base else None
        if small is None:
            continue
        pairs.append(
            {
                "large": size_name,
                "small": base,
                "format": fmt,
                "time_ratio": large.ours_dir.wall_s / small.ours_dir.wall_s,
                "rss_ratio": large.ours_dir.peak_rss / small.ours_dir.peak_rss,
                "bytes_ratio": large.checkpoint.nbytes / small.checkpoint.nbytes,
                "naive_time_ratio": large.naive.wall_s / small.naive.wall_s,
                "floor_time_ratio": large.floor.wall_s / small.floor.wall_s,
            }
        )
    return pairs


# --------------------------------------------------------------------- output


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fmt_bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            value = n / scale
            return (
                f"{value:.2f} {unit}" if value < 10 else f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
            )
    return f"{n:.0f} B"


def machine_facts() -> dict[str, Any]:
    def version(package: str) -> str | None:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    def proc_field(path: str, key: str) -> str | None:
        try:
            for line in Path(path).read_text(encoding="utf-8").splitlines():
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return None

    mem_total = proc_field("/proc/meminfo", "MemTotal")
    mem_available = proc_field("/proc/meminfo", "MemAvailable")
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": proc_field("/proc/cpuinfo", "model name") or platform.processor() or None,
        "ram_bytes": int(mem_total.split()[0]) * 1024 if mem_total else None,
        "ram_available_bytes": int(mem_available.split()[0]) * 1024 if mem_available else None,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": version("numpy"),
        "torch": version("torch"),
        "transformers": version("transformers"),
        "reformer_tools": version("reformer-tools"),
        "isal": version("isal") if importlib.util.find_spec("isal") else None,
        # Set, every run compiles every module it imports again: start-up (--help) is slower than users see.
        "dont_write_bytecode": bool(os.environ.get("PYTHONDONTWRITEBYTECODE")),
    }


def print_machine(facts: dict[str, Any]) -> None:
    ram = fmt_bytes(facts["ram_bytes"]) if facts["ram_bytes"] else "?"
    available = fmt_bytes(facts["ram_available_bytes"]) if facts["ram_available_bytes"] else "?"
    print("machine")
    print(f"  cpu: {facts['cpu_count']} x {facts['cpu_model']}")
    print(f"  ram: {ram} ({available} available at start)")
    # Other processes skew the timings: a load average near the CPU count before the run is a warning sign.
    end = facts.get("load_average_end")
    print(f"  load average at start {facts['load_average']}" + (f", at end {end}" if end else ""))
    print(f"  {facts['platform']}")
    print(
        f"  python {facts['python']}, numpy {facts['numpy']}, torch {facts['torch']}, "
        f"transformers {facts['transformers']}, reformer-tools {facts['reformer_tools']}, "
        f"isal {facts['isal'] or 'not installed'}"
    )
    if facts.get("dont_write_bytecode"):
        print("  warning: PYTHONDONTWRITEBYTECODE is set: every command compiles its modules again at start")


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


CONVERT_HEADERS: Final = (
    "size",
    "format",
    "checkpoint",
    "ours -o",
    "floor",
    "floor s",
    "ours s",
    "ours/floor",
    "naive s",
    "ours/naive",
    "ours RSS",
    "RSS/ckpt",
    "naive RSS",
    "naive RSS/ckpt",
)


def convert_rows(results: Sequence[FormatResult]) -> list[list[str]]:
    rows = []
    for r in results:
        size = r.checkpoint.nbytes
        for kind, ours in (("DIR", r.ours_dir), (".bin", r.ours_bin)):
            if ours is None:
                continue
            rows.append(
                [
                    r.checkpoint.size.name,
                    r.checkpoint.format.name,
                    fmt_bytes(size),
                    kind,
                    r.checkpoint.format.floor,
                    f"{r.floor.wall_s:.2f}",
                    f"{ours.wall_s:.2f}",
                    f"{ours.wall_s / r.floor.wall_s:.2f}x",
                    f"{r.naive.wall_s:.2f}",
                    f"{ours.wall_s / r.naive.wall_s:.3f}x",
                    fmt_bytes(ours.peak_rss),
                    f"{ours.peak_rss / size:.2f}x",
                    fmt_bytes(r.naive.peak_rss),
                    f"{r.naive.peak_rss / size:.2f}x",
                ]
            )
    return rows


INSPECT_HEADERS: Final = ("size", "format", "pickle.load s", "pickle.load RSS", "inspect s", "inspect RSS", "ratio")


def inspect_rows(results: Sequence[FormatResult]) -> list[list[str]]:
    return [
        [
            r.checkpoint.size.name,
            r.checkpoint.format.name,
            f"{r.load_baseline.wall_s:.3f}",
            fmt_bytes(r.load_baseline.peak_rss),
            f"{r.inspect.wall_s:.3f}",
            fmt_bytes(r.inspect.peak_rss),
            f"{r.inspect.wall_s / r.load_baseline.wall_s:.2f}x",
        ]
        for r in results
    ]


SCALING_HEADERS: Final = ("format", "sizes", "bytes", "ours time", "ours RSS", "floor time", "naive time")


def scaling_rows(results: Sequence[FormatResult]) -> list[list[str]]:
    return [
        [
            p["format"],
            f"{p['large']} / {p['small']}",
            f"{p['bytes_ratio']:.2f}x",
            f"{p['time_ratio']:.2f}x",
            f"{p['rss_ratio']:.2f}x",
            f"{p['floor_time_ratio']:.2f}x",
            f"{p['naive_time_ratio']:.2f}x",
        ]
        for p in scaling_pairs(results)
    ]


PROVENANCE_HEADERS: Final = ("size", "format", "file", "bytes", "sha256")


def provenance_rows(results: Sequence[FormatResult]) -> list[list[str]]:
    return [
        [r.checkpoint.size.name, r.checkpoint.format.name, path.name, str(nbytes), digest]
        for r in results
        for path, nbytes, digest in zip(
            r.checkpoint.files, r.checkpoint.file_bytes, r.checkpoint.file_sha256, strict=True
        )
    ]


TARGET_HEADERS: Final = ("target", "subject", "measured", "result")


def target_rows(targets: Sequence[Target]) -> list[list[str]]:
    return [[t.name, t.subject, t.shown, "pass" if t.passed else "FAIL"] for t in targets]


def sections(
    results: Sequence[FormatResult], help_run: Measurement, targets: Sequence[Target], repeat: int
) -> list[tuple[str, Sequence[str], list[list[str]]]]:
    """(title, headers, rows) of every table, in the order printed."""
    help_row = [["reformer-tools --help", f"{help_run.wall_s:.3f}", fmt_bytes(help_run.peak_rss)]]
    return [
        (
            f"convert vs its floor (cp, or ISA-L inflate) and the naive baseline; median of {repeat}",
            CONVERT_HEADERS,
            convert_rows(results),
        ),
        (f"inspect vs a bare pickle.load of the same file; median of {repeat}", INSPECT_HEADERS, inspect_rows(results)),
        ("start-up", ("command", "wall s", "peak RSS"), help_row),
        ("scaling: the 4x checkpoint over the 1x one", SCALING_HEADERS, scaling_rows(results)),
        ("targets (#12)", TARGET_HEADERS, target_rows(targets)),
        ("provenance: the checkpoints measured", PROVENANCE_HEADERS, provenance_rows(results)),
    ]


def print_report(
    facts: dict[str, Any],
    results: Sequence[FormatResult],
    help_run: Measurement,
    targets: Sequence[Target],
    repeat: int,
) -> None:
    print()
    print_machine(facts)
    for title, headers, rows in sections(results, help_run, targets, repeat):
        if rows:
            print()
            print(title)
            print(text_table(headers, rows))
    if results and max(r.checkpoint.nbytes for r in results) < 100e6:
        print(
            "\nnote: checkpoints under 100 MB measure mostly interpreter start-up and imports; "
            "only the full-size run (--scale full) says anything about the targets."
        )


def print_markdown(
    facts: dict[str, Any],
    results: Sequence[FormatResult],
    help_run: Measurement,
    targets: Sequence[Target],
    repeat: int,
) -> None:
    ram = fmt_bytes(facts["ram_bytes"]) if facts["ram_bytes"] else "?"
    print()
    print(
        f"Measured on {facts['cpu_count']} x {facts['cpu_model']}, {ram} RAM; Python {facts['python']}, "
        f"numpy {facts['numpy']}, torch {facts['torch']}, transformers {facts['transformers']}, "
        f"isal {facts['isal'] or 'absent'}; load average {facts['load_average']} at the start, "
        f"{facts.get('load_average_end')} at the end. Median of {repeat} runs, page cache warm for every "
        "command. *floor* is `cp` of the checkpoint's files (uncompressed formats) or ISA-L inflating them "
        "(gzip formats), measured in the same run; *naive* is Hugging Face's old script's approach "
        "(random-init model, `pickle.load`, copy into parameters, `torch.save`)."
    )
    for title, headers, rows in sections(results, help_run, targets, repeat):
        if rows:
            print()
            print(f"**{title[0].upper()}{title[1:]}**")
            print()
            print(markdown_table(headers, rows))


def results_json(
    facts: dict[str, Any],
    args: argparse.Namespace,
    results: Sequence[FormatResult],
    help_run: Measurement,
    targets: Sequence[Target],
) -> dict[str, Any]:
    return {
        "schema_version": 2,
        "machine": facts,
        "settings": {"repeat": args.repeat, "seed": args.seed, "bin": args.bin},
        "help": help_run.to_json(),
        "results": [
            {
                "size": r.checkpoint.size.name,
                "parameters": r.checkpoint.size.parameters(),
                "format": r.checkpoint.format.name,
                "format_description": r.checkpoint.format.description,
                "checkpoint_bytes": r.checkpoint.nbytes,
                "files": {f.name: n for f, n in zip(r.checkpoint.files, r.checkpoint.file_bytes, strict=True)},
                "generate_seconds": round(r.checkpoint.generate_seconds, 2),
                "naive": r.naive.to_json(),
                "ours_dir": r.ours_dir.to_json(),
                "ours_bin": r.ours_bin.to_json() if r.ours_bin else None,
                "pickle_load": r.load_baseline.to_json(),
                "inspect": r.inspect.to_json(),
                "floor_kind": r.checkpoint.format.floor,
                "floor": r.floor.to_json(),
                "sha256": {f.name: d for f, d in zip(r.checkpoint.files, r.checkpoint.file_sha256, strict=True)},
            }
            for r in results
        ],
        "scaling": scaling_pairs(results),
        "targets": [
            {"name": t.name, "subject": t.subject, "value": round(t.value, 4), "shown": t.shown, "passed": t.passed}
            for t in targets
        ],
    }


# ------------------------------------------------------------------------ cli


def parse_formats(specs: Sequence[str], sizes: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """``--formats pickle,gzip`` (every size) and ``--formats enwik8x4=pickle`` (one size)."""
    chosen = {name: SIZES[name].default_formats for name in sizes}
    for spec in specs:
        target, _, names = spec.rpartition("=")
        formats = tuple(n.strip() for n in names.split(",") if n.strip())
        unknown = [n for n in formats if n not in FORMATS] + ([target] if target and target not in SIZES else [])
        if unknown or not formats:
            raise SystemExit(f"--formats {spec!r}: unknown {', '.join(unknown) or 'empty list'}")
        for name in [target] if target else sizes:
            if name in chosen:
                chosen[name] = formats
    return chosen


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="formats: " + "; ".join(f"{f.name} = {f.description}" for f in FORMATS.values()),
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--scale", choices=sorted(SCALES), help="small: small,smallx4 (a few MB); full: enwik8,enwik8x4 (~3 GB)"
    )
    which.add_argument(
        "--sizes",
        default="enwik8",
        help=f"comma-separated model sizes from {', '.join(SIZES)} (default: enwik8; add enwik8x4 for scaling)",
    )
    parser.add_argument(
        "--formats",
        action="append",
        default=[],
        metavar="[SIZE=]FMT,...",
        help="checkpoint formats to generate, for all sizes or one; repeatable "
        "(default: pickle,gzip,npy,npy0 for 1x sizes, pickle,npy0 for 4x sizes)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per command; the median is reported (default 3)")
    parser.add_argument("--bin", action="store_true", help="also measure `convert -o OUT.bin` (torch.save output)")
    parser.add_argument("--check", action="store_true", help="run `reformer-tools verify` on the first outputs")
    parser.add_argument("--workdir", type=Path, help="where to generate checkpoints (default: a new dir under /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the generated checkpoints and logs")
    parser.add_argument("--seed", type=int, default=0, help="random seed for the weights (default 0)")
    parser.add_argument("--json-out", type=Path, metavar="FILE", help="write every sample and result as JSON")
    parser.add_argument("--markdown", action="store_true", help="also print the results as Markdown tables")
    return parser


def check_resources(plan: dict[str, tuple[str, ...]], workdir: Path) -> None:
    """Refuse to start when the disk cannot hold a size's checkpoints plus one output."""
    free = shutil.disk_usage(workdir).free
    need = max(SIZES[name].parameters() * 4 * (len(formats) + 1.1) for name, formats in plan.items())
    if need > free:
        raise SystemExit(f"{workdir}: {fmt_bytes(free)} free, the largest size needs about {fmt_bytes(need)}")
    available = machine_facts()["ram_available_bytes"] or 0
    largest = max(SIZES[name].parameters() * 4 for name in plan)
    if available and 3 * largest > available:  # the naive baseline holds the file, the model and copies
        note(f"warning: {fmt_bytes(available)} RAM available; the naive baseline may need {fmt_bytes(3 * largest)}")


def find_reformer_tools() -> str:
    beside = Path(sys.executable).parent / "reformer-tools"
    found = str(beside) if beside.exists() else shutil.which("reformer-tools")
    if not found:
        raise SystemExit("reformer-tools is not installed in this environment (pip install -e .)")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sizes = list(SCALES[args.scale]) if args.scale else [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown or not sizes or args.repeat < 1:
        raise SystemExit(f"unknown size {unknown[0]!r}" if unknown else "nothing to run")
    plan = parse_formats(args.formats, sizes)
    tools = Tools(sys.executable, find_reformer_tools())

    own_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="reformer-bench-")) if own_workdir else args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    created = [workdir] if own_workdir else []  # only what this run made is deleted
    try:
        check_resources(plan, workdir)
        facts = machine_facts()
        note(f"workdir {workdir}")
        log_dir = workdir / "logs"
        log_dir.mkdir(exist_ok=True)
        created.append(log_dir)
        runner = Runner(log_dir)
        # Untimed: load both tool stacks once so no measured run pays for a cold disk cache.
        runner.run(Measurement("warm-up", [tools.python, "-c", "import torch, transformers"]))
        runner.run(Measurement("warm-up", tools.help()))
        help_run = Measurement("reformer-tools --help", tools.help())
        for _ in range(args.repeat):
            runner.run(help_run)
        note(f"reformer-tools --help: {help_run.wall_s:.3f} s")

        results: list[FormatResult] = []
        for name in sizes:
            created.append(workdir / name)
            checkpoints = generate(SIZES[name], plan[name], workdir, args.seed)
            out_dir = workdir / name / "out"
            out_dir.mkdir(exist_ok=True)
            for checkpoint in checkpoints:
                results.append(
                    measure_format(
                        runner, tools, checkpoint, args.repeat, with_bin=args.bin, check=args.check, out_dir=out_dir
                    )
                )
            if not args.keep:
                _remove(workdir / name)  # free the disk before the next, larger size
    except BenchmarkError as failure:
        note(f"error: {failure}")
        return 1
    finally:
        if args.keep:
            note(f"kept {workdir}")
        else:
            for path in reversed(created):
                _remove(path)

    targets = evaluate(results, help_run)
    facts["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    print_report(facts, results, help_run, targets, args.repeat)
    if args.markdown:
        print_markdown(facts, results, help_run, targets, args.repeat)
    if args.json_out:
        document = results_json(facts, args, results, help_run, targets)
        args.json_out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        note(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
