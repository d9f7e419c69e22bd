"""What of a local workspace travels to the hosts, and a cheap hash that says whether it changed.

Read-only on the laptop: git is asked with `--no-optional-locks`, so not even the index is
refreshed. The decisions (which paths are secret-shaped, the workspace name, the manifest hash)
are pure functions; `scan_workspace` is the thin I/O shell around them.

What travels for a git workspace is the WORKING TREE, as the user sees it now:
- tracked files as they are on disk (uncommitted edits included; deleted ones do not travel),
- untracked files that .gitignore does not ignore,
- for git, never the laptop's `.git` itself: `build_git_payload` (at sync time, not at scan)
  packs exactly the objects reachable from HEAD (`git pack-objects --revs` of HEAD) into a cache
  dir keyed by HEAD, with a detached HEAD file. Other branches, tags, stashes, reflogs, dangling
  blobs (a `.env` staged once) and amended-away commits stay on the laptop, as do `.git/config`
  (remote URLs may embed credentials), hooks, logs and the index. The session needs HEAD and the
  history it is built on, nothing more.
On the host, the session's clone commits the difference from HEAD as one reviewable commit.

Secret-shaped files (`.env*`, keys, credential stores...) stay behind unless tracked (they are in
the history that travels anyway: reported in `tracked_secrets` so the contract can warn) or named
explicitly with `include`.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import hashlib
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from jackin_remote.core.names import is_valid_name
from jackin_remote.errors import UsageError

MANIFEST_VERSION = "jackin-manifest-v2"  # v2: git travels as a pack of HEAD
SLUG_MAX = 40
JACKIN_DIR = ".jackin"  # local jackin state (pulled work...): never travels

# Matched against the lowercased file name.
_SECRET_GLOBS = (
    ".env*",
    "*.pem",
    "*.key",
    "id_rsa*",
    "id_ed25519*",
    "id_ecdsa*",
    ".netrc",
    ".npmrc",
    ".pypirc",
    "*.p12",
    "*.pfx",
    "credentials.json",
    "*.kdbx",
    "secrets.*",
)
_SECRET_DIRS = frozenset({".aws", ".ssh"})
# Templates that document a .env without values: these are meant to be shared.
_ENV_TEMPLATES = frozenset({".env.example", ".env.sample", ".env.template"})
PAYLOAD_KEEP = 3  # payloads kept per workspace in the laptop cache (concurrent launches of others)
PACK_CHAIN_MAX = 16  # incremental packs per workspace before one full pack replaces them
UNBORN_HEAD = "ref: refs/heads/main\n"  # a repository without commits: nothing to pack


@dataclass(frozen=True)
class WorkspaceScan:
    path: Path  # resolved
    name: str  # the workspace name on hosts (see workspace_name)
    is_git: bool
    head: str | None  # HEAD commit, None for a non-git dir or an unborn branch
    branch: str | None  # current branch, None when detached or not git
    dirty: bool  # uncommitted changes to tracked files, or untracked non-ignored files
    files: tuple[str, ...]  # sorted relative posix paths that travel (incl. .git metadata)
    excluded_secrets: tuple[str, ...]  # secret-shaped paths left behind
    tracked_secrets: tuple[str, ...]  # secret-shaped paths that travel because git tracks them
    skipped: tuple[str, ...]  # nested repos / submodules, special files: not synced
    manifest_hash: str
    total_bytes: int  # of the working tree files
    # What the host's git objects are made from: HEAD plus the shallow boundary, if any.
    # None when not git or when HEAD has no commit. Part of the manifest hash.
    git_key: str | None = None


@dataclass(frozen=True)
class GitPayload:
    """The git part of a sync: `files` (relative to `directory`) go to the mirror's `.git/`."""

    directory: Path
    files: tuple[str, ...]


# -- pure decisions -------------------------------------------------------------------------


# One regex for every glob: this runs once per file of the workspace.
_SECRET_NAME_RE = re.compile("|".join(fnmatch.translate(glob) for glob in _SECRET_GLOBS))


def is_secret_shaped(relpath: str) -> bool:
    parts = relpath.lower().split("/")
    if len(parts) > 1 and not _SECRET_DIRS.isdisjoint(parts[:-1]):
        return True
    name = parts[-1]
    return name not in _ENV_TEMPLATES and _SECRET_NAME_RE.match(name) is not None


