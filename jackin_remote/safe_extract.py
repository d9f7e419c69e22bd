"""Extract an agent-made tar stream into one directory, and nowhere else.

The archive comes from a sandbox: every name, link and mode in it is hostile until proven
otherwise. Rules:
- names are relative; absolute names, `..` components and NULs are refused;
- every write walks from `dest` one directory at a time with O_NOFOLLOW, so no symlink (from the
  archive or already on disk) is ever followed: a path through a link is refused;
- files are created with O_CREAT|O_EXCL|O_NOFOLLOW; an entry that names an existing file or link
  replaces it (the link itself, never its target), as tar does;
- symlinks are made as links with their target text unchanged (never resolved or rewritten);
- a symlink that points outside the tree (absolute, or climbing out with `..`, directly or through
  other links of the tree) is reported, and by default not materialised at all: its target is a
  path the agent chose on *this* machine (`keys -> /home/me/.ssh`), meaningless for the work and a
  trap for any tool that later follows links (cp -L, rsync -L, shutil.copytree, an IDE indexer);
- hard links become copies of a file already extracted here; links to anything else are skipped;
- devices, fifos and other special entries are skipped;
- setuid, setgid and sticky bits are dropped; owners are ignored;
- the archive is plain tar (no decompression: no bomb), and `max_bytes` bounds the bytes written,
  hard-link copies included: crossing it stops the extraction (TooLarge).
Refused entries are reported, not fatal: the rest of the work still arrives.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tarfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import IO

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_CHUNK = 1 << 20
MAX_LINK_FOLLOWS = 40  # as the kernel's ELOOP limit


class UnsafeEntry(Exception):
    """One archive entry that cannot be extracted safely; the reason is the message."""


class TooLarge(Exception):
    """The archive would write more than `limit` bytes; nothing past the limit was written."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"more than {limit} bytes")
        self.limit = limit


@dataclass
class ExtractReport:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (entry name, why)
    # (link name, target) of every symlink that points outside the tree, kept or not.
    outside_links: list[tuple[str, str]] = field(default_factory=list)


def resolve_inside(
    parent: tuple[str, ...], target: str, links: Mapping[tuple[str, ...], str]
) -> tuple[str, ...] | None:
    """Where the link target `target`, read in the directory `parent` of a tree, lands in that
    tree (as path parts), following the tree's own `links` as the kernel would; None when it
    leaves the tree (absolute, `..` above the top), loops, or is empty.

    Purely lexical apart from `links`: a missing component counts as a directory, which can only
    call inside what the kernel would refuse (ENOENT/ENOTDIR), never the other way round.
    """
    budget = [MAX_LINK_FOLLOWS]
    return _resolve(list(parent), target, links, budget)


def _resolve(
    stack: list[str], target: str, links: Mapping[tuple[str, ...], str], budget: list[int]
) -> tuple[str, ...] | None:
    if not target or target.startswith("/"):
        return None
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not stack:
                return None
            stack.pop()
            continue
        stack.append(part)
        link = links.get(tuple(stack))
        if link is not None:
            budget[0] -= 1
            if budget[0] < 0:
                return None
            stack.pop()
            landed = _resolve(list(stack), link, links, budget)
            if landed is None:
                return None
            stack = list(landed)
    return tuple(stack)


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


def _write_file(parent_fd: int, name: str, source: IO[bytes], mode: int, room: int) -> int:
    """Write `source` to `name`; TooLarge (the partial file removed) past `room` bytes."""
    _clear_slot(parent_fd, name)
    fd = os.open(name, _FILE_FLAGS, safe_mode(mode, directory=False), dir_fd=parent_fd)
    written = 0
    with os.fdopen(fd, "wb") as out:
        while chunk := source.read(min(_CHUNK, room - written + 1)):
            written += len(chunk)
            if written > room:
                out.close()
                os.unlink(name, dir_fd=parent_fd)
                raise TooLarge(room)
            out.write(chunk)
    return written


