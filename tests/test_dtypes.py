"""The dtype table: one owner of names, storage, sizes, safetensors codes, casts and what a file may hold."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reformer_tools import dtypes
from reformer_tools.commands import convert as convert_command
from reformer_tools.errors import ExitCode, ReformerToolsError


def test_the_table_agrees_with_numpy() -> None:
    for name, info in dtypes.DTYPES.items():
        assert info.name == name
        assert info.storage.isnative
        if name != "bfloat16":
            assert info.storage.name == name
        assert dtypes.itemsize(name) == info.storage.itemsize
        for spelling in info.spellings:  # every spelling means this dtype to numpy too
            assert np.dtype(spelling if spelling != "bool_" else "bool") == info.storage, spelling
    assert dtypes.itemsize("bfloat16") == 2


def test_weight_and_output_dtypes() -> None:
    assert dtypes.WEIGHT_DTYPES == ("float64", "float32", "float16", "bfloat16")
    assert dtypes.OUTPUT_DTYPES == ("float32", "float16", "bfloat16")
    assert all(dtypes.DTYPES[name].output for name in dtypes.OUTPUT_DTYPES)
    assert {name for name, info in dtypes.DTYPES.items() if info.output} == set(dtypes.OUTPUT_DTYPES)
    # The command line spells them out to keep numpy out of `--help`; this keeps the two in step.
    assert convert_command.OUTPUT_DTYPES == dtypes.OUTPUT_DTYPES


def test_safetensors_codes_are_one_to_one() -> None:
    codes = [info.safetensors for info in dtypes.DTYPES.values() if info.safetensors is not None]
    assert len(codes) == len(set(codes))
    assert dtypes.BY_SAFETENSORS["BF16"] == "bfloat16"
    assert dtypes.BY_SAFETENSORS["F32"] == "float32"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("<f4", "<f4"),
        ("f4", "<f4"),
        (">f4", ">f4"),
        ("=f8", "<f8"),
        ("|u1", "|u1"),
        ("float32", "<f4"),
        ("bool_", "|b1"),
        ("?", "|b1"),
        ("e", "<f2"),
        ("c16", "<c16"),
        ("<u2", "<u2"),
    ],
)
def test_type_codes_a_file_may_use(spec: str, expected: str) -> None:
    assert dtypes.untrusted_dtype(spec, "x") == np.dtype(expected)
    assert dtypes.untrusted_dtype(spec, "x").byteorder == np.dtype(expected).byteorder


@pytest.mark.parametrize(
    ("spec", "code", "needle"),
    [
        ("O", ExitCode.UNSAFE, "object arrays are refused"),
        ("|O8", ExitCode.UNSAFE, "object arrays are refused"),
        ("V8", ExitCode.UNSAFE, "structured dtypes are refused"),
        ("i4,O", ExitCode.UNSAFE, "structured dtype 'i4,O' refused"),
        ("f4,,", ExitCode.UNSAFE, "structured dtype"),
        ("(2,)f4", ExitCode.UNSAFE, "structured dtype"),
        ("2f4", ExitCode.UNSAFE, "structured dtype"),
        ("M8[us/0]", ExitCode.UNREADABLE, "unsupported dtype 'M8[us/0]'"),
        ("M8[xx]", ExitCode.UNREADABLE, "unsupported dtype"),
        ("<U4", ExitCode.UNREADABLE, "unsupported dtype '<U4'"),
        ("S3", ExitCode.UNREADABLE, "unsupported dtype"),
        ("a3", ExitCode.UNREADABLE, "unsupported dtype"),
        ("f16", ExitCode.UNREADABLE, "unsupported dtype 'f16'"),
        ("g", ExitCode.UNREADABLE, "unsupported dtype"),
        ("T", ExitCode.UNREADABLE, "unsupported dtype"),
        ("f4 ", ExitCode.UNREADABLE, "unsupported dtype"),
        ("", ExitCode.UNREADABLE, "malformed dtype"),
        ("f" * 100, ExitCode.UNREADABLE, "malformed dtype"),
    ],
)
def test_type_codes_a_file_may_not_use(spec: str, code: ExitCode, needle: str) -> None:
    with pytest.raises(ReformerToolsError, match=needle.replace("(", r"\(").replace("[", r"\[")) as caught:
        dtypes.untrusted_dtype(spec, "x")
    assert caught.value.exit_code == code
    assert len(str(caught.value)) < 120


def test_numpy_never_parses_a_type_code_from_a_file() -> None:
    # numpy.dtype('M8[us/0]') dies of SIGFPE; the check must answer without asking numpy. In a child:
    # a regression must fail this test, not kill the test run.
    code = "from reformer_tools import dtypes\ntry: dtypes.untrusted_dtype('M8[us/0]', 'x')\nexcept Exception: pass"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.text(alphabet=st.sampled_from("<>|=?bBhHiIlLqQefdgFDGcuUSaOVMm0123456789[],()/ _"), max_size=12))
def test_any_type_code_is_known_or_refused_in_one_line(spec: str) -> None:
    outcome: np.dtype | ReformerToolsError
    try:
        outcome = dtypes.untrusted_dtype(spec, ".npy record")
    except ReformerToolsError as error:
        outcome = error
    if isinstance(outcome, ReformerToolsError):
        assert outcome.exit_code in (ExitCode.UNREADABLE, ExitCode.UNSAFE)
        assert "\n" not in str(outcome)
    else:
        assert dtypes.logical_name(outcome) in dtypes.DTYPES


def test_require_weight_dtype_names_the_array() -> None:
    for name in dtypes.WEIGHT_DTYPES:
        dtypes.require_weight_dtype(name, "weights[0]")
    for name in ("complex64", "int32", "uint32", "uint64", "bool"):
        with pytest.raises(ReformerToolsError, match=f"weights\\[3\\] is {name}; weights must be floating point"):
            dtypes.require_weight_dtype(name, "weights[3]")


def test_bfloat16_decodes_bit_exactly_and_rounds_like_torch() -> None:
    bits = np.array([0x3F80, 0x7FC1, 0x8000, 0xFF80, 0x0001], np.uint16)
    decoded = dtypes.as_float32(bits, "bfloat16")
    assert (decoded.view(np.uint32) >> 16).astype(np.uint16).tolist() == bits.tolist()
    assert dtypes.cast(decoded, "float32", "bfloat16").tolist() == bits.tolist()
    # round to nearest even: 1 + 2**-8 is halfway between two bfloat16 values
    assert dtypes.float32_to_bfloat16_bits(np.array([1 + 2**-8], np.float32)).tolist() == [0x3F80]
    assert dtypes.cast(bits, "bfloat16", "bfloat16") is bits
    assert dtypes.cast(np.ones(2, np.float64), "float64", "float16").dtype == np.float16


def test_check_shape_refuses_what_numpy_cannot_make() -> None:
    dtypes.check_shape((0, 1 << 40), 4, "x")
    with pytest.raises(ReformerToolsError, match="larger than any array can be"):
        dtypes.check_shape((0, 10**30), 4, "x")
    with pytest.raises(ReformerToolsError, match="more than 32 dimensions"):
        dtypes.check_shape((1,) * 33, 4, "x")
