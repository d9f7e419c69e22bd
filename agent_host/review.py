"""Review a session's work: package it for `pull`, show it for `diff`, record what was pulled.

RPCs:
    session.bundle {id, max_bytes?} -> {commit, base_commit, head, snapshot, size, path,
                                         over_limit}
        clone sessions only: a git bundle at layout.bundle_file carrying refs/heads/jackin/<id>
        = the agent's HEAD plus, if the tree has uncommitted changes, one snapshot commit on top.
        `path` is None (size 0) when the laptop already has every object (nothing new), and
        when the bundle came out larger than max_bytes (over_limit, nothing kept).
    session.snapshot {id} -> {isolation, commit, pulled_commit, pulled}
        What a pull would bring now (clone: that commit; copy: the work tree's git tree id),
        and whether it was already pulled: what `rm` checks before deleting work.
    session.diff {id} -> {text, stat, from, truncated}
    session.mark_pulled {id, commit} -> {pulled_commit}
    session.pack {id, max_bytes} -> {size, over_limit}
        copy sessions only: a plain tar of the work tree at <session>/pull.tar, written through a
        bounded buffer and stopped (file removed) once it passes max_bytes.
    session.read {id, kind: bundle|tar, offset, length} -> {data (base64), size}
        One chunk (at most READ_CHUNK bytes) of the bundle or tar: the laptop pulls chunk by
        chunk, so neither side ever holds a whole transfer in memory, and it stops asking when
        its own limit is crossed.
    session.release {id} -> {}
        Remove the packed tar (after a copy pull, or when the laptop gave up). The bundle stays
        until the next pull replaces it: it is what a clone's pull can be checked against.

The session checkout is written by the agent, including its .git (config, hooks, attributes).
Running git *in* it with safe.directory=* would execute whatever it configured (core.fsmonitor
runs on `git add`/`status`; filter drivers, gpg.program...). So no git command here ever uses
its .git as the repository: each call works in a scratch repository we own, whose object store
borrows the checkout's objects through `alternates` (objects are inert data), reads the agent's
HEAD with `ls-remote` (upload-pack is the one git command made safe for untrusted repos), and
reads the work tree with GIT_WORK_TREE + a scratch index. The agent's index, branch and files are
never written. Python 3.9 compatible.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from typing import Any, Dict, List, Optional, Sequence, Tuple

from agent_host import layout
from agent_host.protocol import (
    E_CONFLICT,
    E_FAILED,
    E_INVALID_PARAMS,
    E_NOT_FOUND,
    Message,
    RemoteError,
)
from agent_host.server import Context
from agent_host.state import Store

SNAPSHOT_MESSAGE = "jackin: uncommitted changes at pull"
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
GIT_TIMEOUT = 600.0
MAX_DIFF_BYTES = 16 * 1024 * 1024  # well under the RPC line limit, JSON escaping included
READ_CHUNK = 1024 * 1024  # base64: 1.4 MB lines, under asyncssh's 2 MB receive window
_PIPE_CHUNK = 1024 * 1024
TRANSFER_KINDS = ("bundle", "tar")
_OBJECT_ID = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?\Z")

# Config for every git call here. GIT_CONFIG_GLOBAL (not `-c`) because git drops -c values
# (GIT_CONFIG_PARAMETERS) when it spawns upload-pack for a local path, and upload-pack must
# accept the checkout owned by the sandbox uid.
_SCRATCH_CONFIG = """[safe]
\tdirectory = *
[core]
\thooksPath = /dev/null
\tfsmonitor = false
\tautocrlf = false
[commit]
\tgpgSign = false
[gc]
\tauto = 0
[user]
\tname = jackin
\temail = jackin@localhost
"""


def branch_name(session_id: str) -> str:
    return "jackin/" + layout.check_session_id(session_id)


# -- the scratch repository ---------------------------------------------------------------------
class Scratch:
    """A throwaway bare repository we own, next to the session's checkout."""

    def __init__(self, root: str, session_id: str) -> None:
        parent = layout.session_dir(root, session_id)
        self.dir = tempfile.mkdtemp(prefix=".review-", dir=parent)
        self.git_dir = os.path.join(self.dir, "repo.git")
        self.config = os.path.join(self.dir, "gitconfig")
        with open(self.config, "w") as handle:
            handle.write(_SCRATCH_CONFIG)
        self.git(["init", "-q", "--bare", "--template="])  # at $GIT_DIR

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Scratch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def env(self, extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH") or "/usr/bin:/bin",
            "HOME": self.dir,
            "LANG": "C.UTF-8",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": self.config,
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_OPTIONAL_LOCKS": "0",
            "GIT_NO_REPLACE_OBJECTS": "1",
            "GIT_DIR": self.git_dir,
        }
        env.update(extra or {})
        return env

    def git(
        self,
        args: Sequence[str],
        *,
        env: Optional[Dict[str, str]] = None,
        ok: Tuple[int, ...] = (0,),
        limit: Optional[int] = None,
    ) -> str:
        """Run git against the scratch repository: its stdout stripped, or with `limit` its
        first `limit` bytes as they are."""
        code, out, err = _run_bounded(["git", *args], self.dir, self.env(env), limit)
        if code not in ok:
            text = err.decode(errors="replace").strip()[-2000:]
            raise RemoteError(E_FAILED, "git %s failed (%d): %s" % (_verb(args), code,
                                                                    text))  # fmt: skip
        if limit is not None:
            return out.decode(errors="replace")
        return out.decode(errors="replace").strip()

    def has_commit(self, rev: Optional[str]) -> bool:
        if not rev or not _OBJECT_ID.match(rev):
            return False
        # Peeling to ^{commit} reads the object: a bare id would "verify" without existing.
        return self.git(["rev-parse", "-q", "--verify", rev + "^{commit}"], ok=(0, 1, 128)) == rev

    def borrow_objects(self, work: str) -> None:
        """Read the checkout's objects (inert data) without using its .git as a repository."""
        objects = _checkout_objects(work)
        with open(os.path.join(self.git_dir, "objects", "info", "alternates"), "w") as handle:
            handle.write(objects + "\n")

    def tree_of(self, work_tree: str, base_tree: Optional[str], force: bool) -> str:
        """The git tree of `work_tree` as it is now, through a scratch index.

        Starting from `base_tree` only makes unchanged files cheap to compare; `force` also
        takes files the tree's .gitignore would skip (a copy session has no commits to hide
        them in, and `pull` brings them all).
        """
        env = {"GIT_INDEX_FILE": os.path.join(self.dir, "index"), "GIT_WORK_TREE": work_tree}
        if base_tree:
            self.git(["read-tree", base_tree], env=env)
        else:
            self.git(["read-tree", "--empty"], env=env)
        self.git(["add", "-A"] + (["-f"] if force else []), env=env)
        tree = self.git(["write-tree"], env=env)
        os.unlink(env["GIT_INDEX_FILE"])
        return tree


