"""Issue 11, "Found by attacking it": each input, built small in code, in every command.

Whatever a file holds, every command ends with a documented exit code (0-5),
one line on stderr when it fails, no traceback and no signal. The inputs come
from ``tests/attacks.py``; the full-size versions run measured (time, memory)
in ``tests/test_stress.py``.
"""

from __future__ import annotations

import gzip
import json
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import Result

from reformer_tools import checkpoint, global_scan, loader, safe_pickle, summaries
from reformer_tools.checkpoint import CheckpointFormat
from reformer_tools.errors import ReformerToolsError
from reformer_tools.global_scan import scan_globals
from reformer_tools.loader import load_checkpoint
from tests import attacks as a
from tests import hostile as h
from tests.conftest import TRAX_FIXTURES, invoke
from tests.test_hostile import check_line, files_under

CONFIG = TRAX_FIXTURES / "t141_local_axial" / "config.json"
DOCUMENTED = {0, 1, 2, 3, 4, 5}


def every_command(path: Path, tmp_path: Path, *, config: Path | None = None) -> dict[str, Result]:
    """inspect, inspect --json, inspect --globals --json, verify and convert: each ends documented, in one line."""
    config = config or (path.parent / "config.json" if (path.parent / "config.json").exists() else CONFIG)
    out = tmp_path / "converted"
    results = {}
    for name, args in {
        "inspect": ["inspect", path],
        "inspect --json": ["inspect", path, "--json"],
        "inspect --globals": ["inspect", path, "--globals", "--json"],
        "verify": ["verify", path, "--config", config],
        "convert": ["convert", path, "--config", config, "-o", out],
    }.items():
        before = files_under(tmp_path)
        result = invoke(args)
        assert result.exit_code in DOCUMENTED, (name, result.exit_code, result.stderr)
        assert "Traceback" not in result.stderr, name
        if name == "inspect --globals" and result.exit_code == 4:
            check_line(result.stderr, str(path.parent), prefix="warning: ")
        elif result.exit_code in (2, 3, 4, 5):
            check_line(result.stderr, str(path.parent))
        if name != "convert" or result.exit_code != 0:
            assert files_under(tmp_path) == before, name
        results[name] = result
    return results


def assert_refused_by_loading_commands(results: dict[str, Result], code: int, needle: str) -> None:
    for name in ("inspect", "inspect --json", "verify", "convert"):
        assert results[name].exit_code == code, (name, results[name].stderr)
        assert needle in results[name].stderr, (name, results[name].stderr)
        assert results[name].stdout == "", name


# ------------------------------------------------------------------ hangs and memory


def test_a_huge_flat_weights_integer_is_no_shard_count(tmp_path: Path) -> None:
    # 2**500 shard files were listed before anything was checked: 60 s and 2.8 GB for a 100-byte file.
    path = a.huge_flat_weights(tmp_path / "ckpt")
    results = every_command(path, tmp_path)
    assert_refused_by_loading_commands(results, 3, "the weights live in a side file, but none exists")
    assert len(results["inspect"].stderr) < 400  # the 151-digit number is never written out whole
    (tmp_path / "ckpt" / "model.pkl.shard0").write_bytes(b"x")
    results = every_command(path, tmp_path)
    assert_refused_by_loading_commands(results, 3, "shard files, more than the 10,000 this tool reads")


def test_a_key_that_shares_itself_is_measured_once(tmp_path: Path) -> None:
    # A tuple holding one tuple twice, 99 deep: 2**99 items to check and to hash. It was measured item by item.
    path = a.shared_key(tmp_path / "ckpt")
    results = every_command(path, tmp_path)
    assert_refused_by_loading_commands(results, 3, "dict keys and set members hold more than 10,000,000 items")
    assert results["inspect --globals"].exit_code == 0


