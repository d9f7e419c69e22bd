"""What of a workspace travels (real git, real files): tracked, untracked, ignored, secrets."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from jackin_remote.core.names import is_valid_name
from jackin_remote.errors import UsageError
from jackin_remote.workspace import (
    GitPayload,
    build_git_payload,
    is_secret_shaped,
    scan_workspace,
    workspace_name,
    workspace_slug,
)


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip()


def write(root: Path, rel: str, text: str = "x\n") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repo with one commit, then: an edit, an untracked file, ignored files, secrets."""
    root = tmp_path / "My Project"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    write(root, ".gitignore", "build/\n*.log\n.env\n")
    write(root, "src/app.py", "print(1)\n")
    write(root, "README.md", "hello\n")
    write(root, "deploy.pem", "tracked key\n")  # tracked on purpose: it is in the history
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "init")
    git(root, "remote", "add", "origin", "https://user:token@example.invalid/repo.git")
    write(root, "src/app.py", "print(2)\n")  # uncommitted edit
    write(root, "notes.txt")  # untracked, not ignored
    write(root, "build/out.bin")  # ignored
    write(root, "debug.log")  # ignored
    write(root, ".env", "SECRET=1\n")  # ignored and secret-shaped
    write(root, ".env.local", "SECRET=2\n")  # secret-shaped, not ignored
    write(root, ".env.example", "SECRET=\n")  # a template: travels
    write(root, "config/id_ed25519", "key\n")
    write(root, ".aws/credentials", "[default]\n")
    write(root, ".jackin/pulled/x", "local state\n")
    return root


def worktree_files(files: tuple[str, ...]) -> list[str]:
    return [f for f in files if not f.startswith(".git/")]


def test_git_working_tree_travels_without_ignored_or_secret_files(repo: Path) -> None:
    scan = scan_workspace(repo)
    assert scan.is_git and scan.dirty and scan.branch == "main"
    assert scan.head == git(repo, "rev-parse", "HEAD")
    assert worktree_files(scan.files) == [
        ".env.example", ".gitignore", "README.md", "deploy.pem", "notes.txt", "src/app.py",
    ]  # fmt: skip
    assert scan.excluded_secrets == (".aws/credentials", ".env.local", "config/id_ed25519")
    assert scan.tracked_secrets == ("deploy.pem",)
    assert scan.total_bytes == sum(os.lstat(repo / f).st_size for f in scan.files)


def test_no_file_of_dot_git_travels_from_the_scan(repo: Path) -> None:
    assert not [f for f in scan_workspace(repo).files if f.startswith(".git/")]


def pack_objects(payload: GitPayload) -> set[str]:
    """Every object in the payload's packs."""
    found: set[str] = set()
    for idx in (f for f in payload.files if f.endswith(".idx")):
        out = subprocess.run(["git", "show-index"], stdin=(payload.directory / idx).open("rb"),
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        found |= {line.split()[1] for line in out.splitlines()}
    return found


def reachable(repo: Path) -> set[str]:
    return {line.split()[0] for line in git(repo, "rev-list", "--objects", "HEAD").splitlines()}


def test_the_git_payload_is_a_pack_of_exactly_heads_history(repo: Path, tmp_path: Path) -> None:
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "second")
    write(repo, "leak.txt", "staged once, then unstaged\n")
    git(repo, "add", "leak.txt")
    git(repo, "reset", "-q", "leak.txt")  # a dangling blob
    git(repo, "stash", "-q", "-u")
    git(repo, "branch", "other", "HEAD~1")
    git(repo, "checkout", "-q", "other")
    write(repo, "other.txt", "another branch\n")
    git(repo, "add", "other.txt")
    git(repo, "commit", "-q", "-m", "other")
    git(repo, "checkout", "-q", "main")
    scan = scan_workspace(repo)
    payload = build_git_payload(scan, tmp_path / "cache")
    assert payload.files[0] == "HEAD" and len(payload.files) == 3
    assert (payload.directory / "HEAD").read_text() == f"{scan.head}\n"
    assert pack_objects(payload) == reachable(repo)
    # Cached by HEAD: a second build is the same directory, untouched.
    mtime = (payload.directory / payload.files[1]).stat().st_mtime_ns
    again = build_git_payload(scan_workspace(repo), tmp_path / "cache")
    assert again == payload and (again.directory / again.files[1]).stat().st_mtime_ns == mtime


