"""Links drop, hosts vanish, controllers die: the state stays clear and sessions keep running."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import fleet as fleet_mod
from tests.conftest import CLI, DISRUPTIVE_HOST
from tests.e2e.helpers import (
    TEST_ROLE,
    launch,
    make_workspace,
    managed_containers,
    session_row,
    wait_for,
)


def test_a_dropped_ssh_link_leaves_the_session_running(
    cli: CLI, fleet_inventory: Path, tmp_path: Path
) -> None:
    ws = make_workspace(tmp_path / "ws")
    (session,) = launch(
        cli,
        fleet_inventory,
        ws,
        "--on",
        "fleet-2",
        "--runtime",
        "shell",
        "--network",
        "none",
        "--task",
        "echo started; until [ -e go ]; do sleep 0.5; done; echo finished",
    )
    sid = session["id"]
    follower = subprocess.Popen(
        [sys.executable, "-m", "jackin_remote", "-i", str(fleet_inventory), "logs", "-f", sid],
        env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert follower.stdout is not None
    assert "started" in follower.stdout.readline()
    # Cut the link: kill the sshd process serving this user's connections on the host.
    fleet_mod.docker_exec("jackin-fleet-2", "pkill", "-f", "sshd: jackin")
    follower.wait(timeout=30)
    row = session_row(cli, fleet_inventory, sid)
    assert row["state"] == "running", row
    fleet_mod.docker_exec("jackin-fleet-2", "touch", f"/home/jackin/.jackin/sessions/{sid}/work/go")
    row = wait_for(cli, fleet_inventory, sid)
    assert row["state"] == "exited" and row["exit_code"] == 0
    assert "finished" in cli.run("-i", str(fleet_inventory), "logs", sid, check=True).stdout
    cli.run("-i", str(fleet_inventory), "rm", "--force", sid, check=True)


@pytest.mark.disruptive
def test_sessions_on_an_unreachable_host_show_as_lost_then_come_back(
    cli: CLI, fleet_inventory: Path, tmp_path: Path
) -> None:
    ws = make_workspace(tmp_path / "ws")
    (session,) = launch(cli, fleet_inventory, ws, "--on", DISRUPTIVE_HOST, "--runtime", "shell",
                        "--network", "none", "--task", "sleep 120")  # fmt: skip
    sid = session["id"]
    wait_for(cli, fleet_inventory, sid, {"running"})
    subprocess.run(["docker", "pause", f"jackin-{DISRUPTIVE_HOST}"], check=True)
    try:
        data = cli.json("-i", str(fleet_inventory), "ls", ok_codes=(3,))
    finally:
        subprocess.run(["docker", "unpause", f"jackin-{DISRUPTIVE_HOST}"], check=True)
    row = next(r for r in data["sessions"] if r["id"] == sid)
    assert row["state"] == "lost" and row["last_known_state"] == "running"
    assert row["last_contact"] is not None and row["workspace"].startswith("ws-")
    assert any(h["name"] == DISRUPTIVE_HOST and h["status"] == "unreachable"
               for h in data["hosts"])  # fmt: skip
    human = cli.run("-i", str(fleet_inventory), "ls", "--cached").stdout
    assert "lost" in human
    assert session_row(cli, fleet_inventory, sid)["state"] == "running"
    cli.run("-i", str(fleet_inventory), "rm", "--force", sid, check=True)


@pytest.mark.parametrize(
    ("kill_at", "delay"),
    [("preparing the role image", 0.0), ("creating session", 0.0), ("creating session", 0.6)],
)
def test_a_controller_killed_mid_launch_leaves_a_clear_state(
    cli: CLI, local_inventory: Path, tmp_path: Path, kill_at: str, delay: float
) -> None:
    ws = make_workspace(tmp_path / "ws")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jackin_remote", "-i", str(local_inventory), "launch",
         "--role", TEST_ROLE, "--runtime", "shell", "--network", "none", "--task", "sleep 2",
         str(ws)],
        env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None and proc.stdout is not None
    for line in proc.stderr:
        if kill_at in line:
            time.sleep(delay)
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    match = re.search(r"session contract (\w{8})", proc.stdout.read())
    assert match, "the contract is printed before anything is applied"
    sid = match.group(1)
    time.sleep(1)
    sessions = cli.json("-i", str(local_inventory), "ls")["sessions"]
    states = {row["id"]: row["state"] for row in sessions}
    # A container for this session is always a session ls knows about: none nobody knows of.
    # (Other tests share this docker engine, so only this launch's session id is checked.)
    if sid in managed_containers():
        assert sid in states, f"the container of {sid} is unknown to ls"
    if kill_at == "creating session" and delay:
        # The host got the request: it finishes the setup although the controller is gone.
        assert states.get(sid) in {"starting", "running", "exited"}, states
    elif kill_at == "creating session":
        # Killed around sending it: either never made, or made and recorded.
        assert states.get(sid) in {None, "starting", "running", "exited", "failed_setup"}
    else:
        assert sid not in states
    if sid in states:
        cli.run("-i", str(local_inventory), "rm", "--force", sid, check=True)


def test_ls_cached_needs_no_network_and_never_imports_asyncssh(
    cli: CLI, local_inventory: Path, tmp_path: Path
) -> None:
    ws = make_workspace(tmp_path / "ws")
    (session,) = launch(cli, local_inventory, ws, "--runtime", "shell", "--network", "none",
                        "--task", "true")  # fmt: skip
    wait_for(cli, local_inventory, session["id"])
    probe = (
        "import sys, json\n"
        "from jackin_remote.cli import app\n"
        f"sys.argv = ['jackin-remote', '-i', {str(local_inventory)!r}, 'ls', '--cached',"
        " '--json']\n"
        "try:\n    app()\nexcept SystemExit:\n    pass\n"
        "print('ASYNCSSH', 'asyncssh' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], env=cli.env, capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    assert "ASYNCSSH False" in out
    data = json.loads(out[: out.rindex("ASYNCSSH")])
    assert [row["id"] for row in data["sessions"]] == [session["id"]]
    cli.run("-i", str(local_inventory), "rm", "--force", session["id"], check=True)
