"""Workspace mirrors on the host and the per-session checkouts made from them.

RPCs (the controller's sync):
    workspace.status {workspace, manifest_hash?} -> {manifest_hash, in_sync, mirror}
        With the controller's hash, a mismatch also readies the mirror for an rsync: the old
        manifest is dropped first, so an interrupted sync can never look complete.
    workspace.commit {workspace, manifest_hash, files, head?} -> {files, pruned, is_git}
        After the rsync: delete what is not in `files`, give a git mirror a fresh minimal
        .git/config (the laptop's never travels), then record the manifest atomically.

Not an RPC: `make_checkout`, called when a session is created, gives the session its own copy
(never a hard link or an alternate: no inode is shared with the mirror or another session).

Every git call uses `-c safe.directory=*` (the mirror may be chowned to the sandbox user) and
ignores the host user's git config, hooks and templates. Python 3.9 compatible.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import time
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple

from agent_host import audit, layout
from agent_host.protocol import (
    E_CONFLICT,
    E_FAILED,
    E_INVALID_PARAMS,
    E_NOT_FOUND,
    Message,
    RemoteError,
)
from agent_host.server import Context
from agent_host.wire import session_branch

ISOLATIONS = ("clone", "copy")
LAUNCH_COMMIT_MESSAGE = "jackin: local working tree at launch"
GIT_TIMEOUT = 600.0
_HASH_RE = re.compile(r"^[0-9a-f]{64}\Z")
_SHA_RE = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?\Z")


# -- validation --------------------------------------------------------------------------------


def _check_manifest_hash(value: object) -> str:
    if not isinstance(value, str) or not _HASH_RE.match(value):
        raise RemoteError(E_INVALID_PARAMS, "bad manifest_hash: %r" % (value,))
    return value


def _check_relpath(value: object) -> str:
    """A path inside the mirror: relative, normalized, no '..'. Deletion is decided on these."""
    if (
        not isinstance(value, str)
        or not value
        or "\0" in value
        or value.startswith("/")
        or any(part in ("", ".", "..") for part in value.split("/"))
    ):
        raise RemoteError(E_INVALID_PARAMS, "bad file path in manifest: %r" % (value,))
    return value


def _check_files(value: object) -> List[str]:
    if not isinstance(value, list):
        raise RemoteError(E_INVALID_PARAMS, "files must be a list of relative paths")
    return [_check_relpath(item) for item in value]


# -- manifest ----------------------------------------------------------------------------------


def read_manifest(root: str, workspace: str) -> Optional[Dict[str, Any]]:
    try:
        with open(layout.manifest_file(root, workspace), encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


_HASH_PREFIX_RE = re.compile(r'^\{"manifest_hash":"([0-9a-f]{64})"')


def read_manifest_hash(root: str, workspace: str) -> Optional[str]:
    """The recorded hash alone: commit writes it first, so the file list is never parsed here
    (status runs on every sync check and must stay cheap whatever the workspace size)."""
    try:
        with open(layout.manifest_file(root, workspace), "rb") as fh:
            head = fh.read(128).decode("ascii", "replace")
    except OSError:
        return None
    match = _HASH_PREFIX_RE.match(head)
    if match is not None:
        return match.group(1)
    manifest = read_manifest(root, workspace)  # written by someone else: parse it all
    value = manifest.get("manifest_hash") if manifest else None
    return value if isinstance(value, str) else None


def _write_json_atomic(path: str, data: Dict[str, Any]) -> None:
    tmp = "%s.tmp%d" % (path, os.getpid())
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, separators=(",", ":"))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(root: str, workspace: str) -> Iterator[None]:
    """One writer of a workspace at a time on this host (commit, checkout)."""
    directory = layout.workspace_dir(root, workspace)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    with open(os.path.join(directory, ".lock"), "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# -- RPC handlers ------------------------------------------------------------------------------


def status(ctx: Context, params: Message) -> Dict[str, Any]:
    workspace = layout.check_name(params.get("workspace"), "workspace")
    wanted = params.get("manifest_hash")
    if wanted is not None:
        _check_manifest_hash(wanted)
    mirror = layout.mirror_dir(ctx.root, workspace)
    have = read_manifest_hash(ctx.root, workspace) if os.path.isdir(mirror) else None
    in_sync = wanted is not None and have == wanted
    if wanted is not None and not in_sync:
        # An rsync follows: from now on the mirror is not known to match any manifest.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(layout.manifest_file(ctx.root, workspace))
        if not os.path.isdir(mirror):
            os.makedirs(mirror, mode=0o700, exist_ok=True)
            audit.record(ctx.root, None, "mirror.create", mirror,
                         "rm -rf %s" % layout.workspace_dir(ctx.root, workspace))  # fmt: skip
    return {"manifest_hash": have, "in_sync": in_sync, "mirror": mirror}


def commit(ctx: Context, params: Message) -> Dict[str, Any]:
    workspace = layout.check_name(params.get("workspace"), "workspace")
    wanted = _check_manifest_hash(params.get("manifest_hash"))
    files = _check_files(params.get("files"))
    head = params.get("head")
    if head is not None and (not isinstance(head, str) or not _SHA_RE.match(head)):
        raise RemoteError(E_INVALID_PARAMS, "bad head commit: %r" % (head,))
    mirror = layout.mirror_dir(ctx.root, workspace)
    if not os.path.isdir(mirror):
        raise RemoteError(E_NOT_FOUND, "no mirror for workspace %s: sync it first" % workspace)
    with _locked(ctx.root, workspace):
        pruned = prune_mirror(mirror, set(files))
        is_git = os.path.isfile(os.path.join(mirror, ".git", "HEAD"))
        if is_git:
            # The laptop's .git/config never travels (remote URLs may hold credentials):
            # init writes a fresh minimal one and the refs/objects dirs git needs.
            _git(mirror, "init", "-q", "--template=")
            _check_mirror_head(mirror, workspace, head)
        _write_json_atomic(
            layout.manifest_file(ctx.root, workspace),
            {"manifest_hash": wanted, "head": head, "is_git": is_git,
             "synced_at": time.time(), "files": files},
        )  # fmt: skip
    audit.record(ctx.root, None, "mirror.commit", "%s (%d files, %d pruned, head %s)" % (
        mirror, len(files), pruned, head or "none"),
        "rm -rf %s" % layout.workspace_dir(ctx.root, workspace))  # fmt: skip
    return {"files": len(files), "pruned": pruned, "is_git": is_git}


HANDLERS = {"workspace.status": status, "workspace.commit": commit}


def _check_mirror_head(mirror: str, workspace: str, head: Optional[str]) -> None:
    """The synced objects hold the laptop's HEAD (and a repo without commits has none)."""
    have = _git(mirror, "rev-parse", "-q", "--verify", "HEAD^{commit}", ok=(0, 1, 128)) or None
    if have != head:
        raise RemoteError(
            E_FAILED,
            "workspace %s: the synced git objects give HEAD %s, the laptop said %s; sync again"
            % (workspace, have or "(none)", head or "(none)"),
        )


