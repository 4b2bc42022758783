"""Work that follows a file being written, on the second core: its sha256.

A conversion used to read every output file back after the commit to hash it, which takes as
long as hashing the checkpoint itself, with nothing else left to overlap it. Here the hash is
computed while the file is written, by a thread reading behind the writer (hashlib
releases the GIL) through short-lived maps of the page cache, which copy nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import threading
from collections.abc import Callable
from typing import Final, Generic, TypeVar

T = TypeVar("T")

_CHUNK: Final = 8 << 20  # bytes hashed per read-back


class Once(Generic[T]):
    """``function()`` computed once, by whichever thread asks first; the others wait for that value."""

    def __init__(self, function: Callable[[], T]) -> None:
        self._function = function
        self._lock = threading.Lock()
        self._value: list[T] = []

    def __call__(self) -> T:
        with self._lock:
            if not self._value:
                self._value.append(self._function())
            return self._value[0]


def _hash_mapped(digest: hashlib._Hash, fd: int, start: int, stop: int) -> None:
    """Hash bytes ``[start, stop)`` of a file straight from the page cache (a read would copy them first)."""
    offset = start - start % mmap.ALLOCATIONGRANULARITY
    mapped = mmap.mmap(fd, stop - offset, access=mmap.ACCESS_READ, offset=offset)
    try:
        with memoryview(mapped) as view, view[start - offset :] as part:  # released before the unmap
            digest.update(part)
    finally:
        mapped.close()


class FollowingDigest:
    """sha256 of a file whose first ``start`` bytes are only final at the end (a header), computed while
    the rest is written.

    ``prefix`` gives those first bytes as they will be; it may block (the header holds the
    checkpoint's own digests, hashed in another thread), and the rest is then read back from the
    file (the page cache) up to where the writer has got. ``result`` gives the digest of exactly
    that prefix and what was written, or None if anything went wrong (the caller hashes the file).
    """

    def __init__(self, fd: int, start: int, prefix: Callable[[], bytes]) -> None:
        self._fd = fd
        self._start = start
        self._prefix = prefix
        self._written = start
        self._closed = False
        self._changed = threading.Condition()
        self._digest: str | None = None
        self.prefix: bytes | None = None  # what was hashed as the first ``start`` bytes
        self._thread = threading.Thread(target=self._run, name="sha256-output", daemon=True)
        self._thread.start()

    def advance(self, end: int) -> None:
        """Bytes ``[start, end)`` are in the file (flushed to the descriptor)."""
        with self._changed:
            self._written = end
            self._changed.notify()

    def _wait(self, position: int) -> int | None:
        """The end of what is written beyond ``position``; None once closed with nothing more."""
        with self._changed:
            while self._written <= position and not self._closed:
                self._changed.wait()
            return self._written if self._written > position else None

    def _run(self) -> None:
        try:
            prefix = self._prefix()
            if len(prefix) != self._start:
                return
            digest = hashlib.sha256(prefix)
            position = self._start
            while (end := self._wait(position)) is not None:
                while position < end:
                    stop = min(end, position + _CHUNK)
                    _hash_mapped(digest, self._fd, position, stop)
                    position = stop
            with self._changed:
                if position == self._written:
                    self.prefix = prefix
                    self._digest = digest.hexdigest()
        except Exception:  # any failure: the caller reads the file back and hashes it instead
            return

    def close(self) -> None:
        """Nothing more will be written; stop once it is hashed."""
        with self._changed:
            self._closed = True
            self._changed.notify()

    def result(self, prefix: bytes, end: int) -> str | None:
        """The digest, if the file is exactly ``prefix`` followed by what was written, ``end`` bytes in all."""
        self.close()
        self._thread.join()
        with contextlib.suppress(Exception):
            if self.prefix == prefix and self._written == end:
                return self._digest
        return None

    def abandon(self) -> None:
        """Stop without a result (the output is being discarded); does not wait for a blocked ``prefix``."""
        self.close()
