"""The blocked transposing copy equals numpy's copy, bit for bit, for every shape, dtype and layout (#12)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reformer_tools.mapper import HEADS_IN, HEADS_OUT, TRANSFORMS, TRANSPOSE, Transform
from reformer_tools.transpose import contiguous, copy_into, strip_width, worth_blocking

Array = npt.NDArray[Any]
# bfloat16 is stored as its uint16 bits; float64 has the wide strip.
DTYPES = (np.float32, np.float16, np.uint16, np.float64)


def _random(shape: tuple[int, ...], dtype: Any, seed: int) -> Array:
    bits = np.random.default_rng(seed).integers(0, 256, size=int(np.prod(shape)) * np.dtype(dtype).itemsize)
    return bits.astype(np.uint8).view(dtype).reshape(shape)  # every bit pattern, NaNs included


def _same(a: Array, b: Array) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


@settings(max_examples=150, deadline=None)
@given(
    rows=st.integers(1, 300),
    cols=st.integers(1, 300),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**32 - 1),
)
def test_blocked_transpose_equals_numpy(rows: int, cols: int, dtype: Any, seed: int) -> None:
    a = _random((rows, cols), dtype, seed)
    out = np.full((cols, rows), 7, dtype=dtype)
    assert copy_into(out, a.T) is out
    assert _same(out, np.ascontiguousarray(a.T))
    assert _same(contiguous(a.T), np.ascontiguousarray(a.T))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("shape", "blocked"),
    [
        ((1, 70_000), False),
        ((70_000, 1), False),
        ((257, 259), False),
        ((1024, 65), False),
        ((65, 1024), True),
        ((2, 33_000), False),
        ((20, 3_300), True),
        ((17, 4099), True),
        ((600, 513), True),
        ((4096 + 3, 17), False),
    ],
)
def test_blocked_path_for_large_and_odd_shapes(shape: tuple[int, int], blocked: bool, dtype: Any) -> None:
    a = _random(shape, dtype, 1)
    assert worth_blocking(a.T) is blocked
    out = np.empty(shape[::-1], dtype=dtype)
    assert _same(copy_into(out, a.T), np.ascontiguousarray(a.T))


@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 40), st.integers(1, 40), st.integers(1, 40)),
    axes=st.permutations([0, 1, 2]),
    dtype=st.sampled_from(DTYPES),
    step=st.sampled_from([1, 2, -1]),
)
def test_any_permutation_and_non_contiguous_source(
    shape: tuple[int, int, int], axes: list[int], dtype: Any, step: int
) -> None:
    # Sliced (every other element, reversed) sources are not contiguous before the transpose either.
    big = _random(tuple(s * abs(step) for s in shape), dtype, 3)
    source = big[:: abs(step), ::step, :: abs(step)] if step != 1 else big
    view = source.transpose(axes)
    out = np.empty(view.shape, dtype=dtype)
    assert _same(copy_into(out, view), np.ascontiguousarray(view))


def test_large_non_contiguous_views_take_the_blocked_path() -> None:
    base = _random((600, 1800), np.float32, 4)
    for view in (base[::2, ::3].T, base[:, ::-1].T, base[::-1].T, base[100:500, 7:700].T):
        assert worth_blocking(view)
        out = np.empty(view.shape, dtype=view.dtype)
        assert _same(copy_into(out, view), np.ascontiguousarray(view))


def _old_apply(transform: Transform, source: Array) -> Array:
    """What Transform.apply did before the blocked copy: numpy's strided copy."""
    return np.ascontiguousarray(transform.view(source)).reshape(transform.target_shape(source.shape))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("transform", "shape"),
    [
        (TRANSPOSE, (1024, 96)),
        (TRANSPOSE, (1, 40_000)),
        (TRANSPOSE, (129, 258)),
        (HEADS_IN, (8, 256, 32)),
        (HEADS_IN, (3, 5, 7)),
        (HEADS_IN, (1, 2000, 17)),
        (HEADS_OUT, (8, 32, 256)),
        (HEADS_OUT, (3, 7, 5)),
    ],
)
def test_transforms_equal_the_old_transform(transform: Transform, shape: tuple[int, ...], dtype: Any) -> None:
    source = _random(shape, dtype, 5)
    expected = _old_apply(transform, source)
    assert _same(transform.apply(source), expected)
    scratch = np.empty(expected.size, dtype=dtype)
    assert _same(transform.apply(source, scratch), expected)


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_every_transform_with_a_scratch_buffer(name: str) -> None:
    transform = TRANSFORMS[name]
    shape = {"drop_leading_axis": (1, 300, 70), "positions": (1, 300, 70)}.get(name, (300, 70))
    if name in ("heads_in", "heads_out"):
        shape = (3, 300, 70)
    source = _random(shape, np.float32, 6)
    expected = _old_apply(transform, source)
    assert _same(transform.apply(source, np.empty(expected.size, dtype=np.float32)), expected)


def test_overlapping_output_is_still_correct() -> None:
    square = _random((300, 300), np.float32, 7)
    expected = np.ascontiguousarray(square.T)
    assert _same(copy_into(square, square.T), expected)


def test_mismatched_output_is_refused() -> None:
    a = _random((300, 200), np.float32, 8)
    with pytest.raises(ValueError, match="does not fit"):
        copy_into(np.empty((300, 200), np.float32), a.T)
    with pytest.raises(ValueError, match="does not fit"):
        copy_into(np.empty((200, 300), np.float16), a.T)
    with pytest.raises(ValueError, match="does not fit"):
        copy_into(np.empty((300, 200), np.float32).T, a.T)


def test_strip_width() -> None:
    assert strip_width(2) == strip_width(4) == 16
    assert strip_width(8) == 8
