"""Text that comes from a checkpoint, made safe to show: no control characters, bounded length."""

from __future__ import annotations


def printable(text: str, limit: int = 200) -> str:
    """Escape every non-printable character (ANSI escapes, \\r, bidi overrides) and cut at ``limit``."""
    cleaned = "".join(ch if ch.isprintable() else _escape(ch) for ch in text[:limit])
    return cleaned + ("..." if len(text) > limit else "")


def _escape(ch: str) -> str:
    # Python's own spellings: "\\x202e" would read as a space and "2e"; "\\u202e" cannot.
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
