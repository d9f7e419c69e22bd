"""Bring a session's work back to the laptop (`pull`) and show it (`diff`).

clone sessions arrive as the branch `jackin/<id>` of the local repository, through a git bundle:
git checks every object (transfer.fsckObjects), nothing is checked out, and the user's working
tree, index and current branch are never touched. The agent's files never land on disk here;
its symlinks stay blobs inside git.

copy sessions (non-git workspaces) arrive as files under `<workspace>/.jackin/pulled/<id>/`,
extracted by `safe_extract` (links kept as links, nothing written outside; links that point
outside the pulled tree are reported and not made). The new copy is built in a temp dir beside
it and renamed into place, so a failed pull leaves nothing half-made.

Both travel chunk by chunk (`session.read`) into a file on disk, never whole in memory, under a
byte limit (`pull --max-size`): the host refuses to pack more, and the laptop stops asking once
the limit would be crossed, whatever the host says.

Where the work lands is the laptop's own choice: the workspace path it recorded at launch (see
`store`), or the one the user names. Nothing a host answers picks a laptop path.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jackin_remote.core.names import is_session_id
from jackin_remote.errors import AgentProtocolError, JackinError, StateError, UsageError
from jackin_remote.fleet import HostLink
from jackin_remote.safe_extract import TooLarge, resolve_inside, safe_extract
from jackin_remote.workspace import JACKIN_DIR  # never synced to hosts, so pulls never travel back

PULLED_DIR = "pulled"
MAX_SIZE_FLAG = "--max-size"
DEFAULT_MAX_SIZE = "4G"
MAX_LINK_TARGET = 4096  # PATH_MAX: a longer "link" cannot be followed anywhere
READ_CHUNK = 1024 * 1024  # asked per session.read; the host may answer less, never more
_OBJECT_ID = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?\Z")
_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


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
    # (link, target) of links pointing outside the pulled tree. copy: not made; clone: in the
    # branch as git blobs (made only if the branch is checked out), those the session touched.
    outside_links: tuple[tuple[str, str], ...] = field(default=())

    @property
    def changed(self) -> bool:
        return self.previous != self.commit


def branch_name(session_id: str) -> str:
    return f"jackin/{session_id}"


def parse_size(text: str) -> int:
    """`2G`, `500M`, `64k`, `1GiB`, `1048576` -> bytes (powers of 1024)."""
    match = _SIZE.match(text)
    if match is None or int(match.group(1)) <= 0:
        raise UsageError(f"{MAX_SIZE_FLAG} {text!r} is not a size",
                         hint="give bytes or a number with K, M, G or T, e.g. 2G")  # fmt: skip
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def format_size(size: int) -> str:
    for unit in ("T", "G", "M", "K"):
        if size >= _UNITS[unit.lower()] and size % _UNITS[unit.lower()] == 0:
            return f"{size // _UNITS[unit.lower()]}{unit}"
    return str(size)


def too_large(host: str, session_id: str, limit: int) -> StateError:
    bigger = format_size(max(limit * 4, 1 << 30))
    return StateError(
        f"{host}: the work of session {session_id} is larger than the pull limit of "
        f"{format_size(limit)} ({MAX_SIZE_FLAG}); nothing was kept",
        hint=f"look at what it made (`jackin-remote diff {session_id}`), then raise the limit if "
        f"you want it all: `jackin-remote pull {session_id} {MAX_SIZE_FLAG} {bigger}`",
    )


def pull_target(host: str, record: dict[str, Any], explicit: Path | None) -> Path:
    """Where a pull lands: the repository the user names, else the workspace path this laptop
    recorded when it launched the session. Never a path a host reported."""
    if explicit is not None:
        return explicit
    recorded = record.get("workspace_path")
    if isinstance(recorded, str) and recorded:
        return Path(recorded)
    raise StateError(
        f"{host}: session {record.get('id')} was not launched from this laptop (it has no record "
        "of its workspace), and a host's word does not choose where files are written here",
        hint=f"name the repository to pull into: `jackin-remote pull {record.get('id')} "
        "--into PATH`",
    )


# -- entry points -------------------------------------------------------------------------------
async def pull_session(
    link: HostLink, record: dict[str, Any], workspace: Path, *, max_bytes: int | None = None
) -> PullResult:
    """Fetch the session's work into `workspace`, then record on the host that it was pulled.

    At most `max_bytes` (default DEFAULT_MAX_SIZE) cross the wire or land on disk."""
    session_id = _session_id(record)
    isolation = record.get("isolation")
    limit = max_bytes if max_bytes is not None else parse_size(DEFAULT_MAX_SIZE)
    if isolation == "clone":
        result = await _pull_clone(link, session_id, record, Path(workspace), limit)
    elif isolation == "copy":
        result = await _pull_copy(link, session_id, Path(workspace), limit)
    else:
        raise StateError(f"session {session_id}: unknown isolation {isolation!r}")
    await link.agent.call("session.mark_pulled", {"id": session_id, "commit": result.commit})
    return result


# -- clone: a bundle fetched into the local repository ------------------------------------------
async def _pull_clone(
    link: HostLink, session_id: str, record: dict[str, Any], repo: Path, limit: int
) -> PullResult:
    repo = repo.resolve()  # git runs with -C repo: every path handed to it must be absolute
    await _require_repo(repo)
    base = record.get("base_commit")
    if isinstance(base, str) and await _rev(repo, base + "^{commit}") != base:
        raise StateError(
            f"{repo} is not the repository session {session_id} was launched from: it lacks "
            f"commit {base[:12]}, where the session started",
            hint=f"pull into the repository it was launched from: `jackin-remote pull "
            f"{session_id} --into PATH`",
        )
    branch = branch_name(session_id)
    ref = f"refs/heads/{branch}"
    reply = await link.agent.call("session.bundle", {"id": session_id, "max_bytes": limit})
    commit = _object_id(reply.get("commit"), link, "commit")
    size = _size(reply, link)
    if reply.get("over_limit") or size > limit:
        raise too_large(link.host.name, session_id, limit)
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
        # Beside the repository's objects, not in /tmp (often a RAM disk).
        common = repo / await _git(repo, "rev-parse", "--git-common-dir")  # may be relative
        with tempfile.TemporaryDirectory(prefix="jackin-pull-", dir=common) as tmp:
            bundle = Path(tmp) / "pull.bundle"
            received = await _download(link, session_id, "bundle", size, bundle)
            await _fetch_bundle(repo, bundle, ref, commit)
    return PullResult(session_id, "clone", branch, commit, previous,
                      await _changed_files(repo, base, commit), repo, received,
                      outside_links=await _branch_outside_links(repo, base, commit))  # fmt: skip


async def _fetch_bundle(repo: Path, bundle: Path, ref: str, commit: str) -> None:
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
    return len(await _changed_names(repo, base, commit))


async def _changed_names(repo: Path, base: Any, commit: str) -> set[str]:
    if isinstance(base, str) and await _rev(repo, base + "^{commit}") == base:
        out = await _git(repo, "diff", "--name-only", "-z", "--no-renames", base, commit)
    else:
        out = await _git(repo, "ls-tree", "-r", "--name-only", "-z", commit)
    return {name for name in out.split("\0") if name}


async def _branch_outside_links(repo: Path, base: Any, commit: str) -> tuple[tuple[str, str], ...]:
    """Links the session added or changed on its branch that point outside the repository.

    They stay blobs in git (nothing is made here), but a checkout of the branch would create
    them, so they are reported as for a copy session. Resolved with every link of the tree, as
    a checkout would lay them out; a target too long to be a path counts as outside."""
    listing = await _git(repo, "ls-tree", "-r", "-z", "--full-tree", commit)
    oids: dict[str, str] = {}
    for entry in listing.split("\0"):
        meta, _, path = entry.partition("\t")
        fields = meta.split()
        if len(fields) == 3 and fields[0] == "120000":
            oids[path] = fields[2]
    if not oids:
        return ()
    targets = await _link_targets(repo, oids)
    links = {tuple(path.split("/")): target for path, target in targets.items()}
    changed = await _changed_names(repo, base, commit)
    return tuple(sorted(
        (path, target) for path, target in targets.items()
        if path in changed and resolve_inside(tuple(path.split("/"))[:-1], target, links) is None
    ))  # fmt: skip


async def _link_targets(repo: Path, oids: dict[str, str]) -> dict[str, str]:
    """path -> link text, read with one `cat-file --batch`; sizes are checked first, so an
    agent-made giant "link" is never read into memory."""
    unique = sorted(set(oids.values()))
    out = await _git_bytes(repo, ("cat-file", "--batch-check"), ("\n".join(unique) + "\n").encode())
    sizes = {}
    for line in out.decode(errors="replace").splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[1] == "blob" and fields[2].isdigit():
            sizes[fields[0]] = int(fields[2])
    small = [oid for oid in unique if sizes.get(oid, MAX_LINK_TARGET + 1) <= MAX_LINK_TARGET]
    texts: dict[str, str] = {}
    if small:
        raw = await _git_bytes(repo, ("cat-file", "--batch"), ("\n".join(small) + "\n").encode())
        at = 0
        for oid in small:
            header_end = raw.index(b"\n", at)
            size = int(raw[at:header_end].split()[2])
            texts[oid] = raw[header_end + 1 : header_end + 1 + size].decode(errors="replace")
            at = header_end + 1 + size + 1
    # "" resolves as outside: a link we could not read is reported, not trusted.
    return {path: texts.get(oid, "") for path, oid in oids.items()}


# -- copy: a tar stream extracted under .jackin/pulled/<id> -------------------------------------
async def _pull_copy(link: HostLink, session_id: str, workspace: Path, limit: int) -> PullResult:
    if not workspace.is_dir():
        raise UsageError(f"workspace {str(workspace)!r} is not a directory")
    snapshot = await link.agent.call("session.snapshot", {"id": session_id})
    tree = _object_id(snapshot.get("commit"), link, "tree id")
    pulled = _pulled_dir(workspace)
    final = pulled / session_id
    # One scratch dir holds the download and the tree being extracted: whatever fails, it goes.
    scratch = Path(tempfile.mkdtemp(prefix=f".incoming-{session_id}-", dir=pulled))
    try:
        reply = await link.agent.call("session.pack", {"id": session_id, "max_bytes": limit})
        size = _size(reply, link)
        if reply.get("over_limit") or size > limit:
            raise too_large(link.host.name, session_id, limit)
        archive = scratch / "pull.tar"
        received = await _download(link, session_id, "tar", size, archive)
        incoming = scratch / "tree"
        incoming.mkdir(mode=0o755)
        try:
            with archive.open("rb") as stream:
                report = safe_extract(stream, incoming, max_bytes=limit)
        except TooLarge:
            raise too_large(link.host.name, session_id, limit) from None
        archive.unlink()
        _replace_dir(incoming, final)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        with contextlib.suppress(JackinError):
            await link.agent.call("session.release", {"id": session_id})
    return PullResult(session_id, "copy", None, tree, None, report.files + report.symlinks,
                      final, received, tuple(report.skipped),
                      tuple(report.outside_links))  # fmt: skip


async def _download(link: HostLink, session_id: str, kind: str, size: int, dest: Path) -> int:
    """Read the host's `kind` transfer file of `size` bytes into `dest`, chunk by chunk.

    The caller checked `size` against the limit; here a host can send no more than it announced
    (each chunk no more than asked), so the limit holds whatever the host does."""
    received = 0
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        while received < size:
            want = min(READ_CHUNK, size - received)
            reply = await link.agent.call(
                "session.read",
                {"id": session_id, "kind": kind, "offset": received, "length": want},
            )
            data = _chunk(reply, want, link)
            if not data:
                raise StateError(
                    f"{link.host.name}: the {kind} of session {session_id} ended "
                    f"after {received} of {size} bytes",
                    hint="pull again",
                )
            out.write(data)
            received += len(data)
    return received


def _chunk(reply: Any, want: int, link: HostLink) -> bytes:
    text = reply.get("data") if isinstance(reply, dict) else None
    if not isinstance(text, str) or len(text) > 4 * (want // 3 + 1):
        raise AgentProtocolError(f"{link.host.name}: the host agent sent a bad or oversized chunk")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise AgentProtocolError(
            f"{link.host.name}: the host agent sent a chunk that is not base64"
        ) from None
    if len(data) > want:
        raise AgentProtocolError(f"{link.host.name}: the host agent sent more than was asked")
    return data


def _size(reply: Any, link: HostLink) -> int:
    size = reply.get("size") if isinstance(reply, dict) else None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise AgentProtocolError(f"{link.host.name}: the host agent sent a bad size: {size!r}")
    return size


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


# -- host side: agent calls -----------------------------------------------------------------------
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


async def _git_bytes(repo: Path, args: tuple[str, ...], input: bytes) -> bytes:
    code, out, err = await _run_git_raw(repo, args, input)
    if code != 0:
        raise StateError(f"{repo}: `git {' '.join(args)}` failed: {err.decode(errors='replace')}")
    return out


async def _run_git(
    repo: Path, args: tuple[str, ...] | list[str], input: bytes | None = None
) -> tuple[int, str, str]:
    code, out, err = await _run_git_raw(repo, args, input)
    return code, out.decode(errors="replace"), err.decode(errors="replace")


async def _run_git_raw(
    repo: Path, args: tuple[str, ...] | list[str], input: bytes | None
) -> tuple[int, bytes, bytes]:
    env = dict(os.environ)
    for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY"):
        env.pop(name, None)  # an outer hook's environment must not redirect us
    env["GIT_TERMINAL_PROMPT"] = "0"
    try:
        process = await asyncio.create_subprocess_exec(
            "git", "--no-optional-locks", "-C", str(repo), *args, env=env,
            stdin=asyncio.subprocess.DEVNULL if input is None else asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
    except FileNotFoundError:
        raise UsageError("git is not installed on this machine", hint="install git") from None
    out, err = await process.communicate(input)
    return process.returncode or 0, out, err


def _session_id(record: dict[str, Any]) -> str:
    session_id = record.get("id")
    if not isinstance(session_id, str) or not is_session_id(session_id):
        raise UsageError(f"bad session id {session_id!r}")
    return session_id


def _object_id(value: Any, link: HostLink, what: str) -> str:
    if not isinstance(value, str) or not _OBJECT_ID.match(value):
        raise JackinError(f"{link.host.name}: the host agent sent a bad {what}: {value!r}")
    return value
