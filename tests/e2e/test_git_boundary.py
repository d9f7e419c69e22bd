"""Attacks on what git carries across the boundary, through the real CLI, local and over SSH.

1. A session must not be able to change what another session of the same workspace checks out:
   no file of a checkout shares an inode with the mirror or with another checkout (hard-linked
   objects were chowned to the sandbox user, which could chmod and rewrite them in place).
2. Git objects that HEAD's history does not reach stay on the laptop: a `.env` staged once then
   unstaged, an amended-away commit, a stash, another branch, a tag, reflogs.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

import pytest

from agent_host import layout
from jackin_remote.workspace import workspace_name
from tests import fleet as fleet_mod
from tests.conftest import CLI
from tests.e2e.helpers import git, launch, make_workspace, wait_for

FLEET_ROOT = "/home/jackin/.jackin"

# Session A: make every object file writable and rewrite them in place. A loose README blob is
# replaced by a valid object of other content; a pack is overwritten past its header.
REWRITE = r"""
set -u
mkdir -p /tmp/o
fake=$(printf 'planted by session A\n' | GIT_OBJECT_DIRECTORY=/tmp/o git hash-object -w --stdin)
real=$(git rev-parse HEAD:README.md)
find .git/objects -type f -exec chmod u+w {} +
loose=.git/objects/$(echo "$real" | cut -c1-2)/$(echo "$real" | cut -c3-)
if [ -f "$loose" ]; then
  planted="/tmp/o/$(echo "$fake" | cut -c1-2)/$(echo "$fake" | cut -c3-)"
  cat "$planted" > "$loose" && echo REWROTE loose