def _run_bounded(
    argv: List[str], cwd: str, env: Dict[str, str], limit: Optional[int]
) -> Tuple[int, bytes, bytes]:
    """(exit code, stdout, stderr tail) of `argv`, holding at most `limit` bytes of its stdout:
    past that the process is stopped (a diff of an agent-made 50 GB file must not be buffered
    here). stderr goes to a file, so a chatty command cannot block on a full pipe."""
    with tempfile.TemporaryFile() as errfile:
        try:
            process = subprocess.Popen(
                argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=errfile,
            )  # fmt: skip
        except FileNotFoundError:
            raise RemoteError(E_FAILED, "%s is not installed on this host" % argv[0]) from None
        assert process.stdout is not None
        timed_out = threading.Event()

        def expire() -> None:
            timed_out.set()
            process.kill()

        timer = threading.Timer(GIT_TIMEOUT, expire)
        timer.start()
        chunks: List[bytes] = []
        held = 0
        try:
            while True:
                chunk = process.stdout.read(_PIPE_CHUNK)
                if not chunk:
                    break
                if limit is not None and held + len(chunk) >= limit:
                    chunks.append(chunk[: limit - held])
                    process.kill()  # enough: the caller only wants `limit` bytes
                    process.wait()
                    return 0, b"".join(chunks), b""
                chunks.append(chunk)
                held += len(chunk)
            code = process.wait()
        finally:
            timer.cancel()
            process.stdout.close()
            if process.poll() is None:
                process.kill()
                process.wait()
        if timed_out.is_set():
            raise RemoteError(E_FAILED, "%s %s timed out" % (argv[0], _verb(argv[1:])))
        errfile.seek(0, os.SEEK_END)
        errfile.seek(max(0, errfile.tell() - 4096))
        return code, b"".join(chunks), errfile.read()


