"""Byte sizes: parsed from options, formatted for people. Decimal units, as Hugging Face uses."""

from __future__ import annotations

import re
from typing import Final

from reformer_tools.errors import UsageError

_SIZE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*$", re.IGNORECASE)
_UNITS: Final = ("B", "KB", "MB", "GB", "TB")
_BINARY_UNITS: Final = ("B", "KiB", "MiB", "GiB", "TiB")


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


def format_size(n: int | None, *, binary: bool = False) -> str:
    """12_345 -> '12.3 KB' (binary: '12.1 KiB'); None (not known yet) -> '?'."""
    if n is None:
        return "?"
    base, units = (1024, _BINARY_UNITS) if binary else (1000, _UNITS)
    value = float(n)
    for unit in units:
        if value < base or unit == units[-1]:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= base
    raise AssertionError("unreachable")