def test_a_new_head_sends_only_new_objects_and_never_an_amended_away_commit(
    repo: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    first = build_git_payload(scan_workspace(repo), cache)
    write(repo, "second.txt", "second\n")
    git(repo, "add", "second.txt")
    git(repo, "commit", "-q", "-m", "second")
    second = build_git_payload(scan_workspace(repo), cache)
    packs = [f for f in second.files if f.endswith(".pack")]
    assert len(packs) == 2 and set(first.files) - {"HEAD"} < set(second.files)  # one more
    assert pack_objects(second) == reachable(repo)
    amended_away = git(repo, "rev-parse", "HEAD")
    write(repo, "second.txt", "amended\n")
    git(repo, "commit", "-q", "-a", "--amend", "-m", "second, amended")
    third = build_git_payload(scan_workspace(repo), cache)
    assert amended_away not in pack_objects(third)
    assert pack_objects(third) == reachable(repo)  # the chain was cut before the amended commit


def test_an_unborn_repo_sends_a_head_alone(tmp_path: Path) -> None:
    root = tmp_path / "unborn"
    root.mkdir()
    git(root, "init", "-q")
    write(root, "a.txt")
    scan = scan_workspace(root)
    assert scan.git_key is None
    payload = build_git_payload(scan, tmp_path / "cache")
    assert payload.files == ("HEAD",)


def test_the_hash_follows_head_not_other_refs(repo: Path) -> None:
    first = scan_workspace(repo).manifest_hash
    git(repo, "branch", "elsewhere")
    git(repo, "tag", "v1")
    assert scan_workspace(repo).manifest_hash == first  # nothing of those travels


def test_explicit_include_brings_an_ignored_secret(repo: Path) -> None:
    scan = scan_workspace(repo, include=[".env", ".env.local"])
    assert {".env", ".env.local"} <= set(scan.files)
    assert ".env.local" not in scan.excluded_secrets


@pytest.mark.parametrize(
    "bad", ["/etc/passwd", "../outside", "a/../../b", "", ".git/config", "./x", "missing.txt"]
)
def test_bad_include_is_refused_by_name(repo: Path, bad: str) -> None:
    with pytest.raises(UsageError) as err:
        scan_workspace(repo, include=[bad])
    assert repr(bad) in err.value.message


def test_include_through_a_symlinked_dir_is_refused(repo: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write(outside, "secret.txt")
    (repo / "link").symlink_to(outside)
    with pytest.raises(UsageError, match="symlink"):
        scan_workspace(repo, include=["link/secret.txt"])


def test_deleted_tracked_file_does_not_travel(repo: Path) -> None:
    (repo / "README.md").unlink()
    assert "README.md" not in scan_workspace(repo).files


def test_manifest_hash_changes_on_edit_and_not_otherwise(repo: Path) -> None:
    first = scan_workspace(repo).manifest_hash
    assert scan_workspace(repo).manifest_hash == first
    write(repo, "build/more.bin")  # ignored: not part of the workspace
    git(repo, "status")  # may refresh the index: not part of what travels
    assert scan_workspace(repo).manifest_hash == first
    path = repo / "src" / "app.py"
    st = path.stat()
    path.write_text("print(3)\n")  # same size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1000))
    assert scan_workspace(repo).manifest_hash != first


def test_a_commit_changes_the_hash_even_with_the_same_tree(repo: Path) -> None:
    first = scan_workspace(repo)
    git(repo, "commit", "-q", "--allow-empty", "-m", "empty")
    second = scan_workspace(repo)
    assert second.head != first.head and second.manifest_hash != first.manifest_hash


def test_clean_repo_is_not_dirty(tmp_path: Path) -> None:
    root = tmp_path / "clean"
    root.mkdir()
    git(root, "init", "-q")
    write(root, "a.txt")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "one")
    write(root, ".jackin/pulled", "local state")  # never travels: not a change
    write(root, ".env.local", "S=1")  # left behind: not a change that travels
    scan = scan_workspace(root)
    assert not scan.dirty
    write(root, "a.txt", "staged\n")
    git(root, "add", "a.txt")
    assert scan_workspace(root).dirty
    git(root, "commit", "-q", "-m", "two")
    (root / "a.txt").unlink()
    assert scan_workspace(root).dirty


def test_unborn_repo_has_no_head(tmp_path: Path) -> None:
    root = tmp_path / "fresh"
    root.mkdir()
    git(root, "init", "-q")
    write(root, "a.txt")
    scan = scan_workspace(root)
    assert scan.is_git and scan.head is None and scan.dirty and "a.txt" in scan.files


def test_plain_directory_travels_minus_secrets_and_jackin_state(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    write(root, "a.txt")
    write(root, "sub/b.txt")
    write(root, ".env", "S=1\n")
    write(root, "server.key")
    write(root, ".ssh/config")
    write(root, ".jackin/state")
    write(root, "vendor/lib/.git/config", "[remote] url = https://u:p@x\n")
    write(root, "vendor/lib/code.c")
    (root / "link-to-sub").symlink_to("sub")
    scan = scan_workspace(root)
    assert not scan.is_git and scan.head is None and not scan.dirty
    assert scan.files == ("a.txt", "link-to-sub", "sub/b.txt", "vendor/lib/code.c")
    assert scan.excluded_secrets == (".env", ".ssh/config", "server.key")
    assert scan.skipped == ("vendor/lib/.git",)


def test_worktree_is_refused(repo: Path, tmp_path: Path) -> None:
    other = tmp_path / "wt"
    git(repo, "worktree", "add", "-q", str(other))
    with pytest.raises(UsageError, match="worktree"):
        scan_workspace(other)


def test_subdirectory_of_a_repo_is_refused(repo: Path) -> None:
    with pytest.raises(UsageError, match="top level"):
        scan_workspace(repo / "src")


@pytest.mark.parametrize("missing", ["does-not-exist", "file.txt"])
def test_missing_or_non_directory_path_is_named(tmp_path: Path, missing: str) -> None:
    write(tmp_path, "file.txt")
    with pytest.raises(UsageError) as err:
        scan_workspace(tmp_path / missing)
    assert missing in err.value.message


@pytest.mark.parametrize(
    ("path", "secret"),
    [
        (".env", True), (".env.local", True), (".envrc", True), ("app/.env.production", True),
        (".env.example", False), (".env.sample", False), (".env.template", False),
        ("certs/server.PEM", True), ("tls.key", True), ("id_rsa", True), ("id_ed25519.pub", True),
        (".netrc", True), (".npmrc", True), (".pypirc", True), ("cert.p12", True),
        ("cert.pfx", True), ("gcp/credentials.json", True), (".aws/config", True),
        ("home/.ssh/known_hosts", True), ("vault.kdbx", True), ("secrets.yaml", True),
        ("src/keyboard.py", False), ("environment.md", False), ("docs/secrets-guide.md", False),
    ],
)  # fmt: skip
def test_secret_shapes(path: str, secret: bool) -> None:
    assert is_secret_shaped(path) is secret


@pytest.mark.parametrize(
    ("basename", "slug"),
    [
        ("My Project", "my-project"),
        ("api__server!!", "api-server"),
        ("2024-report", "w-2024-report"),
        ("---", "w"),
        ("", "w"),
        ("Ünïcode", "n-code"),
        ("a" * 60, "a" * 40),
        ("x" * 39 + "-tail", "x" * 39),
    ],
)
def test_slug_rules(basename: str, slug: str) -> None:
    assert workspace_slug(basename) == slug


def test_workspace_name_is_valid_and_unique_per_path(tmp_path: Path) -> None:
    a, b = tmp_path / "a" / "app", tmp_path / "b" / "app"
    name_a, name_b = workspace_name(a), workspace_name(b)
    assert name_a.startswith("app-") and name_b.startswith("app-") and name_a != name_b
    assert is_valid_name(name_a) and len(name_a) == len("app-") + 6
    assert is_valid_name(workspace_name(tmp_path / ("9" * 80)))