def _checkout_objects(work: str) -> str:
    """<work>/.git/objects, refusing a .git the agent replaced by a link or a gitdir file."""
    dot_git = os.path.join(work, ".git")
    objects = os.path.join(dot_git, "objects")
    for path in (dot_git, objects):
        if os.path.islink(path) or not os.path.isdir(path):
            raise RemoteError(E_FAILED, "the session checkout's %s is not a plain directory"
                              % os.path.relpath(path, work))  # fmt: skip
    return objects


def _verb(args: Sequence[str]) -> str:
    return next((arg for arg in args if not arg.startswith("-")), "?")


# -- records ------------------------------------------------------------------------------------
def _load(ctx: Context, params: Message) -> Dict[str, Any]:
    session_id = layout.check_session_id(params.get("id"))
    store = Store(ctx.root)
    try:
        record = store.get(session_id)
    finally:
        store.close()
    if record is None or record.get("state") == "purged":
        raise RemoteError(E_NOT_FOUND, "no session %s on this host" % session_id)
    work = layout.work_dir(ctx.root, session_id)
    if not os.path.isdir(work):
        raise RemoteError(E_NOT_FOUND, "session %s has no checkout on this host" % session_id)
    return record


def _agent_head(scratch: Scratch, work: str) -> str:
    """The checkout's HEAD commit, read by upload-pack (safe in an untrusted repository)."""
    _checkout_objects(work)
    out = scratch.git(["ls-remote", "--", work, "HEAD"])
    fields = out.split()
    if len(fields) < 2 or fields[1] != "HEAD" or not _OBJECT_ID.match(fields[0]):
        raise RemoteError(E_FAILED, "the session checkout has no commit at HEAD")
    return fields[0]


def _snapshot(scratch: Scratch, work: str) -> Tuple[str, str, bool]:
    """(commit, agent HEAD, has_snapshot): HEAD, or HEAD + one commit of uncommitted changes.

    The snapshot commit's dates are HEAD's, so the same tree always gives the same commit and a
    second pull with nothing new changes nothing.
    """
    scratch.borrow_objects(work)
    head = _agent_head(scratch, work)
    head_tree = scratch.git(["rev-parse", head + "^{tree}"])
    tree = scratch.tree_of(work, head_tree, force=False)
    if tree == head_tree:
        return head, head, False
    stamp = "@%s +0000" % scratch.git(["show", "-s", "--format=%ct", head])
    dates = {"GIT_AUTHOR_DATE": stamp, "GIT_COMMITTER_DATE": stamp}
    commit = scratch.git(["commit-tree", tree, "-p", head, "-m", SNAPSHOT_MESSAGE], env=dates)
    return commit, head, True


def _copy_tree(scratch: Scratch, root: str, session_id: str) -> str:
    return scratch.tree_of(layout.work_dir(root, session_id), None, force=True)


# -- handlers -----------------------------------------------------------------------------------
def bundle(ctx: Context, params: Message) -> Dict[str, Any]:
    record = _load(ctx, params)
    session_id = record["id"]
    max_bytes = _max_bytes(params, required=False)
    if record.get("isolation") != "clone":
        raise RemoteError(E_CONFLICT, "session %s is a copy (not a git clone): pull copies its "
                          "files instead of fetching a bundle" % session_id)  # fmt: skip
    work = layout.work_dir(ctx.root, session_id)
    base = record.get("base_commit")
    with Scratch(ctx.root, session_id) as scratch:
        commit, head, snapshot = _snapshot(scratch, work)
        ref = "refs/heads/" + branch_name(session_id)
        scratch.git(["update-ref", ref, commit])
        # ^base: the laptop has it (it was its HEAD at launch), so only new objects travel.
        prerequisite = ["^" + base] if base and scratch.has_commit(base) else []
        result = {"commit": commit, "base_commit": base, "head": head, "snapshot": snapshot,
                  "size": 0, "path": None, "over_limit": False}  # fmt: skip
        target = layout.bundle_file(ctx.root, session_id)
        _remove_quietly(target)
        if prerequisite and scratch.git(["rev-list", "--count", commit, *prerequisite]) == "0":
            return result  # nothing the laptop lacks: git refuses an empty bundle
        partial = os.path.join(scratch.dir, "pull.bundle")
        scratch.git(["bundle", "create", "-q", partial, ref, *prerequisite])
        size = os.path.getsize(partial)
        result["size"] = size
        if max_bytes is not None and size > max_bytes:
            result["over_limit"] = True  # the scratch dir (and the bundle in it) goes now
            return result
        os.replace(partial, target)
        result["path"] = target
        return result


