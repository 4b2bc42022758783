"""Text from a file, shown: escaped, and bounded in length and in the work it takes."""

from __future__ import annotations

from reformer_tools.untrusted import printable, shown


def test_shown_values_are_bounded_whatever_their_size_or_sharing() -> None:
    shared: object = "k"
    for _ in range(200):  # 2**200 leaves by multiplicity: repr would never finish
        shared = (shared, shared)
    deep: object = ()
    for _ in range(100_000):  # repr would overflow the stack
        deep = (deep,)
    for value, expected in (
        (shared, "((((("),
        (deep, "((((("),
        ("x" * 10**7, "'xxxxx"),
        (("a", 1, None, b"b", 2.5), "('a', 1, None, b'b', 2.5)"),
        ((1,), "(1,)"),
        ([1, 2], "list"),
        ("\x1b[31m", "'\\x1b[31m'"),
    ):
        text = shown(value, 80)
        assert text.startswith(expected), (text, expected)
        assert len(text) <= 83


def test_printable_escapes_and_cuts() -> None:
    assert printable("a\x1b[2Jb\u202ec\r", 200) == "a\\x1b[2Jb\\u202ec\\x0d"
    assert printable("k" * 300, 10) == "k" * 10 + "..."