class _Extractor:
    def __init__(self, dest_fd: int, max_bytes: int | None) -> None:
        self.dest_fd = dest_fd
        self.max_bytes = max_bytes
        self.report = ExtractReport()
        self.regular: set[tuple[str, ...]] = set()  # files extracted: valid hard-link targets
        self.links: dict[tuple[str, ...], str] = {}  # symlinks on disk now: parts -> target

    def room(self) -> int:
        """Bytes still allowed; the error names the whole limit, not what was left of it."""
        if self.max_bytes is None:
            return 1 << 62
        return self.max_bytes - self.report.bytes

    def write(self, parent_fd: int, leaf: str, source: IO[bytes], mode: int) -> None:
        try:
            self.report.bytes += _write_file(parent_fd, leaf, source, mode, self.room())
        except TooLarge:
            raise TooLarge(self.max_bytes or 0) from None

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
            if info.size > self.room():  # refused before a byte of it is written
                raise TooLarge(self.max_bytes or 0)
            source = archive.extractfile(info)
            assert source is not None
            with _opened_dir(self.dest_fd, tuple(parents), create=True) as fd:
                self.write(fd, leaf, source, info.mode)
            self.regular.add(parts)
            self._unlinked(parts)
            self.report.files += 1
        elif info.issym():
            if not info.linkname:
                raise UnsafeEntry("symlink with an empty target")
            with _opened_dir(self.dest_fd, tuple(parents), create=True) as fd:
                _clear_slot(fd, leaf)
                os.symlink(info.linkname, leaf, dir_fd=fd)
            self.regular.discard(parts)
            self._unlinked(parts)
            self.links[parts] = info.linkname
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
                    self.write(fd, leaf, source, mode)
        self.regular.add(parts)
        self._unlinked(parts)
        self.report.files += 1

    def _unlinked(self, parts: tuple[str, ...]) -> None:
        """The slot `parts` was just replaced: a link there is gone."""
        if self.links.pop(parts, None) is not None:
            self.report.symlinks -= 1

    def outside_links(self, keep: bool) -> None:
        """Report every link whose target leaves the tree; unless `keep`, remove it.

        Decided on the final tree (after every entry), since a link may escape only through
        another one (`a -> b/../..`, `b -> .`). Removing one never makes another escape: a link
        that went through it already escaped, so every escaping link goes in one pass.
        """
        outside = sorted(
            parts for parts, target in self.links.items()
            if resolve_inside(parts[:-1], target, self.links) is None
        )  # fmt: skip
        for parts in outside:
            self.report.outside_links.append(("/".join(parts), self.links[parts]))
            if keep:
                continue
            *parents, leaf = parts
            with _opened_dir(self.dest_fd, tuple(parents), create=False) as fd:
                if stat.S_ISLNK(os.stat(leaf, dir_fd=fd, follow_symlinks=False).st_mode):
                    os.unlink(leaf, dir_fd=fd)
            self.report.symlinks -= 1


def safe_extract(
    stream: IO[bytes],
    dest: str | os.PathLike[str],
    *,
    max_bytes: int | None = None,
    keep_outside_links: bool = False,
) -> ExtractReport:
    """Extract the plain tar `stream` into the directory `dest`.

    `dest` must exist and must not be a symlink. The stream is read once, in order. Past
    `max_bytes` of file data, TooLarge is raised (what was written stays: the caller extracts
    into a scratch directory it removes). Links pointing outside the tree are always reported
    (`outside_links`) and only materialised with `keep_outside_links`.
    """
    dest_fd = os.open(os.fspath(dest), _DIR_FLAGS)
    extractor = _Extractor(dest_fd, max_bytes)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as archive:
            for info in archive:
                try:
                    extractor.member(archive, info)
                except UnsafeEntry as exc:
                    extractor.report.skipped.append((info.name, str(exc)))
        extractor.outside_links(keep_outside_links)
    finally:
        os.close(dest_fd)
    return extractor.report