# -- pruning -----------------------------------------------------------------------------------


def prune_mirror(mirror: str, keep: Set[str]) -> int:
    """Delete every file, symlink and empty directory under `mirror` not in `keep`.

    Bottom-up, never following symlinks: a link is removed as a link, whatever it points to.
    """
    removed = 0
    for dirpath, dirnames, filenames in os.walk(mirror, topdown=False, followlinks=False):
        rel_dir = os.path.relpath(dirpath, mirror)
        prefix = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
        links = [name for name in dirnames if os.path.islink(os.path.join(dirpath, name))]
        for name in filenames + links:
            if prefix + name not in keep:
                os.unlink(os.path.join(dirpath, name))
                removed += 1
        if dirpath != mirror and not os.listdir(dirpath):
            os.rmdir(dirpath)
            removed += 1
    return removed


# -- checkouts (called by session creation) ----------------------------------------------------


def make_checkout(root: str, workspace: str, session_id: str, isolation: str) -> Dict[str, Any]:
    """Give a session its own checkout at layout.work_dir, made from the workspace mirror.

    clone: a git clone on branch jackin/<session_id> from the laptop's HEAD; if the laptop's
    working tree differed from HEAD, that difference is one commit on top ("jackin: local
    working tree at launch"), so the user's uncommitted changes reach the agent and stay
    reviewable apart from the agent's own work. copy: a plain copy of the mirror.
    """
    layout.check_name(workspace, "workspace")
    layout.check_session_id(session_id)
    if isolation not in ISOLATIONS:
        raise RemoteError(
            E_INVALID_PARAMS,
            "bad isolation %r: expected one of %s" % (isolation, ", ".join(ISOLATIONS)),
        )
    mirror = layout.mirror_dir(root, workspace)
    work = layout.work_dir(root, session_id)
    with _locked(root, workspace):
        manifest = read_manifest(root, workspace)
        if manifest is None or not os.path.isdir(mirror):
            raise RemoteError(
                E_NOT_FOUND,
                "workspace %s is not synced to this host (or a sync is in progress)" % workspace,
            )
        if os.path.lexists(work):
            raise RemoteError(E_CONFLICT, "session %s already has a checkout" % session_id)
        os.makedirs(os.path.dirname(work), mode=0o700, exist_ok=True)
        try:
            if isolation == "copy":
                shutil.copytree(mirror, work, symlinks=True)
                return {"isolation": "copy", "branch": None, "work_dir": work,
                        "base_commit": manifest.get("head"), "launch_commit": None}  # fmt: skip
            if not manifest.get("is_git"):
                raise RemoteError(
                    E_INVALID_PARAMS,
                    "workspace %s is not a git repository: use isolation copy" % workspace,
                )
            return _clone(mirror, work, session_id)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise


