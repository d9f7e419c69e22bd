"""Bring a session's work back to the laptop (`pull`) and show it (`diff`).

clone sessions arrive as the branch `jackin/<id>` of the local repository, through a git bundle:
git checks every object (transfer.fsckObjects), nothing is checked out, and the user's working
tree, index and current branch are never touched. The agent's files never land on disk here;
its symlinks stay blobs inside git.

copy sessions (non-git workspaces) arrive as files under `<workspace>/.jackin/pulled/<id>/`,
extracted by `safe_extract` (links kept as links, nothing written outside). The new copy is built
in a temp dir beside it and renamed into place, so a failed pull leaves nothing half-made.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_host import layout
from agent_host.protocol import RemoteError
from jackin_remote.agent.deploy import root_prelude
from jackin_remote.core.names import is_session_id
from jackin_remote.errors import JackinError, StateError, UsageError
from jackin_remote.fleet import HostLink
from jackin_remote.safe_extract import safe_extract
from jackin_remote.workspace import JACKIN_DIR  # never synced to hosts, so pulls never travel back

PULLED_DIR = "pulled"
TRANSFER_TIMEOUT = 1800.0
_OBJECT_ID = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")


@dataclass(frozen=True)
class PullResult:
    session: str
    isolation: str  # clone | copy
    branch: str | None  # jackin/<id> for clone sessions
    commit: str  # the branch's new commit (clone) or the work tree's git tree id (copy)
    previous: str | None  # the branch's commit before this pull (clone)
    files: int  # files changed since the base commit (clone) / files extracted (copy)
    path: Path  # the local repository (clone) or the pulled directory (copy)
    bytes: int  # bytes that crossed the wire
    skipped: tuple[tuple[str, str], ...] = field(default=())  # copy: (entry, why) refused

    @property
    def changed(self) -> bool:
        return self.previous != self.commit


def branch_name(session_id: str) -> str:
    return f"jackin/{session_id}"


# -- entry points -------------------------------------------------------------------------------
async def pull_session(link: HostLink, record: dict[str, Any], workspace: Path) -> PullResult:
    """Fetch the session's work into `workspace`, then record on the host that it was pulled."""
    session_id = _session_id(record)
    isolation = record.get("isolation")
    if isolation == "clone":
        result = await _pull_clone(link, session_id, record, Path(workspace))
    elif isolation == "copy":
        result = await _pull_copy(link, session_id, Path(workspace))
    else:
        raise StateError(f"session {session_id}: unknown isolation {isolation!r}")
    await _call(link, "session.mark_pulled", {"id": session_id, "commit": result.commit})
    return result


# -- clone: a bundle fetched into the local repository ------------------------------------------
async def _pull_clone(
    link: HostLink, session_id: str, record: dict[str, Any], repo: Path
) -> PullResult:
    await _require_repo(repo)
    branch = branch_name(session_id)
    ref = f"refs/heads/{branch}"
    reply = await _call(link, "session.bundle", {"id": session_id})
    commit = _object_id(reply.get("commit"), link, "commit")
    previous = await _rev(repo, ref)
    if previous != commit:
        await _refuse_checked_out(repo, ref)
    received = 0
    if reply.get("path") is None:
        # Nothing the laptop lacks (the work is at or behind the base): just name the commit.
        if await _rev(repo, commit + "^{commit}") != commit:
            raise StateError(
                f"session {session_id}: the host sent no objects but this repository lacks "
                f"commit {commit[:12]}",
                hint="pull into the repository the session was launched from",
            )
        if previous != commit:
            await _git(repo, "update-ref", "-m", f"jackin pull {session_id}", ref, commit)
    else:
        data = await _fetch_file(link, layout.bundle_file("$root", session_id))
        if len(data) != reply.get("size"):
            raise StateError(
                f"session {session_id}: bundle arrived truncated "
                f"({len(data)} of {reply.get('size')} bytes)",
                hint="pull again",
            )
        received = len(data)
        await _fetch_bundle(repo, data, ref, commit)
    return PullResult(session_id, "clone", branch, commit, previous,
                      await _changed_files(repo, record.get("base_commit"), commit), repo.resolve(),
                      received)  # fmt: skip


async def _fetch_bundle(repo: Path, data: bytes, ref: str, commit: str) -> None:
    with tempfile.TemporaryDirectory(prefix="jackin-pull-") as tmp:
        bundle = Path(tmp) / "pull.bundle"
        bundle.write_bytes(data)
        await _git(repo, "bundle", "verify", "-q", str(bundle),
                   hint="the bundle needs the commit the session started from; "
                        "pull into the repository it was launched from")  # fmt: skip
        heads = (await _git(repo, "bundle", "list-heads", str(bundle))).split("\n")
        if heads != [f"{commit} {ref}"]:
            raise StateError(f"the host's bundle carries {heads!r}, expected {commit} {ref}")
        await _git(
            repo, "-c", "transfer.fsckObjects=true", "fetch", "--quiet", "--no-tags",
            "--no-write-fetch-head", "--recurse-submodules=no", str(bundle), f"+{ref}:{ref}",
        )  # fmt: skip


async def _refuse_checked_out(repo: Path, ref: str) -> None:
    """Moving a branch that a working tree has checked out would change files under the user."""
    listing = await _git(repo, "worktree", "list", "--porcelain")
    current: str | None = None
    for line in listing.splitlines():
        if line.startswith("worktree "):
            current = line[len("worktree ") :]
        elif line == f"branch {ref}":
            raise StateError(
                f"{ref.removeprefix('refs/heads/')} is checked out in {current}: pulling would "
                "move the branch under that working tree",
                hint="switch that working tree to another branch (git switch -), then pull again",
            )


