"""Checkpoint files as bounded byte streams (plain or gzip, every length checked first), and their sha256."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

import numpy as np
import numpy.typing as npt

from reformer_tools.allowlist import SkippedPayload
from reformer_tools.errors import ReformerToolsError, UnreadableCheckpointError
from reformer_tools.gzip_stream import GZIP_MAGIC, GzipError, GzipReader
from reformer_tools.sizes import format_size

#: Default cap on decompressed bytes: generous for real checkpoints (float
#: weights barely compress), small enough to stop a gzip bomb early.
DEFAULT_MAX_RATIO: Final = 64
DEFAULT_MIN_LIMIT: Final = 1 << 30
HEAD: Final = 256  # bytes sniffed to tell pickle, .npy, gzip, JSON and text apart
CHUNK: Final = 4 << 20  # reads and hashing in steps this large: fast, and little memory
_BUFFER: Final = 1 << 20


class ByteSource:
    """Exact reads from a plain or gzip stream, each length checked against what may remain before reading.

    In a plain file nothing can claim more than the rest of the file; gzip data
    is capped at ``limit`` decompressed bytes. The pickle machine reads through
    this (see :class:`reformer_tools.safe_pickle.ByteSource`).
    """

    def __init__(
        self,
        stream: BinaryIO,
        *,
        limit: int,
        compressed: bool,
        limit_note: str,
        mapped: Path | None = None,
        keep_payloads: bool = True,
    ) -> None:
        self._stream = stream
        self._read = stream.read
        self._limit = limit
        self._compressed = compressed
        self._limit_note = limit_note
        self._mapped = mapped  # a plain file: large payloads are memory-mapped, not read
        # False: shapes only; payloads that cannot be mapped are read past, not kept.
        self._keep_payloads = keep_payloads
        self.consumed = 0

    @property
    def keeps_payloads(self) -> bool:
        return self._keep_payloads

    @property
    def compressed(self) -> bool:
        return self._compressed

    def _claim(self, n: int) -> None:
        if n < 0:
            raise UnreadableCheckpointError("corrupt: a negative length")
        if self.consumed + n > self._limit:
            if self._compressed:
                raise UnreadableCheckpointError(
                    f"decompressed data exceeds the {format_size(self._limit, binary=True)} limit ({self._limit_note})"
                )
            raise UnreadableCheckpointError(
                f"truncated or corrupt: a record claims {format_size(n, binary=True)} but only "
                f"{format_size(self._limit - self.consumed, binary=True)} remain in the file"
            )

    def read_exact(self, n: int) -> bytes:
        if n < 0 or self.consumed + n > self._limit:
            self._claim(n)
        try:
            data: bytes = self._read(n)
        except GzipError as error:
            raise UnreadableCheckpointError(str(error)) from None
        if len(data) != n:
            raise UnreadableCheckpointError("truncated: the data ends in the middle of a record")
        self.consumed += n
        return data

    def read_payload(self, n: int) -> npt.NDArray[np.uint8] | SkippedPayload:
        self._claim(n)
        if self._mapped is None and not self._keep_payloads:
            self.skip(n)
            return SkippedPayload(n)
        if self._mapped is not None and n:
            # Pages are read only when a tensor is converted, and freed with it:
            # converting a plain pickle holds about one tensor in memory.
            mapped = np.memmap(self._mapped, dtype=np.uint8, mode="r", offset=self.consumed, shape=(n,))
            self._stream.seek(n, io.SEEK_CUR)
            self.consumed += n
            return mapped
        # np.empty does not touch its pages, so a lying length costs nothing
        # until data really arrives.
        buffer = np.empty(n, dtype=np.uint8)
        view = buffer.data
        filled = 0
        while filled < n:
            try:
                got = self._stream.readinto(view[filled : min(n, filled + CHUNK)])  # type: ignore[attr-defined]
            except GzipError as error:
                raise UnreadableCheckpointError(str(error)) from None
            if not got:
                raise UnreadableCheckpointError("truncated: the data ends in the middle of an array")
            filled += got
        self.consumed += n
        return buffer

    def read_some(self, n: int) -> bytes:
        """Up to ``n`` bytes, at least one unless at the end; past the limit, the limit's error."""
        allowed = min(n, self._limit - self.consumed)
        if allowed <= 0:
            if n > 0 and self.peek(1):
                self._claim(1)  # raises: there is more than the limit allows
            return b""
        try:
            # read1: what is there, with at most one read below, so data before a gzip error is not lost.
            data: bytes = self._stream.read1(allowed)  # type: ignore[attr-defined]
        except GzipError as error:
            raise UnreadableCheckpointError(str(error)) from None
        self.consumed += len(data)
        return data

    def read_chunks(self, n: int, size: int = CHUNK) -> Iterator[bytes]:
        """``n`` bytes in pieces of at most ``size``: long records are never held whole.

        The length is checked now, before the caller allocates anything for it.
        """
        self._claim(n)
        return self._pieces(n, size)

    def _pieces(self, n: int, size: int) -> Iterator[bytes]:
        remaining = n
        while remaining:
            piece = self.read_exact(min(remaining, size))
            remaining -= len(piece)
            yield piece

    def skip(self, n: int) -> None:
        for _piece in self.read_chunks(n):
            pass

    def readline(self, limit: int) -> bytes:
        try:
            line: bytes = self._stream.readline(min(limit, self._limit - self.consumed + 1))
        except GzipError as error:
            raise UnreadableCheckpointError(str(error)) from None
        self._claim(len(line))
        self.consumed += len(line)
        return line

    def peek(self, n: int) -> bytes:
        try:
            data: bytes = self._stream.peek(n)[:n]  # type: ignore[attr-defined]
        except GzipError as error:
            raise UnreadableCheckpointError(str(error)) from None
        return data

    def at_eof(self) -> bool:
        return self.peek(1) == b""

    def stop(self) -> None:
        """Stop any read-ahead (the gzip worker) so the underlying file can be touched."""
        raw = getattr(self._stream, "raw", None)
        if isinstance(raw, GzipReader):
            raw.stop()