def workspace_slug(basename: str) -> str:
    """Lowercase, runs of anything else as one '-', starting with a letter, at most 40 chars."""
    slug = re.sub(r"[^a-z0-9]+", "-", basename.lower()).strip("-")
    if not slug or not slug[0].isalpha():
        slug = ("w-" + slug).rstrip("-") if slug else "w"
    return slug[:SLUG_MAX].rstrip("-")


def workspace_name(resolved: Path) -> str:
    """Readable and unique per laptop path: two checkouts called `app` do not share a mirror."""
    digest = hashlib.sha256(os.fsencode(str(resolved))).hexdigest()[:6]
    name = f"{workspace_slug(resolved.name)}-{digest}"
    assert is_valid_name(name), name
    return name


def manifest_hash(
    entries: Iterable[tuple[str, int, int, int]], *, is_git: bool, git_key: str | None = None
) -> str:
    """sha256 over sorted (relpath, size, mtime_ns, mode) and the git key: stat only."""
    header = f"{MANIFEST_VERSION} git={int(is_git)} key={git_key or '-'}\n"
    digest = hashlib.sha256(header.encode())
    for relpath, size, mtime_ns, mode in sorted(entries):
        digest.update(os.fsencode(relpath) + f"\0{size}\0{mtime_ns}\0{mode:o}\n".encode())
    return digest.hexdigest()


def git_key(head: str | None, shallow: bytes | None) -> str | None:
    """Names the object set a host gets: HEAD's history, cut at the shallow boundary if any."""
    if head is None:
        return None
    if not shallow:
        return head
    return f"{head}-s{hashlib.sha256(shallow).hexdigest()[:16]}"


def check_include(raw: str) -> str:
    """An explicitly named file: a plain relative path inside the workspace."""
    path = PurePosixPath(raw)
    if (
        not raw
        or "\0" in raw
        or path.is_absolute()
        or any(part in ("..", "") for part in raw.split("/"))
        or raw.startswith("./")
    ):
        raise UsageError(
            f"include {raw!r}: name a file by its path relative to the workspace",
            hint="for example: --include .env.local",
        )
    if path.parts[0] in (".git", JACKIN_DIR):
        raise UsageError(f"include {raw!r}: {path.parts[0]}/ never travels")
    return str(path)


# -- I/O shell ------------------------------------------------------------------------------


def scan_workspace(path: Path, include: Sequence[str] = ()) -> WorkspaceScan:
    """Decide what of `path` travels; raises UsageError for a path we cannot use."""
    root = _workspace_root(path)
    wanted = sorted({check_include(raw) for raw in include})
    dot_git = root / ".git"
    if dot_git.is_file():
        raise UsageError(
            f"{root}: a git worktree or submodule (.git is a file) is not supported yet",
            hint="use the main checkout of the repository as the workspace",
        )
    if dot_git.is_dir():
        return _scan_git(root, wanted)
    _refuse_repo_subdir(root)
    return _scan_plain(root, wanted)


def _workspace_root(path: Path) -> Path:
    try:
        root = path.expanduser().resolve(strict=True)
    except (FileNotFoundError, RuntimeError, OSError):
        raise UsageError(
            f"workspace {str(path)!r} does not exist", hint="pass an existing directory"
        ) from None
    if not root.is_dir():
        raise UsageError(f"workspace {str(path)!r} is not a directory")
    return root


