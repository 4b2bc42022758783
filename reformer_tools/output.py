"""All-or-nothing output: a file or a directory appears complete or not at all, replacing only what was checked."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import BinaryIO, Final, Literal

from reformer_tools.errors import OutputError, UsageError

#: Files a previous conversion (or a user completing one: tokenizer, generation config, model card) may
#: have put in an output directory; a directory holding anything else is never deleted, even with --force.
OUTPUT_FILE_PATTERNS: Final = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "*.model",  # SentencePiece
    "vocab.txt",  # WordPiece
    "vocab.subword",  # Trax's SubwordTextEncoder
    "README.md",
)

#: What writing, never reading, fails with: inside an output's ``with`` block these are the output's (exit 5).
_WRITE_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
_AT_FDCWD: Final = -100
_RENAME_NOREPLACE: Final = 1
_RENAME_EXCHANGE: Final = 2


class _NoRenameat2(Exception):
    """The platform or file system has no renameat2 with the flags asked for."""


def _load_renameat2() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    function.restype = ctypes.c_int
    return function


_renameat2 = _load_renameat2()


def rename2(source: Path, destination: Path, flags: int) -> None:
    """``renameat2(2)``; raises _NoRenameat2 where it (or the flag, on this file system) is unavailable."""
    if _renameat2 is None:
        raise _NoRenameat2
    if _renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(destination), flags) != 0:
        code = ctypes.get_errno()
        if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise _NoRenameat2
        raise OSError(code, os.strerror(code), str(source), None, str(destination))


_SYNC_FILE_RANGE_WRITE: Final = 2  # start writing the range's dirty pages; do not wait


def _load_sync_file_range() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    function.restype = ctypes.c_int
    return function


_sync_file_range = _load_sync_file_range()


def start_writeback(fd: int, start: int, end: int) -> None:
    """Start writing bytes [start, end) of a file to disk, without waiting for them.

    Dirty pages otherwise wait for the kernel's flusher, and then all of a large output for the
    fsync in ``commit``. Errors are left to that fsync, which reports them.
    """
    if _sync_file_range is not None and end > start:
        _sync_file_range(fd, start, end - start, _SYNC_FILE_RANGE_WRITE)


def previous_output(directory: Path) -> tuple[str, ...] | None:
    """The names in a previous conversion's directory, or None if it holds anything else (or is unreadable)."""
    names = []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if not entry.is_file(follow_symlinks=False):
                    return None
                if not any(fnmatchcase(entry.name, pattern) for pattern in OUTPUT_FILE_PATTERNS):
                    return None
                names.append(entry.name)
    except OSError:
        return None
    return tuple(sorted(names))


_Kind = Literal["empty directory", "previous output", "file"]


@dataclass(frozen=True)
class _Checked:
    """What is at the target and may be replaced: exactly this inode, holding exactly these names."""

    kind: _Kind
    device: int
    inode: int
    names: tuple[str, ...] = ()
    written: tuple[int, int] = (0, 0)  # a file's (mtime_ns, size): a freed inode number is soon reused

    @classmethod
    def of(
        cls,
        kind: _Kind,
        status: os.stat_result,
        names: tuple[str, ...] = (),
    ) -> _Checked:
        written = (status.st_mtime_ns, status.st_size) if kind == "file" else (0, 0)
        return cls(kind, status.st_dev, status.st_ino, names, written)

    def matches(self, path: Path) -> bool:
        """Whether ``path`` is still the thing checked (same inode, same kind, same contents)."""
        try:
            status = os.lstat(path)
        except OSError:
            return False
        if (status.st_dev, status.st_ino) != (self.device, self.inode):
            return False
        if self.kind == "file":
            return not stat.S_ISDIR(status.st_mode) and (status.st_mtime_ns, status.st_size) == self.written
        return stat.S_ISDIR(status.st_mode) and previous_output(path) == self.names


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.is_dir():
            return candidate
    return Path.cwd()