def _clone(mirror: str, work: str, session_id: str) -> Dict[str, Any]:
    branch = session_branch(session_id)
    head = _git(mirror, "rev-parse", "-q", "--verify", "HEAD^{commit}", ok=(0, 1, 128)) or None
    # --no-hardlinks: the session gets its own copy of every object file. A hard link would
    # share the inode with the mirror: once the checkout is chowned to the sandbox user, the
    # agent could chmod and rewrite an object that every later session checks out.
    # (No --shared / --reference either: alternates would read the mirror's objects.)
    _git(os.path.dirname(work), "clone", "-q", "--local", "--no-hardlinks", "--no-checkout",
         "--template=", mirror, work)  # fmt: skip
    _git(work, "symbolic-ref", "HEAD", "refs/heads/" + branch)
    if head:
        _git(work, "update-ref", "refs/heads/" + branch, head)
        _git(work, "read-tree", head)  # the index = the laptop's HEAD; nothing written yet
    # Stage the mirror's working tree (exactly what travelled) against it: edits, new files,
    # deletions. -f: travelled files count even if this host's excludes would ignore them.
    _git(mirror, "--git-dir=" + os.path.join(work, ".git"), "--work-tree=.", "add", "-A", "-f")
    changed = _git(work, "diff", "--cached", "--quiet", ok=(0, 1), status=True) == "1"
    if changed or (head is None and _git(work, "ls-files")):
        _git(work, "commit", "-q", "--no-verify", "-m", LAUNCH_COMMIT_MESSAGE)
    launch = _git(work, "rev-parse", "-q", "--verify", "HEAD^{commit}", ok=(0, 1, 128)) or None
    if launch:
        _git(work, "reset", "-q", "--hard")  # now write the work tree, once
    with contextlib.suppress(RemoteError):  # an empty mirror has no origin remote to drop
        _git(work, "remote", "remove", "origin")
    return {"isolation": "clone", "branch": branch, "work_dir": work,
            "base_commit": head, "launch_commit": launch}  # fmt: skip


# -- git -----------------------------------------------------------------------------------------


def _git_env() -> Dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/"),
        "LANG": "C.UTF-8",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,  # the host user's config (hooks, signing...) stays out
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": "jackin",
        "GIT_AUTHOR_EMAIL": "jackin@localhost",
        "GIT_COMMITTER_NAME": "jackin",
        "GIT_COMMITTER_EMAIL": "jackin@localhost",
    }
    return env


def _git(cwd: str, *args: str, ok: Tuple[int, ...] = (0,), status: bool = False) -> str:
    """Run git in `cwd`; its stdout (stripped), or with status=True its exit code as text."""
    argv = ["git", "-c", "safe.directory=*", "-c", "core.hooksPath=" + os.devnull,
            "-c", "commit.gpgsign=false", *args]  # fmt: skip
    try:
        done = subprocess.run(
            argv, cwd=cwd, env=_git_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, timeout=GIT_TIMEOUT, check=False,
        )  # fmt: skip
    except FileNotFoundError:
        raise RemoteError(E_FAILED, "git is not installed on this host") from None
    except subprocess.TimeoutExpired:
        raise RemoteError(E_FAILED, "git %s timed out" % _verb(args)) from None
    if done.returncode not in ok:
        err = done.stderr.decode(errors="replace").strip()
        raise RemoteError(E_FAILED, "git %s failed (%d): %s" % (_verb(args), done.returncode, err))
    if status:
        return str(done.returncode)
    return done.stdout.decode(errors="replace").strip()


def _verb(args: Tuple[str, ...]) -> str:
    return next((arg for arg in args if not arg.startswith("-")), "?")
