"""Where a role comes from: a directory, or a git URL fetched shallow into the laptop cache.

    ./roles/test-agent                    a directory (a git work tree is just a directory)
    git+file:///srv/roles#main            git, any ref: branch, tag or commit
    https://github.com/acme/roles.git     git (https:// and ssh:// are always git)

Each URL#ref gets its own cache directory (sha256 of the source string), replaced atomically on
every load, so a moved branch is picked up and two loads never see a half-written checkout.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from jackin_remote import paths
from jackin_remote.roles.manifest import RoleError

GIT_TIMEOUT = 600.0
_GIT_PREFIX = "git+"
_GIT_SCHEMES = ("file", "https", "http", "ssh", "git")
_BARE_GIT_SCHEMES = ("https://", "ssh://", "git://")  # URLs that are git without a prefix
_REF_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/+-]{0,199}\Z")
_URL_BAD_RE = re.compile(r"[\x00-\x20\x7f]")
URL_HINT = "a git role is git+file:///path, git+ssh://..., or https://host/repo.git, then #ref"


@dataclass(frozen=True)
class GitSource:
    url: str  # what git fetches (the `git+` prefix removed)
    ref: str | None

    @property
    def key(self) -> str:
        return hashlib.sha256(f"{self.url}#{self.ref or ''}".encode()).hexdigest()[:24]


def parse_git_source(source: str) -> GitSource | None:
    """The git URL and ref in `source`, or None when it is a path. Raises on a bad URL."""
    if source.startswith(_GIT_PREFIX):
        rest = source[len(_GIT_PREFIX) :]
    elif source.startswith(_BARE_GIT_SCHEMES):
        rest = source
    else:
        return None
    url, has_ref, ref = rest.partition("#")
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in _GIT_SCHEMES or _URL_BAD_RE.search(url) or url.endswith("://"):
        raise RoleError(f"invalid git role source {source!r}", hint=URL_HINT)
    if has_ref and (not _REF_RE.match(ref) or ".." in ref or "@{" in ref or ref.endswith(".lock")):
        raise RoleError(
            f"invalid git ref {ref!r} in {source!r}",
            hint="a branch, tag or commit: letters, digits and ._/+- only",
        )
    return GitSource(url, ref if has_ref else None)


def fetch_git_role(source: GitSource, cache: Path | None = None) -> Path:
    """A fresh shallow checkout of `source` in the cache (or in `cache`); returns its directory."""
    base = cache or paths.cache_dir() / "roles"
    base.mkdir(parents=True, exist_ok=True)
    dest = base / source.key
    tmp = Path(tempfile.mkdtemp(prefix=f".{source.key}.", dir=base))
    try:
        _git(["init", "-q", str(tmp)], source)
        _git(
            ["-C", str(tmp), "fetch", "-q", "--depth", "1", "--no-tags", "--",
             source.url, source.ref or "HEAD"],
            source,
        )  # fmt: skip
        _git(
            ["-C", str(tmp), "-c", "advice.detachedHead=false", "checkout", "-q", "--detach",
             "FETCH_HEAD"],
            source,
        )  # fmt: skip
        _swap_into_place(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _swap_into_place(new: Path, dest: Path) -> None:
    old = None
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", dir=dest.parent))
        os.rename(dest, old / "tree")
    os.rename(new, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _git(args: list[str], source: GitSource) -> None:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/false", "LC_ALL": "C"}
    where = f"{source.url}" + (f"#{source.ref}" if source.ref else "")
    try:
        done = subprocess.run(
            ["git", *args], stdin=subprocess.DEVNULL, capture_output=True, env=env,
            timeout=GIT_TIMEOUT, check=False,
        )  # fmt: skip
    except FileNotFoundError:
        raise RoleError("git is not installed", hint="install git to use git roles") from None
    except subprocess.TimeoutExpired:
        raise RoleError(
            f"{where}: git timed out after {GIT_TIMEOUT:.0f} s", hint="check the URL and network"
        ) from None
    if done.returncode != 0:
        text = done.stderr.decode(errors="replace").strip()
        with contextlib.suppress(IndexError):
            text = text.splitlines()[-1]
        raise RoleError(
            f"{where}: cannot fetch the role: {text or 'git failed'}",
            hint="check the URL and ref, and that `git fetch` works from this shell",
        )