def _max_bytes(params: Message, required: bool) -> Optional[int]:
    value = params.get("max_bytes")
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RemoteError(E_INVALID_PARAMS, "max_bytes must be a byte count, got %r" % (value,))
    return value


def transfer_file(root: str, session_id: str, kind: str) -> str:
    """Where the host keeps what `pull` reads: the bundle (clone) or the tar (copy)."""
    if kind == "bundle":
        return layout.bundle_file(root, session_id)
    if kind == "tar":
        return os.path.join(layout.session_dir(root, session_id), "pull.tar")
    raise RemoteError(E_INVALID_PARAMS, "kind must be one of %s, got %r"
                      % ("/".join(TRANSFER_KINDS), kind))  # fmt: skip


def pack(ctx: Context, params: Message) -> Dict[str, Any]:
    """A plain tar of a copy session's work tree, bounded while it is written."""
    record = _load(ctx, params)
    session_id = record["id"]
    if record.get("isolation") != "copy":
        raise RemoteError(E_CONFLICT, "session %s is a git clone: pull fetches a bundle of it"
                          % session_id)  # fmt: skip
    max_bytes = _max_bytes(params, required=True)
    assert max_bytes is not None
    target = transfer_file(ctx.root, session_id, "tar")
    _remove_quietly(target)
    partial = target + ".partial"
    try:
        size, complete = _tar_into(layout.work_dir(ctx.root, session_id), partial, max_bytes)
        if not complete:
            return {"size": size, "over_limit": True}
        os.replace(partial, target)
        return {"size": size, "over_limit": False}
    finally:
        _remove_quietly(partial)


