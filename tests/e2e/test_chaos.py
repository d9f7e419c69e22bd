"""Chaos on a real SSH host (fleet-4, one disruptive test at a time): the link cut mid-launch,
sshd's side of the connection killed mid-launch, the host stopped and started under a running
session. Each ends with no session lost, nothing half-applied, and a clear state in `ls`.

Disturbances happen at a launch step, never at a time: the launch pauses at a named step
(agent_host/testhooks.py), the test disturbs the host, then lets the launch carry on by
creating its resume file. (A controller SIGKILLed at each step, a paused host and an OOM kill
are in test_resilience.py and test_limits.py.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from agent_host import testhooks
from tests import fleet as fleet_mod
from tests.conftest import CLI, DISRUPTIVE_HOST, add_host_copy
from tests.e2e.helpers import TEST_ROLE, launch, make_workspace, managed_containers, wait_for

pytestmark = pytest.mark.disruptive

CUT = ["iptables", "-I", "INPUT", "-p", "tcp", "--dport", "22", "-j", "REJECT",
       "--reject-with", "tcp-reset"]  # fmt: skip


def _host(fleet_inventory: Path, tmp_path: Path) -> tuple[str, str, str]:
    """(inventory name, host root, container): fleet-4 under a root of this test's own."""
    root = f"/home/jackin/chaos-{tmp_path.name[-12:]}-{os.urandom(3).hex()}"
    add_host_copy(fleet_inventory, DISRUPTIVE_HOST, "chaos", root)
    return "chaos", root, fleet_mod.container(DISRUPTIVE_HOST)


