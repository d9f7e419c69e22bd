"""pull / diff of a session's work: real git, real tar, the real host agent over the local
transport. The sessions are made by the real sync + make_checkout; the "agent" is this test
editing the checkout (committing some work, leaving some uncommitted, planting hostile git config).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent_host import layout, review
from agent_host.protocol import E_CONFLICT, E_FAILED, E_INVALID_PARAMS, E_NOT_FOUND, RemoteError
from agent_host.state import Store
from agent_host.workspaces import make_checkout
from jackin_remote.errors import StateError
from jackin_remote.fleet import Pool
from jackin_remote.inventory import Inventory, load_inventory
from jackin_remote.review import PullResult, pull_session
from jackin_remote.sync import sync_workspace
from jackin_remote.workspace import scan_workspace

AGENT_UID = 1000  # the sandbox user: the checkout is owned by it, not by the host user


def git(repo: Path, *args: str) -> str:
    # fsmonitor off: the checkout carries hostile config that must never run (not even here).
    done = subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t",
         "-c", "safe.directory=*", "-c", "core.fsmonitor=false", *args],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip()


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def tree(root: Path) -> dict[str, str]:
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in (".git", ".jackin")]
        for name in filenames + [d for d in dirnames if Path(dirpath, d).is_symlink()]:
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            found[rel] = f"-> {os.readlink(path)}" if path.is_symlink() else path.read_text()
    return found


class Ctx:
    """What a handler reads from its Context."""

    def __init__(self, root: Path) -> None:
        self.root = str(root)


@pytest.fixture
async def host(laptop: Path, local_inventory: Path) -> AsyncIterator[tuple[Pool, Inventory, Path]]:
    inventory = load_inventory(local_inventory)
    async with Pool(inventory) as pool:
        yield pool, inventory, Path(inventory.hosts["local"].root)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "laptop-repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    write(root, "src/app.py", "print('v1')\n")
    write(root, "README.md", "readme\n")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "init")
    write(root, "README.md", "readme, edited by the user before launch\n")  # uncommitted
    return root


async def start_session(
    pool: Pool, inventory: Inventory, root: Path, workspace: Path, session_id: str, isolation: str
) -> dict[str, Any]:
    """What `launch` does before the container: sync, checkout, record."""
    scan = scan_workspace(workspace)
    [synced] = await sync_workspace(pool, [inventory.hosts["local"]], scan)
    assert synced.ok, synced.error
    checkout = make_checkout(str(root), scan.name, session_id, isolation)
    store = Store(str(root))
    store.insert({
        "id": session_id, "workspace": scan.name, "role": "test", "runtime": "shell",
        "container": f"jk-{session_id}", "mode": "task", "isolation": isolation,
        "state": "exited", "agent_status": "done", "branch": checkout["branch"],
        "base_commit": checkout["base_commit"],
        "spec": {"launch_commit": checkout["launch_commit"]},
    })  # fmt: skip
    record = store.get(session_id)
    store.close()
    assert record is not None
    return record


def plant_hostile_git_config(work: Path, marker: Path) -> None:
    """What a malicious agent can do to its own .git: host git commands in it would run these."""
    with open(work / ".git" / "config", "a") as config:
        config.write(
            f"[core]\n\tfsmonitor = touch {marker}.fsmonitor; false\n"
            f'[filter "evil"]\n\tclean = touch {marker}.filter; cat\n'
            f'[diff "evil"]\n\ttextconv = touch {marker}.textconv; cat\n'
            f"[commit]\n\tgpgSign = true\n[gpg]\n\tprogram = touch {marker}.gpg; false\n"
        )
    write(work, ".gitattributes", "* filter=evil diff=evil\n")
    hook = work / ".git" / "hooks" / "post-commit"
    hook.parent.mkdir(exist_ok=True)
    hook.write_text(f"#!/bin/sh\ntouch {marker}.hook\n")
    hook.chmod(0o755)
    # A nested repository (becomes a gitlink) with its own trap.
    nested = work / "nested"
    nested.mkdir()
    git(nested, "init", "-q")
    write(nested, "n.txt", "n\n")
    git(nested, "add", ".")
    git(nested, "commit", "-q", "-m", "nested")
    with open(nested / ".git" / "config", "a") as config:
        config.write(f"[core]\n\tfsmonitor = touch {marker}.nested; false\n")


def chown_to_agent(work: Path) -> None:
    if os.geteuid() != 0:
        return
    for dirpath, dirnames, filenames in os.walk(work):
        for name in [*dirnames, *filenames]:
            os.lchown(Path(dirpath, name), AGENT_UID, AGENT_UID)
    os.lchown(work, AGENT_UID, AGENT_UID)


def user_state(repo: Path) -> tuple[str, str, str, dict[str, str]]:
    return (git(repo, "rev-parse", "HEAD"), git(repo, "symbolic-ref", "HEAD"),
            git(repo, "status", "--porcelain"), tree(repo))  # fmt: skip


def pulled_commit(root: Path, session_id: str) -> str | None:
    store = Store(str(root))
    try:
        record = store.get(session_id)
        assert record is not None
        return record["pulled_commit"]
    finally:
        store.close()


# -- clone sessions ---------------------------------------------------------------------------


async def test_clone_pull_brings_committed_and_uncommitted_work_as_a_branch(
    host: tuple[Pool, Inventory, Path], repo: Path, tmp_path: Path
) -> None:
    pool, inventory, root = host
    sid = "k1m2n3p4"
    record = await start_session(pool, inventory, root, repo, sid, "clone")
    work = Path(layout.work_dir(str(root), sid))
    launch = record["spec"]["launch_commit"]
    base = git(repo, "rev-parse", "HEAD")
    assert record["base_commit"] == base and launch != base  # the user's README edit

    # The agent: one commit, then uncommitted edits, an untracked file, a link to a host secret.
    write(work, "agent.txt", "committed by the agent\n")
    git(work, "add", "agent.txt")
    git(work, "commit", "-q", "-m", "agent: add agent.txt")
    agent_head = git(work, "rev-parse", "HEAD")
    write(work, "src/app.py", "print('v2, uncommitted')\n")
    write(work, "notes/todo.md", "untracked\n")
    (work / "leak").symlink_to("/etc/passwd")
    marker = tmp_path / "pwned"
    plant_hostile_git_config(work, marker)
    chown_to_agent(work)
    agent_index = hashlib.sha256((work / ".git" / "index").read_bytes()).hexdigest()
    before = user_state(repo)

    link = await pool.agent(inventory.hosts["local"])
    result = await pull_session(link, record, repo)

    assert isinstance(result, PullResult)
    assert (result.branch, result.previous, result.isolation) == (f"jackin/{sid}", None, "clone")
    assert git(repo, "rev-parse", f"refs/heads/jackin/{sid}") == result.commit
    assert git(repo, "log", "-1", "--format=%s", result.commit) == review.SNAPSHOT_MESSAGE
    assert git(repo, "rev-parse", f"{result.commit}^") == agent_head
    assert git(repo, "rev-parse", f"{agent_head}^") == launch
    assert git(repo, "rev-parse", f"{launch}^") == base
    assert git(repo, "show", f"{result.commit}:src/app.py") == "print('v2, uncommitted')"
    assert git(repo, "show", f"{result.commit}:notes/todo.md") == "untracked"
    assert git(repo, "show", f"{result.commit}:agent.txt") == "committed by the agent"
    # The link is a blob inside git (mode 120000), never a file on the laptop's disk.
    assert git(repo, "ls-tree", result.commit, "leak").startswith("120000 blob")
    assert git(repo, "cat-file", "-p", f"{result.commit}:leak") == "/etc/passwd"
    assert result.outside_links == (("leak", "/etc/passwd"),)  # reported: a checkout makes it
    # README (launch), agent.txt, app.py, todo.md, leak, .gitattributes, nested (a gitlink)
    assert result.files == 7
    assert git(repo, "ls-tree", result.commit, "nested").startswith("160000 commit")
    assert result.bytes > 0

    assert user_state(repo) == before, "the user's HEAD, branch or working tree changed"
    assert not (repo / "leak").exists() and not (repo / "agent.txt").exists()
    assert pulled_commit(root, sid) == result.commit
    # The agent's checkout is as it left it: same HEAD, same index, edits still uncommitted.
    assert git(work, "rev-parse", "HEAD") == agent_head
    assert hashlib.sha256((work / ".git" / "index").read_bytes()).hexdigest() == agent_index
    assert (work / "src" / "app.py").read_text() == "print('v2, uncommitted')\n"
    assert sorted(p.name for p in tmp_path.glob("pwned*")) == [], "hostile git config ran"
    assert not list(Path(layout.session_dir(str(root), sid)).glob(".review-*"))

    # Only what the laptop lacks travels: the bundle's prerequisite is the base commit.
    bundle = Path(layout.bundle_file(str(root), sid))
    verify = subprocess.run(["git", "-C", str(repo), "bundle", "verify", str(bundle)],
                            capture_output=True, text=True, check=True)  # fmt: skip
    assert base in verify.stdout + verify.stderr

    # Pulling again with nothing new: the same commit, nothing moves.
    again = await pull_session(link, record, repo)
    assert (again.commit, again.previous, again.changed) == (result.commit, result.commit, False)
    assert user_state(repo) == before

    # diff: the agent's work against the launch commit (the user's README edit is not in it).
    details = await link.agent.call("session.diff", {"id": sid})
    assert details["from"] == "launch_commit" and not details["truncated"]
    assert "+print('v2, uncommitted')" in details["text"]
    assert "+committed by the agent" in details["text"]
    assert "b/notes/todo.md" in details["text"] and "b/leak" in details["text"]
    assert "README" not in details["text"]
    paths = sorted(f["path"] for f in details["stat"]["files"])
    assert paths == [".gitattributes", "agent.txt", "leak", "nested", "notes/todo.md", "src/app.py"]
    assert sorted(p.name for p in tmp_path.glob("pwned*")) == []

    # The trap is real: plain `git status` in the checkout (safe.directory=*) springs it.
    subprocess.run(["git", "-c", "safe.directory=*", "-C", str(work), "status"],
                   capture_output=True, check=False)  # fmt: skip
    assert (tmp_path / "pwned.fsmonitor").exists()


async def test_pull_refuses_to_move_a_checked_out_branch(
    host: tuple[Pool, Inventory, Path], repo: Path, tmp_path: Path
) -> None:
    pool, inventory, root = host
    sid = "q5r6s7t8"
    record = await start_session(pool, inventory, root, repo, sid, "clone")
    work = Path(layout.work_dir(str(root), sid))
    write(work, "one.txt", "1\n")
    link = await pool.agent(inventory.hosts["local"])
    first = await pull_session(link, record, repo)
    worktree = tmp_path / "review-wt"
    git(repo, "worktree", "add", "-q", str(worktree), f"jackin/{sid}")

    write(work, "two.txt", "2\n")  # new work: the branch would move
    with pytest.raises(StateError, match=r"checked out in .*review-wt"):
        await pull_session(link, record, repo)
    assert git(repo, "rev-parse", f"jackin/{sid}") == first.commit
    assert not (worktree / "two.txt").exists()
    assert pulled_commit(root, sid) == first.commit

    git(repo, "worktree", "remove", "--force", str(worktree))
    second = await pull_session(link, record, repo)
    assert second.changed and git(repo, "show", f"{second.commit}:two.txt") == "2"


async def test_session_with_no_new_work_names_the_base_commit(
    host: tuple[Pool, Inventory, Path], tmp_path: Path
) -> None:
    pool, inventory, root = host
    clean = tmp_path / "clean-repo"
    clean.mkdir()
    git(clean, "init", "-q", "-b", "main")
    write(clean, "a.txt", "a\n")
    git(clean, "add", ".")
    git(clean, "commit", "-q", "-m", "one")
    sid = "a1b2c3d4"
    record = await start_session(pool, inventory, root, clean, sid, "clone")
    link = await pool.agent(inventory.hosts["local"])
    reply = await link.agent.call("session.bundle", {"id": sid})
    assert reply["path"] is None and reply["size"] == 0 and not reply["snapshot"]
    result = await pull_session(link, record, clean)
    assert (
        result.commit == git(clean, "rev-parse", "HEAD") == git(clean, "rev-parse", f"jackin/{sid}")
    )
    assert (result.bytes, result.files) == (0, 0)
    assert git(clean, "symbolic-ref", "--short", "HEAD") == "main"


# -- copy sessions ----------------------------------------------------------------------------


async def test_copy_pull_lands_in_dot_jackin_with_links_kept_as_links(
    host: tuple[Pool, Inventory, Path], tmp_path: Path
) -> None:
    pool, inventory, root = host
    notes = tmp_path / "notes"
    write(notes, "a.md", "a\n")
    write(notes, "old.md", "to be deleted by the agent\n")
    sid = "c1c2c3c4"
    record = await start_session(pool, inventory, root, notes, sid, "copy")
    work = Path(layout.work_dir(str(root), sid))
    write(work, "a.md", "a, edited by the agent\n")
    write(work, "deep/new.md", "new\n")
    (work / "up").symlink_to("../../../outside")
    (work / "abs").symlink_to("/etc/passwd")
    (work / "tool").write_text("#!/bin/sh\n")
    (work / "tool").chmod(0o4755)
    chown_to_agent(work)
    outside_before = sorted(os.listdir(tmp_path))

    link = await pool.agent(inventory.hosts["local"])
    result = await pull_session(link, record, notes)

    dest = notes / ".jackin" / "pulled" / sid
    assert result.path == dest and result.branch is None and result.skipped == ()
    # Links that point outside the pulled tree are reported, and not made.
    assert tree(dest) == {
        "a.md": "a, edited by the agent\n", "old.md": "to be deleted by the agent\n",
        "deep/new.md": "new\n", "tool": "#!/bin/sh\n",
    }  # fmt: skip
    assert sorted(result.outside_links) == [("abs", "/etc/passwd"), ("up", "../../../outside")]
    assert not os.path.lexists(dest / "up") and not os.path.lexists(dest / "abs")
    assert oct(os.stat(dest / "tool").st_mode & 0o7777) == oct(0o755)
    assert result.files == 4
    assert sorted(os.listdir(tmp_path)) == outside_before
    assert (notes / "a.md").read_text() == "a\n", "the user's own files are never touched"
    assert pulled_commit(root, sid) == result.commit
    snap = await link.agent.call("session.snapshot", {"id": sid})
    assert snap["pulled"] and snap["commit"] == result.commit

    details = await link.agent.call("session.diff", {"id": sid})
    assert details["from"] == "mirror"
    assert "+a, edited by the agent" in details["text"] and "b/deep/new.md" in details["text"]
    assert str(root) not in details["text"]  # paths are relative, not host paths

    # More work, then pull again: the new pull replaces the old one whole.
    (work / "old.md").unlink()
    snap = await link.agent.call("session.snapshot", {"id": sid})
    assert not snap["pulled"]
    second = await pull_session(link, record, notes)
    assert second.commit != result.commit and not (dest / "old.md").exists()
    assert sorted(os.listdir(dest.parent)) == [sid], "temp dirs left behind"


async def test_a_failed_copy_pull_leaves_the_previous_pull_whole(
    host: tuple[Pool, Inventory, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool, inventory, root = host
    notes = tmp_path / "ws"
    write(notes, "a.md", "a\n")
    sid = "d1d2d3d4"
    record = await start_session(pool, inventory, root, notes, sid, "copy")
    link = await pool.agent(inventory.hosts["local"])
    await pull_session(link, record, notes)
    write(Path(layout.work_dir(str(root), sid)), "a.md", "changed\n")

    import jackin_remote.review as controller

    real = controller.safe_extract

    def extract_then_fail(stream: Any, dest: Any, **options: Any) -> Any:
        real(stream, dest, **options)  # files were written into the temp dir...
        raise OSError(28, "No space left on device")  # ...then the disk filled up

    monkeypatch.setattr(controller, "safe_extract", extract_then_fail)
    with pytest.raises(OSError):
        await pull_session(link, record, notes)
    pulled = notes / ".jackin" / "pulled"
    assert sorted(os.listdir(pulled)) == [sid]
    assert (pulled / sid / "a.md").read_text() == "a\n"


async def test_pull_refuses_a_dot_jackin_that_is_a_symlink(
    host: tuple[Pool, Inventory, Path], tmp_path: Path
) -> None:
    pool, inventory, root = host
    notes = tmp_path / "ws2"
    write(notes, "a.md", "a\n")
    sid = "e1e2e3e4"
    record = await start_session(pool, inventory, root, notes, sid, "copy")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (notes / ".jackin").symlink_to(elsewhere)
    link = await pool.agent(inventory.hosts["local"])
    with pytest.raises(StateError, match="not a plain directory"):
        await pull_session(link, record, notes)
    assert os.listdir(elsewhere) == []


# -- the handlers' own checks -----------------------------------------------------------------


async def test_handlers_validate_ids_kinds_and_the_checkout(
    host: tuple[Pool, Inventory, Path], repo: Path, tmp_path: Path
) -> None:
    pool, inventory, root = host
    await start_session(pool, inventory, root, repo, "f1f2f3f4", "clone")
    notes = tmp_path / "plain"
    write(notes, "a.md", "a\n")
    await start_session(pool, inventory, root, notes, "g1g2g3g4", "copy")
    ctx: Any = Ctx(root)

    def code_of(handler: Any, params: dict[str, Any]) -> str:
        with pytest.raises(RemoteError) as caught:
            handler(ctx, params)
        return caught.value.code

    assert code_of(review.bundle, {"id": "zzzzzzzz"}) == E_NOT_FOUND
    assert code_of(review.bundle, {"id": "../../etc"}) == E_INVALID_PARAMS
    assert code_of(review.diff, {"id": None}) == E_INVALID_PARAMS
    assert code_of(review.bundle, {"id": "g1g2g3g4"}) == E_CONFLICT
    assert code_of(review.mark_pulled, {"id": "f1f2f3f4", "commit": "HEAD; rm -rf /"}) == (
        E_INVALID_PARAMS
    )
    # An agent that swapped its .git for a pointer elsewhere gets nothing read through it.
    work = Path(layout.work_dir(str(root), "f1f2f3f4"))
    os.rename(work / ".git", tmp_path / "moved.git")
    (work / ".git").write_text(f"gitdir: {tmp_path / 'moved.git'}\n")
    assert code_of(review.bundle, {"id": "f1f2f3f4"}) == E_FAILED
    (work / ".git").unlink()
    (work / ".git").symlink_to(tmp_path / "moved.git")
    assert code_of(review.snapshot, {"id": "f1f2f3f4"}) == E_FAILED


def test_parse_numstat_handles_renames_and_binaries() -> None:
    raw = "3\t1\tsrc/a.py\0-\t-\timg.png\0" + "0\t0\t\0old name.txt\0new name.txt\0"
    assert review.parse_numstat(raw) == {
        "files": [
            {"path": "src/a.py", "added": 3, "deleted": 1, "binary": False},
            {"path": "img.png", "added": 0, "deleted": 0, "binary": True},
            {"old_path": "old name.txt", "path": "new name.txt", "added": 0, "deleted": 0,
             "binary": False},
        ],
        "insertions": 3,
        "deletions": 1,
    }  # fmt: skip