def test_keys_are_budgeted_across_the_whole_pickle(tmp_path: Path) -> None:
    # 100 keys of 4 million items each (one 1,000-item tuple, referenced 4,000 times): 60 s before.
    path = a.large_tuple_keys(tmp_path / "ckpt")
    results = every_command(path, tmp_path)
    assert_refused_by_loading_commands(results, 3, "more than 10,000,000 items")


def test_a_key_of_megabytes_is_refused(tmp_path: Path) -> None:
    path = a.large_string_keys(tmp_path / "ckpt", 0.2)
    results = every_command(path, tmp_path)
    assert_refused_by_loading_commands(results, 3, "unhashable text of 2,000,000 characters used as a key")


@pytest.mark.parametrize("build", [a.shared_shape, a.deep_shape], ids=["shared", "deep"])
def test_a_shape_dtype_shape_must_be_a_few_integers(build: a.Builder, tmp_path: Path) -> None:
    # Shown with repr: 2**60 items (a hang), or 200,000 levels (RecursionError, exit 70).
    path = build(tmp_path / "ckpt", 1.0)
    results = every_command(path, tmp_path)
    assert_refused_by_loading_commands(results, 3, "trax ShapeDtype: malformed shape (not a few integers)")


def test_a_wide_deep_weights_tree_is_walked_one_level_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 999 levels, then 4 million entries: every child's path (3 KB each) was built before any was
    # looked at (9.9 GB, then a MemoryError traceback). Now the first non-array stops the walk.
    path = a.wide_deep_tree(tmp_path / "ckpt", 0.01)
    results = every_command(path, tmp_path)
    assert_refused_by_loading_commands(results, 3, "the weights hold a NoneType at weights[0][0][0]")
    # Many arrays shallow: the array limit; deep: the paths' characters (checked before a path is built).
    monkeypatch.setattr(checkpoint, "MAX_ARRAYS", 1000)
    monkeypatch.setattr(loader, "MAX_PATH_CHARS", 100_000)
    arrays = h.small_array() + h.MEMOIZE + h.POP + h.EMPTY_LIST + h.MARK + h.get(0) * 1001 + h.APPENDS
    for depth, needle in ((10, "more than 1,000 arrays"), (900, "too large or refers to itself (its paths)")):
        path = tmp_path / f"depth{depth}" / "model.pkl"
        path.parent.mkdir()
        path.write_bytes(a.checkpoint(b"", weights=h.EMPTY_LIST * depth + arrays + h.APPEND * depth))
        with pytest.raises(ReformerToolsError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            load_checkpoint(path, data=False)


@pytest.mark.parametrize("data", [True, False])
def test_an_array_repeated_in_the_tree_is_byte_swapped_once(data: bool, tmp_path: Path) -> None:
    # One 4 MB big-endian array referred to 400 times (a 4 MB file) took 1.7 GB: one native copy per reference.
    path = tmp_path / "model.pkl"
    array = np.arange(64 * 64, dtype=">f4").reshape(64, 64)
    path.write_bytes(pickle.dumps({"weights": [array] * 50, "step": 1}, protocol=4))
    checkpoint = load_checkpoint(path, data=data)
    assert len(checkpoint.leaves) == 50
    if data:
        first, *rest = [stored for _leaf, stored in checkpoint.iter_arrays()]
        assert first.dtype.isnative
        assert np.array_equal(first, array)
        assert all(other is first for other in rest)


class _SharedBuffer:
    """Pickles as a 64x64 float32 array whose data is one bytes object every instance shares (memoised)."""

    DATA = np.ones((64, 64), dtype=np.float32).tobytes()

    def __reduce__(self) -> tuple[Any, ...]:
        rebuild, args, (version, _shape, dtype, fortran, _data) = np.ones(1, np.float32).__reduce__()
        return rebuild, args, (version, (64, 64), dtype, fortran, self.DATA)


@pytest.mark.parametrize("how", ["one array", "one buffer"])
def test_weights_may_not_outgrow_the_file(how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Each repeat costs nothing to load, but convert would write it out again: a 4 MB file referring
    # to one array (or one buffer) a million times asked for 4 TB of output.
    monkeypatch.setattr(loader, "MAX_REPEATED_BYTES", 10 * 64 * 64 * 4)
    path = tmp_path / "ckpt" / "model.pkl"
    path.parent.mkdir()
    array = np.ones((64, 64), dtype=np.float32)

    def weights(count: int) -> list[Any]:
        return [array] * count if how == "one array" else [_SharedBuffer() for _ in range(count)]

    path.write_bytes(pickle.dumps({"weights": weights(12), "step": 1}, protocol=4))
    results = every_command(path, tmp_path)
    assert_refused_by_loading_commands(results, 3, "the weights repeat data: over 160.0 KiB more than the file holds")
    path.write_bytes(pickle.dumps({"weights": weights(11), "step": 1}, protocol=4))
    assert len(load_checkpoint(path).leaves) == 11


def test_a_long_metadata_string_is_counted_not_kept(tmp_path: Path) -> None:
    # 1 GiB of text from a 1 MB gzip file took 5.3 GB; here 16 MiB, and the summary says what it is.
    path = a.huge_string(tmp_path / "ckpt", 1 / 64)
    checkpoint = load_checkpoint(path, data=False)
    (notes,) = [item for item in checkpoint.metadata if item.key == "notes"]
    assert notes.summary == f"text of {(1 << 24) - 4096:,} characters"
    results = every_command(path, tmp_path)
    assert "text of 16,773,120 characters" in results["inspect"].stdout
    astral = a.huge_string(tmp_path / "astral", 1 / 64, astral=True)
    (notes,) = [item for item in load_checkpoint(astral).metadata if item.key == "notes"]
    assert notes.summary == f"text of {(1 << 24) - 4096 - 3:,} characters"


def test_strings_are_budgeted_by_the_memory_they_take(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A character of UTF-8 can take 4 bytes as a str: the budget counts decoded sizes, before the next string.
    monkeypatch.setattr(safe_pickle, "MAX_TEXT_BYTES", 1 << 20)
    strings = (h.ustr("\U0001f600" + "a" * 100_000) + h.POP) * 3
    path = tmp_path / "model.pkl"
    path.write_bytes(a.checkpoint(strings))
    with pytest.raises(ReformerToolsError, match="strings take more than 1 MiB"):
        load_checkpoint(path)


def test_metadata_summaries_share_one_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 100 entries, each the same list of 6,000 lists: counted once, up to the budget, not 100 times.
    monkeypatch.setattr(summaries, "MAX_VISITS", 10_000)
    many = h.EMPTY_LIST + h.MEMOIZE + h.POP + h.EMPTY_LIST + h.MARK + h.get(0) * 6_000 + h.APPENDS + h.MEMOIZE
    entries = many + h.POP + b"".join(a.entry(f"e{i}", h.get(1)) for i in range(100))
    path = tmp_path / "model.pkl"
    path.write_bytes(a.checkpoint(entries))
    metadata = {item.key: item.summary for item in load_checkpoint(path, data=False).metadata}
    assert metadata["e0"] == "list of 6000 items, no arrays"
    assert metadata["e99"] == "list of 6000 items, too many to look through"


# ------------------------------------------------------------------ internal errors from input


WEIGHT_FORMATS = ["gzip-flat", "plain-tree", "npy-side", "npy-stream"]


@pytest.mark.parametrize("where", WEIGHT_FORMATS)
@pytest.mark.parametrize("code", ["c8", "c16", "u4", "u8", "i4", "b1"])
def test_weights_that_are_not_floating_point_are_refused_at_load(code: str, where: str, tmp_path: Path) -> None:
    # complex64 weights reached `convert` (KeyError: 'complex64', exit 70) on the streaming path and from side files.
    path = a.weights_of_dtype(tmp_path / "ckpt", code, where)
    name = np.dtype(code).name
    results = every_command(path, tmp_path)
    assert_refused_by_loading_commands(results, 3, f"is {name}; weights must be floating point")


@pytest.mark.parametrize("where", WEIGHT_FORMATS)
def test_float128_weights_are_refused(where: str, tmp_path: Path) -> None:
    path = a.weights_of_dtype(tmp_path / "ckpt", "f16", where)
    results = every_command(path, tmp_path)
    assert_refused_by_loading_commands(results, 3, "unsupported dtype")


def test_a_step_too_large_to_carry_is_unknown_and_the_summary_says_why(tmp_path: Path) -> None:
    # A 501-bit step went into the safetensors header, past the space reserved for it (exit 70).
    path = a.huge_step(tmp_path / "ckpt")
    results = every_command(path, tmp_path)
    assert results["convert"].exit_code == 0, results["convert"].stderr
    document = json.loads(results["inspect --json"].stdout)
    assert document["step"] is None
    assert "a 501-bit number, not a whole number from 0 to 2**63 - 1" in document["metadata"]["step"]
    checkpoint = load_checkpoint(path)
    assert checkpoint.step is None
    largest = a.flat_checkpoint(tmp_path / "largest", "f4", step=a.long1((1 << 63) - 1))
    assert load_checkpoint(largest).step == (1 << 63) - 1
    negative = a.flat_checkpoint(tmp_path / "negative", "f4", step=h.integer(-1))
    assert load_checkpoint(negative).step is None


@pytest.mark.parametrize(
    ("code", "exit_code", "needle"),
    [
        ("f4,,", 4, "structured dtype"),  # SyntaxError from numpy, exit 70
        ("i4,O", 4, "structured dtype"),
        ("M8[xx]", 3, "unsupported dtype"),
        ("M8[us/0]", 3, "unsupported dtype 'M8[us/0]'"),  # SIGFPE inside numpy: no exit code at all
        ("<U4", 3, "unsupported dtype"),
    ],
)
@pytest.mark.parametrize("where", ["pickle", "npy"])
def test_dtype_strings_never_reach_numpy(code: str, exit_code: int, needle: str, where: str, tmp_path: Path) -> None:
    path = a.bad_dtype_string(tmp_path / "ckpt", code, where)
    results = every_command(path, tmp_path)
    assert_refused_by_loading_commands(results, exit_code, needle)


def test_a_structured_npy_descr_string_is_refused_as_unsafe(tmp_path: Path) -> None:
    # "i4,O" is a str, so it passed the check for list descrs and was exit 3 where SECURITY.md says 4.
    path = a.structured_npy_descr(tmp_path / "ckpt")
    results = every_command(path, tmp_path)
    assert_refused_by_loading_commands(results, 4, "structured dtype 'i4,O' refused")


# ------------------------------------------------------------------ no weights, no checkpoint


def test_a_tree_without_arrays_is_no_checkpoint(tmp_path: Path) -> None:
    path = a.empty_weights(tmp_path / "ckpt")
    results = every_command(path, tmp_path)
    assert_refused_by_loading_commands(results, 3, "'weights' holds no weight arrays")


@pytest.mark.parametrize("where", ["plain", "npy"])
def test_a_scalar_is_no_weight(where: str, tmp_path: Path) -> None:
    # A 0-d array among the weights reached the mapper's layout reading (IndexError, exit 70).
    path = tmp_path / "ckpt" / "model.pkl"
    path.parent.mkdir()
    if where == "plain":
        path.write_bytes(a.checkpoint(b"", weights=h.lst(h.small_array(), h.numpy_array((), "f4", bytes(4)))))
    else:
        path = path.with_name("weights.npy")
        path.write_bytes(h.npy_record("<f4", (2,), bytes(8)) + h.npy_record("<f4", (), bytes(4)))
    results = every_command(path, tmp_path)
    assert_refused_by_loading_commands(results, 3, "[1] is a scalar; weights are arrays of one or more dimensions")


def test_a_npy_of_token_ids_is_no_checkpoint(tmp_path: Path) -> None:
    path = a.input_ids_npy(tmp_path / "ckpt")
    results = every_command(path, tmp_path)
    assert_refused_by_loading_commands(results, 3, "input_ids.npy[0] is int32; weights must be floating point")


# ------------------------------------------------------------------ --globals cannot be blinded


def globals_document(path: Path) -> dict[str, object]:
    result = invoke(["inspect", path, "--globals", "--json"])
    assert result.exit_code == 4, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_globals_are_listed_past_a_key_that_cannot_be_hashed(tmp_path: Path) -> None:
    path = a.unhashable_key_then_global(tmp_path / "ckpt")
    (found,) = scan_globals(path)
    assert [(r.label, r.allowed) for r in found.references] == [("builtins.str", False), ("os.system", False)]
    assert found.complete
    assert {g["name"] for g in globals_document(path)["globals"]} == {"str", "system"}  # type: ignore[index, union-attr]


def test_globals_of_a_second_pickle_are_listed(tmp_path: Path) -> None:
    path = a.second_pickle(tmp_path / "ckpt")
    (found,) = scan_globals(path)
    assert len(found.pickles) == 2
    assert [p.problem for p in found.pickles] == [None, None]
    assert found.pickles[1].start == found.pickles[0].end
    (system,) = [r for r in found.references if r.name == "system"]
    assert system.pickle == 1
    results = every_command(path, tmp_path)
    assert_refused_by_loading_commands(results, 3, "unexpected data after the end of the pickle")


def test_globals_after_text_are_listed_and_the_text_reported_unscanned(tmp_path: Path) -> None:
    path = a.text_then_pickle(tmp_path / "ckpt")
    (found,) = scan_globals(path)
    assert [r.label for r in found.references] == ["os.system"]
    (text,) = found.unscanned
    assert (text.start, text.end) == (0, len(b"# notes about this checkpoint\n"))
    assert "is no pickle opcode" in text.reason
    results = every_command(path, tmp_path)
    assert_refused_by_loading_commands(results, 3, "not a Trax checkpoint")


def test_unscannable_bytes_are_reported_with_their_reason(tmp_path: Path) -> None:
    path = tmp_path / "model.pkl.gz"
    good = h.proto(2) + h.call(h.global_("os", "system"), h.ustr("true")) + h.STOP
    data = gzip.compress(good + b"\xff" * 100 + good)
    path.write_bytes(data[:-12])  # cut inside the gzip trailer of a member: the rest cannot be read
    (found,) = scan_globals(path)
    assert [r.label for r in found.references] == ["os.system"]
    assert found.unscanned[-1].end is None
    assert "truncated" in found.unscanned[-1].reason or "corrupt" in found.unscanned[-1].reason
    assert found.compressed


def test_a_put_the_scan_cannot_read_makes_every_later_memo_entry_unknown(tmp_path: Path) -> None:
    # Loading refuses an index this long; the scan must not fall back to what the memo held before.
    path = tmp_path / "model.pkl"
    overwrite = h.sstr("os") + b"p" + b"9" * 300 + b"\n" + h.POP
    strings = h.sstr("numpy") + b"p1\n" + h.POP + h.sstr("dtype") + b"p2\n" + h.POP + overwrite
    path.write_bytes(h.proto(4) + strings + b"g1\ng2\n" + h.STACK_GLOBAL + h.STOP)
    (found,) = scan_globals(path)
    assert [(r.resolved, r.allowed) for r in found.references] == [(False, False)]
    assert invoke(["inspect", path, "--globals"]).exit_code == 4


def test_a_listing_with_unscanned_bytes_is_no_pass(tmp_path: Path) -> None:
    # Only allowed globals were found, but the trailing bytes were never read as a pickle.
    path = tmp_path / "model.pkl"
    path.write_bytes(h.proto(2) + h.global_("collections", "OrderedDict") + h.STOP + b"trailing notes")
    result = invoke(["inspect", path, "--globals", "--json"])
    assert result.exit_code == 3
    check_line(result.stderr, str(path), "1 stretch of bytes could not be scanned")
    document = json.loads(result.stdout)
    assert (document["ok"], document["complete"], document["refused"]) == (False, False, 0)
    first = document["files"][0]["pickles"][0]
    assert (first["start"], first["end"], first["problem"]) == (0, len(path.read_bytes()) - len("trailing notes"), None)
    assert document["files"][0]["unscanned"]
    human = invoke(["inspect", path, "--globals"])
    assert human.exit_code == 3
    assert "not scanned" in human.stdout
    assert "collections.OrderedDict" in human.stdout


def test_a_scan_lists_every_pickle_of_an_npy_stream_and_skips_array_data(tmp_path: Path) -> None:
    hostile = h.proto(2) + h.call(h.global_("os", "system"), h.ustr("true")) + h.STOP
    stream = h.npy_record("<f4", (4,), bytes(16)) + h.npy_record("|O", (1,)) + hostile
    stream += h.npy_record("<f4", (2,), struct.pack("<2f", 1.0, 2.0)) + hostile
    path = tmp_path / "weights.npy"
    path.write_bytes(stream)
    (found,) = scan_globals(path)
    assert [(r.label, r.count) for r in found.references] == [("os.system", 2)]
    assert len(found.pickles) == 2
    assert found.complete


def test_the_scan_budget_reports_what_it_did_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(safe_pickle, "MAX_OPCODES", 1000)
    path = tmp_path / "model.pkl"
    path.write_bytes(h.proto(4) + h.NONE * 2000 + h.POP * 2000 + h.global_("os", "system") + h.STOP)
    (found,) = scan_globals(path)
    assert found.references == []
    (rest,) = found.unscanned
    assert rest.end is None
    assert "more than 1,000 opcodes" in rest.reason


def test_scan_spans_are_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(global_scan, "MAX_SPANS", 10)
    path = tmp_path / "model.pkl"
    path.write_bytes((h.proto(2) + h.NONE + b"\xff") * 50)
    (found,) = scan_globals(path)
    assert len(found.pickles) + len(found.unscanned) <= 11
    assert found.unscanned[-1].end is None


def test_a_pickle_written_by_python_scans_like_the_machine_reads_it(tmp_path: Path) -> None:
    # The scan follows the stack and memo only as far as strings go; pickletools agrees on the opcodes.
    path = tmp_path / "model.pkl"
    data = pickle.dumps({"weights": [np.zeros(3, np.float32)], "history": {"a": [1, 2.5, "x" * 10]}}, protocol=4)
    path.write_bytes(data)
    (found,) = scan_globals(path)
    assert all(r.allowed for r in found.references)
    (only,) = found.pickles
    assert (only.start, only.end, only.problem) == (0, len(data), None)
    assert load_checkpoint(path).format is CheckpointFormat.PICKLE_TREE


def test_metadata_nested_too_deep_to_look_through_is_not_said_to_hold_no_arrays(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(summaries, "MAX_DEPTH", 3)
    nested: object = np.zeros(4, np.float32)
    for _ in range(5):
        nested = [nested]
    (item,) = summaries.summarize({"slots": nested})
    assert item.summary == "list of 1 items, nested more than 3 deep to look through"


def test_side_slot_files_are_found_whatever_the_checkpoint_is_called(tmp_path: Path) -> None:
    path = tmp_path / "model[1].pkl.gz"  # glob would read "[1]" as a character class
    (tmp_path / "model[1].opt_slots0.npy.gz").write_bytes(b"")
    (item,) = summaries.summarize({"slots": 1}, path)
    assert item.summary == "optimizer slots stored in side files in model[1].opt_slots0.npy.gz (not read)"
