"""Text that comes from a checkpoint, made safe to show: no control characters, bounded length and work."""

from __future__ import annotations

from typing import Final

_NESTED_END: Final = object()  # marks where a tuple's closing parenthesis goes


def printable(text: str, limit: int = 200) -> str:
    """Escape every non-printable character (ANSI escapes, \\r, bidi overrides) and cut at ``limit``."""
    cleaned = "".join(ch if ch.isprintable() else _escape(ch) for ch in text[:limit])
    return cleaned + ("..." if len(text) > limit else "")


def shown(value: object, limit: int = 80) -> str:
    """A plain value from a file as Python would write it, escaped, cut at ``limit`` characters.

    Strings and bytes are quoted (``repr``), numbers and None written out, and
    tuples of them bracketed; anything else is named by its type. Only the
    first ``limit`` characters are ever built, whatever the value's size, its
    nesting or how often it repeats one object inside itself.
    """
    pieces: list[str] = []
    size = 0
    todo: list[object] = [value]
    while todo and size <= limit:
        item = todo.pop()
        if item is _NESTED_END:
            piece = ")"
        elif type(item) is _Separator:
            piece = str.__str__(item)
        elif isinstance(item, str | bytes | bytearray):
            piece = repr(item[: limit + 1])
        elif type(item) in (int, float, bool) or item is None:
            # ints from a pickle are at most 512 bits: a short decimal string
            piece = repr(item)
        elif isinstance(item, tuple):
            items = item[: limit + 1]
            todo.append(_NESTED_END)
            if len(items) == 1:
                todo.append(_Separator(","))
            for index in range(len(items) - 1, -1, -1):
                todo.append(items[index])
                if index:
                    todo.append(_Separator(", "))
            piece = "("
        else:
            piece = type(item).__name__
        pieces.append(piece)
        size += len(piece)
    return printable("".join(pieces), limit)


class _Separator(str):
    """Punctuation between a tuple's items (a str subclass, so no file value is mistaken for it)."""


def _escape(ch: str) -> str:
    # Python's own spellings: "\\x202e" would read as a space and "2e"; "\\u202e" cannot.
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
