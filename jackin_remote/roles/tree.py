"""A role directory read once, safely: its content hash and the archive shipped to hosts.

The reader never follows a symlink: files are opened with O_NOFOLLOW, links are recorded as links,
and a link whose target leaves the directory (or is absolute, so it would point at a laptop path
on the host) is an error. `.git` entries are skipped: history is not part of the image.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import posixpath
import stat
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from jackin_remote.roles.manifest import RoleError

# A role is a build context, not a dataset: past this, ship a smaller context (or a base image).
MAX_ROLE_BYTES = 1024 * 1024 * 1024
SKIPPED = frozenset({".git"})
_ARCHIVE_MTIME = 946684800  # 2000-01-01: fixed, so the archive is a pure function of the content

Kind = Literal["dir", "file", "link"]


@dataclass(frozen=True)
class Entry:
    path: str  # posix, relative to the role directory
    kind: Kind
    executable: bool = False
    data: bytes = b""  # a file's bytes, or a link's target


def snapshot(directory: Path) -> list[Entry]:
    """Every entry under `directory` (sorted, `.git` skipped), read without following links."""
    top = directory.resolve()
    entries: list[Entry] = []
    total = 0
    for current, dirnames, filenames in os.walk(top, followlinks=False, onerror=_walk_error):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED)
        base = Path(current)
        for name in [*dirnames, *sorted(f for f in filenames if f not in SKIPPED)]:
            full = base / name
            rel = full.relative_to(top).as_posix()
            _check_encodable(full, rel)
            entry = _entry(top, full, rel)
            total += len(entry.data)
            if total > MAX_ROLE_BYTES:
                raise RoleError(
                    f"{directory}: the role is larger than {MAX_ROLE_BYTES >> 20} MiB",
                    hint="keep large files out of the role directory (or in .git); "
                    "build big toolchains into a base image the Dockerfile starts FROM",
                )
            entries.append(entry)
    entries.sort(key=lambda e: e.path.encode())
    return entries


def _check_encodable(full: Path, rel: str) -> None:
    try:
        rel.encode()
    except UnicodeEncodeError:
        shown = str(full).encode(errors="backslashreplace").decode()
        raise RoleError(f"{shown}: file name is not valid UTF-8", hint="rename it") from None


def _walk_error(exc: OSError) -> None:
    raise RoleError(f"cannot read {exc.filename}: {exc.strerror}", hint="check permissions")


def _entry(top: Path, full: Path, rel: str) -> Entry:
    try:
        info = os.lstat(full)
    except OSError as exc:
        raise RoleError(f"cannot read {full}: {exc.strerror}", hint="check permissions") from None
    if stat.S_ISLNK(info.st_mode):
        return Entry(rel, "link", data=_link_target(top, full, rel).encode())
    if stat.S_ISDIR(info.st_mode):
        return Entry(rel, "dir", executable=True)
    if stat.S_ISREG(info.st_mode):
        data = read_regular_file(full)
        return Entry(rel, "file", executable=bool(info.st_mode & 0o111), data=data)
    raise RoleError(
        f"{full}: not a regular file, directory or symlink",
        hint="a role directory holds files only (no sockets, fifos or devices)",
    )


def _link_target(top: Path, full: Path, rel: str) -> str:
    target = os.readlink(full)
    hint = "a role's symlinks must point inside the role directory with a relative target"
    if posixpath.isabs(target):
        raise RoleError(f"{full}: symlink to an absolute path {target!r}", hint=hint)
    lexical = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
    if lexical == ".." or lexical.startswith("../"):
        raise RoleError(f"{full}: symlink {target!r} points outside the role", hint=hint)
    # Lexically inside can still escape through another link (`a -> .`, `b -> a/../x`).
    resolved = full.resolve()
    if resolved != top and top not in resolved.parents:
        raise RoleError(f"{full}: symlink {target!r} resolves outside the role", hint=hint)
    return target


def read_regular_file(path: Path, limit: int = MAX_ROLE_BYTES) -> bytes:
    """A regular file's bytes, refusing to follow a symlink even if one appears meanwhile."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        # O_NOFOLLOW on a symlink fails with ELOOP: say what it really means.
        reason = "it is a symlink" if exc.errno == errno.ELOOP else exc.strerror
        raise RoleError(
            f"cannot read {path}: {reason}",
            hint="it must be a regular file inside the role (roles are read without following "
            "symlinks)",
        ) from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise RoleError(f"{path}: not a regular file", hint="use a regular file")
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise RoleError(f"{path}: larger than {limit} bytes", hint="keep it smaller")
    return data


def content_hash(entries: Iterable[Entry]) -> str:
    """sha256 over (path, kind, exec bit, bytes) of each entry: length-prefixed, unambiguous."""
    digest = hashlib.sha256(b"jackin-role-v1\0")
    for entry in entries:
        path = entry.path.encode()
        head = b"%s\0%d:%s\0%d\0%d\0" % (
            entry.kind.encode(), len(path), path, int(entry.executable), len(entry.data)
        )  # fmt: skip
        digest.update(head)
        digest.update(entry.data)
    return digest.hexdigest()


def archive(entries: Iterable[Entry]) -> bytes:
    """A deterministic .tar.gz of the entries: fixed owner, times and modes (0755/0644)."""
    raw = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=6) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for entry in entries:
            info = tarfile.TarInfo(entry.path)
            info.mtime = _ARCHIVE_MTIME
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if entry.kind == "dir":
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            elif entry.kind == "link":
                info.type = tarfile.SYMTYPE
                info.linkname = entry.data.decode()
                info.mode = 0o777
                tar.addfile(info)
            else:
                info.mode = 0o755 if entry.executable else 0o644
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))
    return raw.getvalue()