def scratch_file(near: Path) -> int:
    """An unlinked read-write file on the filesystem that will hold ``near`` (its nearest existing
    folder): data spilled there goes to the page cache and disk, not the process's memory, and
    vanishes with the last descriptor or mapping, whatever happens to the process."""
    workdir = _nearest_existing(near.parent)
    try:
        return os.open(workdir, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except (AttributeError, OSError):
        temp_path = workdir / f".{near.name}.{secrets.token_hex(4)}.spill"
        try:
            fd = os.open(temp_path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except OSError as error:
            raise OutputError(f"{near}: cannot create a file in {workdir} ({error.strerror})") from None
        temp_path.unlink()
        return fd


@dataclass
class _Pending:
    name: str
    file: BinaryIO
    temp_path: Path | None  # None: an O_TMPFILE inode with no name yet


class AtomicOutput:
    """A file or a directory of files that appears complete, or not at all.

    Files are created as anonymous ``O_TMPFILE`` inodes where Linux allows it, so a
    process killed mid-write (even by SIGKILL) leaves nothing on disk; elsewhere
    they are hidden temporary names removed on any failure. ``commit`` links the
    files into place with a rename that cannot replace what is there
    (``renameat2(RENAME_NOREPLACE)``; ``mkdir`` then ``link`` where that is
    missing). An existing empty directory is replaced only while it is still
    empty; a previous conversion (``force``) is swapped out (``RENAME_EXCHANGE``)
    and deleted only if what came out is exactly what was checked.
    """

    def __init__(self, target: Path, *, directory: bool, force: bool, protected: tuple[Path, ...] = ()) -> None:
        self.target = target
        self.directory = directory
        self.force = force
        self._replacing = self._check_target(protected)
        self._workdir = _nearest_existing(target.parent)
        self._files: list[_Pending] = []

    def _check_target(self, protected: tuple[Path, ...]) -> _Checked | None:
        """Refuse a target that may not be written; return what is there that commit may replace."""
        resolved = self.target.resolve()
        for path in protected:
            with contextlib.suppress(OSError):
                if resolved == path.resolve() or (self.directory and path.resolve().is_relative_to(resolved)):
                    raise UsageError(f"{self.target}: the output would overwrite the input {path}")
        try:
            status = os.lstat(self.target)
        except FileNotFoundError:
            return None
        except OSError as error:
            raise OutputError(f"{self.target}: {error.strerror or error}") from None
        if stat.S_ISDIR(status.st_mode):
            names = previous_output(self.target)
            if self.directory and names == ():  # an empty directory: nothing to lose
                return _Checked.of("empty directory", status)
            if not self.force:
                raise UsageError(f"{self.target}: already exists; pass --force to replace it")
            if not self.directory:
                raise UsageError(f"{self.target}: is a directory; refusing to replace it with a file")
            if names is None:
                raise UsageError(
                    f"{self.target}: holds files other than a converted model; refusing to delete it even with --force"
                )
            return _Checked.of("previous output", status, names)
        if not self.force:
            raise UsageError(f"{self.target}: already exists; pass --force to replace it")
        if self.directory:
            raise UsageError(f"{self.target}: is a file; refusing to replace it with a directory")
        return _Checked.of("file", status)

    def open(self, name: str) -> BinaryIO:
        """A new writable, seekable file that will be ``name`` in the output."""
        try:
            fd = os.open(self._workdir, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o644)
            temp_path = None
        except (AttributeError, OSError):
            temp_path = self._workdir / f".{self.target.name}.{secrets.token_hex(4)}.tmp"
            try:
                fd = os.open(temp_path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o644)
            except OSError as error:
                raise OutputError(
                    f"{self.target}: cannot create a file in {self._workdir} ({error.strerror})"
                ) from None
        file = os.fdopen(fd, "w+b", buffering=1 << 20)
        self._files.append(_Pending(name, file, temp_path))
        return file

    def commit(self, check: Callable[[Path], None] | None = None) -> None:
        """Put every file in place, replacing only what was checked when this output was created.

        ``check`` sees the finished output under a hidden name first (a directory, or a file with the
        target's name as suffix), and may change files in it; if it raises, nothing is put in place.
        """
        try:
            self._commit(check)
        except OSError as error:
            raise OutputError(f"{self.target}: could not write the output ({error.strerror or error})") from None

    def _commit(self, check: Callable[[Path], None] | None) -> None:
        for pending in self._files:
            pending.file.flush()
            os.fsync(pending.file.fileno())
        created = _missing_directories(self.target.parent)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        try:
            remove_abandoned_staging(self.target)
            self._publish(self.target.parent / _staging_name(self.target), check)
        except BaseException:
            for directory in reversed(created):  # the parents this commit made, if still empty
                with contextlib.suppress(OSError):
                    directory.rmdir()
            raise

    def _publish(self, staging: Path, check: Callable[[Path], None] | None) -> None:
        if self.directory:
            staging.mkdir()
            ours = os.lstat(staging).st_ino
            try:
                for pending in self._files:
                    self._materialize(pending, staging / pending.name)
                if check is not None:
                    check(staging)
                self._put_directory(staging)
            finally:
                # Only our own staging directory is ever removed here: after a swap, that name may
                # hold what was at the target, which stays wherever it is if anything went wrong.
                if _inode(staging) == ours:
                    shutil.rmtree(staging, ignore_errors=True)
            return
        (pending,) = self._files
        if self._replacing is None and check is None:
            try:
                self._materialize(pending, self.target)  # link(2) never replaces anything
            except FileExistsError:
                raise self._appeared() from None
            return
        self._materialize(pending, staging)
        ours = os.lstat(staging).st_ino
        try:
            if check is not None:
                check(staging)
            if self._replacing is None:
                self._put_new_file(staging)
            else:
                self._swap_file(staging)
        finally:
            if _inode(staging) == ours:
                staging.unlink()

    def _put_directory(self, staging: Path) -> None:
        checked = self._replacing
        if checked is None:
            try:
                self._rename_into_place(staging)
            except _NoRenameat2:
                self._link_into_new_directory(staging)
            return
        if checked.kind == "empty directory":
            # rename(2) replaces a directory only while it is empty: anything put in it since stops it here.
            try:
                os.rename(staging, self.target)
            except OSError as error:
                if error.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                    raise self._changed() from None
                raise
            return
        self._swap_directory(staging, checked)

    def _swap_directory(self, staging: Path, checked: _Checked) -> None:
        """Exchange the new directory with the previous conversion; keep the swap only if the old one is unchanged."""
        try:
            rename2(staging, self.target, _RENAME_EXCHANGE)
        except FileNotFoundError:  # the previous conversion went away meanwhile: nothing to replace
            self._rename_into_place(staging)
            return
        except _NoRenameat2:
            self._swap_directory_by_rename(staging, checked)
            return
        # ``staging`` now holds what was at the target.
        if not checked.matches(staging):
            rename2(staging, self.target, _RENAME_EXCHANGE)  # put it back, untouched
            raise self._changed()
        _remove_checked(staging, checked)

    def _swap_directory_by_rename(self, staging: Path, checked: _Checked) -> None:
        """Without renameat2: move the previous conversion aside, check it, move the new one in."""
        aside = self.target.parent / f".{self.target.name}.{secrets.token_hex(4)}.old"
        os.rename(self.target, aside)
        if not checked.matches(aside):
            os.rename(aside, self.target)
            raise self._changed()
        try:
            os.rename(staging, self.target)  # fails if anything but an empty directory appeared there
        except OSError:
            with contextlib.suppress(OSError):
                os.rename(aside, self.target)
            raise
        _remove_checked(aside, checked)

    def _link_into_new_directory(self, staging: Path) -> None:
        """Without renameat2: mkdir(2) fails if the target exists, and link(2) never replaces a file."""
        try:
            self.target.mkdir()
        except FileExistsError:
            raise self._appeared() from None
        linked: list[Path] = []
        try:
            for pending in self._files:
                destination = self.target / pending.name
                os.link(staging / pending.name, destination)
                linked.append(destination)
        except BaseException:
            for path in linked:
                with contextlib.suppress(OSError):
                    path.unlink()
            with contextlib.suppress(OSError):
                self.target.rmdir()
            raise

    def _rename_into_place(self, staging: Path) -> None:
        """rename(2) that never replaces anything (``_NoRenameat2`` where the kernel cannot)."""
        try:
            rename2(staging, self.target, _RENAME_NOREPLACE)
        except FileExistsError:
            raise self._appeared() from None

    def _put_new_file(self, staging: Path) -> None:
        try:
            self._rename_into_place(staging)
        except _NoRenameat2:
            try:
                os.link(staging, self.target)  # link(2) never replaces anything; staging is unlinked after
            except FileExistsError:
                raise self._appeared() from None

    def _swap_file(self, staging: Path) -> None:
        checked = self._replacing
        assert checked is not None
        try:
            rename2(staging, self.target, _RENAME_EXCHANGE)
        except FileNotFoundError:  # the file went away meanwhile
            self._rename_into_place(staging)
            return
        except _NoRenameat2:
            if not checked.matches(self.target):
                raise self._changed() from None
            os.replace(staging, self.target)
            return
        if not checked.matches(staging):  # what came out is not the file that was checked
            rename2(staging, self.target, _RENAME_EXCHANGE)
            raise self._changed()
        staging.unlink()  # the file that was checked, and nothing else

    def _appeared(self) -> UsageError:
        return UsageError(f"{self.target}: appeared while converting; left as it is, and nothing was written")

    def _changed(self) -> UsageError:
        return UsageError(f"{self.target}: changed while converting; left as it is, and nothing was written")

    def _materialize(self, pending: _Pending, destination: Path) -> None:
        if pending.temp_path is None:
            # linkat(AT_SYMLINK_FOLLOW) through /proc gives the anonymous inode a name;
            # os.link only passes that flag when a dir_fd is given.
            proc = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.link(str(pending.file.fileno()), destination, src_dir_fd=proc, follow_symlinks=True)
            finally:
                os.close(proc)
        else:
            os.link(pending.temp_path, destination)  # unlike rename, link never replaces a file
            pending.temp_path.unlink()
            pending.temp_path = None

    def close(self) -> None:
        """Release every file; anything not committed disappears."""
        for pending in self._files:
            with contextlib.suppress(OSError):
                pending.file.close()
            if pending.temp_path is not None:
                with contextlib.suppress(OSError):
                    pending.temp_path.unlink()
        self._files.clear()

    def __enter__(self) -> AtomicOutput:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, traceback: object) -> None:
        self.close()
        if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:
            raise OutputError(f"{self.target}: could not write the output ({exc.strerror or exc})") from None


_STAGING: Final = re.compile(r"\.staging-(\d+)-[0-9a-f]{8}-(.+)", re.DOTALL)


def _staging_name(target: Path) -> str:
    # Hidden, beside the target (rename(2) stays in one file system), and ending with the target's name, so
    # readers that go by the suffix (.safetensors, .bin) read it alike. The pid tells a later run whether
    # the process that made it is gone (killed with SIGKILL while committing, which no handler sees).
    return f".staging-{os.getpid()}-{secrets.token_hex(4)}-{target.name}"


def remove_abandoned_staging(target: Path) -> None:
    """Remove hidden staging copies of ``target`` whose process no longer runs; only what a conversion writes."""
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return
    for entry in entries:
        match = _STAGING.fullmatch(entry.name)
        if match is None or match[2] != target.name or _running(int(match[1])):
            continue
        path = Path(entry.path)
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                if previous_output(path) is not None:
                    shutil.rmtree(path)
            elif entry.is_file(follow_symlinks=False):
                path.unlink()


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # another user's process (EPERM), or not a pid at all: leave it
        return True
    return True


def _missing_directories(directory: Path) -> list[Path]:
    """``directory`` and its ancestors that do not exist yet, outermost first."""
    missing = []
    while not directory.exists() and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    return missing[::-1]


def _inode(path: Path) -> int | None:
    try:
        return os.lstat(path).st_ino
    except OSError:
        return None


def _remove_checked(directory: Path, checked: _Checked) -> None:
    """Delete a replaced conversion: only the files that were checked, then the directory if that empties it."""
    for name in checked.names:
        with contextlib.suppress(FileNotFoundError):
            (directory / name).unlink()
    with contextlib.suppress(OSError):  # something new in it: it stays, under its hidden name
        directory.rmdir()
