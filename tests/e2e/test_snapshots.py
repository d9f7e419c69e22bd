"""Snapshots of a session's checkout, end to end through the real CLI, locally (a root host: the
agent runs under a uid of its own) and over SSH on fleet-1 (a non-root host: the agent has the
host user's uid). The agent's moves are made inside its sandbox, as its uid (`docker exec -u`).

- an agent that wipes its checkout (.git included) gets it back by `restore`, content and git
  log, and restoring the pre-restore snapshot undoes the restore; a running session is refused
  without --stop; `diff --since` shows what changed since a snapshot;
- the agent cannot see or change its snapshots (paths, /proc, its mounts; no inode shared);
- rm keeps the snapshots, rm --purge removes them and the record; a --no-snapshot launch takes
  none; with the laptop database deleted, `ls` rebuilds the sessions and their snapshot counts;
- a hostile checkout (links to /etc/shadow and /, a fifo, names with a newline and an escape)
  is snapshotted and restored without following or breaking anything;
- the inventory's retention and excludes apply, and a restore keeps the excluded trees.
"""

from __future__ import annotations

import json
import secrets
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agent_host import layout
from tests import fleet as fleet_mod
from tests.conftest import CLI, add_host_copy
from tests.e2e.helpers import launch, make_workspace, session_row, wait_for

WIPE = "rm -rf /workspace/* /workspace/.[!.]* /workspace/..?* ; ls -A /workspace"


