"""A gzip reader for large checkpoints: inflated ahead in a worker thread, with ISA-L when installed."""

from __future__ import annotations

import io
import types
import zlib
from collections.abc import Iterator
from typing import Any, BinaryIO, Final

import numpy as np

from reformer_tools.prefetch import Prefetch

_inflate_module: types.ModuleType
try:  # ISA-L: the same API as zlib, faster inflate
    from isal import isal_zlib as _inflate_module
except ImportError:  # pragma: no cover - exercised where isal has no wheel
    _inflate_module = zlib

_GZIP_WBITS: Final = 31  # zlib: expect a gzip header and trailer
_CHUNK: Final = 4 << 20
_AHEAD: Final = 4  # decompressed pieces queued ahead of the consumer (~16 MiB)
GZIP_MAGIC: Final = b"\x1f\x8b"
_DEFLATE: Final = 8  # the only compression method RFC 1952 defines
_RESERVED_FLAGS: Final = 0xE0  # FLG bits 5-7: "reserved, must be zero"


class GzipError(Exception):
    """The gzip data is corrupt or truncated."""


def _check_header(data: bytes) -> None:
    """The first bytes of a member: zlib would inflate one whose reserved flag bits are set."""
    if data[:2] != GZIP_MAGIC:
        raise GzipError("trailing garbage after the gzip data")
    if len(data) < 4:
        raise GzipError("truncated gzip stream (it ends inside a member's header)")
    if data[2] != _DEFLATE:
        raise GzipError(f"unsupported gzip compression method {data[2]}")
    if data[3] & _RESERVED_FLAGS:
        raise GzipError(f"gzip header sets reserved flag bits (0x{data[3] & _RESERVED_FLAGS:02x}); refusing it")


def inflate_members(raw: BinaryIO, inflate: Any = _inflate_module) -> Iterator[bytes]:
    """Decompressed pieces of every gzip member in ``raw``, in order."""
    pending = b""
    first = True
    while True:
        # A member starts here. After the first, gzip allows zero padding, then another member or the end.
        while len(pending) < 4:
            if not first:
                pending = pending.lstrip(b"\0")
            more = raw.read(_CHUNK)
            if not more:
                break
            pending += more
        if not first:
            pending = pending.lstrip(b"\0")
            if not pending:
                return
        _check_header(pending)
        first = False
        decompressor = inflate.decompressobj(_GZIP_WBITS)
        while not decompressor.eof:
            source = decompressor.unconsumed_tail or pending or raw.read(_CHUNK)
            if not source:
                raise GzipError("truncated gzip stream (it ends before its end marker)")
            if source is pending:
                pending = b""
            try:
                piece: bytes = decompressor.decompress(source, _CHUNK)
            except (zlib.error, inflate.error) as error:
                raise GzipError(f"corrupt gzip data ({error})") from None
            if piece:
                yield piece
        pending = decompressor.unused_data + pending


class GzipReader(io.RawIOBase):
    """Raw reader of the decompressed bytes, inflated ahead in a worker; wrap it in ``io.BufferedReader``.

    ``gzip.GzipFile`` inflates in ~8 KiB steps through several Python layers, in
    the caller's thread. This reader inflates in a worker thread (zlib and ISA-L
    release the GIL), a few megabytes ahead of the consumer, so reading the file,
    hashing it and inflating overlap with whatever the caller does with the bytes.
    It uses ISA-L's inflate (python-isal, about twice as fast as zlib) when
    installed, checks every member's header (RFC 1952: deflate, reserved flags
    zero), CRC and length, and reads concatenated members and trailing zero
    padding like ``gzip``.
    """

    def __init__(self, raw: BinaryIO, inflate: Any = _inflate_module) -> None:
        self._raw = raw
        self._pieces = Prefetch(inflate_members(raw, inflate), depth=_AHEAD)
        self._piece = b""
        self._offset = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if not len(view):
            return 0
        while self._offset >= len(self._piece):
            piece = next(self._pieces, None)
            if piece is None:
                return 0
            self._piece, self._offset = piece, 0
        count = min(len(view), len(self._piece) - self._offset)
        # numpy copies without holding the GIL (memoryview assignment holds it): the first
        # touch of fresh array memory is slow, and other threads keep working meanwhile.
        np.copyto(
            np.frombuffer(view, dtype=np.uint8, count=count),
            np.frombuffer(self._piece, dtype=np.uint8, count=count, offset=self._offset),
        )
        self._offset += count
        return count

    def stop(self) -> None:
        """Stop inflating ahead and wait for the worker; the raw file is then free to use."""
        self._pieces.close()

    def close(self) -> None:
        if not self.closed:
            self.stop()
            self._raw.close()
        super().close()
