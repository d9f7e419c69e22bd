"""Snapshots of a session's checkout on the host: take, list, restore, diff against one.

    <root>/snapshots/<id>/                     layout.snapshots_dir (0700): outside the session
                                               directory and never mounted into any container
    <root>/snapshots/<id>/<snap>/meta.json     what it is (wire.SnapshotInfo)
    <root>/snapshots/<id>/<snap>/manifest.json.gz
                                               each entry: type, path, mode, size, mtime and the
                                               stat key (inode, ctime) it was taken with
    <root>/snapshots/<id>/<snap>/tree/         the checkout as it was, .git included: files 0444
                                               (0555 when executable), directories 0555

RPCs:
    snapshot.take {id, policy?} -> SnapshotInfo                   (reason: manual)
    snapshot.list {id} -> {snapshots: [SnapshotInfo], state}
    snapshot.restore {id, snapshot?, stop?, policy?} -> {restored, pre_restore, stopped, ...}
        (pre_restore leaves out only what both the policy and the restored snapshot leave out)
    snapshot.diff {id, snapshot} -> {text, stat, from, truncated}  (like session.diff)
`session.create` takes one before the agent starts (spec.snapshots.before_start); `session.rm`
keeps them and `session.rm {purge}` removes them (`purge`).

Incremental: a file whose stat key (inode, ctime, size, mtime, mode) is the one the previous
snapshot recorded is a hard link to that snapshot's copy, read not at all; the ctime cannot be
set back by the agent (utime sets it to now), so a rewritten file is never mistaken for an
unchanged one. A key whose ctime is within 2 s of the previous snapshot's taken_at is racy (a
same-size write in the tick of that snapshot's fstat keeps it, like git's racy index entries):
such a file is compared, not trusted. A file whose key changed but whose size did not is
compared byte for byte with the previous copy and linked when equal (after a restore every inode
is new). Anything else is copied (copy_file_range). Snapshot files are never written after they
are made, and a restore copies out of them, never links: a checkout never shares an inode with a
snapshot.

The checkout is the agent's, so it is read as hostile: every directory is opened relative to
its parent with O_NOFOLLOW (a link swapped in is never followed out of the checkout), symlinks
are copied as links, special files are skipped, and the work is bounded (depth, entry count,
the file system's free space). What could not be taken is counted and named, never fatal: an
agent cannot stop a restore by making its checkout unsnapshottable. Python 3.9 compatible.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gzip
import json
import os
import re
import secrets
import shutil
import stat
import time
from fnmatch import translate
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from agent_host import audit, layout
from agent_host.protocol import E_CONFLICT, E_FAILED, E_NOT_FOUND, Message, RemoteError
from agent_host.server import Context
from agent_host.state import Store
from agent_host.wire import (
    MAX_SKIPPED_SAMPLE,
    SNAPSHOT_ID_RE,
    SnapshotInfo,
    SnapshotPolicy,
    check_session_id,
    check_snapshot_id,
)

TREE = "tree"
META = "meta.json"
MANIFEST = "manifest.json.gz"
LOCK = ".lock"
STAGING_PREFIX = ".new-"
MAX_DEPTH = 100  # directories below the checkout; deeper ones are skipped (3 fds a level)
MAX_ENTRIES = 1000000  # entries listed (excluded ones too); past that the rest is skipped
RACY_NS = 2 * 10**9  # a ctime this close to the previous snapshot's taken_at: compare the bytes
RESERVE_BYTES = 256 * 1024 * 1024  # free space a snapshot never takes
CHUNK = 1024 * 1024
FILE_MODE, EXEC_MODE, DIR_MODE = 0o444, 0o555, 0o555
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
RUNNING_STATUSES = ("running", "restarting", "paused")

Row = List[Any]  # manifest row: [type f|d|l, path, mode, size, mtime_ns, ino, ctime_ns]


# -- pure parts ---------------------------------------------------------------------------------
def is_excluded(parts: Sequence[str], patterns: Sequence[str]) -> bool:
    """Whether the checkout entry at `parts` (its path's components) is left out. A pattern
    without '/' matches an entry's name at any depth; one with '/' the whole path from the top,
    component by component (`*` never crosses '/'). The top-level .git is never left out."""
    return Excluder(patterns)(parts)


class Excluder:
    """`is_excluded` for one set of patterns, compiled once: plain names are a set, wildcard
    names one regex, path patterns a regex per component."""

    def __init__(self, patterns: Sequence[str]) -> None:
        names = [p for p in patterns if "/" not in p]
        self.plain = frozenset(p for p in names if "*" not in p and "?" not in p)
        wild = [translate(p) for p in names if p not in self.plain]
        self.wild = re.compile("|".join(wild)) if wild else None
        self.paths = [[re.compile(translate(piece)) for piece in p.split("/")]
                      for p in patterns if "/" in p]  # fmt: skip

    def __call__(self, parts: Sequence[str]) -> bool:
        if not parts or parts[0] == ".git":
            return False
        name = parts[-1]
        if name in self.plain or (self.wild is not None and self.wild.match(name)):
            return True
        return bool(self.paths) and any(
            len(pieces) == len(parts)
            and all(piece.match(part) for piece, part in zip(pieces, parts))  # noqa: B905
            for pieces in self.paths
        )


def exclude_pathspecs(patterns: Sequence[str]) -> List[str]:
    """git pathspecs leaving out what `is_excluded` leaves out (for the diff's trees)."""
    specs = []
    for pattern in patterns:
        base = pattern if "/" in pattern else "**/" + pattern
        specs += [":(exclude,glob)" + base, ":(exclude,glob)" + base + "/**"]
    return specs


def number(snapshot_id: str) -> int:
    return int(check_snapshot_id(snapshot_id)[1:])


def prune_selection(
    snapshots: Sequence[Tuple[str, float]],
    keep: int,
    max_age: Optional[int],
    now: float,
    protect: Sequence[str] = (),
) -> List[str]:
    """The snapshots (id, taken_at) retention removes: all but the newest `keep`, and those
    older than `max_age` seconds; never the newest one, nor those in `protect` (the one a
    restore just made, and the one it restores). Oldest first. Pure."""
    ordered = sorted(snapshots, key=lambda item: number(item[0]))
    if not ordered:
        return []
    kept = {snap for snap, _ in ordered[-keep:]} if keep > 0 else set()
    newest = ordered[-1][0]
    doomed = []
    for snap, taken_at in ordered:
        if snap == newest or snap in protect:
            continue
        if snap not in kept or (max_age is not None and now - taken_at > max_age):
            doomed.append(snap)
    return doomed


def restore_choice(snapshots: Sequence[Tuple[str, str]], wanted: Optional[str]) -> str:
    """The snapshot (id, reason) a restore takes: `wanted`, else the newest one that a restore
    did not make (a second plain restore does not undo the first). Pure."""
    ids = [snap for snap, _ in snapshots]
    if wanted is not None:
        if wanted not in ids:
            raise RemoteError(E_NOT_FOUND, "no snapshot %s of this session (it has: %s)"
                              % (wanted, ", ".join(ids) or "none"))  # fmt: skip
        return wanted
    ordered = sorted(snapshots, key=lambda item: number(item[0]))
    chosen = [snap for snap, reason in ordered if reason != "before-restore"] or [
        snap for snap, _ in ordered
    ]
    if not chosen:
        raise RemoteError(E_NOT_FOUND, "the session has no snapshot to restore",
                          {"hint": "take one with `jackin-remote snapshot SESSION`"})  # fmt: skip
    return chosen[-1]


def before_restore_excludes(current: Sequence[str], restored: Sequence[str]) -> Tuple[str, ...]:
    """What the snapshot before a restore leaves out: only the patterns both the current policy
    and the snapshot being restored left out. Whatever the restored snapshot holds (`build/`
    kept with "!build" then, excluded now), the one before it holds too: the restore moves
    only excluded trees the restored snapshot has no copy of, and drops the rest. Pure."""
    both = set(restored)
    return tuple(p for p in current if p in both)


def shown_name(path: str) -> str:
    """A checkout path as text that any JSON encoder and terminal takes: bytes that are not
    UTF-8 become U+FFFD (it is shown, never used as a path)."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


# -- taking one ---------------------------------------------------------------------------------
class _Taker:
    """Copies one checkout into a snapshot tree, linking what the previous one already holds."""

    def __init__(self, patterns: Sequence[str], previous: Dict[str, Row], free_bytes: int,
                 strict_space: bool = True,
                 previous_at: Optional[float] = None) -> None:  # fmt: skip
        self.excluded = Excluder(patterns)
        self.previous = previous
        # Racy rows (git's racy index entries): a same-size write in the clock tick of the
        # previous snapshot's fstat leaves the key it recorded, so a row whose ctime is not
        # clearly before that snapshot was taken is never trusted on its key alone (nor any
        # row when that time is unknown).
        self.racy_from = (
            -1 if previous_at is None else int(previous_at * 10**9) - RACY_NS
        )  # fmt: skip
        self.budget = free_bytes
        # A file that does not fit fails the snapshot (loudly, nothing kept); only the snapshot
        # before a restore skips it and names it, so an agent cannot block its own restore.
        self.strict_space = strict_space
        self.rows: List[Row] = []
        self.counts = dict.fromkeys(SnapshotInfo.COUNTS, 0)
        self.sample: List[str] = []
        self.excluded_paths: List[Tuple[str, ...]] = []
        self.entries = 0

    def skip(self, path: str, why: str) -> None:
        self.counts["skipped"] += 1
        if len(self.sample) < MAX_SKIPPED_SAMPLE:
            self.sample.append("%s (%s)" % (shown_name(path), why))

    def names(self, src: int, parts: Tuple[str, ...]) -> List[str]:
        """A directory's names, sorted; every one counts toward MAX_ENTRIES (excluded ones too)
        and the listing stops past it, so a directory of millions of names is never held
        whole: what is held is bounded by the entries left."""
        room = MAX_ENTRIES - self.entries
        names: List[str] = []
        with os.scandir(src) as listing:
            for entry in listing:
                if len(names) >= room:
                    self.skip("/".join(parts) or ".", "more than %d entries: the rest of this "
                              "directory" % MAX_ENTRIES)  # fmt: skip
                    break
                names.append(entry.name)
        self.entries += len(names)
        names.sort()
        return names

    def walk(
        self, src: int, dst: int, prev: Optional[int], parts: Tuple[str, ...], depth: int
    ) -> None:
        names = self.names(src, parts)
        previous, counts, excluded, racy_from = (
            self.previous, self.counts, self.excluded, self.racy_from)  # fmt: skip
        top = not parts
        prefix = "/".join(parts) + "/" if parts else ""
        for name in names:
            path = prefix + name
            try:
                info = os.stat(name, dir_fd=src, follow_symlinks=False)
            except FileNotFoundError:
                continue  # gone meanwhile
            sub = (*parts, name)
            if (not top or name != ".git") and excluded(sub):
                counts["excluded"] += 1
                self.excluded_paths.append(sub)
                continue
            mode = info.st_mode
            if stat.S_ISREG(mode):
                # As the previous snapshot recorded it (its kernel-set ctime too): linked, not
                # even opened. The common case, kept short.
                old = previous.get(path)
                if (
                    prev is not None and old is not None and old[5] == info.st_ino
                    and old[6] == info.st_ctime_ns and old[6] < racy_from
                    and old[4] == info.st_mtime_ns
                    and old[3] == info.st_size and old[2] == mode & 0o7777 and old[0] == "f"
                    and _link(prev, dst, name)
                ):  # fmt: skip
                    counts["files"] += 1
                    counts["files_linked"] += 1
                    counts["bytes"] += old[3]
                    counts["bytes_linked"] += old[3]
                    self.rows.append(old)
                    continue
                self.file(src, dst, prev, name, path)
            elif stat.S_ISDIR(mode):
                self.directory(src, dst, prev, name, sub, depth, info)
            elif stat.S_ISLNK(info.st_mode):
                target = os.readlink(name, dir_fd=src)
                os.symlink(target, name, dir_fd=dst)
                self.counts["links"] += 1
                self.rows.append(["l", path, 0o777, len(target), info.st_mtime_ns, 0, 0])
            else:
                self.skip(path, "special file")

    def directory(self, src: int, dst: int, prev: Optional[int], name: str,
                  parts: Tuple[str, ...], depth: int, info: os.stat_result) -> None:  # fmt: skip
        path = "/".join(parts)
        if depth + 1 > MAX_DEPTH:
            self.skip(path, "deeper than %d directories" % MAX_DEPTH)
            return
        try:
            child = os.open(name, _DIR_FLAGS, dir_fd=src)
        except OSError:
            self.skip(path, "replaced while it was read")
            return
        try:
            os.mkdir(name, 0o700, dir_fd=dst)
            copy = os.open(name, _DIR_FLAGS, dir_fd=dst)
            before = _open_dir(prev, name)
            try:
                self.counts["dirs"] += 1
                self.rows.append(["d", path, info.st_mode & 0o7777, 0, info.st_mtime_ns, 0, 0])
                self.walk(child, copy, before, parts, depth + 1)
                os.fchmod(copy, DIR_MODE)
            finally:
                os.close(copy)
                if before is not None:
                    os.close(before)
        finally:
            os.close(child)

    def file(self, src: int, dst: int, prev: Optional[int], name: str, path: str) -> None:
        """A file whose stat changed since the previous snapshot (or new): read."""
        old = self.previous.get(path)
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=src)
        except OSError:
            self.skip(path, "replaced while it was read")
            return
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                self.skip(path, "replaced while it was read")
                return
            row: Row = ["f", path, *_key(info)]
            # Changed stat, same size and exec bit (a touch, a restore's new inode): compared,
            # and linked when the bytes are the same.
            same_kind = old is not None and old[0] == "f" and old[3] == row[3]
            if (
                prev is not None and same_kind and old is not None
                and old[2] & stat.S_IXUSR == row[2] & stat.S_IXUSR
                and _same_content(fd, prev, name, info.st_size) and _link(prev, dst, name)
            ):  # fmt: skip
                self._linked(path, info)
                return
            if info.st_size > self.budget:
                if self.strict_space:
                    raise OSError(errno.ENOSPC, "%s needs %d bytes" % (shown_name(path),
                                                                      info.st_size))  # fmt: skip
                self.skip(path, "%d bytes: more than the free space" % info.st_size)
                return
            self.counts["files"] += 1
            self.counts["bytes"] += info.st_size
            out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600,
                          dir_fd=dst)  # fmt: skip
            try:
                copied = copy_range(fd, out, info.st_size)
                os.fchmod(out, EXEC_MODE if info.st_mode & stat.S_IXUSR else FILE_MODE)
            finally:
                os.close(out)
            self.budget -= copied
            row[3] = copied  # a file that shrank meanwhile: what the copy holds
            self.counts["files_new"] += 1
            self.counts["bytes_new"] += copied
            self.rows.append(row)
        finally:
            os.close(fd)

    def _linked(self, path: str, info: os.stat_result) -> None:
        self.counts["files"] += 1
        self.counts["bytes"] += info.st_size
        self.counts["files_linked"] += 1
        self.counts["bytes_linked"] += info.st_size
        self.rows.append(["f", path, *_key(info)])


def _key(info: os.stat_result) -> List[int]:
    """What says a file is unchanged: mode, size, mtime, inode and ctime (the last two are the
    kernel's: a rewrite gets a new ctime whatever mtime it sets back)."""
    return [info.st_mode & 0o7777, info.st_size, info.st_mtime_ns, info.st_ino, info.st_ctime_ns]


def _open_dir(parent: Optional[int], name: str) -> Optional[int]:
    if parent is None:
        return None
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except OSError:
        return None


def _link(prev: int, dst: int, name: str) -> bool:
    try:
        os.link(name, name, src_dir_fd=prev, dst_dir_fd=dst, follow_symlinks=False)
        return True
    except OSError as exc:
        if exc.errno in (errno.EMLINK, errno.ENOENT, errno.EPERM, errno.EXDEV):
            return False  # too many links to that inode, or not there: copy it instead
        raise


def _same_content(fd: int, prev: int, name: str, size: int) -> bool:
    try:
        other = os.open(name, _FILE_FLAGS, dir_fd=prev)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(other).st_mode) or os.fstat(other).st_size != size:
            return False
        offset = 0
        while offset < size:
            mine, theirs = os.pread(fd, CHUNK, offset), os.pread(other, CHUNK, offset)
            if mine != theirs or not mine:
                return False
            offset += len(mine)
        return True
    finally:
        os.close(other)


def copy_range(src: int, dst: int, size: int) -> int:
    """Copy the first `size` bytes of `src` into `dst`; what was copied (less if it shrank)."""
    copied = 0
    fast = hasattr(os, "copy_file_range")
    while copied < size:
        count = min(size - copied, 1 << 30)
        if fast:
            try:
                done = os.copy_file_range(src, dst, count, copied, copied)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                fast = False
                continue
        else:
            data = os.pread(src, min(count, CHUNK), copied)
            done = os.pwrite(dst, data, copied) if data else 0
        if done == 0:
            break
        copied += done
    return copied


def _free_bytes(path: str) -> int:
    info = os.statvfs(path)
    return max(0, info.f_bavail * info.f_frsize - RESERVE_BYTES)


def _private_dir(path: str) -> None:
    """Make `path` (0700), refusing a symlink in its place."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    if os.path.islink(path) or not os.path.isdir(path):
        raise RemoteError(E_FAILED, "%s is not a plain directory" % path)


@contextlib.contextmanager
def _locked(base: str) -> Iterator[None]:
    """One snapshot, restore or removal of a session's snapshots at a time."""
    fd = os.open(os.path.join(base, LOCK), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def held_for_start(root: str, session_id: str) -> Iterator[None]:
    """Held by `session.start` while it starts a sandbox: never in the middle of a restore's
    swap (a session without snapshots has no restore to wait for)."""
    base = layout.snapshots_dir(root, session_id)
    if not os.path.isdir(base) or os.path.islink(base):
        yield
        return
    with _locked(base):
        yield


def _ids(base: str) -> List[str]:
    """Snapshot ids under `base`, complete (meta written) or not, oldest first."""
    try:
        names = os.listdir(base)
    except OSError:
        return []
    return sorted((n for n in names if SNAPSHOT_ID_RE.match(n)), key=number)


def infos(root: str, session_id: str) -> List[SnapshotInfo]:
    """The session's complete snapshots, oldest first."""
    base = layout.snapshots_dir(root, session_id)
    found = []
    for snap in _ids(base):
        try:
            with open(os.path.join(base, snap, META), encoding="utf-8") as handle:
                found.append(SnapshotInfo.from_wire(json.load(handle)))
        except (OSError, ValueError):
            continue  # being made, or damaged: not a snapshot to use
    return found


def count(root: str, session_id: str) -> int:
    """How many snapshots the session has (for `session.list`: no file is read)."""
    return len(_ids(layout.snapshots_dir(root, session_id)))


def _manifest(snapdir: str) -> Dict[str, Row]:
    try:
        with gzip.open(os.path.join(snapdir, MANIFEST), "rt", encoding="utf-8") as handle:
            rows = json.load(handle)
    except (OSError, ValueError):
        return {}
    return {row[1]: row for row in rows if isinstance(row, list) and len(row) == 7}


def take(root: str, session_id: str, reason: str, policy: SnapshotPolicy) -> SnapshotInfo:
    base = layout.snapshots_dir(root, session_id)
    for attempt in range(3):  # a purge of the last session may remove <root>/snapshots meanwhile
        try:
            _private_dir(os.path.dirname(base))
            _private_dir(base)
            break
        except FileNotFoundError:
            if attempt == 2:
                raise
    with _locked(base):
        info, _ = _take(root, session_id, reason, policy)
        _prune(root, session_id, policy, protect=(info.id,))
    return info


def _take(
    root: str,
    session_id: str,
    reason: str,
    policy: SnapshotPolicy,
    patterns: Optional[Sequence[str]] = None,
) -> Tuple[SnapshotInfo, List[Tuple[str, ...]]]:
    """Take one (the lock held): its info, and the checkout's paths the excludes left out.
    `patterns`: what to leave out, when not the policy's (the snapshot before a restore)."""
    excludes = tuple(policy.patterns if patterns is None else patterns)
    base = layout.snapshots_dir(root, session_id)
    for name in os.listdir(base):  # what a snapshot interrupted by a crash left
        if name.startswith(STAGING_PREFIX):
            remove_tree(os.path.join(base, name))
    ids = _ids(base)
    snap = "s%d" % ((number(ids[-1]) if ids else 0) + 1)
    complete = infos(root, session_id)
    previous = layout.snapshot_dir(root, session_id, complete[-1].id) if complete else None
    staging = os.path.join(base, STAGING_PREFIX + snap + "-" + secrets.token_hex(4))
    os.mkdir(staging, 0o700)
    try:
        os.mkdir(os.path.join(staging, TREE), 0o700)
        taker = _Taker(excludes, _manifest(previous) if previous else {}, _free_bytes(base),
                       strict_space=reason != "before-restore",
                       previous_at=complete[-1].taken_at if complete else None)  # fmt: skip
        src = os.open(layout.work_dir(root, session_id), _DIR_FLAGS)
        dst = os.open(os.path.join(staging, TREE), _DIR_FLAGS)
        prev = None if previous is None else _open_dir_path(os.path.join(previous, TREE))
        try:
            top = os.fstat(src)
            taker.rows.append(["d", "", top.st_mode & 0o7777, 0, top.st_mtime_ns, 0, 0])
            taker.walk(src, dst, prev, (), 0)
            os.fchmod(dst, DIR_MODE)
        finally:
            for fd in (src, dst, prev):
                if fd is not None:
                    os.close(fd)
        info = SnapshotInfo(id=snap, session=session_id, taken_at=time.time(), reason=reason,
                            skipped_sample=tuple(taker.sample), excludes=excludes,
                            **taker.counts)  # fmt: skip
        data = json.dumps(taker.rows, separators=(",", ":")).encode("utf-8", "surrogateescape")
        with open(os.path.join(staging, MANIFEST), "xb") as handle:
            handle.write(gzip.compress(data, compresslevel=1))
        _write_json(os.path.join(staging, META), info.to_wire())
        os.chmod(os.path.join(staging, MANIFEST), FILE_MODE)
        os.rename(staging, os.path.join(base, snap))
    except BaseException as exc:
        remove_tree(staging)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise RemoteError(
                E_FAILED, "snapshot of %s failed: the host's disk is full (%s); "
                "nothing was kept, the earlier snapshots are as they were" % (
                    session_id, exc.strerror or exc),
                {"hint": "free space (`jackin-remote du`, `jackin-remote gc`), then take it "
                 "again; a snapshot keeps %d MiB of the disk free" % (RESERVE_BYTES >> 20)},
            ) from None  # fmt: skip
        raise
    path = layout.snapshot_dir(root, session_id, snap)
    os.chmod(path, DIR_MODE)
    audit.record(root, session_id, "snapshot.take", path, "rm -rf %s" % path)
    return info, taker.excluded_paths


def _open_dir_path(path: str) -> Optional[int]:
    try:
        return os.open(path, _DIR_FLAGS)
    except OSError:
        return None


def _write_json(path: str, data: Any) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1)


def _prune(root: str, session_id: str, policy: SnapshotPolicy, protect: Sequence[str]) -> None:
    items = [(item.id, item.taken_at) for item in infos(root, session_id)]
    for snap in prune_selection(items, policy.keep, policy.max_age_seconds, time.time(), protect):
        path = layout.snapshot_dir(root, session_id, snap)
        remove_tree(path)
        audit.record(root, session_id, "snapshot.remove", path, "")


def remove_tree(path: str) -> None:
    """Remove a snapshot (read-only directories included); never follows a link."""

    def writable(func: Any, target: str, _exc: Any) -> None:
        parent = os.path.dirname(target)
        if not os.path.islink(parent):
            os.chmod(parent, 0o700)
        func(target)

    if os.path.lexists(path):
        if not os.path.islink(path) and os.path.isdir(path):
            os.chmod(path, 0o700)
        shutil.rmtree(path, onerror=writable)


def purge(root: str, session_id: str) -> int:
    """Remove every snapshot of a session (rm --purge): how many there were."""
    base = layout.snapshots_dir(root, session_id)
    if not os.path.isdir(base) or os.path.islink(base):
        return 0
    with _locked(base):
        gone = _ids(base)
        for snap in gone:
            path = os.path.join(base, snap)
            remove_tree(path)
            audit.record(root, session_id, "snapshot.remove", path, "")
    remove_tree(base)
    with contextlib.suppress(OSError):  # the last session's: <root>/snapshots goes too
        os.rmdir(os.path.dirname(base))
    return len(gone)


# -- restoring one ------------------------------------------------------------------------------
def _rebuild(tree: int, out: int, rows: Dict[str, Row], parts: Tuple[str, ...]) -> int:
    """Copy a snapshot tree (ours) into `out`: new inodes, the recorded modes and mtimes (a
    directory's once it is full). How many entries were made."""
    made = 0
    with os.scandir(tree) as listing:
        names = sorted(entry.name for entry in listing)
    for name in names:
        sub = (*parts, name)
        info = os.stat(name, dir_fd=tree, follow_symlinks=False)
        row = rows.get("/".join(sub)) or ["?", "", info.st_mode, 0, info.st_mtime_ns, 0, 0]
        mode, mtime = row[2] & 0o1777, row[4]  # no setuid/setgid bit comes back
        made += 1
        if stat.S_ISLNK(info.st_mode):
            os.symlink(os.readlink(name, dir_fd=tree), name, dir_fd=out)
        elif stat.S_ISDIR(info.st_mode):
            os.mkdir(name, 0o700, dir_fd=out)
            child = os.open(name, _DIR_FLAGS, dir_fd=tree)
            try:
                copy = os.open(name, _DIR_FLAGS, dir_fd=out)
                try:
                    made += _rebuild(child, copy, rows, sub)
                    os.fchmod(copy, mode | 0o700)  # the owner keeps write: restores move into it
                    os.utime(copy, ns=(mtime, mtime))
                finally:
                    os.close(copy)
            finally:
                os.close(child)
        elif stat.S_ISREG(info.st_mode):
            src = os.open(name, _FILE_FLAGS, dir_fd=tree)
            try:
                dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600,
                              dir_fd=out)  # fmt: skip
                try:
                    copy_range(src, dst, info.st_size)
                    os.fchmod(dst, mode)
                    os.utime(dst, ns=(mtime, mtime))
                finally:
                    os.close(dst)
            finally:
                os.close(src)
    return made


def _keep_excluded(old: int, new: int, excluded: Sequence[Tuple[str, ...]],
                   moved: List[Tuple[str, ...]]) -> None:  # fmt: skip
    """Move the rebuildable trees the snapshot left out (node_modules...) from the checkout
    being replaced into the restored one, where the restored one has no such name; each one
    moved is added to `moved` (as it goes: a failure part way moves those back)."""
    for parts in excluded:
        src, dst = _walk_to(old, parts[:-1]), _walk_to(new, parts[:-1])
        try:
            if src is None or dst is None:
                continue
            try:
                os.stat(parts[-1], dir_fd=dst, follow_symlinks=False)
                continue  # the snapshot has this name: it wins
            except FileNotFoundError:
                pass
            try:
                os.rename(parts[-1], parts[-1], src_dir_fd=src, dst_dir_fd=dst)
            except OSError:
                continue
            moved.append(parts)
        finally:
            for fd in (src, dst):
                if fd is not None:
                    os.close(fd)


def _move_back(new_work: str, work: str, moved: Sequence[Tuple[str, ...]]) -> bool:
    """Put the excluded trees moved into a restored checkout that was not swapped in back into
    the live one. Whether all of them went back."""
    new, old = _open_dir_path(new_work), _open_dir_path(work)
    done = True
    try:
        for parts in moved:
            src: Optional[int] = None if new is None else _walk_to(new, parts[:-1])
            dst: Optional[int] = None if old is None else _walk_to(old, parts[:-1])
            try:
                if src is None or dst is None:
                    done = False
                    continue
                try:
                    os.rename(parts[-1], parts[-1], src_dir_fd=src, dst_dir_fd=dst)
                except OSError:
                    done = False
            finally:
                for fd in (src, dst):
                    if fd is not None:
                        os.close(fd)
    finally:
        for held in (new, old):
            if held is not None:
                os.close(held)
    return done


def _walk_to(top: int, parts: Sequence[str]) -> Optional[int]:
    """A directory fd at `parts` below `top`, through real directories only (or None)."""
    fd = os.dup(top)
    for part in parts:
        try:
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
        except OSError:
            os.close(fd)
            return None
        os.close(fd)
        fd = child
    return fd


def _restore_checkout(root: str, record: Dict[str, Any], snap: str,
                      excluded: Sequence[Tuple[str, ...]]) -> int:  # fmt: skip
    """Replace the session's checkout with snapshot `snap`: rebuilt beside it, then swapped in
    (two renames), then the old one removed. The checkout is the agent's again (root host).
    When any step fails the live checkout stays (renamed back if it was moved aside, its
    excluded trees moved back), and nothing of it is removed."""
    from agent_host.sessions import _chown_tree, _rmtree

    session_id = record["id"]
    work = layout.work_dir(root, session_id)
    snapdir = layout.snapshot_dir(root, session_id, snap)
    rows = _manifest(snapdir)
    staging = os.path.join(layout.session_dir(root, session_id),
                           ".restore-" + secrets.token_hex(4))  # fmt: skip
    os.mkdir(staging, 0o700)
    replaced = staging + "-old"
    new_work = os.path.join(staging, "work")
    moved: List[Tuple[str, ...]] = []
    try:
        os.mkdir(new_work, 0o700)
        tree, out = os.open(os.path.join(snapdir, TREE), _DIR_FLAGS), os.open(new_work, _DIR_FLAGS)
        try:
            made = _rebuild(tree, out, rows, ())
            old = _open_dir_path(work)
            if old is not None:
                try:
                    _keep_excluded(old, out, excluded, moved)
                finally:
                    os.close(old)
            top = rows.get("")
            os.fchmod(out, (top[2] & 0o1777 if top else 0o755) | 0o700)
        finally:
            os.close(tree)
            os.close(out)
        if os.getuid() == 0 and record.get("uid"):
            _chown_tree(new_work, int(record["uid"]), int(record["uid"]))
        if os.path.lexists(work):
            os.rename(work, replaced)
        os.rename(new_work, work)
    except BaseException:
        _undo_restore(work, replaced, new_work, staging, moved)
        raise
    if os.path.lexists(replaced):  # only once the restored one is in place
        _rmtree(replaced)
    _rmtree(staging)
    return made


def _undo_restore(work: str, replaced: str, new_work: str, staging: str,
                  moved: Sequence[Tuple[str, ...]]) -> None:  # fmt: skip
    """A restore that failed before its checkout was swapped in: the live one back in place
    with its excluded trees; the rebuilt one removed only when nothing of the live one is in
    it (else it stays beside the checkout and the error names it)."""
    from agent_host.sessions import _rmtree

    if os.path.lexists(replaced) and not os.path.lexists(work):
        os.rename(replaced, work)
    if moved and not _move_back(new_work, work, moved):
        raise RemoteError(E_FAILED, "the restore failed part way and could not move all of the "
                          "checkout's excluded trees back: what is missing from %s is in %s"
                          % (work, new_work))  # fmt: skip
    if os.path.lexists(staging):
        _rmtree(staging)


def _sandbox_running(record: Dict[str, Any]) -> bool:
    from agent_host.sessions import _docker, _not_found

    try:
        container = _docker().containers.get(record["container"])
    except _not_found():
        return False
    return str(container.status) in RUNNING_STATUSES


# -- handlers -----------------------------------------------------------------------------------
def _record(root: str, params: Message) -> Dict[str, Any]:
    session_id = check_session_id(params.get("id"), "id")
    store = Store(root)
    try:
        record = store.get(session_id)
    finally:
        store.close()
    if record is None:
        raise RemoteError(E_NOT_FOUND, "no session %s on this host" % session_id)
    return record


def _live(record: Dict[str, Any], root: str, what: str) -> None:
    """A session whose checkout is there: not removed, not being set up."""
    if record["state"] == "purged" or not os.path.isdir(layout.work_dir(root, record["id"])):
        raise RemoteError(E_CONFLICT, "session %s was removed: it has no checkout to %s (its "
                          "snapshots stay until rm --purge)" % (record["id"], what))  # fmt: skip
    if record["state"] == "starting":
        raise RemoteError(E_CONFLICT, "session %s is starting: wait until it runs" % record["id"])


def _policy(params: Message, record: Dict[str, Any]) -> SnapshotPolicy:
    """The operator's current policy (the controller sends its inventory's), else the one the
    session was launched with."""
    given = params.get("policy")
    if given is not None:
        return SnapshotPolicy.from_wire(given)
    return SnapshotPolicy.from_wire((record.get("spec") or {}).get("snapshots") or {})


def take_handler(ctx: Context, params: Message) -> Dict[str, Any]:
    record = _record(ctx.root, params)
    _live(record, ctx.root, "snapshot")
    return take(ctx.root, record["id"], "manual", _policy(params, record)).to_wire()


def list_handler(ctx: Context, params: Message) -> Dict[str, Any]:
    record = _record(ctx.root, params)
    return {
        "snapshots": [item.to_wire() for item in infos(ctx.root, record["id"])],
        "state": record["state"],
    }


def restore_handler(ctx: Context, params: Message) -> Dict[str, Any]:
    record = _record(ctx.root, params)
    session_id = record["id"]
    _live(record, ctx.root, "restore")
    wanted = params.get("snapshot")
    if wanted is not None:
        check_snapshot_id(wanted, "snapshot")
    policy = _policy(params, record)
    base = layout.snapshots_dir(ctx.root, session_id)
    if not os.path.isdir(base) or os.path.islink(base):
        restore_choice([], wanted)  # raises: nothing to restore
    stopped = False
    if _sandbox_running(record):
        if not params.get("stop"):
            raise RemoteError(
                E_CONFLICT, "session %s is running: a restore would change its checkout under "
                "the agent" % session_id,
                {"hint": "restore --stop stops it first (start it again with `jackin-remote "
                 "start %s`)" % session_id},
            )  # fmt: skip
        from agent_host import sessions

        sessions.stop(ctx, {"id": session_id})
        stopped = True
    with _locked(base):
        if _sandbox_running(_record(ctx.root, params)):  # started again meanwhile
            raise RemoteError(E_CONFLICT, "session %s was started again during the restore: "
                              "nothing was restored" % session_id)  # fmt: skip
        known = infos(ctx.root, session_id)
        snap = restore_choice([(i.id, i.reason) for i in known], wanted)
        restored = next(i for i in known if i.id == snap)
        before, excluded = _take(
            ctx.root,
            session_id,
            "before-restore",
            policy,
            before_restore_excludes(policy.patterns, restored.excludes),
        )
        made = _restore_checkout(ctx.root, record, snap, excluded)
        _prune(ctx.root, session_id, policy, protect=(before.id, snap))
    audit.record(ctx.root, session_id, "snapshot.restore", layout.work_dir(ctx.root, session_id),
                 "jackin-remote restore %s %s" % (session_id, before.id))  # fmt: skip
    store = Store(ctx.root)
    try:
        state = (store.get(session_id) or record)["state"]
    finally:
        store.close()
    return {"restored": snap, "pre_restore": before.to_wire(), "stopped": stopped,
            "entries": made, "state": state}  # fmt: skip


def diff_handler(ctx: Context, params: Message) -> Dict[str, Any]:
    """What changed in the checkout since a snapshot: both sides as git trees built in a
    scratch repository (review.Scratch), never with the agent's .git, the snapshot's excludes
    left out of both."""
    from agent_host import review

    record = _record(ctx.root, params)
    _live(record, ctx.root, "compare")
    session_id = record["id"]
    snap = check_snapshot_id(params.get("snapshot"), "snapshot")
    known = {item.id: item for item in infos(ctx.root, session_id)}
    if snap not in known:
        raise RemoteError(E_NOT_FOUND, "no snapshot %s of session %s (it has: %s)"
                          % (snap, session_id, ", ".join(known) or "none"))  # fmt: skip
    tree = os.path.join(layout.snapshot_dir(ctx.root, session_id, snap), TREE)
    specs = exclude_pathspecs(known[snap].excludes)
    with review.Scratch(ctx.root, session_id) as scratch:
        old = _tree_of(scratch, tree, specs)
        new = _tree_of(scratch, layout.work_dir(ctx.root, session_id), specs)
        options = ["--no-color", "--no-ext-diff", "--no-textconv", "-M"]
        limit = review.MAX_DIFF_BYTES
        text = scratch.git(["diff", *options, old, new], limit=limit + 1)
        numstat = scratch.git(["diff", "--numstat", "-z", *options, old, new], limit=limit)
    truncated = len(text.encode()) > limit
    if truncated:
        text = text.encode()[:limit].decode(errors="ignore")
    return {"text": text, "stat": review.parse_numstat(numstat), "from": "snapshot " + snap,
            "truncated": truncated}  # fmt: skip


def _tree_of(scratch: Any, work_tree: str, specs: Sequence[str]) -> str:
    """Every file of `work_tree` (ignored ones too) but the excludes, as a git tree."""
    env = {"GIT_INDEX_FILE": os.path.join(scratch.dir, "index"), "GIT_WORK_TREE": work_tree}
    scratch.git(["read-tree", "--empty"], env=env)
    scratch.git(["add", "-A", "-f", "--", ".", *specs], env=env)
    tree = str(scratch.git(["write-tree"], env=env))
    os.unlink(env["GIT_INDEX_FILE"])
    return tree


HANDLERS = {
    "snapshot.take": take_handler,
    "snapshot.list": list_handler,
    "snapshot.restore": restore_handler,
    "snapshot.diff": diff_handler,
}
