"""The loader against every container and weight-tree nesting Trax wrote, and against real Trax files.

Checkpoints are written by ``tests/trax_writer.py`` (no trax, jax or ml_dtypes
needed) from random weights whose every bit is known, so each test can demand
bit-exact arrays, exact leaf paths and exact summaries.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import pickle
import pickletools
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import load_file

from reformer_tools.checkpoint import CheckpointFormat, TraxCheckpoint
from reformer_tools.convert import write_conversion
from reformer_tools.global_scan import scan_globals
from reformer_tools.loader import load_checkpoint
from reformer_tools.mapper import plan
from reformer_tools.resolve import ResolvedConfig
from reformer_tools.spec import ReformerSpec, load_spec
from tests import trax_writer as tw
from tests.conftest import TRAX_FIXTURES, fixture_checkpoints
from tests.trax_writer import Encoding, Written

Array = np.ndarray[Any, Any]
Recipe = Callable[[Path, ReformerSpec, list[Array]], Written]

# ---------------------------------------------------------------- the matrix

DEFAULT = tw.tiny_spec()  # local + lsh, axial (2, 3) x (3, 4)
PLAIN = tw.tiny_spec(("lsh", "local", "lsh"), axial_shape=None)
AXIAL3 = tw.tiny_spec(("local",), axial_shape=(2, 2, 3), axial_dims=(2, 2, 3))
LSH_ONLY = tw.tiny_spec(("lsh", "lsh"), heads=1, head_size=4)
# Arrays over 64 KiB take the loader's payload paths (memory-mapped in plain files).
BIG = tw.tiny_spec(("local",), vocab=2400)

TREE = CheckpointFormat.PICKLE_TREE
FLAT = CheckpointFormat.GZIP_FLAT
SHARDED = CheckpointFormat.GZIP_SHARDED
SIDE = CheckpointFormat.NPY_SIDE_FILE
STREAM = CheckpointFormat.NPY_STREAM

T0 = "trax Trainer checkpoint, tuple layout (trax <= 1.1, 2019)"
T1A = "trax Trainer checkpoint, nested weights (early 2020, before version stamps)"
T1B = "trax Trainer checkpoint, nested weights (version Jan-13-2020, trax 1.2.x)"
WEIGHTS_ONLY = "pickled weights tree ({'weights': ...}, as Hugging Face's script reads)"
T2 = "trax Trainer checkpoint, gzip pickle with flat weights (version Jun-18-2020)"
SAVE_TO_FILE = "trax Layer.save_to_file gzip pickle, flat weights (trax >= 1.3.8)"


def loop_flat(version: str) -> str:
    return f"trax training.Loop checkpoint, gzip pickle with flat weights (version {version})"


def side_file(name: str, version: str) -> str:
    return f"trax training.Loop checkpoint, weights in {name} (version {version})"


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    write: Recipe
    format: CheckpointFormat
    description: str
    spec: ReformerSpec = DEFAULT
    dtype: str = "float32"
    positions_rank: int = 3  # plain positional encodings: (1, max_len, d) until 2021-03-30, then (max_len, d)

    def leaves(self) -> list[Array]:
        return tw.random_leaves(
            self.spec, seed=len(self.id), dtype=self.dtype, positions_rank=self.positions_rank, specials=True
        )


v123, v124, hf2020, v141 = tw.nest_trax123, tw.nest_trax124, tw.nest_hf2020, tw.nest_trax141
chunked = {"chunked_ff": True}


def npy_stream(d: Path, spec: ReformerSpec, leaves: list[Array]) -> Written:
    """The ``.weights.npy.gz`` of a Mar-10-2021 checkpoint, opened on its own."""
    written = tw.write_loop_mar_10_2021(d, leaves, enc=Encoding(protocol=5))
    side = written.files[1]
    return dataclasses.replace(written, path=side, step=None, version=None, files=(side,), metadata={})


CASES = [
    # trax <= 1.1 tuple, and the three-day 2020-01-10 dict
    Case(
        "T0-py3-protocol3",
        lambda d, s, w: tw.write_trainer_tuple(d / "model.pkl", v123(s, w), enc=Encoding(protocol=3)),
        TREE,
        T0,
    ),
    Case(
        "T0-py2-cloudpickle-empty-history",
        lambda d, s, w: tw.write_trainer_tuple(
            d / "model.pkl", v123(s, w), history=False, enc=Encoding(protocol=2, py2=True)
        ),
        TREE,
        T0,
    ),
    Case(
        "T1a-2020-01-10",
        lambda d, s, w: tw.write_trainer_2020_01_10(d / "model.pkl", v123(s, w), enc=Encoding(protocol=3)),
        TREE,
        T1A,
    ),
    # Jan-13-2020 Trainer pickles, in each nesting era
    Case(
        "T1b-v1.2.3",
        lambda d, s, w: tw.write_trainer_jan_13_2020(d / "model.pkl", v123(s, w), enc=Encoding(protocol=3)),
        TREE,
        T1B,
    ),
    Case(
        "T1b-v1.2.3-chunked-ff-plain-positions",
        lambda d, s, w: tw.write_trainer_jan_13_2020(d / "model.pkl", v123(s, w, **chunked), enc=Encoding(protocol=3)),
        TREE,
        T1B,
        spec=PLAIN,
    ),
    Case(
        "T1b-v1.2.4",
        lambda d, s, w: tw.write_trainer_jan_13_2020(d / "model.pkl", v124(s, w), enc=Encoding(protocol=4)),
        TREE,
        T1B,
    ),
    Case(
        "T1b-v1.2.4-chunked-ff-3-axes",
        lambda d, s, w: tw.write_trainer_jan_13_2020(d / "model.pkl", v124(s, w, **chunked), enc=Encoding(protocol=4)),
        TREE,
        T1B,
        spec=AXIAL3,
    ),
    Case(
        "T1b-hf2020-numpy2-names",
        lambda d, s, w: tw.write_trainer_jan_13_2020(
            d / "model.pkl", hf2020(s, w), enc=Encoding(protocol=4, numpy_names=2)
        ),
        TREE,
        T1B,
        spec=LSH_ONLY,
    ),
    Case(
        "T1b-hf2020-chunked-ff-jax-device-array-state",
        lambda d, s, w: tw.write_trainer_jan_13_2020(
            d / "model.pkl", hf2020(s, w, **chunked), enc=Encoding(protocol=4, state_jax="device_array")
        ),
        TREE,
        T1B,
    ),
    Case(
        "T1b-protocol2-codecs-bytes",
        lambda d, s, w: tw.write_trainer_jan_13_2020(
            d / "model.pkl", v124(s, w), history=False, enc=Encoding(protocol=2)
        ),
        TREE,
        T1B,
    ),
    Case(
        "T1b-protocol5-fortran-order",
        lambda d, s, w: tw.write_trainer_jan_13_2020(
            d / "model.pkl", hf2020(s, w), enc=Encoding(protocol=5, fortran=True)
        ),
        TREE,
        T1B,
    ),
    Case(
        "T1b-memory-mapped-payloads",
        lambda d, s, w: tw.write_trainer_jan_13_2020(d / "model.pkl", v124(s, w), enc=Encoding(protocol=4)),
        TREE,
        T1B,
        spec=BIG,
    ),
    # {'weights': tree}, as Hugging Face's script and the fixtures' model.pkl
    Case(
        "weights-only-v1.4.1",
        lambda d, s, w: tw.write_weights_only(d / "model.pkl", v141(s, w), enc=Encoding(protocol=5)),
        TREE,
        WEIGHTS_ONLY,
    ),
    Case(
        "weights-only-v1.4.1-chunked-ff-plain-2d-positions",
        lambda d, s, w: tw.write_weights_only(
            d / "model.pkl", v141(s, w, **chunked), enc=Encoding(protocol=5, numpy_names=2)
        ),
        TREE,
        WEIGHTS_ONLY,
        spec=PLAIN,
        positions_rank=2,
    ),
    Case(
        "weights-only-protocol2",
        lambda d, s, w: tw.write_weights_only(d / "model.pkl", hf2020(s, w), enc=Encoding(protocol=2)),
        TREE,
        WEIGHTS_ONLY,
    ),
    Case(
        "weights-only-ml-dtypes-bfloat16",
        lambda d, s, w: tw.write_weights_only(
            d / "model.pkl", v141(s, w), enc=Encoding(protocol=4, bfloat16="ml_dtypes")
        ),
        TREE,
        WEIGHTS_ONLY,
        dtype="bfloat16",
    ),
    # Jun-18-2020 Trainer gzip pickles
    Case(
        "T2-protocol3-numpy-type-signature",
        lambda d, s, w: tw.write_trainer_jun_18_2020(
            d / "model.pkl.gz", w, signature_dtype_types=True, enc=Encoding(protocol=3)
        ),
        FLAT,
        T2,
    ),
    Case(
        "T2-protocol5-jax-state-numpy2-names",
        lambda d, s, w: tw.write_trainer_jun_18_2020(
            d / "model.pkl.gz", w, enc=Encoding(protocol=5, numpy_names=2, state_jax="array")
        ),
        FLAT,
        T2,
        spec=PLAIN,
    ),
    Case(
        "T2-protocol4-fortran-order",
        lambda d, s, w: tw.write_trainer_jun_18_2020(d / "model.pkl.gz", w, enc=Encoding(protocol=4, fortran=True)),
        FLAT,
        T2,
        spec=AXIAL3,
    ),
    Case(
        "T2-large-payloads",
        lambda d, s, w: tw.write_trainer_jun_18_2020(d / "model.pkl.gz", w, enc=Encoding(protocol=5)),
        FLAT,
        T2,
        spec=BIG,
    ),
    # training.Loop, 2020: flat lists inline
    Case(
        "loop-Jun-29-2020",
        lambda d, s, w: tw.write_loop_flat(d / "model.pkl.gz", w, version="Jun-29-2020", enc=Encoding(protocol=3)),
        FLAT,
        loop_flat("Jun-29-2020"),
    ),
    Case(
        "loop-Aug-21-2020-jax-device-array-state",
        lambda d, s, w: tw.write_loop_flat(
            d / "model.pkl.gz", w, version="Aug-21-2020", enc=Encoding(protocol=3, state_jax="device_array")
        ),
        FLAT,
        loop_flat("Aug-21-2020"),
    ),
    Case(
        "loop-Sep-17-2020",
        lambda d, s, w: tw.write_loop_flat(d / "model.pkl.gz", w, version="Sep-17-2020", enc=Encoding(protocol=4)),
        FLAT,
        loop_flat("Sep-17-2020"),
        spec=LSH_ONLY,
    ),
    Case(
        "loop-Oct-28-2020-flat",
        lambda d, s, w: tw.write_loop_flat(d / "model.pkl.gz", w, version="Oct-28-2020", enc=Encoding(protocol=3)),
        FLAT,
        loop_flat("Oct-28-2020"),
    ),
    Case(
        "loop-Oct-30-2020-bfloat16-pairs",
        lambda d, s, w: tw.write_loop_flat(
            d / "model.pkl.gz", w, version="Oct-28-2020", enc=Encoding(protocol=3, bfloat16="pair")
        ),
        FLAT,
        loop_flat("Oct-28-2020"),
        dtype="bfloat16",
    ),
    Case(
        "loop-Nov-2020-bfloat16-pairs-of-jax-arrays",
        lambda d, s, w: tw.write_loop_flat(
            d / "model.pkl.gz", w, version="Oct-28-2020", enc=Encoding(protocol=4, bfloat16="pair", jax="device_array")
        ),
        FLAT,
        loop_flat("Oct-28-2020"),
        dtype="bfloat16",
        spec=LSH_ONLY,
    ),
    Case(
        "loop-Nov-20-2020-bfloat16-pairs-protocol5",
        lambda d, s, w: tw.write_loop_flat(
            d / "model.pkl.gz", w, version="Oct-28-2020", enc=Encoding(protocol=5, bfloat16="pair")
        ),
        FLAT,
        loop_flat("Oct-28-2020"),
        dtype="bfloat16",
        spec=PLAIN,
    ),
    # Layer.save_to_file: raw jax and bfloat16 arrays
    Case(
        "save-to-file-jax-bfloat16",
        lambda d, s, w: tw.write_save_to_file(
            d / "model.pkl.gz", w, enc=Encoding(protocol=5, bfloat16="ml_dtypes", jax="array", state_jax="array")
        ),
        FLAT,
        SAVE_TO_FILE,
        dtype="bfloat16",
    ),
    Case(
        "save-to-file-ml-dtypes-frombuffer-weights-only",
        lambda d, s, w: tw.write_save_to_file(
            d / "model.pkl.gz", w, weights_only=True, signature=False, enc=Encoding(protocol=5, bfloat16="ml_dtypes")
        ),
        FLAT,
        SAVE_TO_FILE,
        dtype="bfloat16",
        spec=AXIAL3,
    ),
    Case(
        "save-to-file-ml-dtypes-protocol4",
        lambda d, s, w: tw.write_save_to_file(d / "model.pkl.gz", w, enc=Encoding(protocol=4, bfloat16="ml_dtypes")),
        FLAT,
        SAVE_TO_FILE,
        dtype="bfloat16",
    ),
    Case(
        "save-to-file-jax-device-array-numpy2-names",
        lambda d, s, w: tw.write_save_to_file(
            d / "model.pkl.gz", w, enc=Encoding(protocol=5, numpy_names=2, jax="device_array")
        ),
        FLAT,
        SAVE_TO_FILE,
        spec=PLAIN,
        positions_rank=2,
    ),
    Case(
        "save-to-file-float16",
        lambda d, s, w: tw.write_save_to_file(d / "model.pkl.gz", w, enc=Encoding(protocol=5)),
        FLAT,
        SAVE_TO_FILE,
        dtype="float16",
    ),
    # Oct-28-2020 memory-efficient trainer: shard files
    Case(
        "sharded-gzip-shards",
        lambda d, s, w: tw.write_loop_sharded(d / "model.pkl.gz", w, max_shard_size=60, enc=Encoding(protocol=3)),
        SHARDED,
        "trax training.Loop checkpoint, weights in 10 shard files (version Oct-28-2020)",
    ),
    Case(
        "sharded-plain-protocol5-shards-bfloat16-pairs",
        lambda d, s, w: tw.write_loop_sharded(
            d / "model.pkl.gz", w, max_shard_size=60, gzip_shards=False, enc=Encoding(protocol=5, bfloat16="pair")
        ),
        SHARDED,
        "trax training.Loop checkpoint, weights in 10 shard files (version Oct-28-2020)",
        dtype="bfloat16",
    ),
    Case(
        "sharded-one-plain-shard-memory-mapped",
        lambda d, s, w: tw.write_loop_sharded(
            d / "model.pkl.gz", w, gzip_shards=False, enc=Encoding(protocol=5, state_jax="array")
        ),
        SHARDED,
        "trax training.Loop checkpoint, weights in 1 shard files (version Oct-28-2020)",
        spec=BIG,
    ),
    # .npy side files, 2021 on
    Case(
        "npy-Feb-2021-pkl.gz.npy",
        lambda d, s, w: tw.write_loop_npy_feb_2021(d / "model.pkl.gz", w, enc=Encoding(protocol=5)),
        SIDE,
        side_file("model.pkl.gz.npy", "Oct-28-2020"),
    ),
    Case(
        "npy-Feb-2021-compresslevel-0",
        lambda d, s, w: tw.write_loop_npy_feb_2021(d / "model.pkl.gz", w, compresslevel=0, enc=Encoding(protocol=5)),
        SIDE,
        side_file("model.pkl.gz.npy", "Oct-28-2020"),
        dtype="bfloat16",
    ),
    Case(
        "npy-Mar-10-2021",
        lambda d, s, w: tw.write_loop_mar_10_2021(d, w, enc=Encoding(protocol=5, state_jax="array")),
        SIDE,
        side_file("model.weights.npy.gz", "Mar-10-2021"),
    ),
    Case(
        "npy-Mar-10-2021-bfloat16-compresslevel-0",
        lambda d, s, w: tw.write_loop_mar_10_2021(
            d, w, basename="model_1000", compresslevel=0, enc=Encoding(protocol=5)
        ),
        SIDE,
        side_file("model_1000.weights.npy.gz", "Mar-10-2021"),
        spec=PLAIN,
        dtype="bfloat16",
        positions_rank=2,
    ),
    Case(
        "npy-Mar-10-2021-fortran-order",
        lambda d, s, w: tw.write_loop_mar_10_2021(
            d, w, basename="highest_accuracy", enc=Encoding(protocol=5, fortran=True)
        ),
        SIDE,
        side_file("highest_accuracy.weights.npy.gz", "Mar-10-2021"),
        spec=AXIAL3,
    ),
    Case(
        "npy-Mar-10-2021-large-arrays",
        lambda d, s, w: tw.write_loop_mar_10_2021(d, w, enc=Encoding(protocol=5)),
        SIDE,
        side_file("model.weights.npy.gz", "Mar-10-2021"),
        spec=BIG,
        dtype="float16",
    ),
    Case("npy-stream-on-its-own", npy_stream, STREAM, "stream of .npy arrays (a trax *.weights.npy.gz file)"),
]


@pytest.fixture(params=CASES, ids=[case.id for case in CASES])
def case(request: pytest.FixtureRequest) -> Case:
    case: Case = request.param
    return case


def write(case: Case, directory: Path) -> tuple[Written, list[Array]]:
    leaves = case.leaves()
    return case.write(directory, case.spec, leaves), leaves


def logical_dtype(array: Array) -> str:
    return "bfloat16" if array.dtype == np.uint16 else array.dtype.name


# ---------------------------------------------------------------- loading


def test_loads_format_metadata_and_every_leaf_bit_for_bit(case: Case, tmp_path: Path) -> None:
    written, source = write(case, tmp_path)
    checkpoint = load_checkpoint(written.path)

    assert checkpoint.format is case.format
    assert checkpoint.description == case.description
    assert (checkpoint.step, checkpoint.version_timestamp) == (written.step, written.version)
    assert {item.key: item.summary for item in checkpoint.metadata} == written.metadata

    leaves = checkpoint.leaves
    assert len(leaves) == len(source) == len(tw.leaf_shapes(case.spec, positions_rank=case.positions_rank))
    assert [leaf.path for leaf in leaves] == list(written.leaf_paths)
    assert [leaf.shape for leaf in leaves] == [array.shape for array in source]
    assert [leaf.dtype for leaf in leaves] == [logical_dtype(array) for array in source]
    loaded = list(checkpoint.iter_arrays())
    assert [leaf.index for leaf, _ in loaded] == list(range(len(source)))
    for (leaf, array), expected in zip(loaded, source, strict=True):
        # bfloat16 stays uint16 storage; comparing bytes sees NaN payloads and the sign of zero.
        assert (array.dtype, array.shape) == (expected.dtype, expected.shape), leaf.path
        assert array.tobytes() == expected.tobytes(), leaf.path


def test_shapes_only_loading_reports_the_same_leaves(case: Case, tmp_path: Path) -> None:
    written, _ = write(case, tmp_path)
    assert load_checkpoint(written.path, data=False).leaves == load_checkpoint(written.path).leaves


def memory_mapped(array: Array) -> bool:
    base: Any = array
    while isinstance(base, np.ndarray):
        if isinstance(base, np.memmap):
            return True
        base = base.base
    return False


@pytest.mark.parametrize("case_id", ["T1b-memory-mapped-payloads", "sharded-one-plain-shard-memory-mapped"])
def test_large_arrays_of_plain_pickles_are_memory_mapped(case_id: str, tmp_path: Path) -> None:
    # The BIG cases are there to reach this path: payloads of 64 KiB and more are mapped, not read.
    case = next(c for c in CASES if c.id == case_id)
    written, _ = write(case, tmp_path)
    mapped = [leaf.path for leaf, array in load_checkpoint(written.path).iter_arrays() if memory_mapped(array)]
    assert len(mapped) == 2  # the (2400, 7) embedding and the (14, 2400) output matrix


# ---------------------------------------------------------------- mapping and conversion


def read_safetensors(path: Path) -> dict[str, Array]:
    """Every tensor of a .safetensors file; bfloat16 ones as their uint16 bits."""
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = {k: v for k, v in json.loads(raw[8 : 8 + size]).items() if k != "__metadata__"}
    if all(info["dtype"] != "BF16" for info in header.values()):
        return load_file(str(path))
    # numpy has no bfloat16, so safetensors.numpy refuses the file: read the bits from the body.
    body = raw[8 + size :]
    storage = {"BF16": "<u2", "F16": "<f2", "F32": "<f4"}
    return {
        key: np.frombuffer(body[slice(*info["data_offsets"])], storage[info["dtype"]]).reshape(info["shape"])
        for key, info in header.items()
    }


def test_plans_and_converts_to_exactly_the_mapped_source_arrays(case: Case, tmp_path: Path) -> None:
    written, source = write(case, tmp_path / "trax")
    checkpoint = load_checkpoint(written.path)
    planned = plan(case.spec, checkpoint.leaves)
    assert sorted(a.leaf.index for a in planned.assignments) == list(range(len(source)))

    out = tmp_path / "model.safetensors"
    result = write_conversion(checkpoint, ResolvedConfig.given(case.spec), out)

    tensors = read_safetensors(out)
    expected = {
        key: assignment.slot.transform.apply(source[assignment.leaf.index])
        for assignment in planned.assignments
        for key in assignment.slot.hf_keys
    }
    assert result.tensors == len(expected)
    assert sorted(tensors) == sorted(expected)
    for key, array in expected.items():
        assert tensors[key].dtype == array.dtype, key
        assert tensors[key].shape == array.shape, key
        assert tensors[key].tobytes() == np.ascontiguousarray(array).tobytes(), key
    with safe_open(str(out), framework="numpy") as handle:
        metadata = handle.metadata()
    assert metadata["trax_format"] == case.format.value
    assert metadata.get("trax_step") == (None if written.step is None else str(written.step))
    assert metadata["source_sha256"] == hashlib.sha256(written.path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- the writer itself


@pytest.mark.parametrize("spec", [DEFAULT, PLAIN, AXIAL3, LSH_ONLY], ids=["default", "plain", "axial3", "lsh"])
@pytest.mark.parametrize("nest", list(tw.NESTINGS.values()), ids=list(tw.NESTINGS))
@pytest.mark.parametrize("chunked_ff", [False, True], ids=["ff", "chunked-ff"])
def test_every_nesting_flattens_back_to_the_same_leaves(
    nest: Callable[..., Any], spec: ReformerSpec, chunked_ff: bool
) -> None:
    leaves = tw.random_leaves(spec, seed=1)
    flat = [leaf for _, leaf in tw.trax_flatten(nest(spec, leaves, chunked_ff=chunked_ff))]
    assert len(flat) == len(leaves)
    assert all(a is b for a, b in zip(flat, leaves, strict=True))


def test_nestings_place_the_feed_forward_where_each_era_did() -> None:
    leaves = tw.random_leaves(DEFAULT, seed=2)
    w1 = leaves[11]  # after the embedding, 2 axial arrays, LN (2), local attention (4) and FF LN (2)
    assert tw.nest_trax123(DEFAULT, leaves)[5][2][0][2][2][1][0] is w1
    assert tw.nest_trax124(DEFAULT, leaves)[5][2][0][1][2][1][0] is w1
    assert tw.nest_hf2020(DEFAULT, leaves)[5][2][0][1][2][1][0] is w1
    assert tw.nest_hf2020(DEFAULT, leaves, chunked_ff=True)[5][2][0][1][2][2][1][0] is w1
    assert tw.nest_trax141(DEFAULT, leaves)[5][2][0][1][0] is w1
    assert tw.nest_trax141(DEFAULT, leaves, chunked_ff=True)[5][2][0][0][0][1][0][1][0] is w1
    assert len(tw.nest_trax123(DEFAULT, leaves)[5]) == len(tw.nest_trax124(DEFAULT, leaves)[5]) == 4 * 2 + 1
    assert len(tw.nest_hf2020(DEFAULT, leaves)[5]) == len(tw.nest_trax141(DEFAULT, leaves)[5]) == 4 * 2


def test_shared_weight_markers_contribute_no_leaves(tmp_path: Path) -> None:
    # GET_WEIGHTS_FROM_CACHE ({'__marker_for_cached_weights_': ()}) stands where a shared layer repeats.
    leaves = tw.random_leaves(DEFAULT, seed=3)
    tree = [*tw.nest_hf2020(DEFAULT, leaves), tw.CACHED_WEIGHTS_MARKER]
    written = tw.write_weights_only(tmp_path / "model.pkl", tree, enc=Encoding())
    checkpoint = load_checkpoint(written.path)
    assert [leaf.path for leaf in checkpoint.leaves] == list(written.leaf_paths)
    assert [a.tobytes() for _, a in checkpoint.iter_arrays()] == [a.tobytes() for a in leaves]


FLOAT_GLOBALS = {("numpy", "ndarray"), ("numpy", "dtype")}
RECONSTRUCT_1 = ("numpy.core.multiarray", "_reconstruct")
RECONSTRUCT_2 = ("numpy._core.multiarray", "_reconstruct")
FROMBUFFER_1 = ("numpy.core.numeric", "_frombuffer")
BFLOAT16 = ("ml_dtypes", "bfloat16")


JAX_ARRAY = ("jax._src.array", "_reconstruct_array")
JAX_DEVICE_ARRAY = ("jax._src.device_array", "reconstruct_device_array")


@pytest.mark.parametrize(
    ("encoding", "dtype", "expected"),
    [
        pytest.param(
            Encoding(protocol=2),
            "float32",
            {*FLOAT_GLOBALS, RECONSTRUCT_1, ("_codecs", "encode")},
            id="protocol2-bytes-via-codecs",
        ),
        pytest.param(Encoding(protocol=2, py2=True), "float32", {*FLOAT_GLOBALS, RECONSTRUCT_1}, id="python2-str"),
        pytest.param(Encoding(protocol=3), "float32", {*FLOAT_GLOBALS, RECONSTRUCT_1}, id="protocol3-numpy1"),
        pytest.param(
            Encoding(protocol=4, numpy_names=2), "float32", {*FLOAT_GLOBALS, RECONSTRUCT_2}, id="protocol4-numpy2"
        ),
        pytest.param(Encoding(protocol=5), "float32", {("numpy", "dtype"), FROMBUFFER_1}, id="protocol5-numpy1"),
        pytest.param(
            Encoding(protocol=5, numpy_names=2),
            "float32",
            {("numpy", "dtype"), ("numpy._core.numeric", "_frombuffer")},
            id="protocol5-numpy2",
        ),
        pytest.param(
            Encoding(protocol=5, jax="array"), "float32", {*FLOAT_GLOBALS, RECONSTRUCT_1, JAX_ARRAY}, id="jax-array"
        ),
        pytest.param(
            Encoding(protocol=4, numpy_names=2, jax="device_array"),
            "float32",
            {*FLOAT_GLOBALS, RECONSTRUCT_2, JAX_DEVICE_ARRAY},
            id="jax-device-array-numpy2",
        ),
        pytest.param(
            Encoding(protocol=5, bfloat16="ml_dtypes"),
            "bfloat16",
            {("numpy", "dtype"), FROMBUFFER_1, BFLOAT16},
            id="ml-dtypes-protocol5",
        ),
        pytest.param(
            Encoding(protocol=3, bfloat16="ml_dtypes"),
            "bfloat16",
            {*FLOAT_GLOBALS, RECONSTRUCT_1, BFLOAT16},
            id="ml-dtypes-protocol3",
        ),
        pytest.param(
            Encoding(protocol=5, bfloat16="ml_dtypes", jax="array"),
            "bfloat16",
            {*FLOAT_GLOBALS, RECONSTRUCT_1, BFLOAT16, JAX_ARRAY},
            id="jax-array-of-ml-dtypes",
        ),
        pytest.param(
            Encoding(protocol=4, bfloat16="pair"), "bfloat16", {*FLOAT_GLOBALS, RECONSTRUCT_1}, id="bfloat16-pairs"
        ),
    ],
)
def test_writer_references_exactly_the_globals_of_its_encoding(
    encoding: Encoding, dtype: str, expected: set[tuple[str, str]], tmp_path: Path
) -> None:
    data = encoding.dumps([encoding.leaf(leaf) for leaf in tw.random_leaves(DEFAULT, 4, dtype)])
    assert tw.pickle_protocol(data) == encoding.protocol
    assert tw.pickle_globals(data) == expected
    # The loader's own scan agrees (it records globals without building anything).
    path = tw.write_file(tmp_path / "weights.pkl", data, None)
    assert {(g.module, g.name) for g in scan_globals(path)[0].references} == expected
    if encoding.py2:  # Python 2 str, never unicode opcodes
        assert not any("UNICODE" in op.name for op, _, _ in pickletools.genops(data))


REAL_FILE_MIRRORS: list[tuple[str, Recipe]] = [
    (
        "t124_local_axial/model.pkl",
        lambda d, s, w: tw.write_weights_only(d / "model.pkl", v124(s, w), enc=Encoding(protocol=5)),
    ),
    (
        "t124_local_axial/trainer_lib/model.pkl",
        lambda d, s, w: tw.write_trainer_jan_13_2020(
            d / "model.pkl", v124(s, w), history=False, slots=False, enc=Encoding(protocol=4)
        ),
    ),
    (
        "hf2020_local_axial/trainer_lib/model.pkl",
        lambda d, s, w: tw.write_trainer_jan_13_2020(
            d / "model.pkl", hf2020(s, w), history=False, slots=False, enc=Encoding(protocol=4)
        ),
    ),
    (
        "t141_local_axial/trainer_lib/model.pkl.gz",
        lambda d, s, w: tw.write_trainer_jun_18_2020(
            d / "model.pkl.gz", w, history=False, enc=Encoding(protocol=5, state_jax="array")
        ),
    ),
    (
        "t141_local_axial/loop_checkpoint/model.pkl.gz",
        lambda d, s, w: tw.write_loop_mar_10_2021(d, w, history=False, enc=Encoding(protocol=5, state_jax="array")),
    ),
    (
        "t141_local_axial/layer_save_to_file/model.pkl.gz",
        lambda d, s, w: tw.write_save_to_file(d / "model.pkl.gz", w, enc=Encoding(protocol=5, state_jax="array")),
    ),
    (
        "t141_mixed_axial/layer_save_to_file/model.pkl.gz",
        lambda d, s, w: tw.write_save_to_file(
            d / "model.pkl.gz", w, enc=Encoding(protocol=5, jax="array", state_jax="array")
        ),
    ),
]


def decompressed(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


@pytest.mark.parametrize(("real", "recipe"), REAL_FILE_MIRRORS, ids=[real for real, _ in REAL_FILE_MIRRORS])
def test_writer_matches_the_protocol_and_globals_of_real_trax_files(real: str, recipe: Recipe, tmp_path: Path) -> None:
    written = recipe(tmp_path, DEFAULT, tw.random_leaves(DEFAULT, 5))
    ours, theirs = decompressed(written.path), decompressed(TRAX_FIXTURES / real)
    assert tw.pickle_protocol(ours) == tw.pickle_protocol(theirs)
    assert tw.pickle_globals(ours) == tw.pickle_globals(theirs)
    assert (written.path.read_bytes()[:2] == b"\x1f\x8b") == ((TRAX_FIXTURES / real).read_bytes()[:2] == b"\x1f\x8b")


@pytest.mark.parametrize("kind", ["weights-tree", "trainer-2020", "trainer", "loop", "sharded", "save-to-file"])
def test_shared_checkpoint_fixture_writes_every_kind(
    kind: str, write_trax_checkpoint: Callable[[str], Written], trax_spec: ReformerSpec, trax_leaves: list[Array]
) -> None:
    written = write_trax_checkpoint(kind)
    checkpoint = load_checkpoint(written.path)
    assert [leaf.path for leaf in checkpoint.leaves] == list(written.leaf_paths)
    assert [a.tobytes() for _, a in checkpoint.iter_arrays()] == [a.tobytes() for a in trax_leaves]
    plan(trax_spec, checkpoint.leaves)


# ---------------------------------------------------------------- real Trax files

FIXTURE_NAMES = sorted(p.name for p in TRAX_FIXTURES.iterdir() if (p / "meta.json").exists())


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_every_real_trax_file_of_one_model_holds_identical_arrays(name: str) -> None:
    directory = TRAX_FIXTURES / name
    files = fixture_checkpoints(name)
    side = directory / "loop_checkpoint" / "model.weights.npy.gz"
    files += [side] if side.exists() else []
    assert len(files) >= 2
    meta = json.loads((directory / "meta.json").read_text())
    first, *others = [load_checkpoint(f) for f in files]
    reference = list(first.iter_arrays())
    assert len(reference) == meta["n_weight_arrays"]
    assert sum(leaf.size for leaf, _ in reference) == meta["n_params"]
    for checkpoint in others:
        arrays = list(checkpoint.iter_arrays())
        assert [(leaf.shape, leaf.dtype) for leaf, _ in arrays] == [(leaf.shape, leaf.dtype) for leaf, _ in reference]
        for (leaf, array), (_, expected) in zip(arrays, reference, strict=True):
            assert array.dtype == expected.dtype, (checkpoint.path, leaf.path)
            assert array.tobytes() == expected.tobytes(), (checkpoint.path, leaf.path)


NESTING_OF_FLAVOR = {"t124": tw.nest_trax124, "hf2020": tw.nest_hf2020, "t141": tw.nest_trax141}


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_nesting_builders_reproduce_real_trax_weight_trees(name: str) -> None:
    directory = TRAX_FIXTURES / name
    spec = load_spec(directory / "config.json")
    meta = json.loads((directory / "meta.json").read_text())
    if meta["config"]["share_qk"]:  # shared-QK local attention has LSH's three arrays
        spec = dataclasses.replace(spec, attn_layers=("lsh",) * spec.num_layers)
    leaves = [array for _, array in load_checkpoint(directory / "model.pkl").iter_arrays()]
    tree = NESTING_OF_FLAVOR[meta["flavor"]](spec, leaves)
    assert tw.render_tree(tree) == (directory / "weight_tree.txt").read_text().splitlines()
    assert len(tree) == meta["top_level_len"]


# ------------------------------------------------- regressions found by the writer


def test_python2_trainer_tuple_with_recorded_history_loads(tmp_path: Path) -> None:
    leaves = tw.random_leaves(DEFAULT, 6)
    written = tw.write_trainer_tuple(tmp_path / "model.pkl", v123(DEFAULT, leaves), enc=Encoding(protocol=2, py2=True))
    assert ("__builtin__", "list") in tw.pickle_globals(written.path.read_bytes())
    checkpoint = load_checkpoint(written.path)
    assert {item.key: item.summary for item in checkpoint.metadata} == written.metadata


def test_uint16_bfloat16_bits_in_a_nested_tree_load(tmp_path: Path) -> None:
    # Regression: a (uint16 array, array) 2-tuple, e.g. a LayerNorm's (scale, bias), was taken for a
    # (bits, 'bfloat16') pair by comparing the array with a string, and raised ValueError.
    leaves = tw.random_leaves(DEFAULT, 7, "bfloat16")
    written = tw.write_weights_only(tmp_path / "model.pkl", v141(DEFAULT, leaves), enc=Encoding(protocol=4))
    checkpoint = load_checkpoint(written.path)
    assert [leaf.path for leaf in checkpoint.leaves] == list(written.leaf_paths)
    assert [leaf.dtype for leaf in checkpoint.leaves] == ["bfloat16"] * len(leaves)
    assert [a.tobytes() for _, a in checkpoint.iter_arrays()] == [a.tobytes() for a in leaves]


READ_SIZE = 4 << 20  # gzip_stream reads compressed bytes 4 MiB at a time


def stored_member_of_size(data: bytes, size: int) -> int:
    """How many bytes of ``data`` make a stored (level 0) gzip member of exactly ``size`` bytes."""
    n = size - 18 - 5 * (size // 65535 + 1)
    while len(gzip.compress(data[:n], compresslevel=0, mtime=0)) < size:
        n += 1
    while len(gzip.compress(data[:n], compresslevel=0, mtime=0)) > size:
        n -= 1
    assert len(gzip.compress(data[:n], compresslevel=0, mtime=0)) == size
    return n


@pytest.mark.parametrize("layout", ["member-header-split-by-a-read", "zero-padding-split-by-a-read"])
def test_gzip_member_boundaries_at_any_offset_load(layout: str, tmp_path: Path) -> None:
    spec = tw.tiny_spec(("local",), vocab=80_000)  # 6.7 MB of weights: streams cross read boundaries
    leaves = tw.random_leaves(spec, 9)
    records = io.BytesIO()
    for leaf in leaves:
        np.save(records, leaf, allow_pickle=False)
    data = records.getvalue()
    if layout == "member-header-split-by-a-read":
        n = stored_member_of_size(data, READ_SIZE - 1)
        content = gzip.compress(data[:n], compresslevel=0, mtime=0) + gzip.compress(data[n:], mtime=0)
    else:
        member = gzip.compress(data, compresslevel=1, mtime=0)
        content = member + b"\0" * (READ_SIZE - len(member) % READ_SIZE + 16)
    assert gzip.decompress(content) == data
    path = tmp_path / "model.weights.npy.gz"
    path.write_bytes(content)
    checkpoint = load_checkpoint(path)
    assert [a.tobytes() for _, a in checkpoint.iter_arrays()] == [a.tobytes() for a in leaves]


# ---------------------------------------------------------------- property: any spec, any container


@st.composite
def specs(draw: st.DrawFn) -> tuple[ReformerSpec, int]:
    """A small valid spec and the rank of plain positional weights."""
    layers = draw(st.lists(st.sampled_from(["local", "lsh"]), min_size=1, max_size=4))
    common = {
        "vocab": draw(st.integers(1, 12)),
        "heads": draw(st.integers(1, 3)),
        "head_size": draw(st.integers(1, 4)),
        "d_ff": draw(st.integers(1, 6)),
    }
    axes = draw(st.sampled_from([0, 2, 3]))
    if axes:
        shape = draw(st.lists(st.integers(1, 3), min_size=axes, max_size=axes))
        dims = draw(st.lists(st.integers(1, 3), min_size=axes, max_size=axes))
        return tw.tiny_spec(layers, axial_shape=shape, axial_dims=dims, **common), 3
    spec = tw.tiny_spec(
        layers, axial_shape=None, hidden=draw(st.integers(1, 6)), max_len=draw(st.integers(1, 6)), **common
    )
    return spec, draw(st.sampled_from([2, 3]))


CONTAINERS = ("trainer-pickle", "weights-only", "trainer-gzip", "loop-flat", "sharded", "npy", "save-to-file")


@settings(max_examples=150, deadline=None)
@given(
    spec_and_rank=specs(),
    container=st.sampled_from(CONTAINERS),
    nesting=st.sampled_from(sorted(tw.NESTINGS)),
    chunked_ff=st.booleans(),
    dtype=st.sampled_from(["float32", "bfloat16", "float16"]),
    bfloat16=st.sampled_from(["uint16", "pair", "ml_dtypes"]),
    protocol=st.integers(2, 5),
    numpy_names=st.sampled_from([1, 2]),
    jax=st.sampled_from([None, "array", "device_array"]),
    fortran=st.booleans(),
    shard_size=st.integers(1, 40),
    seed=st.integers(0, 2**16),
)
def test_any_spec_in_any_container_loads_back_identical_leaves(
    spec_and_rank: tuple[ReformerSpec, int],
    container: str,
    nesting: str,
    chunked_ff: bool,
    dtype: str,
    bfloat16: tw.BFloat16Style,
    protocol: int,
    numpy_names: int,
    jax: tw.JaxStyle | None,
    fortran: bool,
    shard_size: int,
    seed: int,
) -> None:
    # Combinations go beyond what Trax wrote (jax arrays in 2020 trees, say): the loader reads them all.
    spec, rank = spec_and_rank
    leaves = tw.random_leaves(spec, seed, dtype, positions_rank=rank, specials=True)
    tree_container = container in ("trainer-pickle", "weights-only")
    if tree_container and bfloat16 == "pair":
        bfloat16 = "ml_dtypes"  # pairs only ever sat in flat lists
    enc = Encoding(
        protocol=protocol,
        numpy_names=numpy_names,
        bfloat16=bfloat16,
        jax=jax,
        state_jax=jax,
        fortran=fortran,
    )
    tree = tw.NESTINGS[nesting](spec, leaves, chunked_ff=chunked_ff)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        writers: dict[str, Callable[[], Written]] = {
            "trainer-pickle": lambda: tw.write_trainer_jan_13_2020(d / "m.pkl", tree, history=True, enc=enc),
            "weights-only": lambda: tw.write_weights_only(d / "m.pkl", tree, enc=enc),
            "trainer-gzip": lambda: tw.write_trainer_jun_18_2020(d / "m.pkl.gz", leaves, history=True, enc=enc),
            "loop-flat": lambda: tw.write_loop_flat(d / "m.pkl.gz", leaves, version="Oct-28-2020", enc=enc),
            "sharded": lambda: tw.write_loop_sharded(d / "m.pkl.gz", leaves, max_shard_size=shard_size, enc=enc),
            "npy": lambda: tw.write_loop_mar_10_2021(d, leaves, history=True, enc=enc),
            "save-to-file": lambda: tw.write_save_to_file(d / "m.pkl.gz", leaves, enc=enc),
        }
        written = writers[container]()
        checkpoint = load_checkpoint(written.path)
        assert_same_leaves(checkpoint, written, leaves)
        plan(spec, checkpoint.leaves)


def assert_same_leaves(checkpoint: TraxCheckpoint, written: Written, leaves: list[Array]) -> None:
    loaded = list(checkpoint.iter_arrays())
    assert [leaf.path for leaf, _ in loaded] == list(written.leaf_paths)
    assert [leaf.dtype for leaf, _ in loaded] == [logical_dtype(a) for a in leaves]
    assert [(a.dtype, a.shape, a.tobytes()) for _, a in loaded] == [(a.dtype, a.shape, a.tobytes()) for a in leaves]


def test_an_empty_array_in_a_protocol_2_pickle_loads(tmp_path: Path) -> None:
    # Protocol 0-2 write an empty array's data as bytes() with no arguments, a call of builtins.bytes.
    obj = {
        "step": 1,
        "weights": [np.ones((4, 3), np.float32), np.zeros((0, 3), np.float32)],
        "state": [np.zeros((0,), np.float32)],
    }
    data = pickle.dumps(obj, protocol=2)
    assert ("GLOBAL", "__builtin__ bytes") in [(op.name, arg) for op, arg, _ in pickletools.genops(data)]
    path = tmp_path / "model.pkl"
    path.write_bytes(data)
    loaded = load_checkpoint(path)
    assert [(leaf.path, leaf.shape) for leaf in loaded.leaves] == [("weights[0]", (4, 3)), ("weights[1]", (0, 3))]
    assert [array.size for _, array in loaded.iter_arrays()] == [12, 0]