def _on_host(machine: str, script: str) -> str:
    """A shell script on the host itself (as root there): this machine, or the fleet host."""
    prefix = [] if machine == "local" else ["docker", "exec", fleet_mod.container(machine)]
    done = subprocess.run([*prefix, "sh", "-c", script], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, (script, done.stdout, done.stderr)
    return done.stdout


def _agent(machine: str, session: dict[str, Any], script: str) -> str:
    """`script` inside the session's sandbox, as the agent's uid, in its checkout."""
    uid = session["uid"]
    return _on_host(machine, f"docker exec -u {uid}:{uid} -w /workspace {session['container']} "
                    f"sh -c {shlex.quote(script)}")  # fmt: skip


@pytest.fixture(params=["local", "fleet-1"])
def snap_host(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path, str, str]:
    """(host name, inventory, machine, root): a host root of this test's own."""
    if request.param == "local":
        return "local", request.getfixturevalue("local_inventory"), "local", str(
            tmp_path / "host-root")  # fmt: skip
    inventory = request.getfixturevalue("fleet_inventory")
    root = f"/home/jackin/snap-{secrets.token_hex(4)}"
    add_host_copy(inventory, request.param, "snap", root)
    return "snap", inventory, request.param, root


def _interactive(cli: CLI, inventory: Path, ws: Path, host: str, *args: str) -> dict[str, Any]:
    """A running interactive shell session (the agent idles in tmux): its ls row + container."""
    (entry,) = launch(cli, inventory, ws, "--on", host, "--runtime", "shell", "--network",
                      "none", *args)  # fmt: skip
    row = wait_for(cli, inventory, entry["id"], {"running"}, on=host)
    return {**row, "container": entry["container"], "contract": entry["contract"]}


def _json(cli: CLI, inventory: Path, *args: str, ok: tuple[int, ...] = (0,)) -> dict[str, Any]:
    return cli.json("-i", str(inventory), *args, ok_codes=ok)


def _ids(cli: CLI, inventory: Path, sid: str) -> list[str]:
    return [item["id"] for item in _json(cli, inventory, "snapshots", sid)["snapshots"]]


def _git_log(machine: str, work: str) -> list[str]:
    out = _on_host(machine, f"git -c safe.directory='*' -C {work} log --format=%s")
    return out.splitlines()


def test_a_wiped_checkout_comes_back_and_the_restore_can_be_undone(
    cli: CLI, snap_host: tuple[str, Path, str, str], tmp_path: Path
) -> None:
    host, inventory, machine, root = snap_host
    ws = make_workspace(tmp_path / "ws")
    session = _interactive(cli, inventory, ws, host)
    sid = session["id"]
    work = layout.work_dir(root, sid)
    try:
        (first,) = _json(cli, inventory, "snapshots", sid)["snapshots"]
        assert (first["id"], first["reason"]) == ("s1", "before-start")
        _agent(machine, session, "echo agent-work > agent.txt && git add agent.txt && "
               "git commit -qm agent-commit")  # fmt: skip
        since = _json(cli, inventory, "diff", sid, "--since", "s1")
        assert "+agent-work" in since["text"] and since["from"] == "snapshot s1", since
        assert [f["path"] for f in since["stat"]["files"]] == ["agent.txt"], since["stat"]
        manual = _json(cli, inventory, "snapshot", sid)["snapshot"]
        assert (manual["id"], manual["reason"]) == ("s2", "manual")
        assert manual["files_linked"] > 0 and manual["bytes_new"] < manual["bytes"], manual
        history = _git_log(machine, work)
        assert history[0] == "agent-commit" and history[-1] == "initial", history

        # The agent wipes everything, .git included.
        assert _agent(machine, session, WIPE).strip() == ""
        refused = cli.run("-i", str(inventory), "restore", sid, "s2")
        assert refused.returncode == 1 and "is running" in refused.stderr, refused.stderr
        assert "restore --stop" in " ".join(refused.stderr.split()), refused.stderr
        assert _ids(cli, inventory, sid) == ["s1", "s2"]  # nothing was taken or changed
        assert _on_host(machine, f"ls -A {work}").strip() == ""

        restored = _json(cli, inventory, "restore", sid, "s2", "--stop")
        assert (restored["restored"], restored["stopped"], restored["state"]) == (
            "s2", True, "stopped")  # fmt: skip
        before = restored["pre_restore"]
        assert (before["id"], before["reason"], before["files"]) == ("s3", "before-restore", 0)
        assert session_row(cli, inventory, sid)["state"] == "stopped"
        assert _on_host(machine, f"cat {work}/agent.txt") == "agent-work\n"
        assert _git_log(machine, work) == history
        cli.run("-i", str(inventory), "start", sid, check=True)
        seen = _agent(machine, session, "git log -1 --format=%s && cat agent.txt README.md")
        assert seen.splitlines() == ["agent-commit", "agent-work", "# test project"], seen

        # Restoring the pre-restore snapshot undoes the restore: the wiped checkout again.
        undone = _json(cli, inventory, "restore", sid, before["id"], "--stop")
        assert undone["restored"] == "s3" and undone["pre_restore"]["id"] == "s4"
        assert _on_host(machine, f"ls -A {work}").strip() == ""
        assert _ids(cli, inventory, sid) == ["s1", "s2", "s3", "s4"]
    finally:
        cli.run("-i", str(inventory), "rm", "--force", "--purge", sid)
    assert _on_host(machine, f"ls -A {root}/snapshots 2>/dev/null || true").strip() == ""


def test_the_agent_cannot_see_or_change_its_snapshots(
    cli: CLI, snap_host: tuple[str, Path, str, str], tmp_path: Path
) -> None:
    host, inventory, machine, root = snap_host
    ws = make_workspace(tmp_path / "ws")
    session = _interactive(cli, inventory, ws, host)
    sid = session["id"]
    snaps = layout.snapshots_dir(root, sid)
    try:
        _json(cli, inventory, "snapshot", sid)
        readme = f"{snaps}/s2/tree/README.md"
        digest = _on_host(machine, f"sha256sum {readme}")
        tries = " ".join(shlex.quote(p) for p in (
            snaps, f"{root}/snapshots", f"/proc/1/root{snaps}", f"/proc/self/root{snaps}",
            "/workspace/../snapshots", f"/proc/self/cwd/../../snapshots/{sid}",
        ))  # fmt: skip
        probe = (
            f'for p in {tries}; do ls -d "$p" >/dev/null 2>&1 && echo SEEN $p; done; '
            "cat /proc/self/mountinfo /proc/1/mountinfo | grep -c snapshots; "
            "find / -xdev \\( -name meta.json -o -name manifest.json.gz \\) 2>/dev/null; "
            "echo agent-was-here >> README.md; rm -rf .git; echo done"
        )
        said = _agent(machine, session, probe).split()
        assert said == ["0", "done"], said  # nothing seen, no mount names them, no file found
        # Its own checkout changed; the snapshot did not, and they share no inode.
        assert _on_host(machine, f"sha256sum {readme}") == digest
        inodes = "find {} -type f -printf '%i\\n' | sort -u"
        mine = set(_on_host(machine, inodes.format(layout.work_dir(root, sid))).split())
        kept = set(_on_host(machine, inodes.format(snaps)).split())
        assert mine and kept and not mine & kept
        modes = _on_host(machine, f"stat -c '%a %U' {root}/snapshots {snaps}/s2 {readme}")
        owner = "root" if machine == "local" else "jackin"
        assert modes.splitlines() == [f"700 {owner}", f"555 {owner}", f"444 {owner}"], modes
    finally:
        cli.run("-i", str(inventory), "rm", "--force", "--purge", sid)


def test_rm_keeps_snapshots_purge_removes_them_and_ls_rebuilds_the_counts(
    cli: CLI, snap_host: tuple[str, Path, str, str], tmp_path: Path, laptop: Path
) -> None:
    host, inventory, machine, root = snap_host
    ws = make_workspace(tmp_path / "ws")
    (taken,) = launch(cli, inventory, ws, "--on", host, "--runtime", "shell", "--network",
                      "none", "--task", "true")  # fmt: skip
    (skipped,) = launch(cli, inventory, ws, "--on", host, "--runtime", "shell", "--network",
                        "none", "--task", "true", "--no-snapshot")  # fmt: skip
    a, b = taken["id"], skipped["id"]
    assert taken["contract"]["recovery"]["snapshot_before_start"] is True
    assert skipped["contract"]["recovery"]["snapshot_before_start"] is False
    assert not [e for e in skipped["contract"]["plan"] if e["action"].startswith("snapshot")]
    for sid in (a, b):
        wait_for(cli, inventory, sid, {"exited"}, on=host)

    # The laptop's database is gone: ls rebuilds the view from the host, snapshots included.
    for path in (laptop / "jackin" / "state").glob("jackin.db*"):
        path.unlink()
    rows = {r["id"]: r for r in _json(cli, inventory, "ls", "--on", host)["sessions"]}
    assert (rows[a]["snapshots"], rows[b]["snapshots"]) == (1, 0), rows
    assert _json(cli, inventory, "snapshots", b)["snapshots"] == []

    removed = _json(cli, inventory, "rm", a)
    assert (removed["snapshots_kept"], removed["snapshots_removed"]) == (1, 0), removed
    assert "kept its 1 snapshot(s)" not in json.dumps(removed)  # words are for the terminal
    assert _on_host(machine, f"ls {layout.snapshots_dir(root, a)}").split() == ["s1"]
    assert a not in [r["id"] for r in _json(cli, inventory, "ls")["sessions"]]
    kept = _json(cli, inventory, "snapshots", a)
    assert kept["state"] == "purged" and [s["id"] for s in kept["snapshots"]] == ["s1"]

    purged = _json(cli, inventory, "rm", "--purge", a)
    assert (purged["snapshots_kept"], purged["snapshots_removed"]) == (0, 1), purged
    assert _on_host(machine, f"test -e {layout.snapshots_dir(root, a)} || echo GONE") == "GONE\n"
    gone = cli.run("-i", str(inventory), "snapshots", a)
    assert gone.returncode == 2 and "no session matches" in gone.stderr, gone.stderr
    cli.run("-i", str(inventory), "rm", "--purge", b, check=True)
    assert _on_host(machine, f"ls -A {root}/snapshots 2>/dev/null || true").strip() == ""


HOSTILE = (
    "ln -s /etc/shadow shadow-link && ln -s / host-root && ln -s /etc etc-link && mkfifo fifo "
    "&& printf 'newline\\n' > \"$(printf 'file\\nname')\" "
    "&& printf 'esc\\n' > \"$(printf 'esc\\033[31mname')\" && mkdir -p a/b/c && echo deep > "
    "a/b/c/d.txt"
)


def test_a_hostile_checkout_snapshots_and_restores_without_following_or_breaking_anything(
    cli: CLI, snap_host: tuple[str, Path, str, str], tmp_path: Path
) -> None:
    host, inventory, machine, root = snap_host
    ws = make_workspace(tmp_path / "ws")
    session = _interactive(cli, inventory, ws, host)
    sid = session["id"]
    work = layout.work_dir(root, sid)
    shadow = "sha256sum /etc/shadow; stat -c '%a %U %Y' /etc/shadow /etc"
    try:
        before = _on_host(machine, shadow)
        _agent(machine, session, HOSTILE)
        info = _json(cli, inventory, "snapshot", sid)["snapshot"]
        assert (info["links"], info["skipped"]) == (3, 1), info
        assert info["skipped_sample"] == ["fifo (special file)"], info
        assert info["bytes"] < 200_000, info  # nothing behind a link was read
        tree = f"{layout.snapshots_dir(root, sid)}/{info['id']}/tree"
        assert _on_host(machine, f"readlink {tree}/shadow-link {tree}/host-root") == (
            "/etc/shadow\n/\n")  # fmt: skip
        assert _on_host(machine, f"find {tree} -name passwd -o -name fifo").strip() == ""
        text = cli.run("-i", str(inventory), "diff", sid, "--since", "s1", check=True).stdout
        assert "shadow-link" in text and "\x1b" not in text, text
        assert 'b/file\\nname"' in text and 'b/esc\\033[31mname"' in text, text

        assert _agent(machine, session, WIPE).strip() == ""
        cli.run("-i", str(inventory), "restore", sid, info["id"], "--stop", check=True)
        assert _on_host(machine, f"readlink {work}/shadow-link {work}/host-root {work}/etc-link"
                        ) == "/etc/shadow\n/\n/etc\n"  # fmt: skip
        listed = _on_host(machine, f"cd {work} && cat \"$(printf 'file\\nname')\" a/b/c/d.txt "
                          "&& test ! -e fifo && echo NO_FIFO")  # fmt: skip
        assert listed == "newline\ndeep\nNO_FIFO\n", listed
        assert _on_host(machine, shadow) == before  # followed, read or changed: never
        cli.run("-i", str(inventory), "start", sid, check=True)
        assert _agent(machine, session, "cat a/b/c/d.txt") == "deep\n"
    finally:
        cli.run("-i", str(inventory), "rm", "--force", "--purge", sid)


def test_inventory_retention_and_excludes_apply_and_a_restore_keeps_excluded_trees(
    cli: CLI, local_inventory: Path, tmp_path: Path
) -> None:
    hosts = local_inventory / "local.toml"
    hosts.write_text(hosts.read_text() + 'snapshot_keep = 2\nsnapshot_excludes = ["*.log"]\n')
    root = str(tmp_path / "host-root")
    ws = make_workspace(tmp_path / "ws")
    session = _interactive(cli, local_inventory, ws, "local")
    sid = session["id"]
    recovery = session["contract"]["recovery"]
    assert "newest 2 (snapshot_keep)" in recovery["snapshot_retention"]
    assert recovery["snapshot_excludes"][-1] == "*.log"
    try:
        _agent("local", session, "mkdir -p web/node_modules && echo v1 > web/node_modules/m.js "
               "&& echo log > app.log && echo keep-v1 > keep.txt")  # fmt: skip
        taken = [_json(cli, local_inventory, "snapshot", sid)["snapshot"] for _ in range(3)]
        assert [t["id"] for t in taken] == ["s2", "s3", "s4"]
        assert taken[-1]["excluded"] == 2, taken[-1]  # web/node_modules and app.log
        assert _ids(cli, local_inventory, sid) == ["s3", "s4"]
        assert _on_host("local", f"ls {layout.snapshots_dir(root, sid)}").split() == ["s3", "s4"]
        _agent("local", session, "echo v2 > web/node_modules/m.js && echo keep-v2 > keep.txt")
        done = _json(cli, local_inventory, "restore", sid, "--stop")
        assert done["restored"] == "s4" and done["pre_restore"]["id"] == "s5"
        work = layout.work_dir(root, sid)
        assert _on_host("local", f"cat {work}/keep.txt {work}/web/node_modules/m.js "
                        f"{work}/app.log") == "keep-v1\nv2\nlog\n"  # fmt: skip
        assert _ids(cli, local_inventory, sid) == ["s4", "s5"]  # the one restored is kept
    finally:
        cli.run("-i", str(local_inventory), "rm", "--force", "--purge", sid)
