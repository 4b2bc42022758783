"""Micro-benchmark of the transposes of ``convert``: the blocked copy against numpy's, per kernel shape.

For each enwik8 kernel shape and dtype, the median of ``--repeat`` runs of:

- ``numpy new``: ``np.ascontiguousarray(a.T)`` (a fresh array each time, as before #12 without a buffer);
- ``numpy into``: ``np.copyto(out, a.T)`` into a preallocated buffer (what ``convert`` did before #12);
- ``blocked``: ``reformer_tools.transpose.copy_into(out, a.T)`` into the same buffer (what it does now).

All three run alternately in one process, so the ratios hold on a busy machine. Options:
``--repeat N`` (default 15), ``--markdown`` (the table as Markdown).

    python benchmarks/bench_transpose.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import numpy as np

from reformer_tools.transpose import copy_into

#: (label, Trax source shape, how the transform views it): enwik8's kernels.
SHAPES: Final = (
    ("dense in (1024, 4096)", (1024, 4096), lambda a: a.T),
    ("dense out (4096, 1024)", (4096, 1024), lambda a: a.T),
    ("q/k/v heads_in (8, 1024, 128)", (8, 1024, 128), lambda a: a.transpose(0, 2, 1)),
    ("o heads_out (8, 128, 1024)", (8, 128, 1024), lambda a: a.reshape(1024, 1024).T),
    ("output (2048, 258)", (2048, 258), lambda a: a.T),
)
DTYPES: Final = (("float32", np.float32), ("bfloat16 bits", np.uint16))


def median_seconds(function: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=15, help="runs per variant; the median is reported")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args(argv)
    headers = ("kernel", "dtype", "MB", "numpy new ms", "numpy into ms", "blocked ms", "vs new", "vs into")
    rows = []
    rng = np.random.default_rng(0)
    for label, shape, view_of in SHAPES:
        for dtype_name, dtype in DTYPES:
            a = rng.integers(0, 1 << 15, size=shape, dtype=np.int64).astype(dtype)
            view = view_of(a)
            out = np.empty(view.shape, dtype=dtype)
            out.fill(0)  # touch the buffer once: convert's buffers are reused
            if not np.array_equal(copy_into(out, view), np.ascontiguousarray(view)):
                raise SystemExit(f"{label} {dtype_name}: the blocked copy differs")
            new = median_seconds(lambda v=view: np.ascontiguousarray(v), args.repeat)
            into = median_seconds(lambda v=view, o=out: np.copyto(o, v), args.repeat)
            blocked = median_seconds(lambda v=view, o=out: copy_into(o, v), args.repeat)
            rows.append(
                [
                    label,
                    dtype_name,
                    f"{a.nbytes / 1e6:.1f}",
                    f"{new * 1e3:.2f}",
                    f"{into * 1e3:.2f}",
                    f"{blocked * 1e3:.2f}",
                    f"{new / blocked:.1f}x",
                    f"{into / blocked:.1f}x",
                ]
            )
    if args.markdown:
        print("| " + " | ".join(headers) + " |")
        print("|" + "|".join("---" for _ in headers) + "|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
