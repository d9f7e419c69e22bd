"""Links drop, hosts vanish, controllers die: the state stays clear and sessions keep running."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent_host import testhooks
from tests import fleet as fleet_mod
from tests.conftest import CLI, DISRUPTIVE_HOST, add_host_copy
from tests.e2e.helpers import (
    TEST_ROLE,
    launch,
    make_workspace,
    managed_containers,
    session_row,
    wait_for,
)


@pytest.mark.disruptive  # cuts every ssh link to the host: other tests' too
def test_a_dropped_ssh_link_leaves_the_session_running(
    cli: CLI, fleet_inventory: Path, tmp_path: Path
) -> None:
    ws = make_workspace(tmp_path / "ws")
    (session,) = launch(
        cli,
        fleet_inventory,
        ws,
        "--on",
        DISRUPTIVE_HOST,
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
    box = fleet_mod.container(DISRUPTIVE_HOST)
    fleet_mod.docker_exec(box, "pkill", "-f", "sshd: jackin")
    follower.wait(timeout=300)  # a bound on a state (the link is cut), not a timing
    row = session_row(cli, fleet_inventory, sid)
    assert row["state"] == "running", row
    fleet_mod.docker_exec(box, "touch", f"/home/jackin/.jackin/sessions/{sid}/work/go")
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
                        "--network", "none", "--task", "sleep infinity")  # fmt: skip
    sid = session["id"]
    wait_for(cli, fleet_inventory, sid, {"running"})
    subprocess.run(["docker", "pause", fleet_mod.container(DISRUPTIVE_HOST)], check=True)
    try:
        data = cli.json("-i", str(fleet_inventory), "ls", ok_codes=(3,))
    finally:
        subprocess.run(["docker", "unpause", fleet_mod.container(DISRUPTIVE_HOST)], check=True)
    row = next(r for r in data["sessions"] if r["id"] == sid)
    assert row["state"] == "lost" and row["last_known_state"] == "running"
    assert row["last_contact"] is not None and row["workspace"].startswith("ws-")
    assert any(h["name"] == DISRUPTIVE_HOST and h["status"] == "unreachable"
               for h in data["hosts"])  # fmt: skip
    human = cli.run("-i", str(fleet_inventory), "ls", "--cached").stdout
    assert "lost" in human
    assert session_row(cli, fleet_inventory, sid)["state"] == "running"
    cli.run("-i", str(fleet_inventory), "rm", "--force", sid, check=True)


# Where a launch is stopped (agent_host/testhooks.py) -> the state left once the dust settles:
# None, no session and no container anywhere; "exited", the host finished the session on its
# own (the task is `cat NOTES.md`, so it exits 0 as soon as it runs).
SETTLED = {
    "agent": None,
    "sync": None,
    "role-image": None,
    "create-send": None,
    "host-create": "exited",  # the host got the request: it finishes although the caller died
    "create-reply": "exited",  # the host recorded and answered; only the laptop missed it
}
assert set(SETTLED) == set(testhooks.LAUNCH_STEPS), "every launch pause point has its state"
FLEET_STEPS = ("sync", "host-create", "create-reply")  # where SSH differs from a local pipe


@dataclass
class Target:
    selector: str
    inventory: Path
    root: str  # the host root, on the host
    docker: tuple[str, ...]  # the prefix that runs a command on the host as root

    def exists(self, path: str) -> bool:
        return subprocess.run([*self.docker, "test", "-e", path]).returncode == 0

    def agents(self) -> str:
        """The host agents serving this root, as `pgrep -af` lists them ("" when none)."""
        argv = [*self.docker, "pgrep", "-af", f"serve --root {self.root}"]
        return subprocess.run(argv, capture_output=True, text=True).stdout.strip()

    def touch(self, path: str, check: bool = True) -> None:
        subprocess.run([*self.docker, "touch", path], check=check, stderr=subprocess.DEVNULL)


def _local_target(local_inventory: Path, tmp_path: Path) -> Target:
    return Target("local", local_inventory, str(tmp_path / "host-root"), ())


def _fleet_target(fleet_inventory: Path, tmp_path: Path) -> Target:
    root = f"/home/jackin/killed-{tmp_path.name[-12:]}-{os.urandom(3).hex()}"
    add_host_copy(fleet_inventory, "fleet-2", "probe", root)
    return Target("probe", fleet_inventory, root,
                  ("docker", "exec", fleet_mod.container("fleet-2")))  # fmt: skip


def _wait_until(reached: Callable[[], bool], proc: subprocess.Popen[str], what: str) -> None:
    """Waits for a state (bounded generously, never a timed assertion)."""
    deadline = time.monotonic() + 600
    while not reached():
        if proc.poll() is not None:
            raise AssertionError(f"the launch ended before {what}: {proc.communicate()}")
        assert time.monotonic() < deadline, f"never reached {what}"
        time.sleep(0.1)


def _killed_launch(cli: CLI, target: Target, ws: Path, step: str) -> str:
    """Runs a launch paused at `step`, SIGKILLs the controller there; returns the session id."""
    pause_dir = f"{target.root}/{testhooks.PAUSE_DIR}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "jackin_remote", "-i", str(target.inventory), "launch",
         "--on", target.selector, "--role", TEST_ROLE, "--runtime", "shell",
         "--network", "none", "--task", "cat NOTES.md", str(ws)],
        env={**cli.env, testhooks.ENV: step},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    try:
        if step in testhooks.HOST_STEPS:
            _wait_until(lambda: target.exists(f"{pause_dir}/{step}.reached"), proc, step)
        else:
            seen = []
            for line in proc.stderr:
                seen.append(line)
                if line.strip() == testhooks.MARKER + step:
                    break
            else:
                raise AssertionError(f"never paused at {step}: {''.join(seen)}")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    match = re.search(r"session contract (\w{8})", proc.stdout.read())
    assert match, "the contract is printed before anything is applied"
    return match.group(1)


def _check_killed_launch(cli: CLI, target: Target, ws: Path, step: str) -> None:
    try:
        _check_killed_launch_at(cli, target, ws, step)
    finally:  # a paused host agent never outlives the test, whatever failed
        if step in testhooks.HOST_STEPS:
            target.touch(f"{target.root}/{testhooks.PAUSE_DIR}/{step}.resume", check=False)


def _check_killed_launch_at(cli: CLI, target: Target, ws: Path, step: str) -> None:
    sid = _killed_launch(cli, target, ws, step)
    inv = str(target.inventory)
    # The laptop records a session only once the host's answer is processed: never here.
    cached = cli.json("-i", inv, "ls", "--cached")["sessions"]
    assert sid not in {row["id"] for row in cached}
    if step == "agent":
        assert not target.exists(target.root), "nothing reached the host before its agent"
    if step in testhooks.HOST_STEPS:
        # The controller is gone, the host still holds its `starting` record; then it finishes.
        row = session_row(cli, target.inventory, sid, "--on", target.selector)
        assert row["state"] == "starting", row
        assert sid not in managed_containers(*target.docker)
        assert target.agents(), "the paused agent is still there to finish the job"
        target.touch(f"{target.root}/{testhooks.PAUSE_DIR}/{step}.resume")
    expected = SETTLED[step]
    if expected is None:
        data = cli.json("-i", inv, "ls", "--on", target.selector)
        assert sid not in {row["id"] for row in data["sessions"]}
        assert sid not in managed_containers(*target.docker)
    else:
        row = wait_for(cli, target.inventory, sid, on=target.selector)
        assert (row["state"], row["exit_code"]) == (expected, 0), row
        assert sid in managed_containers(*target.docker)
        logs = cli.run("-i", inv, "logs", sid, check=True).stdout
        assert "uncommitted note" in logs
        cli.run("-i", inv, "rm", "--force", sid, check=True)
    if step == "sync":
        # Files rsynced but never committed on the host: the next launch still gets them right.
        (again,) = launch(cli, target.inventory, ws, "--on", target.selector, "--runtime",
                          "shell", "--network", "none", "--task", "cat NOTES.md")  # fmt: skip
        row = wait_for(cli, target.inventory, again["id"], on=target.selector)
        assert (row["state"], row["exit_code"]) == ("exited", 0), row
        assert "uncommitted note" in cli.run("-i", inv, "logs", again["id"], check=True).stdout
        cli.run("-i", inv, "rm", "--force", again["id"], check=True)
    # No agent outlives its caller: the killed launch's exits too (it saw the hang-up).
    deadline = time.monotonic() + 120
    while target.agents():
        assert time.monotonic() < deadline, f"agents left running: {target.agents()}"
        time.sleep(0.2)


@pytest.mark.parametrize("step", testhooks.LAUNCH_STEPS)
def test_a_controller_killed_mid_launch_leaves_a_clear_state(
    cli: CLI, local_inventory: Path, tmp_path: Path, step: str
) -> None:
    ws = make_workspace(tmp_path / "ws")
    _check_killed_launch(cli, _local_target(local_inventory, tmp_path), ws, step)


@pytest.mark.parametrize("step", FLEET_STEPS)
def test_a_controller_killed_mid_launch_over_ssh_leaves_a_clear_state(
    cli: CLI, fleet_inventory: Path, tmp_path: Path, step: str
) -> None:
    ws = make_workspace(tmp_path / "ws")
    _check_killed_launch(cli, _fleet_target(fleet_inventory, tmp_path), ws, step)


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
