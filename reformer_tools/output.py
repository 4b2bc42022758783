"""All-or-nothing output: nothing appears at the target until everything is written.

Files are created as anonymous ``O_TMPFILE`` inodes where Linux allows it, so a
process killed mid-write (even by SIGKILL) leaves nothing on disk; elsewhere
they are hidden temporary names removed on any failure. ``commit`` links the
files into place and only then replaces an existing target (``force``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from reformer_tools.errors import OutputError, UsageError

#: Files a previous conversion may have written; a directory holding anything
#: else is never deleted, even with --force.
OUTPUT_FILE_PATTERNS: Final = (
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "generation_config.json",
)


def _looks_like_previous_output(directory: Path) -> bool:
    try:
        names = [p.name for p in directory.iterdir()]
    except OSError:
        return False
    return all(
        name in OUTPUT_FILE_PATTERNS or (name.startswith("model-") and name.endswith(".safetensors")) for name in names
    )


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.is_dir():
            return candidate
    return Path.cwd()


@dataclass
class _Pending:
    name: str
    file: BinaryIO
    temp_path: Path | None  # None: an O_TMPFILE inode with no name yet


class AtomicOutput:
    """A file or a directory of files that appears complete, or not at all."""

    def __init__(self, target: Path, *, directory: bool, force: bool, protected: tuple[Path, ...] = ()) -> None:
        self.target = target
        self.directory = directory
        self.force = force
        self._check_target(protected)
        self._workdir = _nearest_existing(target.parent)
        self._files: list[_Pending] = []
        self._committed = False

    def _check_target(self, protected: tuple[Path, ...]) -> None:
        resolved = self.target.resolve()
        for path in protected:
            with contextlib.suppress(OSError):
                if resolved == path.resolve() or (self.directory and path.resolve().is_relative_to(resolved)):
                    raise UsageError(f"{self.target}: the output would overwrite the input {path}")
        if not self.target.exists() and not self.target.is_symlink():
            return
        if not self.force:
            raise UsageError(f"{self.target}: already exists; pass --force to replace it")
        if self.target.is_dir() and not self.target.is_symlink():
            if not self.directory:
                raise UsageError(f"{self.target}: is a directory; refusing to replace it with a file")
            if not _looks_like_previous_output(self.target):
                raise UsageError(
                    f"{self.target}: holds files other than a converted model; refusing to delete it even with --force"
                )
        elif self.directory:
            raise UsageError(f"{self.target}: is a file; refusing to replace it with a directory")

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

    def commit(self) -> None:
        """Put every file in place; replace an existing target only now."""
        try:
            self._commit()
        except OSError as error:
            raise OutputError(f"{self.target}: could not write the output ({error.strerror or error})") from None
        self._committed = True

    def _commit(self) -> None:
        for pending in self._files:
            pending.file.flush()
            os.fsync(pending.file.fileno())
        self.target.parent.mkdir(parents=True, exist_ok=True)
        staging = self.target.parent / f".{self.target.name}.{secrets.token_hex(4)}.staging"
        if self.directory:
            staging.mkdir()
            try:
                for pending in self._files:
                    self._materialize(pending, staging / pending.name)
                self._swap_in(staging)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        else:
            (pending,) = self._files
            if not self.force:
                self._materialize(pending, self.target)  # link(2) never overwrites
                return
            self._materialize(pending, staging)
            os.replace(staging, self.target)

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
            os.replace(pending.temp_path, destination)
            pending.temp_path = None

    def _swap_in(self, staging: Path) -> None:
        if not self.target.exists():
            os.rename(staging, self.target)
            return
        old = self.target.parent / f".{self.target.name}.{secrets.token_hex(4)}.old"
        os.rename(self.target, old)
        try:
            os.rename(staging, self.target)
        except BaseException:
            os.rename(old, self.target)
            raise
        shutil.rmtree(old, ignore_errors=True)

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

    def __exit__(self, *exc: object) -> None:
        self.close()