def _git(root: Path, *args: str) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(
            ["git", "--no-optional-locks", "-C", str(root), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_git_env(),
        )
    except FileNotFoundError:
        raise UsageError(
            f"{root} is a git repository but git is not installed", hint="install git"
        ) from None


def _git_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY"):
        env.pop(name, None)  # a hook's environment must not redirect our reads
    env["GIT_TERMINAL_PROMPT"] = "0"
    env["GIT_NO_LAZY_FETCH"] = "1"  # a partial clone must not reach its remote from here
    return env


def _finish(
    root: Path, proc: subprocess.Popen[bytes], *, ok_codes: tuple[int, ...] = (0,)
) -> bytes:
    out, err = proc.communicate()
    if proc.returncode not in ok_codes:
        args = proc.args if isinstance(proc.args, list) else [str(proc.args)]
        command = " ".join(str(a) for a in args[4:])
        raise UsageError(
            f"{root}: `git {command}` failed: {err.decode(errors='replace').strip()}",
            hint="check that the repository is healthy (`git status`)",
        )
    return out


def _refuse_repo_subdir(root: Path) -> None:
    if shutil.which("git") is None:
        return
    proc = _git(root, "rev-parse", "--show-toplevel")
    out, _ = proc.communicate()
    if proc.returncode == 0 and out.strip():
        top = out.decode(errors="replace").strip()
        raise UsageError(
            f"{root} is inside the git repository {top} but not its top level",
            hint=f"use {top} as the workspace",
        )


def _scan_git(root: Path, include: Sequence[str]) -> WorkspaceScan:
    if (root / ".git" / "objects" / "info" / "alternates").exists():
        raise UsageError(
            f"{root}: the repository borrows objects from another one (objects/info/alternates)",
            hint="run `git repack -a -d` and remove .git/objects/info/alternates first",
        )
    # Started together: four small git processes cost about one wait, not four.
    # `-t` tags each path: "? " untracked, anything else tracked (H, S, M, lowercase...).
    listing = _git(root, "ls-files", "-z", "-t", "--cached", "--others", "--exclude-standard")
    # Tracked changes (staged or not) against HEAD; exits 1 when there are some.
    changes = _git(root, "diff-index", "--quiet", "HEAD", "--")
    head = _git(root, "rev-parse", "-q", "--verify", "HEAD^{commit}")
    branch = _git(root, "symbolic-ref", "-q", "--short", "HEAD")
    tagged = _split0(_finish(root, listing))
    head_sha = _finish(root, head, ok_codes=(0, 1, 128)).decode().strip() or None
    branch_name = _finish(root, branch, ok_codes=(0, 1, 128)).decode().strip() or None
    _finish(root, changes, ok_codes=(0, 1, 128))
    candidates = [item[2:] for item in tagged]
    tracked_set = {item[2:] for item in tagged if not item.startswith("? ")}
    wanted = set(include)

    files: dict[str, os.stat_result] = {}
    excluded, tracked_secrets, skipped = [], [], []
    base = str(root)
    for rel in dict.fromkeys(candidates):  # a conflicted file is listed once per stage
        if rel.split("/", 1)[0] == JACKIN_DIR:
            continue
        if is_secret_shaped(rel):
            if rel in tracked_set:
                tracked_secrets.append(rel)
            elif rel not in wanted:
                excluded.append(rel)
                continue
        st = _lstat(base, rel)
        if st is None:
            continue  # a tracked file deleted in the working tree: the deletion travels
        if _travels(st):
            files[rel] = st
        else:
            skipped.append(rel.rstrip("/"))  # a submodule or nested repository
    _add_includes(root, include, files)
    # Dirty: what travels differs from HEAD (tracked edits/deletions, or new files that travel).
    # diff-index exits 1 on changes, 128 without a HEAD commit (then any file is new).
    dirty = changes.returncode == 1 or any(rel not in tracked_set for rel in files)
    dirty = dirty or (changes.returncode != 0 and bool(files))
    key = git_key(head_sha, _read_small(root / ".git" / "shallow"))
    return _build(root, True, head_sha, branch_name, dirty, files, excluded, tracked_secrets,
                  skipped, key)  # fmt: skip


def _scan_plain(root: Path, include: Sequence[str]) -> WorkspaceScan:
    files: dict[str, os.stat_result] = {}
    excluded, skipped = [], []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if base == "." else base + "/"
        kept_dirs = []
        for name in sorted(dirnames):
            rel = prefix + name
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                filenames.append(name)  # a symlink to a directory travels as a link
            elif (not prefix and name == JACKIN_DIR) or name == ".git":
                if name == ".git":
                    skipped.append(rel)  # a nested repository: its config may hold secrets
            else:
                kept_dirs.append(name)
        dirnames[:] = kept_dirs
        for name in filenames:
            rel = prefix + name
            if is_secret_shaped(rel) and rel not in include:
                excluded.append(rel)
                continue
            st = _lstat(root, rel)
            if st is None:
                continue
            if _travels(st):
                files[rel] = st
            else:
                skipped.append(rel)
    _add_includes(root, include, files)
    return _build(root, False, None, None, False, files, excluded, [], skipped)


def _build(
    root: Path,
    is_git: bool,
    head: str | None,
    branch: str | None,
    dirty: bool,
    files: dict[str, os.stat_result],
    excluded: list[str],
    tracked_secrets: list[str],
    skipped: list[str],
    key: str | None = None,
) -> WorkspaceScan:
    entries = [(rel, st.st_size, st.st_mtime_ns, st.st_mode) for rel, st in files.items()]
    return WorkspaceScan(
        path=root,
        name=workspace_name(root),
        is_git=is_git,
        head=head,
        branch=branch,
        dirty=dirty,
        files=tuple(sorted(files)),
        excluded_secrets=tuple(sorted(excluded)),
        tracked_secrets=tuple(sorted(tracked_secrets)),
        skipped=tuple(sorted(skipped)),
        manifest_hash=manifest_hash(entries, is_git=is_git, git_key=key),
        total_bytes=sum(st.st_size for st in files.values()),
        git_key=key,
    )


def _add_includes(root: Path, include: Sequence[str], files: dict[str, os.stat_result]) -> None:
    """Explicitly named files travel even when ignored or secret-shaped."""
    for rel in include:
        st = _lstat(root, rel)
        if st is None or not _travels(st):
            raise UsageError(
                f"include {rel!r}: no such file in {root}",
                hint="name files (not directories) relative to the workspace",
            )
        if not _inside(root, rel):
            raise UsageError(f"include {rel!r}: goes through a symlink out of the workspace")
        files[rel] = st


def _inside(root: Path, rel: str) -> bool:
    """The parent directories of `rel` are real directories under root (no symlink escape)."""
    parent = (root / rel).parent
    return parent.resolve() == parent and parent.is_relative_to(root)


def _read_small(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


# -- the git payload (written to the laptop cache at sync time, never at scan) ----------------


def build_git_payload(scan: WorkspaceScan, cache: Path) -> GitPayload:
    """The mirror's `.git`: a detached HEAD and packs holding exactly HEAD's history.

    Cached under `cache/<workspace>/<git_key>/`: a HEAD already packed costs one stat, so every
    host (and every later launch) reuses it. Built in a temporary dir and renamed into place
    under a lock, so concurrent launches never see half a payload.
    """
    assert scan.is_git, scan
    base = cache / scan.name
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _flocked(base / ".lock"):
        target = base / (scan.git_key or "unborn")
        if not target.is_dir():
            _atomic_dir(target, lambda tmp: _fill_payload(scan, base, tmp))
        os.utime(target)  # most recently used: kept by the trim below
        _trim(base, keep=PAYLOAD_KEEP)
        files: list[str] = []
        _walk_regular(str(target), "", files)
    return GitPayload(target, tuple(sorted(files)))


def _fill_payload(scan: WorkspaceScan, base: Path, into: Path) -> None:
    if scan.head is None:
        (into / "HEAD").write_text(UNBORN_HEAD)
        return
    pack_dir = into / "objects" / "pack"
    pack_dir.mkdir(parents=True)
    store = base / ".packs"
    for name in _pack_chain(scan, base, store):
        for ext in (".pack", ".idx"):
            # Linked on the laptop: the same inode keeps its mtime, so a host that already
            # holds a pack of the chain gets it skipped by rsync's quick check.
            _link_or_copy(store / (name + ext), pack_dir / (name + ext))
    (into / "HEAD").write_text(f"{scan.head}\n")
    shallow = _read_small(scan.path / ".git" / "shallow")
    if shallow:
        (into / "shallow").write_bytes(shallow)


def _pack_chain(scan: WorkspaceScan, base: Path, store: Path) -> list[str]:
    """Pack names whose union is HEAD's history, and nothing beyond it.

    A chain of packs, each made of `tip ^previous-tip`, every tip an ancestor of the next: a
    new HEAD that descends from a known tip only packs (and sends) the new objects. A HEAD that
    does not (amend, rebase, another branch) cuts the chain where it stops being an ancestor,
    so no pack of a commit HEAD does not reach ever travels with it.
    """
    assert scan.head is not None
    store.mkdir(exist_ok=True, mode=0o700)
    chain = [(tip, name) for tip, name in _read_chain(base)
             if all((store / f"{name}{ext}").is_file() for ext in (".pack", ".idx"))]  # fmt: skip
    if (scan.path / ".git" / "shallow").exists():
        chain = []  # the boundary may move: a full pack keeps it simple
    while chain and not _is_ancestor(scan.path, chain[-1][0], scan.head):
        chain.pop()
    if len(chain) >= PACK_CHAIN_MAX:
        chain = []  # one full pack again, rather than ever more small ones
    if not chain or chain[-1][0] != scan.head:
        revs = [scan.head] + ([f"^{chain[-1][0]}"] if chain else [])
        chain.append((scan.head, _pack(scan.path, store, revs)))
    _write_chain(base, chain)
    names = {name for _, name in chain}
    for stale in store.iterdir():  # payload dirs hold their own links: only the chain stays
        if stale.name.split(".")[0] not in names:
            stale.unlink()
    return [name for _, name in chain]


def _pack(repo: Path, store: Path, revs: list[str]) -> str:
    """`git pack-objects --revs` of `revs` into `store`; the pack's name (pack-<sha>)."""
    # --revs reads revisions from stdin. Not --all, --reflog, --indexed-objects or
    # --keep-unreachable: nothing but what these commits' history holds. --window=0: deltas
    # already in the repository's packs are reused, no new delta search (2-3x faster).
    proc = subprocess.Popen(
        ["git", "--no-optional-locks", "-C", str(repo), "pack-objects", "--revs", "-q",
         "--window=0", str(store / "pack")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_git_env(),
    )  # fmt: skip
    out, err = proc.communicate("".join(f"{rev}\n" for rev in revs).encode())
    sha = out.decode().strip()
    if proc.returncode != 0 or not re.fullmatch(r"[0-9a-f]{40,64}", sha):
        raise UsageError(
            f"{repo}: `git pack-objects` of HEAD failed: {err.decode(errors='replace')}",
            hint="check that the repository is healthy (`git fsck`)",
        )
    return f"pack-{sha}"


def _is_ancestor(repo: Path, commit: str, head: str) -> bool:
    proc = _git(repo, "merge-base", "--is-ancestor", commit, head)
    proc.communicate()
    return proc.returncode == 0  # 1: not an ancestor; 128: unknown commit (gc'd)


def _read_chain(base: Path) -> list[tuple[str, str]]:
    text = (_read_small(base / ".chain") or b"").decode(errors="replace")
    rows = [line.split() for line in text.splitlines()]
    return [(row[0], row[1]) for row in rows if len(row) == 2]


def _write_chain(base: Path, chain: list[tuple[str, str]]) -> None:
    tmp = base / f".chain.tmp{os.getpid()}"
    tmp.write_text("".join(f"{tip} {name}\n" for tip, name in chain))
    os.replace(tmp, base / ".chain")


def _link_or_copy(source: Path, dest: Path) -> None:
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)


def _atomic_dir(target: Path, fill: Callable[[Path], object]) -> None:
    tmp = target.with_name(f".tmp-{target.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o700)
    try:
        fill(tmp)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _trim(base: Path, *, keep: int) -> None:
    """Drop the least recently used payloads beyond `keep` (a launch holds the lock)."""
    entries = [p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")]
    entries.sort(key=lambda p: p.stat().st_mtime_ns, reverse=True)
    for old in entries[keep:]:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _flocked(path: Path) -> Iterator[None]:
    with path.open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _walk_regular(directory: str, prefix: str, found: list[str]) -> None:
    """Relative paths of the regular files under `directory`, never following symlinks."""
    for entry in os.scandir(directory):
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            _walk_regular(entry.path, prefix + entry.name + "/", found)
        elif stat.S_ISREG(st.st_mode):
            found.append(prefix + entry.name)


def _lstat(root: Path | str, rel: str) -> os.stat_result | None:
    try:
        return os.lstat(f"{root}/{rel}")
    except (FileNotFoundError, NotADirectoryError):
        return None


def _travels(st: os.stat_result) -> bool:
    return stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)


def _split0(data: bytes) -> list[str]:
    return [os.fsdecode(item) for item in data.split(b"\0") if item]
