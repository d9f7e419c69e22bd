"""Extract an agent-made tar stream into one directory, and nowhere else.

The archive comes from a sandbox: every name, link and mode in it is hostile until proven
otherwise. Rules:
- names are relative; absolute names, `..` components and NULs are refused;
- every write walks from `dest` one directory at a time with O_NOFOLLOW, so no symlink (from the
  archive or already on disk) is ever followed: a path through a link is refused;
- files are created with O_CREAT|O_EXCL|O_NOFOLLOW; an entry that names an existing file or link
  replaces it (the link itself, never its target), as tar does;
- symlinks are made as links with their target text unchanged (never resolved or rewritten);
- hard links become copies of a file already extracted here; links to anything else are skipped;
- devices, fifos and other special entries are skipped;
- setuid, setgid and sticky bits are dropped; owners are ignored.
Refused entries are reported, not fatal: the rest of the work still arrives.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import IO

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_CHUNK = 1 << 20


class UnsafeEntry(Exception):
    """One archive entry that cannot be extracted safely; the reason is the message."""


@dataclass
class ExtractReport:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (entry name, why)


def entry_parts(name: str) -> tuple[str, ...]:
    """The path components of an archive name, or UnsafeEntry. `.` and `./x` are fine."""
    if "\0" in name:
        raise UnsafeEntry("name contains a NUL byte")
    if name.startswith("/"):
        raise UnsafeEntry("absolute name")
    parts = tuple(p for p in PurePosixPath(name).parts if p != ".")
    if ".." in parts:
        raise UnsafeEntry("name climbs out with '..'")
    return parts


def safe_mode(mode: int, *, directory: bool) -> int:
    """Permission bits only (no setuid/setgid/sticky); directories stay usable by us."""
    bits = mode & 0o777
    return bits | 0o700 if directory else bits | 0o600


@contextlib.contextmanager
def _opened_dir(dest_fd: int, parts: tuple[str, ...], *, create: bool) -> Iterator[int]:
    """An fd of dest/parts[0]/.../parts[-1], walked without following any symlink."""
    fd = os.dup(dest_fd)
    try:
        for part in parts:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                    raise UnsafeEntry(
                        f"path goes through a symlink or a file at {part!r}"
                    ) from None
                raise
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def _clear_slot(parent_fd: int, name: str) -> None:
    """Make room for a new file or link at `name`: remove a file or link there, never a dir."""
    try:
        info = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        raise UnsafeEntry("a directory of that name was already extracted")
    os.unlink(name, dir_fd=parent_fd)


def _write_file(parent_fd: int, name: str, source: IO[bytes], mode: int) -> int:
    _clear_slot(parent_fd, name)
    fd = os.open(name, _FILE_FLAGS, safe_mode(mode, directory=False), dir_fd=parent_fd)
    written = 0
    with os.fdopen(fd, "wb") as out:
        while chunk := source.read(_CHUNK):
            out.write(chunk)
            written += len(chunk)
    return written


class _Extractor:
    def __init__(self, dest_fd: int) -> None:
        self.dest_fd = dest_fd
        self.report = ExtractReport()
        self.regular: set[tuple[str, ...]] = set()  # files extracted: valid hard-link targets

    def member(self, archive: tarfile.TarFile, info: tarfile.TarInfo) -> None:
        parts = entry_parts(info.name)
        if not parts:
            return  # the archive's own top directory (".")
        *parents, leaf = parts
        if info.isdir():
            with _opened_dir(self.dest_fd, parts, create=True) as fd:
                os.chmod(fd, safe_mode(info.mode, directory=True))
            self.report.dirs += 1
            return
        if info.isreg():
            source = archive.extractfile(info)
            assert source is not None
            with _opened_dir(self.dest_fd, tuple(parents), create=True) as fd:
                self.report.bytes += _write_file(fd, leaf, source, info.mode)
            self.regular.add(parts)
            self.report.files += 1
        elif info.issym():
            with _opened_dir(self.dest_fd, tuple(parents), create=True) as fd:
                _clear_slot(fd, leaf)
                os.symlink(info.linkname, leaf, dir_fd=fd)
            self.regular.discard(parts)
            self.report.symlinks += 1
        elif info.islnk():
            self._hard_link(parts, info)
        else:
            raise UnsafeEntry("device, fifo or other special file")

    def _hard_link(self, parts: tuple[str, ...], info: tarfile.TarInfo) -> None:
        """A copy of a file this extraction wrote; anything else is outside and refused."""
        try:
            target = entry_parts(info.linkname)
        except UnsafeEntry as exc:
            raise UnsafeEntry(f"hard link to outside ({exc})") from None
        if target not in self.regular:
            raise UnsafeEntry("hard link to a file not extracted here")
        *target_parents, target_leaf = target
        *parents, leaf = parts
        with _opened_dir(self.dest_fd, tuple(target_parents), create=False) as tfd:
            src = os.open(target_leaf, _READ_FLAGS, dir_fd=tfd)
            with os.fdopen(src, "rb") as source:
                mode = os.fstat(source.fileno()).st_mode
                with _opened_dir(self.dest_fd, tuple(parents), create=True) as fd:
                    self.report.bytes += _write_file(fd, leaf, source, mode)
        self.regular.add(parts)
        self.report.files += 1


def safe_extract(stream: IO[bytes], dest: str | os.PathLike[str]) -> ExtractReport:
    """Extract the tar `stream` (any compression tarfile reads) into the directory `dest`.

    `dest` must exist and must not be a symlink. The stream is read once, in order.
    """
    dest_fd = os.open(os.fspath(dest), _DIR_FLAGS)
    extractor = _Extractor(dest_fd)
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as archive:
            for info in archive:
                try:
                    extractor.member(archive, info)
                except UnsafeEntry as exc:
                    extractor.report.skipped.append((info.name, str(exc)))
    finally:
        os.close(dest_fd)
    return extractor.report
