"""Byte sizes: parsed from options, formatted for people. Decimal units, as Hugging Face uses."""

from __future__ import annotations

import re
from typing import Final

from reformer_tools.errors import UsageError

_SIZE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*$", re.IGNORECASE)
_UNITS: Final = ("B", "KB", "MB", "GB", "TB")


def parse_size(text: str) -> int:
    """'2GB' -> 2_000_000_000, '500MiB' -> 524_288_000 (Hugging Face's convention)."""
    match = _SIZE.match(text)
    if not match:
        raise UsageError(f"{text!r} is not a size (examples: 2GB, 500MB, 1GiB)")
    number, unit, binary = match.groups()
    base = 1024 if binary else 1000
    size = int(float(number) * base ** "_KMGT".index(unit.upper() or "_"))
    if size <= 0:
        raise UsageError(f"{text!r} is not a positive size")
    return size


def format_size(n: int | None) -> str:
    """12_345 -> '12.3 KB'; None (not known yet) -> '?'."""
    if n is None:
        return "?"
    value = float(n)
    for unit in _UNITS:
        if value < 1000 or unit == _UNITS[-1]:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")