async def _changed_files(repo: Path, base: Any, commit: str) -> int:
    if isinstance(base, str) and await _rev(repo, base + "^{commit}") == base:
        out = await _git(repo, "diff", "--name-only", "-z", "--no-renames", base, commit)
    else:
        out = await _git(repo, "ls-tree", "-r", "--name-only", "-z", commit)
    return len([name for name in out.split("\0") if name])


# -- copy: a tar stream extracted under .jackin/pulled/<id> -------------------------------------
async def _pull_copy(link: HostLink, session_id: str, workspace: Path) -> PullResult:
    if not workspace.is_dir():
        raise UsageError(f"workspace {str(workspace)!r} is not a directory")
    snapshot = await _call(link, "session.snapshot", {"id": session_id})
    tree = _object_id(snapshot.get("commit"), link, "tree id")
    work = layout.work_dir("$root", session_id)
    data = await _host_output(link, f'exec tar -C "{work}" -cf - .')
    pulled = _pulled_dir(workspace)
    final = pulled / session_id
    incoming = Path(tempfile.mkdtemp(prefix=f".incoming-{session_id}-", dir=pulled))
    try:
        report = safe_extract(io.BytesIO(data), incoming)
        os.chmod(incoming, 0o755)  # mkdtemp made it 0700
        _replace_dir(incoming, final)
    except BaseException:
        shutil.rmtree(incoming, ignore_errors=True)
        raise
    return PullResult(session_id, "copy", None, tree, None, report.files + report.symlinks,
                      final, len(data), tuple(report.skipped))  # fmt: skip


def _pulled_dir(workspace: Path) -> Path:
    """<workspace>/.jackin/pulled, made of real directories (never through a symlink)."""
    path = workspace
    for part in (JACKIN_DIR, PULLED_DIR):
        path = path / part
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            raise StateError(f"{path} is not a plain directory: refusing to pull into it",
                             hint=f"move {path} away and pull again")  # fmt: skip
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o755)
    return path


def _replace_dir(new: Path, final: Path) -> None:
    """Put `new` at `final`; an older pull there is moved aside first and removed after."""
    old: Path | None = None
    if os.path.lexists(final):
        old = Path(tempfile.mkdtemp(prefix=f".old-{final.name}-", dir=final.parent))
        os.rename(final, old / final.name)
    os.rename(new, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# -- host side: agent calls and file streams ----------------------------------------------------
async def _call(link: HostLink, method: str, params: dict[str, Any]) -> Any:
    try:
        return await link.agent.call(method, params)
    except RemoteError as exc:
        raise JackinError(f"{link.host.name}: {exc.message}") from None


async def _fetch_file(link: HostLink, host_path: str) -> bytes:
    return await _host_output(link, f'exec cat -- "{host_path}"')


async def _host_output(link: HostLink, command: str) -> bytes:
    """Run `command` after $root is set to the host's root; its stdout.

    Paths are `layout` paths under the literal `$root` (a validated session id is the only
    other part), so the host computes them exactly as the agent does, ~ included.
    """
    done = await link.transport.run(root_prelude(link.host.root) + command + "\n",
                                    timeout=TRANSFER_TIMEOUT)  # fmt: skip
    if done.returncode != 0:
        raise JackinError(f"{link.host.name}: reading the session's work failed "
                          f"({done.returncode}): {done.stderr_text}")  # fmt: skip
    return done.stdout


# -- local git ------------------------------------------------------------------------------------
async def _git(repo: Path, *args: str, hint: str | None = None) -> str:
    code, out, err = await _run_git(repo, args)
    if code != 0:
        raise StateError(f"{repo}: `git {' '.join(args)}` failed: {err.strip()}",
                         hint=hint)  # fmt: skip
    return out.rstrip("\n")


async def _rev(repo: Path, rev: str) -> str | None:
    code, out, _ = await _run_git(repo, ("rev-parse", "-q", "--verify", rev))
    return out.strip() if code == 0 and out.strip() else None


async def _require_repo(repo: Path) -> None:
    code, out, _ = await _run_git(repo, ("rev-parse", "--is-bare-repository"))
    if code != 0 or out.strip() != "false":
        raise UsageError(f"{repo} is not a git working tree: a clone session pulls into the "
                         "git repository it was launched from")  # fmt: skip


async def _run_git(repo: Path, args: tuple[str, ...] | list[str]) -> tuple[int, str, str]:
    env = dict(os.environ)
    for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY"):
        env.pop(name, None)  # an outer hook's environment must not redirect us
    env["GIT_TERMINAL_PROMPT"] = "0"
    try:
        process = await asyncio.create_subprocess_exec(
            "git", "--no-optional-locks", "-C", str(repo), *args, env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
    except FileNotFoundError:
        raise UsageError("git is not installed on this machine", hint="install git") from None
    out, err = await process.communicate()
    return process.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


def _session_id(record: dict[str, Any]) -> str:
    session_id = record.get("id")
    if not isinstance(session_id, str) or not is_session_id(session_id):
        raise UsageError(f"bad session id {session_id!r}")
    return session_id


def _object_id(value: Any, link: HostLink, what: str) -> str:
    if not isinstance(value, str) or not _OBJECT_ID.match(value):
        raise JackinError(f"{link.host.name}: the host agent sent a bad {what}: {value!r}")
    return value