@dataclass
class OpenFile:
    """An open checkpoint file and what its first bytes say."""

    source: ByteSource
    raw: BinaryIO
    head: bytes  # first decompressed bytes, for sniffing
    compressed: bool

    def check_end(self) -> None:
        """Nothing may follow the pickle's STOP. For gzip this also reads to the end of the compressed
        data, where its CRC and length are checked: otherwise a truncated or corrupted file would load
        as if it were whole. (A second pickle after the first would never run, but `--globals` lists it.)"""
        if not self.source.at_eof():
            raise UnreadableCheckpointError(
                f"unexpected data after the end of the pickle (at byte {self.source.consumed:,})"
            )

    def close(self) -> None:
        self.source.stop()
        self.raw.close()


def open_file(
    path: Path, max_decompressed: int | None, *, map_payloads: bool = False, keep_payloads: bool = True
) -> OpenFile:
    """Open a file for bounded reading; gzip is detected by its magic bytes.

    ``map_payloads``: in a plain (uncompressed) file, memory-map large payloads.
    ``keep_payloads`` False: skip payloads that cannot be mapped (shapes only).
    """
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait forever for a writer.
        raw = open(path, "rb", buffering=0, opener=_open_nonblocking)  # noqa: SIM115 - closed by OpenFile.close
    except IsADirectoryError:
        raise UnreadableCheckpointError(_directory_hint(path)) from None
    except FileNotFoundError:
        raise UnreadableCheckpointError("no such file") from None
    except PermissionError:
        raise UnreadableCheckpointError("permission denied") from None
    except OSError as error:
        raise UnreadableCheckpointError(error.strerror or str(error)) from None
    try:
        status = os.fstat(raw.fileno())
        size = status.st_size
        if path.is_dir():
            raise UnreadableCheckpointError(_directory_hint(path))
        if not stat.S_ISREG(status.st_mode):
            raise UnreadableCheckpointError("not a regular file (a pipe, socket or device)")
        os.set_blocking(raw.fileno(), True)
        if size == 0:
            raise UnreadableCheckpointError("the file is empty")
        buffered = io.BufferedReader(raw, buffer_size=_BUFFER)
        compressed = buffered.peek(2)[:2] == GZIP_MAGIC
        if compressed:
            limit = max_decompressed if max_decompressed is not None else decompressed_limit(size)
            note = (
                "set by --max-decompressed-size"
                if max_decompressed is not None
                else f"{DEFAULT_MAX_RATIO}x the file size; raise it with --max-decompressed-size for a real checkpoint"
            )
            inflated = io.BufferedReader(GzipReader(buffered), buffer_size=_BUFFER)
            source = ByteSource(inflated, limit=limit, compressed=True, limit_note=note, keep_payloads=keep_payloads)
        else:
            mapped = path if map_payloads else None
            source = ByteSource(
                buffered, limit=size, compressed=False, limit_note="", mapped=mapped, keep_payloads=keep_payloads
            )
        return OpenFile(source, raw, source.peek(HEAD), compressed)
    except BaseException:
        raw.close()
        raise


