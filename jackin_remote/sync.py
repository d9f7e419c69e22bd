"""Workspace sync: laptop workspace -> each host's mirror, `<root>/workspaces/<ws>/mirror/`.

Per host: one `workspace.status` RPC compares the laptop's manifest hash with the host's. Hosts
already in sync get no rsync at all (the common case, and the one that must be fast). The others
get an rsync of exactly the scanned file list, over an OpenSSH ControlMaster that trusts only the
host key our asyncssh connection verified, then `workspace.commit` prunes what is no longer in
the list and records the new manifest. A host that fails never stops the others.

A laptop directory a session mounts (`--mount LAPTOP_DIR:TARGET`) travels the same way, with the
same rsync argv: `scan_laptop_dir` lists it at prepare (symlinks as links, never followed; special
files left behind), `sync_laptop_dir` copies it into `<root>/sessions/<id>/mounts/<index>/` just
before that session is created.

A git workspace's `.git` never travels as is: a second rsync sends the git payload built in the
laptop cache (a pack of exactly HEAD's history, see workspace.build_git_payload) into the
mirror's `.git/`. It is built once per HEAD, the first time a host needs it.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from agent_host import testhooks
from jackin_remote.core.hoststate import HostState
from jackin_remote.errors import AgentProtocolError, HostError, UsageError
from jackin_remote.fleet import HostLink, HostResult, Pool, _adhoc_jump_host
from jackin_remote.inventory.model import Host
from jackin_remote.transport.openssh import (
    SSHTarget,
    ensure_master,
    openssh_base_argv,
    openssh_error,
    rsync_destination,
    rsync_remote_shell,
)
from jackin_remote.transport.rsync import RsyncTally, rsync_argv, rsync_info
from jackin_remote.workspace import GitPayload, WorkspaceScan, build_git_payload

MAX_RSYNCS = 4  # rsync is CPU-bound at both ends: more in parallel only queues on the cores
BIG_SYNC_BYTES = 5 * 1024 * 1024
BIG_SYNC_FILES = 1000
_STDERR_TAIL = 5
_RSYNC_VANISHED = 24  # a source file vanished mid-transfer: the next sync sees the change
_SSH_FAILED = 255

Phase = Literal["rsync", "progress", "done", "skipped", "failed"]


@dataclass(frozen=True)
class SyncProgress:
    """A progress event for one host; the UI decides how (and whether) to show it."""

    host: str
    phase: Phase
    fraction: float | None = None  # of the rsync, when rsync reports it
    files: int = 0  # entries sent so far


ProgressCallback = Callable[[SyncProgress], None]


@dataclass(frozen=True)
class SyncOutcome:
    workspace: str
    manifest_hash: str
    mirror: str  # the mirror's path on the host
    skipped: bool  # already in sync: no rsync ran
    files_sent: int | None = None  # None: not reported (openrsync)
    bytes_sent: int | None = None
    pruned: int = 0
    rsync_seconds: float = 0.0
    warnings: tuple[str, ...] = ()


def is_big_sync(scan: WorkspaceScan) -> bool:
    """Worth a progress bar: a sync that may take more than a blink."""
    return scan.total_bytes > BIG_SYNC_BYTES or len(scan.files) > BIG_SYNC_FILES


async def sync_workspace(
    pool: Pool,
    hosts: Sequence[Host],
    scan: WorkspaceScan,
    *,
    progress: ProgressCallback | None = None,
    max_rsyncs: int = MAX_RSYNCS,
    cache: Path | None = None,
) -> list[HostResult[SyncOutcome]]:
    """Bring every host's mirror of `scan` up to date; one result per host, in order.

    `cache` holds the git payloads (default: the laptop's cache dir).
    """
    rsyncs = asyncio.Semaphore(max_rsyncs)
    payload = _PayloadOnce(scan, cache)
    show = progress is not None and is_big_sync(scan)

    def emit(event: SyncProgress) -> None:
        if progress is not None:
            progress(event)

    async def one(link: HostLink) -> SyncOutcome:
        try:
            outcome = await _sync_host(pool, link, scan, payload, rsyncs, emit if show else None)
        except BaseException:
            emit(SyncProgress(link.host.name, "failed"))
            raise
        emit(SyncProgress(link.host.name, "skipped" if outcome.skipped else "done"))
        return outcome

    return await pool.map(hosts, one)


class _PayloadOnce:
    """The git payload, built (or found in the cache) at most once per sync, only if needed."""

    def __init__(self, scan: WorkspaceScan, cache: Path | None) -> None:
        self.scan, self.cache = scan, cache
        self._lock = asyncio.Lock()
        self._value: GitPayload | None = None

    async def get(self) -> GitPayload:
        async with self._lock:
            if self._value is None:
                from jackin_remote import paths

                cache = self.cache or paths.cache_dir() / "git"
                self._value = await asyncio.to_thread(build_git_payload, self.scan, cache)
            return self._value


async def _sync_host(
    pool: Pool,
    link: HostLink,
    scan: WorkspaceScan,
    payload: _PayloadOnce,
    rsyncs: asyncio.Semaphore,
    progress: ProgressCallback | None,
) -> SyncOutcome:
    host = link.host
    status = await link.agent.call(
        "workspace.status", {"workspace": scan.name, "manifest_hash": scan.manifest_hash}
    )
    mirror = _expect_str(host, status, "mirror")
    if status.get("in_sync") is True:
        return SyncOutcome(scan.name, scan.manifest_hash, mirror, skipped=True)
    git = await payload.get() if scan.is_git else None
    files = list(scan.files)
    tally = RsyncTally()
    async with rsyncs:
        if progress is not None:
            progress(SyncProgress(host.name, "rsync", 0.0))
        start = time.perf_counter()
        warnings = await _rsync(pool, link, str(scan.path), scan.files, mirror, tally, progress)
        if git is not None:
            await _rsync(pool, link, str(git.directory), git.files, f"{mirror}/.git", tally, None)
            files += [f".git/{name}" for name in git.files]
        seconds = time.perf_counter() - start
    await testhooks.pause("sync")
    committed = await link.agent.call(
        "workspace.commit",
        {"workspace": scan.name, "manifest_hash": scan.manifest_hash,
         "files": files, "head": scan.head},
    )  # fmt: skip
    counted = not rsync_info().openrsync
    return SyncOutcome(
        scan.name, scan.manifest_hash, mirror, skipped=False,
        files_sent=tally.files if counted else None, bytes_sent=tally.bytes if counted else None,
        pruned=int(committed.get("pruned", 0)), rsync_seconds=seconds, warnings=warnings,
    )  # fmt: skip


def _expect_str(host: Host, reply: Any, key: str) -> str:
    value = reply.get(key) if isinstance(reply, dict) else None
    if not isinstance(value, str) or not value:
        raise AgentProtocolError(f"{host.name}: workspace.status gave no {key!r}: {reply!r}")
    return value


async def openssh_target(pool: Pool, host: Host) -> SSHTarget:
    """The OpenSSH view of `host`: the key our asyncssh connection verified, and its jump."""
    link = await pool.link(host)
    conn = getattr(link.transport, "conn", None)
    key = conn.get_server_host_key() if conn is not None else None
    if key is None:
        raise HostError(host.name, HostState.UNREACHABLE, "no verified host key to hand to OpenSSH")
    from jackin_remote.transport.hostkeys import key_line

    jump = None
    if host.jump:
        jump_host = pool.inventory.host(host.jump) or _adhoc_jump_host(host)
        jump = await openssh_target(pool, jump_host)
    return SSHTarget(host, key_line(key), jump)


async def _rsync(
    pool: Pool,
    link: HostLink,
    source: str,
    files: Sequence[str],
    dest: str,
    tally: RsyncTally,
    progress: ProgressCallback | None,
) -> tuple[str, ...]:
    """rsync `files` (relative to `source`) into the host's `dest`; the warnings it gave."""
    host = link.host
    info = rsync_info()
    if host.is_local:
        argv = rsync_argv(info, source, dest, progress=progress is not None)
    else:
        target = await openssh_target(pool, host)
        await ensure_master(target)
        shell = rsync_remote_shell(openssh_base_argv(target))
        argv = rsync_argv(info, source, rsync_destination(host, dest),
                          remote_shell=shell, progress=progress is not None)  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdin and process.stdout and process.stderr
    feed = asyncio.create_task(_feed_list(process.stdin, files))
    errors = asyncio.create_task(process.stderr.read())
    await _read_output(process.stdout, tally, host.name, progress)
    await feed
    stderr = (await errors).decode(errors="replace")
    code = await process.wait()
    if code == 0:
        return ()
    if code == _RSYNC_VANISHED:
        return ("some files vanished during the sync; the next sync picks that up",)
    if code == _SSH_FAILED or "ssh:" in stderr or "Host key verification failed" in stderr:
        raise openssh_error(host, code, stderr)
    tail = " / ".join(stderr.strip().splitlines()[-_STDERR_TAIL:]) or "(no output)"
    raise HostError(host.name, HostState.OK, f"rsync failed ({code}): {tail}")


async def _feed_list(stdin: asyncio.StreamWriter, files: Sequence[str]) -> None:
    try:
        stdin.write(b"".join(name.encode("utf-8", "surrogateescape") + b"\0" for name in files))
        await stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # rsync died early: its exit status and stderr say why
    finally:
        stdin.close()


_LINE_SPLIT = re.compile(rb"[\r\n]")


async def _read_output(
    stdout: asyncio.StreamReader,
    tally: RsyncTally,
    host: str,
    progress: ProgressCallback | None,
) -> None:
    """Itemized lines end in \\n, --info=progress2 updates in \\r: split on both."""
    pending = b""
    while chunk := await stdout.read(65536):
        *lines, pending = _LINE_SPLIT.split(pending + chunk)
        for raw in lines:
            moved = tally.feed(raw.decode(errors="replace"))
            if progress is not None and moved:
                progress(SyncProgress(host, "progress", tally.fraction, tally.files))
    if pending:
        tally.feed(pending.decode(errors="replace"))


# -- synced mounts: a laptop directory copied for one session ------------------------------------
@dataclass(frozen=True)
class LaptopDir:
    """A laptop directory a session mounts (`--mount LAPTOP_DIR:TARGET`), as read at prepare:
    exactly the entries that travel, relative to `path` (its realpath)."""

    path: str
    entries: tuple[str, ...]  # directories, regular files and symlinks (sent as links)
    files: int
    total_bytes: int  # of the regular files
    symlinks: int
    skipped: tuple[str, ...] = ()  # sockets, fifos, devices: never sent


def scan_laptop_dir(path: str) -> LaptopDir:
    """Walk `path` without following any symlink: a symlink travels as a link (rsync -l), so
    nothing it points to is read; special files stay behind. Reads only."""
    entries: list[str] = []
    skipped: list[str] = []
    files = total = links = 0
    pending = [""]
    while pending:
        rel = pending.pop()
        try:
            with os.scandir(os.path.join(path, rel) if rel else path) as listing:
                found = sorted(listing, key=lambda entry: entry.name)
        except OSError as exc:
            raise UsageError(f"--mount {path}: cannot read {rel or '.'}: "
                             f"{exc.strerror or exc}") from None  # fmt: skip
        for entry in found:
            name = f"{rel}/{entry.name}" if rel else entry.name
            if entry.is_symlink():
                links += 1
            elif entry.is_dir(follow_symlinks=False):
                pending.append(name)
            elif entry.is_file(follow_symlinks=False):
                files += 1
                total += entry.stat(follow_symlinks=False).st_size
            else:
                skipped.append(name)
                continue
            entries.append(name)
    return LaptopDir(path, tuple(entries), files, total, links, tuple(skipped))


async def host_root(link: HostLink) -> str:
    """The host's root as an absolute path: a leading ~ expanded by the host's shell, exactly as
    the agent's serve script does it."""
    from jackin_remote.agent.deploy import root_prelude

    done = await link.transport.run(
        root_prelude(link.host.root) + "printf '%s\\n' \"$root\"\n", timeout=30
    )
    root = done.stdout.decode(errors="replace").strip()
    if done.returncode != 0 or not root.startswith("/") or "\n" in root:
        raise HostError(link.host.name, HostState.OK,
                        f"could not resolve the host root {link.host.root}: "
                        f"{done.stderr_text or root or '(no output)'}")  # fmt: skip
    return root.rstrip("/") or "/"


async def sync_laptop_dir(
    pool: Pool, link: HostLink, directory: LaptopDir, session_id: str, index: int
) -> str:
    """rsync a laptop directory to the session's copy for mount `index`, before the session is
    created; the copy's host path (from agent_host.layout). The copy must not exist yet: a new
    session id has none, and nothing is ever merged into a copy that is there."""
    from agent_host import layout

    root = await host_root(link)
    dest = layout.synced_dir(root, session_id, index)
    parent, quoted = shlex.quote(os.path.dirname(dest)), shlex.quote(dest)
    made = await link.transport.run(
        f"umask 077 && mkdir -p -- {parent} && mkdir -- {quoted}", timeout=30
    )
    if made.returncode != 0:
        raise HostError(link.host.name, HostState.OK,
                        f"could not make {dest}: {made.stderr_text or '(no output)'}")  # fmt: skip
    await _rsync(pool, link, directory.path, directory.entries, dest, RsyncTally(), None)
    return dest