fi
for pack in .git/objects/pack/*.pack; do
  [ -f "$pack" ] || continue
  head -c 4096 /dev/urandom | dd of="$pack" bs=1 seek=12 conv=notrunc 2>/dev/null
  echo REWROTE pack
done
echo ATTACK DONE
"""

# Every way an agent could look for objects beyond HEAD's history, with every object's content.
DIG = r"""
echo '== fsck'; git fsck --unreachable --no-reflogs --full 2>&1
echo '== objects'; git cat-file --batch-all-objects --batch-check
echo '== contents'; git cat-file --batch-all-objects --batch-check='%(objectname)' \
  | git cat-file --batch
echo '== log'; git log --all --format='%H %s'
echo '== stash'; git stash list
echo '== refs'; git for-each-ref
echo '== reflog'; git reflog --all 2>&1; cat .git/packed-refs 2>/dev/null
echo '== tree'; grep -rai . --exclude-dir=.git . 2>/dev/null | head -200
echo '== end'
"""


@pytest.fixture(params=["local", "fleet-1"])
def target(
    request: pytest.FixtureRequest, local_inventory: Path, tmp_path: Path
) -> tuple[str, Path, str]:
    """(host, inventory, the host's root as its agent sees it)."""
    if request.param == "local":
        return "local", local_inventory, str(tmp_path / "host-root")
    return request.param, request.getfixturevalue("fleet_inventory"), FLEET_ROOT


def files_with_inodes(host: str, directory: str) -> dict[str, tuple[int, int, int]]:
    """Every regular file under `directory` on the host: relative path -> (dev, inode, links)."""
    if host == "local":
        found = {}
        for base, _, names in os.walk(directory):
            for name in names:
                st = os.lstat(os.path.join(base, name))
                rel = os.path.relpath(os.path.join(base, name), directory)
                found[rel] = (st.st_dev, st.st_ino, st.st_nlink)
        return found
    out = fleet_mod.docker_exec(
        fleet_mod.container(host), "find", directory, "-type", "f", "-printf", r"%D %i %n %P\n"
    ).stdout
    rows = (line.split(" ", 3) for line in out.splitlines() if line)
    return {rel: (int(dev), int(ino), int(links)) for dev, ino, links, rel in rows}


def logs(cli: CLI, inventory: Path, session_id: str) -> str:
    return cli.run("-i", str(inventory), "logs", session_id, check=True).stdout


def test_a_session_cannot_rewrite_what_the_next_session_checks_out(
    cli: CLI, target: tuple[str, Path, str], tmp_path: Path
) -> None:
    host, inventory, root = target
    ws = make_workspace(tmp_path / "ws")
    git(ws, "-c", "user.name=t", "-c", "user.email=t@t", "gc", "-q")  # packed objects too...
    (ws / "README.md").write_text("# test project\nsecond\n")  # ...and a loose README blob
    git(ws, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "loose")
    common = ("--on", host, "--runtime", "shell", "--network", "none")

    (first,) = launch(cli, inventory, ws, *common, "--task", REWRITE)
    assert wait_for(cli, inventory, first["id"])["state"] == "exited"
    attack = logs(cli, inventory, first["id"])
    assert "REWROTE pack" in attack and "ATTACK DONE" in attack, attack

    (second,) = launch(cli, inventory, ws, *common, "--task",
                       "cat README.md; git fsck --full && echo FSCK OK")  # fmt: skip
    state = wait_for(cli, inventory, second["id"])["state"]
    out = logs(cli, inventory, second["id"])
    assert "planted" not in out, out  # what session A wrote into its objects
    assert "# test project" in out and "FSCK OK" in out and state == "exited", out

    # No file of either checkout is an inode of the mirror or of the other checkout.
    mirror = files_with_inodes(host, layout.mirror_dir(root, workspace_name(ws.resolve())))
    work_a = files_with_inodes(host, layout.work_dir(root, first["id"]))
    work_b = files_with_inodes(host, layout.work_dir(root, second["id"]))
    assert any(rel.startswith(".git/objects/") for rel in mirror), mirror
    assert any(rel.startswith(".git/objects/") for rel in work_b), work_b
    mirror_inodes = {(dev, ino) for dev, ino, _ in mirror.values()}
    b_inodes = {(dev, ino) for dev, ino, _ in work_b.values()}
    for rel, (dev, ino, links) in {**work_a, **work_b}.items():
        assert links == 1, (rel, links)
        assert (dev, ino) not in mirror_inodes, rel
    assert not b_inodes & {(dev, ino) for dev, ino, _ in work_a.values()}

    for session in (first, second):
        cli.run("-i", str(inventory), "rm", "--force", session["id"], check=True)


def secret_history(ws: Path, canary: str) -> str:
    """Put the canary everywhere HEAD's history does not reach; returns HEAD."""

    def g(*args: str) -> str:
        return git(ws, "-c", "user.name=t", "-c", "user.email=t@t", *args)

    (ws / ".env").write_text(f"TOKEN={canary}-staged-once\n")
    g("add", "-f", ".env")
    g("reset", "-q", ".env")  # unstaged: a dangling blob in .git/objects
    (ws / "config.txt").write_text(f"password={canary}-amended\n")
    g("add", "config.txt")
    g("commit", "-qm", f"add config {canary}-subject")
    (ws / "config.txt").write_text("password=<from the environment>\n")
    g("add", "config.txt")
    g("commit", "-q", "--amend", "-m", "add config")  # the first version is only in reflogs
    (ws / "README.md").write_text(f"# test project\n{canary}-stashed\n")
    g("stash", "push", "-q", "-m", f"wip {canary}-stash-message")
    g("checkout", "-q", "-b", "other")
    (ws / "other.txt").write_text(f"{canary}-other-branch\n")
    g("add", "other.txt")
    g("commit", "-qm", "other branch")
    g("tag", "-a", "-m", f"{canary}-tag-message", "v-secret")
    g("checkout", "-q", "main")
    return g("rev-parse", "HEAD")


def test_objects_beyond_heads_history_never_reach_the_sandbox(
    cli: CLI, target: tuple[str, Path, str], tmp_path: Path
) -> None:
    host, inventory, root = target
    ws = make_workspace(tmp_path / "ws")
    canary = f"jk-canary-{secrets.token_hex(6)}"
    head = secret_history(ws, canary)
    assert canary in subprocess.run(  # the laptop really holds them all
        ["git", "-C", str(ws), "log", "--all", "-p", "--reflog"], capture_output=True,
        text=True, check=True).stdout  # fmt: skip

    (session,) = launch(cli, inventory, ws, "--on", host, "--runtime", "shell",
                        "--network", "none", "--task", DIG + "echo done > result.txt")  # fmt: skip
    assert wait_for(cli, inventory, session["id"])["state"] == "exited"
    out = logs(cli, inventory, session["id"])
    assert "== end" in out and "# test project" in out and head in out, out  # the dig worked
    assert canary not in out, out

    # Nor on the host, in the mirror the session was cloned from.
    mirror = layout.mirror_dir(root, workspace_name(ws.resolve()))
    dump = ["git", "-c", "safe.directory=*", "-C", mirror, "cat-file", "--batch-all-objects",
            "--batch", "--unordered"]  # fmt: skip
    prefix = [] if host == "local" else ["docker", "exec", fleet_mod.container(host)]
    on_host = subprocess.run([*prefix, *dump], capture_output=True, check=True).stdout
    assert head.encode() in on_host and canary.encode() not in on_host

    # The work still comes back.
    pulled = cli.json("-i", str(inventory), "pull", session["id"])
    assert git(ws, "show", f"{pulled['branch']}:result.txt") == "done"
    cli.run("-i", str(inventory), "rm", session["id"], check=True)


def test_a_copy_session_shares_no_inode_with_the_mirror(
    cli: CLI, local_inventory: Path, tmp_path: Path
) -> None:
    ws = make_workspace(tmp_path / "ws")
    root = str(tmp_path / "host-root")
    (session,) = launch(cli, local_inventory, ws, "--runtime", "shell", "--network", "none",
                        "--isolation", "copy", "--task", "true")  # fmt: skip
    assert wait_for(cli, local_inventory, session["id"])["state"] == "exited"
    mirror = files_with_inodes("local", layout.mirror_dir(root, workspace_name(ws.resolve())))
    work = files_with_inodes("local", layout.work_dir(root, session["id"]))
    assert "README.md" in work and any(rel.startswith(".git/objects/") for rel in work)
    mirror_inodes = {(dev, ino) for dev, ino, _ in mirror.values()}
    for rel, (dev, ino, links) in work.items():
        assert links == 1 and (dev, ino) not in mirror_inodes, rel
    cli.run("-i", str(local_inventory), "rm", "--force", session["id"], check=True)
