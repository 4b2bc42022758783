"""One-line summaries of a checkpoint's non-weight entries, bounded in work and length whatever they hold."""

from __future__ import annotations

import glob
import itertools
from pathlib import Path
from typing import Any, Final

import numpy as np

from reformer_tools.allowlist import BFloat16Array, Global, LargeText, ShapeDtype, TraxHistory, type_name
from reformer_tools.checkpoint import MetadataItem
from reformer_tools.sizes import format_size
from reformer_tools.untrusted import printable, shown

#: Entries shown: a Trax checkpoint has about ten, and a million would keep `inspect` printing for minutes.
MAX_ENTRIES: Final = 100
#: Objects looked at for all summaries of one checkpoint together: entries may all share one huge object.
MAX_VISITS: Final = 1_000_000
MAX_DEPTH: Final = 1000  # metadata is never walked deeper than the weights may be nested
_MAX_SIGNATURE: Final = 8  # ShapeDtypes shown in an input signature
_MAX_SCALARS: Final = 64  # entries of a dict of scalars (optimizer parameters) looked at


class _Budget:
    """Visits left for the summaries of one checkpoint."""

    def __init__(self, visits: int) -> None:
        self.left = visits

    def spend(self, n: int = 1) -> bool:
        """Whether ``n`` more visits fit; they are spent either way."""
        self.left -= n
        return self.left >= 0


def key_label(key: Any) -> str:
    """A dict key as shown in a path or a metadata line: quoted if a string, escaped, cut at 80 characters."""
    return shown(key, 80)


def summarize(entries: dict[Any, Any], path: Path | None = None) -> list[MetadataItem]:
    """One line per non-weight entry (optimizer slots, history, state, ...), at most ``MAX_ENTRIES`` of them."""
    budget = _Budget(MAX_VISITS)
    items = []
    for key, value in itertools.islice(entries.items(), MAX_ENTRIES):
        label = key_label(key).strip("'")
        items.append(MetadataItem(label, _summarize_value(label, value, path, budget)))
    if len(entries) > MAX_ENTRIES:
        items.append(MetadataItem("...", f"{len(entries) - MAX_ENTRIES:,} more entries, not shown"))
    return items


def _summarize_value(key: str, value: Any, path: Path | None, budget: _Budget) -> str:
    if isinstance(value, TraxHistory) or (key == "history" and isinstance(value, dict)):
        values = value.values if isinstance(value, TraxHistory) else value.get("_values", value)
        return _summarize_history(values, budget)
    if key in ("slots", "slots_per_task") and type(value) is int and path is not None:
        pattern = glob.escape(path.name.removesuffix("pkl.gz")) + "opt_slots*.npy.gz"  # "[1]" is no class
        found = sorted(p.name for p in path.parent.glob(pattern))
        where = f" in {', '.join(found)}" if found else ""
        return f"optimizer slots stored in side files{where} (not read)"
    signature = _signature(value)
    if signature is not None:
        return signature
    scalars = _scalars(value)
    if scalars is not None:
        return scalars
    if isinstance(value, LargeText):
        return f"text of {value.chars:,} characters"
    if type(value) in (int, float, str, bool) or value is None:
        return shown(value, 120)
    count, nbytes, unseen = _count_arrays(value, budget)
    if count:
        return f"{count} arrays, {format_size(nbytes)}" + ("" if unseen is None else " (at least: not all looked at)")
    if isinstance(value, list | tuple | dict):
        kind = type(value).__name__
        if not value:
            return f"empty {kind}"
        return f"{kind} of {len(value)} items, " + ("no arrays" if unseen is None else unseen)
    return type_name(value)


def _summarize_history(values: Any, budget: _Budget) -> str:
    if not isinstance(values, dict):
        return "training history"
    parts = []
    for mode, metrics in itertools.islice(values.items(), 4):
        if not isinstance(metrics, dict):
            continue
        points = 0
        for series in metrics.values():
            if not budget.spend():
                break
            if isinstance(series, list):
                points += len(series)
        parts.append(f"{key_label(mode).strip(chr(39))}: {len(metrics)} metrics, {points} points")
    return "training history" + (f" ({'; '.join(parts)})" if parts else "")


def _signature(value: Any) -> str | None:
    """A ShapeDtype, or a tuple of them: the model's input signature."""
    if isinstance(value, ShapeDtype):
        signature: tuple[Any, ...] = (value,)
    elif isinstance(value, tuple) and value and isinstance(value[0], ShapeDtype):
        signature = value
    else:
        return None
    shown_part = signature[:_MAX_SIGNATURE]
    if not all(isinstance(s, ShapeDtype) for s in shown_part):
        return None
    text = ", ".join(f"{tuple(s.shape)} {_dtype_name(s.dtype)}" for s in shown_part)
    more = len(signature) - len(shown_part)
    return "input signature " + printable(text, 400) + (f" and {more:,} more" if more else "")


def _dtype_name(dtype: Any) -> str:
    if isinstance(dtype, np.dtype):
        return dtype.name
    if isinstance(dtype, Global):
        return printable(dtype.name, 60)
    return type_name(dtype)


def _scalars(value: Any) -> str | None:
    """A dict of a few numbers (optimizer parameters): ``learning_rate=0.001, b1=0.9``."""
    if not (isinstance(value, dict) and value and len(value) <= _MAX_SCALARS):
        return None
    if not all(_is_scalar(v) for v in value.values()):
        return None
    return ", ".join(f"{key_label(k).strip(chr(39))}={_number(v)}" for k, v in itertools.islice(value.items(), 8))


def _is_scalar(value: Any) -> bool:
    if type(value) in (int, float, bool):
        return True
    return isinstance(value, np.generic | np.ndarray) and value.ndim == 0 and value.dtype.kind in "biufc"


def _number(value: Any) -> str:
    item = value.item() if isinstance(value, np.generic | np.ndarray) else value
    if isinstance(item, complex):
        return f"{item:.6g}"
    return f"{float(item):.6g}"


def _count_arrays(value: Any, budget: _Budget) -> tuple[int, int, str | None]:
    """Arrays (and their bytes) anywhere in ``value``, and why not all of it was looked at (None: it was).

    Every object is charged when it is queued, so a list holding itself a million
    times costs a million visits, not a million lists of a million.
    """
    count = nbytes = 0
    unseen = None
    todo: list[tuple[Any, int]] = [(value, 0)]
    while todo:
        node, depth = todo.pop()
        if isinstance(node, BFloat16Array):
            count, nbytes = count + 1, nbytes + node.bits.nbytes
        elif isinstance(node, np.ndarray):
            count, nbytes = count + 1, nbytes + node.nbytes
        elif isinstance(node, list | tuple | dict):
            if depth >= MAX_DEPTH:  # not looked into: what it holds is not known
                unseen = f"nested more than {MAX_DEPTH:,} deep to look through"
                continue
            if not budget.spend(len(node)):
                return count, nbytes, "too many to look through"
            children = node.values() if isinstance(node, dict) else node
            todo.extend((child, depth + 1) for child in children)
    return count, nbytes, unseen