def _on(box: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return fleet_mod.docker_exec(box, *argv, check=check)


@contextmanager
def _paused_launch(
    cli: CLI, inventory: Path, name: str, ws: Path, step: str, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """A launch paused at `step`; the test disturbs the host, then touches the resume file."""
    resume = tmp_path / f"resume-{step}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "jackin_remote", "-i", str(inventory), "launch", "--on", name,
         "--role", str(Path(__file__).resolve().parents[2] / "roles" / "test-agent"),
         "--runtime", "shell", "--network", "none", "--task", "cat NOTES.md", "--json", str(ws)],
        env={**cli.env, testhooks.ENV: step, testhooks.RESUME_ENV: str(resume)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if line.strip() == testhooks.MARKER + step:
                break
        else:
            raise AssertionError(f"never paused at {step}: {''.join(seen)}")
        yield proc, resume
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _finish(proc: subprocess.Popen[str], resume: Path) -> tuple[int, str, str]:
    resume.touch()
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out, err


def _next_launch_works(cli: CLI, inventory: Path, name: str, ws: Path) -> None:
    (again,) = launch(cli, inventory, ws, "--on", name, "--runtime", "shell", "--network",
                      "none", "--task", "cat NOTES.md")  # fmt: skip
    row = wait_for(cli, inventory, again["id"], on=name)
    assert (row["state"], row["exit_code"]) == ("exited", 0), row
    assert "uncommitted note" in cli.run("-i", str(inventory), "logs", again["id"]).stdout
    cli.run("-i", str(inventory), "rm", "--force", again["id"], check=True)


def _resident_agent(cli: CLI, inventory: Path, name: str) -> dict[str, Any]:
    (entry,) = cli.json("-i", str(inventory), "hosts", "check", "--on", name)["hosts"]
    agent: dict[str, Any] = entry["agent"]
    assert agent["channel"] in ("direct", "bridge") and agent["started_at"], agent
    return agent


def _no_session_left(cli: CLI, inventory: Path, name: str, box: str) -> set[str]:
    listed = cli.json("-i", str(inventory), "ls", "--on", name)["sessions"]
    assert all(row["state"] != "starting" for row in listed), listed
    return {row["id"] for row in listed} | managed_containers("docker", "exec", box)


@pytest.mark.parametrize("step", ["sync", "create-send"])
def test_the_link_cut_mid_launch_fails_clearly_and_leaves_nothing_half_made(
    cli: CLI, fleet_inventory: Path, tmp_path: Path, step: str
) -> None:
    name, _, box = _host(fleet_inventory, tmp_path)
    ws = make_workspace(tmp_path / "ws")
    before = _no_session_left(cli, fleet_inventory, name, box)
    with _paused_launch(cli, fleet_inventory, name, ws, step, tmp_path) as (proc, resume):
        # sync: the files are in the host's mirror, not committed; create-send: all is ready.
        _on(box, *CUT)
        try:
            code, out, err = _finish(proc, resume)
        finally:
            _on(box, *[("-D" if arg == "-I" else arg) for arg in CUT], check=False)
    said = " ".join((out + err).split())
    assert code != 0, (out, err)
    assert name in said and "Traceback" not in said, said
    assert _no_session_left(cli, fleet_inventory, name, box) == before
    _next_launch_works(cli, fleet_inventory, name, ws)


def test_sshds_side_killed_mid_launch_fails_clearly_and_the_next_launch_works(
    cli: CLI, fleet_inventory: Path, tmp_path: Path
) -> None:
    name, _, box = _host(fleet_inventory, tmp_path)
    ws = make_workspace(tmp_path / "ws")
    before = _no_session_left(cli, fleet_inventory, name, box)
    with _paused_launch(cli, fleet_inventory, name, ws, "role-image", tmp_path) as (proc, resume):
        # Every sshd process serving the user's connections (the listener, PID 1, stays up:
        # on a real host systemd would restart it).
        killed = _on(box, "pkill", "-KILL", "-f", f"sshd: {fleet_mod.USER}", check=False)
        assert killed.returncode == 0, killed.stderr
        code, out, err = _finish(proc, resume)
    said = " ".join((out + err).split())
    assert code != 0, (out, err)
    assert name in said and "Traceback" not in said, said
    assert _no_session_left(cli, fleet_inventory, name, box) == before
    _next_launch_works(cli, fleet_inventory, name, ws)


def test_a_host_stopped_and_started_shows_its_session_crashed_and_start_brings_it_back(
    cli: CLI, fleet_inventory: Path, tmp_path: Path
) -> None:
    name, root, _ = _host(fleet_inventory, tmp_path)
    ws = make_workspace(tmp_path / "ws")
    (session,) = launch(cli, fleet_inventory, ws, "--on", name, "--runtime", "shell",
                        "--task", "echo done > /workspace/mark.txt && sleep infinity")  # fmt: skip
    sid = session["id"]
    assert session["contract"]["network"]["policy"] == "allowlist"  # its proxy dies too
    wait_for(cli, fleet_inventory, sid, {"running"}, on=name)
    before = _resident_agent(cli, fleet_inventory, name)
    fleet_mod.stop_host(DISRUPTIVE_HOST)
    try:
        lost = cli.json("-i", str(fleet_inventory), "ls", "--on", name, ok_codes=(3,))
        (row,) = [r for r in lost["sessions"] if r["id"] == sid]
        assert row["state"] == "lost" and row["last_known_state"] == "running", row
    finally:
        fleet_mod.start_host(DISRUPTIVE_HOST)
    row = wait_for(cli, fleet_inventory, sid, on=name)
    assert (row["state"], row["reason"]) == ("crashed", "engine_restart"), row
    # The resident agent came back with the host: a new one (started by the first command),
    # reached on its socket again, with the session reconciled above.
    after = _resident_agent(cli, fleet_inventory, name)
    assert after["started_at"] > before["started_at"], (before, after)
    assert after["channel"] == "direct", after
    human = " ".join(cli.run("-i", str(fleet_inventory), "ls", "--on", name).stdout.split())
    assert "crashed (engine_restart)" in human and "docker engine stopped" in human, human
    # Its work is all there, and it runs again, proxy and all.
    box = fleet_mod.container(DISRUPTIVE_HOST)
    mark = _on(box, "cat", f"{root}/sessions/{sid}/work/mark.txt").stdout
    assert mark == "done\n"
    cli.run("-i", str(fleet_inventory), "start", sid, check=True)
    row = wait_for(cli, fleet_inventory, sid, {"running"}, on=name)
    assert row["reason"] is None, row
    # The proxy is back: it answers the sandbox (and denies what no rule allows).
    ask = ("import os,socket,urllib.parse as u; p=u.urlsplit(os.environ['HTTPS_PROXY']); "
           "s=socket.create_connection((p.hostname,p.port),30); "
           "s.sendall(b'CONNECT nowhere.invalid:443 HTTP/1.1\\r\\nHost: nowhere.invalid:443"
           "\\r\\n\\r\\n'); print(s.recv(64).split(b'\\r\\n')[0].decode())")  # fmt: skip
    answer = _on(box, "docker", "exec", row["container"], "python3", "-c", ask).stdout
    assert answer.startswith("HTTP/1.1 403"), answer
    cli.run("-i", str(fleet_inventory), "rm", "--force", sid, check=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs as the host root (root only)")
def test_a_full_disk_refuses_a_launch_fails_a_snapshot_loudly_and_corrupts_nothing(
    cli: CLI, tmp_path: Path
) -> None:
    root = tmp_path / "small-root"
    root.mkdir()
    # Bigger than a snapshot's reserve (256 MiB kept free), so the first snapshots fit.
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300m", "tmpfs", str(root)], check=True)
    inv = tmp_path / "inventory"
    inv.mkdir()
    (inv / "local.toml").write_text(f'[hosts.local]\ntransport = "local"\nroot = "{root}"\n')
    ws = make_workspace(tmp_path / "ws")
    base = ["-i", str(inv)]
    sid = None
    try:
        (session,) = launch(cli, inv, ws, "--runtime", "shell", "--network", "none",
                            "--task", "sleep infinity")  # fmt: skip
        sid = session["id"]
        wait_for(cli, inv, sid, {"running"})
        # The agent's new work, then the disk fills up.
        (root / "sessions" / sid / "work" / "new.txt").write_text("x" * 20_000)
        filler = root / "filler"
        with filler.open("wb", buffering=0) as out, pytest.raises(OSError, match="No space left"):
            while True:
                out.write(b"\0" * (1 << 20))

        failed = cli.run(*base, "snapshot", sid)
        said = " ".join(failed.stderr.split())
        assert failed.returncode == 1, (failed.stdout, failed.stderr)
        assert "the host's disk is full" in said and "gc" in said, said
        listed = cli.json(*base, "snapshots", sid)
        assert [s["reason"] for s in listed["snapshots"]] == ["before-start"], listed

        refused = cli.run(*base, "launch", "--role", TEST_ROLE, "--runtime", "shell",
                          "--network", "none", "--task", "true", str(ws))  # fmt: skip
        said = " ".join(refused.stderr.split())
        assert refused.returncode not in (0, 3), (refused.stdout, refused.stderr)
        assert "cannot launch, nothing was started" in said and "free" in said, said

        # Nothing is corrupted: the session is still there and running, the state db reads.
        row = cli.json(*base, "ls")["sessions"]
        assert [(r["id"], r["state"]) for r in row] == [(sid, "running")], row

        filler.unlink()  # space again: the same snapshot works
        taken = cli.json(*base, "snapshot", sid)
        assert taken["snapshot"]["files_new"] >= 1, taken
    finally:
        if sid is not None:
            cli.run(*base, "rm", "--force", "--purge", sid)
        subprocess.run(["umount", "--lazy", str(root)], check=False)