def _tar_into(work: str, path: str, max_bytes: int) -> Tuple[int, bool]:
    """Stream `tar -cf - .` of `work` into `path`, 1 MB at a time: (bytes, complete). Stops
    (tar killed) as soon as more than `max_bytes` came out; tar never follows a link, and a
    sparse file comes out as the zeros it reads as, so the bound is what matters."""
    env = {"PATH": os.environ.get("PATH") or "/usr/bin:/bin", "LC_ALL": "C"}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out, tempfile.TemporaryFile() as errfile:
        try:
            process = subprocess.Popen(
                ["tar", "-C", work, "-cf", "-", "."], env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=errfile,
            )  # fmt: skip
        except FileNotFoundError:
            raise RemoteError(E_FAILED, "tar is not installed on this host") from None
        assert process.stdout is not None
        size = 0
        try:
            while True:
                chunk = process.stdout.read(_PIPE_CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                if size > max_bytes:
                    return size, False
                out.write(chunk)
            code = process.wait()
        finally:
            process.stdout.close()
            if process.poll() is None:
                process.kill()
                process.wait()
        if code != 0:
            errfile.seek(0)
            err = errfile.read()[-2000:].decode(errors="replace").strip()
            raise RemoteError(E_FAILED, "tar of the session's work failed (%d): %s" % (code, err))
    return size, True


def read(ctx: Context, params: Message) -> Dict[str, Any]:
    """One chunk of a transfer file, from `offset`, at most READ_CHUNK bytes."""
    record = _load(ctx, params)
    path = transfer_file(ctx.root, record["id"], str(params.get("kind")))
    offset, length = params.get("offset"), params.get("length")
    for name, value in (("offset", offset), ("length", length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise RemoteError(E_INVALID_PARAMS, "%s must be a byte count, got %r" % (name, value))
    assert isinstance(offset, int) and isinstance(length, int)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise RemoteError(E_NOT_FOUND, "nothing is packed for session %s: pull again"
                          % record["id"]) from None  # fmt: skip
    try:
        size = os.fstat(fd).st_size
        data = os.pread(fd, min(length, READ_CHUNK), offset)
    finally:
        os.close(fd)
    return {"data": base64.b64encode(data).decode("ascii"), "size": size}


def release(ctx: Context, params: Message) -> Dict[str, Any]:
    session_id = layout.check_session_id(params.get("id"))
    _remove_quietly(transfer_file(ctx.root, session_id, "tar"))
    return {}


def snapshot(ctx: Context, params: Message) -> Dict[str, Any]:
    record = _load(ctx, params)
    session_id = record["id"]
    with Scratch(ctx.root, session_id) as scratch:
        if record.get("isolation") == "clone":
            commit = _snapshot(scratch, layout.work_dir(ctx.root, session_id))[0]
        else:
            commit = _copy_tree(scratch, ctx.root, session_id)
    pulled = record.get("pulled_commit")
    return {"isolation": record.get("isolation"), "commit": commit, "pulled_commit": pulled,
            "pulled": pulled == commit}  # fmt: skip


def diff(ctx: Context, params: Message) -> Dict[str, Any]:
    record = _load(ctx, params)
    session_id = record["id"]
    work = layout.work_dir(ctx.root, session_id)
    with Scratch(ctx.root, session_id) as scratch:
        if record.get("isolation") == "clone":
            commit = _snapshot(scratch, work)[0]
            new = scratch.git(["rev-parse", commit + "^{tree}"])
            old, since = _diff_base(scratch, record)
        else:
            # Both sides as git trees (not `diff --no-index` on two host paths): file names come
            # out relative (a/x, b/x) and symlinks compare as links, the same as for clones.
            mirror = layout.mirror_dir(ctx.root, record["workspace"])
            if not os.path.isdir(mirror):
                raise RemoteError(E_NOT_FOUND, "the workspace mirror of %s is gone from this host"
                                  % record["workspace"])  # fmt: skip
            old, since = scratch.tree_of(mirror, None, force=True), "mirror"
            new = _copy_tree(scratch, ctx.root, session_id)
        options = ["--no-color", "--no-ext-diff", "--no-textconv", "-M"]
        text = scratch.git(["diff", *options, old, new], limit=MAX_DIFF_BYTES + 1)
        numstat = scratch.git(["diff", "--numstat", "-z", *options, old, new], limit=MAX_DIFF_BYTES)
    truncated = len(text.encode()) > MAX_DIFF_BYTES
    if truncated:
        text = text.encode()[:MAX_DIFF_BYTES].decode(errors="ignore")
    return {"text": text, "stat": parse_numstat(numstat), "from": since, "truncated": truncated}


def _diff_base(scratch: Scratch, record: Dict[str, Any]) -> Tuple[str, str]:
    """What the agent's work is compared with: the launch commit (the laptop's HEAD plus its
    uncommitted changes at launch, so the user's own edits do not show as the agent's), else the
    base commit, else nothing."""
    spec = record.get("spec") or {}
    for key, rev in (("launch_commit", record.get("launch_commit") or spec.get("launch_commit")),
                     ("base_commit", record.get("base_commit"))):  # fmt: skip
        if isinstance(rev, str) and scratch.has_commit(rev):
            return scratch.git(["rev-parse", rev + "^{tree}"]), key
    return EMPTY_TREE, "empty"


def parse_numstat(raw: str) -> Dict[str, Any]:
    """`git diff --numstat -z` -> {files: [{path, added, deleted, binary}], insertions, deletions}.

    With -z a rename is "A\\tD\\t\\0OLD\\0NEW\\0" and any other entry "A\\tD\\tPATH\\0".
    """
    files: List[Dict[str, Any]] = []
    parts = raw.split("\0")
    index = 0
    while index < len(parts) and parts[index]:
        added, deleted, path = parts[index].split("\t", 2)
        index += 1
        entry: Dict[str, Any] = {}
        if path == "":  # a rename: old and new names follow
            entry["old_path"], path = parts[index], parts[index + 1]
            index += 2
        binary = added == "-"
        entry.update({"path": path, "added": 0 if binary else int(added),
                      "deleted": 0 if binary else int(deleted), "binary": binary})  # fmt: skip
        files.append(entry)
    return {"files": files, "insertions": sum(f["added"] for f in files),
            "deletions": sum(f["deleted"] for f in files)}  # fmt: skip


def mark_pulled(ctx: Context, params: Message) -> Dict[str, Any]:
    record = _load(ctx, params)
    commit = params.get("commit")
    if not isinstance(commit, str) or not _OBJECT_ID.match(commit):
        raise RemoteError(E_INVALID_PARAMS, "commit must be a full git object id, got %r"
                          % (commit,))  # fmt: skip
    store = Store(ctx.root)
    try:
        store.update(record["id"], pulled_commit=commit)
    finally:
        store.close()
    return {"pulled_commit": commit}


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


HANDLERS = {
    "session.bundle": bundle,
    "session.snapshot": snapshot,
    "session.diff": diff,
    "session.mark_pulled": mark_pulled,
    "session.pack": pack,
    "session.read": read,
    "session.release": release,
}