def with_file(error: ReformerToolsError, path: Path) -> ReformerToolsError:
    """The same error, its message starting with the file it is about (unless it names one already).

    An error about a side or shard file read while loading the main file keeps the name of the file
    it is about, not the one the user named.
    """
    if getattr(error, "file", None) is not None:
        return error
    message = str(error)
    named = error if message.startswith(str(path)) else type(error)(f"{path}: {message}")
    named.file = path  # type: ignore[attr-defined]
    return named


def decompressed_limit(size: int) -> int:
    """The default cap on a gzip file's decompressed bytes, for a file of ``size`` bytes."""
    return max(DEFAULT_MIN_LIMIT, DEFAULT_MAX_RATIO * size)


def _open_nonblocking(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NONBLOCK)


def is_gzip(path: Path) -> bool:
    """Whether ``path`` starts like a gzip file (False for anything unreadable: loading will say why)."""
    try:
        with open(path, "rb", opener=_open_nonblocking) as file:
            return stat.S_ISREG(os.fstat(file.fileno()).st_mode) and file.read(2) == GZIP_MAGIC
    except OSError:
        return False


def _directory_hint(path: Path) -> str:
    try:
        found = sorted(p.name for p in path.iterdir() if p.name.endswith((".pkl", ".pkl.gz")))
    except OSError:
        found = []
    hint = f"; pass the checkpoint file inside it ({', '.join(found[:3])})" if found else ""
    return f"is a directory, not a checkpoint file{hint}"


# ------------------------------------------------------------------ hashing


def hash_file(path: Path) -> str:
    """sha256 of a file, read in steps."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as file:
            while chunk := file.read(CHUNK):
                digest.update(chunk)
    except OSError as error:
        raise UnreadableCheckpointError(f"{path}: {error.strerror or error}") from None
    return digest.hexdigest()


class _BackgroundDigest:
    """Hash a file in a thread while the conversion reads its pages."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._digest: str | None = None
        self._error: ReformerToolsError | None = None
        self._thread = threading.Thread(target=self._run, name="sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._digest = hash_file(self._path)
        except ReformerToolsError as error:
            self._error = error

    def result(self) -> str:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._digest is not None
        return self._digest


class FileDigests:
    """sha256 of a checkpoint's files by name; ``background`` starts hashing them at once, in threads."""

    def __init__(self, paths: tuple[Path, ...], *, background: bool) -> None:
        self._paths = paths
        self._background = background
        self._jobs = {p.name: _BackgroundDigest(p) for p in paths} if background else {}
        self._done: dict[str, str] = {}

    def add(self, paths: tuple[Path, ...]) -> None:
        """Hash these files too (the weight files a checkpoint names are known once it is loaded)."""
        for path in paths:
            if path not in self._paths:
                self._paths += (path,)
                if self._background:
                    self._jobs[path.name] = _BackgroundDigest(path)

    def __call__(self) -> dict[str, str]:
        for name, job in list(self._jobs.items()):
            self._done[name] = job.result()
            del self._jobs[name]
        for path in self._paths:
            if path.name not in self._done:
                self._done[path.name] = hash_file(path)
        return dict(self._done)
