"""Cache-blocked copies for the transposes of ``convert``.

Trax stores every attention and dense kernel transposed relative to Hugging Face, so
nearly all of a checkpoint's bytes go through a transposing copy. numpy's copy of a
transposed view (``np.copyto(out, a.T)``, ``np.ascontiguousarray(a.T)``) walks the output
in order and reads the source one element per cache line; the line is evicted long
before its neighbours are wanted, so each element costs a cache miss.

:func:`copy_into` copies in strips a few elements wide along the output's contiguous axis
instead: a strip reads a handful of whole source rows, which stay in L1 while the strip
is written, and writes full output cache lines. On enwik8's dense kernels this is 1.3 to 4
times faster than numpy's own copy into the same buffer (``benchmarks/bench_transpose.py``); where
numpy's copy already stays in the cache (small kernels, the per-head transposes) it is used as is.
The result is bit-identical: it is the same element copy, in another order.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]

#: Below this many bytes numpy's own copy wins: the Python loop's overhead is not worth it.
MIN_BLOCKED_BYTES: Final = 1 << 16
#: Output rows below which numpy's copy wins (the (258, 2048) output kernel: measured 0.6x blocked).
MIN_BLOCKED_ROWS: Final = 512
#: Strip width in elements. 16 fills a 64-byte line for float32 and was fastest for 2-byte types too
#: (16 source rows fit L1 with room to spare); 8-byte types write a line per 8.
_STRIP_ELEMENTS: Final = 16
_STRIP_ELEMENTS_WIDE: Final = 8


def strip_width(itemsize: int) -> int:
    """Elements per strip for an element size in bytes."""
    return _STRIP_ELEMENTS if itemsize <= 4 else _STRIP_ELEMENTS_WIDE


def worth_blocking(view: Array) -> bool:
    """Whether :func:`copy_into` copies ``view`` in strips (else numpy's copy is as fast)."""
    return (
        view.ndim == 2  # heads_in's (h, dh, d): each head's transpose fits the cache; numpy's copy is fine
        and view.shape[0] >= MIN_BLOCKED_ROWS  # few, short strips: the loop costs more than it saves
        and view.nbytes >= MIN_BLOCKED_BYTES
        and view.shape[1] > strip_width(view.itemsize)  # one strip is numpy's copy
        and view.strides[-1] != view.itemsize  # rows already contiguous: a plain copy streams
        and not view.flags.c_contiguous
    )


def copy_into(out: Array, view: Array) -> Array:
    """``np.copyto(out, view)`` for a C-contiguous ``out`` of ``view``'s shape and dtype; returns ``out``.

    Fast for a large transposed 2-D ``view`` (its last axis strided); any other view takes numpy's copy.
    """
    if out.shape != view.shape or out.dtype != view.dtype or not out.flags.c_contiguous:
        raise ValueError(f"copy_into: out {out.dtype} {out.shape} does not fit view {view.dtype} {view.shape}")
    if not worth_blocking(view) or np.may_share_memory(out, view):  # overlap: numpy's copy buffers it
        np.copyto(out, view)
        return out
    width = strip_width(view.itemsize)
    for start in range(0, view.shape[-1], width):
        np.copyto(out[..., start : start + width], view[..., start : start + width])
    return out


def contiguous(view: Array) -> Array:
    """``np.ascontiguousarray(view)``, blocked when ``view`` is a transposed view."""
    if view.flags.c_contiguous:
        return view
    return copy_into(np.empty(view.shape, dtype=view.dtype), view)
