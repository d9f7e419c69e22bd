"""Idle cleanup for real, locally and over SSH, with no test waiting for time to pass.

A session launched with `--idle-timeout` gets its host's janitor (a detached process per host
root). `hosts janitor` runs one pass now; JACKIN_TEST_CLOCK_OFFSET moves that pass's clock
ahead (agent_host/testhooks.py), so "an hour later" is decided at once. Idle, the session is
stopped (not deleted): its container, egress proxy and private docker daemon stop, its checkout
and record stay, `start` brings it back, and the stop is in the audit. The janitor process: one
per root, and gone once no session of the root is active.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests import fleet as fleet_mod
from tests.conftest import CLI, add_host_copy
from tests.e2e.helpers import launch, make_workspace, session_row

SIDECAR_SETTINGS = (
    'private_docker_image = "jackin-test-dind:latest"\nprivate_docker_privilege = "capabilities"\n'
)
HOUR = 3600


def _on_host(machine: str, script: str) -> str:
    prefix = [] if machine == "local" else ["docker", "exec", fleet_mod.container(machine)]
    return subprocess.run([*prefix, "sh", "-c", script], capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip


@pytest.fixture(params=["local", "fleet-1"])
def idle_host(
    request: pytest.FixtureRequest, tmp_path: Path, local_inventory: Path
) -> tuple[str, Path, str, str]:
    """(host name, inventory dir, machine, root): a fresh root, idle_timeout 1h from the
    inventory, the test sidecar image."""
    settings = SIDECAR_SETTINGS + 'idle_timeout = "1h"\n'
    if request.param == "local":
        host_file = local_inventory / "local.toml"
        host_file.write_text(host_file.read_text() + settings)
        return "local", local_inventory, "local", str(tmp_path / "host-root")
    inventory = request.getfixturevalue("fleet_inventory")
    root = f"/home/jackin/idle-{secrets.token_hex(4)}"
    add_host_copy(inventory, request.param, "idl", root)
    host_file = inventory / "idl.toml"
    host_file.write_text(host_file.read_text() + settings)
    return "idl", inventory, request.param, root


def _janitor(cli: CLI, inventory: Path, on: str, offset: float) -> dict[str, Any]:
    cli.env["JACKIN_TEST_CLOCK_OFFSET"] = str(offset)
    try:
        data = cli.json("-i", str(inventory), "hosts", "janitor", "--on", on)
    finally:
        del cli.env["JACKIN_TEST_CLOCK_OFFSET"]
    (entry,) = data["hosts"]
    assert entry["host"] == on and data["failed"] == []
    return entry  # type: ignore[no-any-return]


def _janitor_alive(machine: str, root: str) -> bool:
    """The root's janitor runs: its pid file names a live process carrying the mark, the
    janitor's own or (it runs the passes on a thread) the resident agent's."""
    script = (f'pid=$(cat {root}/janitor/pid 2>/dev/null) && tr "\\0" " " < /proc/$pid/cmdline '
              "2>/dev/null || true")  # fmt: skip
    argv = _on_host(machine, script)
    return any(mark in argv for mark in ("jackin-janitor", "jackin-agent-resident")) and (
        root in argv
    )


def _proxy_alive(machine: str, root: str, sid: str) -> bool:
    script = (f'pid=$(cat {root}/sessions/{sid}/egress.pid 2>/dev/null) && tr "\\0" " " < '
              f"/proc/$pid/cmdline 2>/dev/null || true")  # fmt: skip
    return "jackin-egress-proxy" in _on_host(machine, script)


def _status(machine: str, name: str) -> str:
    return _on_host(machine, f"docker inspect --format '{{{{.State.Status}}}}' {name}")


def test_an_idle_session_is_stopped_by_its_host_and_kept(
    cli: CLI, idle_host: tuple[str, Path, str, str], tmp_path: Path
) -> None:
    name, inventory, machine, root = idle_host
    ws = make_workspace(tmp_path / "ws")
    (session,) = launch(cli, inventory, ws, "--on", name, "--runtime", "shell",
                        "--network", "allowlist", "--docker", "private")  # fmt: skip
    sid = session["id"]
    container, sidecar = session["contract"]["identity"]["container"], f"jk-{sid}-dockerd"
    try:
        contract = session["contract"]
        assert contract["spec"]["idle_timeout"] == HOUR
        note = contract["recovery"]["idle_timeout"]
        assert note.startswith("1h (idle_timeout in the inventory): the host stops"), note
        assert _janitor_alive(machine, root)
        # The resident host agent runs the passes itself, on a thread: no process beside it.
        (checked,) = cli.json("-i", str(inventory), "hosts", "check", "--on", name)["hosts"]
        janitor_pid = _on_host(machine, f"cat {root}/janitor/pid").strip()
        assert checked["agent"]["channel"] != "exec", checked["agent"]
        assert janitor_pid == str(checked["agent"]["pid"]), (janitor_pid, checked["agent"])
        assert _proxy_alive(machine, root, sid) and _status(machine, sidecar) == "running"

        # Half an hour on: not idle yet; nothing stops.
        early = _janitor(cli, inventory, name, HOUR / 2)
        assert early["stopped"] == [] and early["active"] is True, early
        assert session_row(cli, inventory, sid, "--on", name)["state"] == "running"

        # An hour and a bit on, with nobody typing: stopped, not deleted.
        late = _janitor(cli, inventory, name, HOUR + 120)
        assert late["stopped"] == [{"id": sid}], late
        assert late["active"] is False and late["janitor"] is not None, late
        row = session_row(cli, inventory, sid, "--on", name)
        assert (row["state"], row["reason"]) == ("stopped", "idle"), row
        assert _status(machine, container) == "exited"
        assert _status(machine, sidecar) == "exited"
        assert not _proxy_alive(machine, root, sid)
        assert _on_host(machine, f"ls {root}/sessions/{sid}/work").split() == [
            "NOTES.md", "README.md"]  # fmt: skip
        rows = cli.json("-i", str(inventory), "audit", sid)["entries"]
        (stop,) = [r for r in rows if r["action"] == "session.idle-stop"]
        assert stop["undo"] == f"jackin-remote start {sid}", stop
        assert "timeout 3600s" in stop["target"], stop
        # The stops it made are each in the audit, after the idle decision's own row.
        after = [r["action"] for r in rows[rows.index(stop) - 3 :]]
        assert {"container.stop", "egress.stop"} <= set(after), after

        # start brings it back, as it was; the janitor watches it again.
        cli.run("-i", str(inventory), "start", sid, check=True)
        assert session_row(cli, inventory, sid, "--on", name)["state"] == "running"
        assert _janitor_alive(machine, root)
        assert _janitor(cli, inventory, name, 0)["stopped"] == []
    finally:
        cli.run("-i", str(inventory), "rm", "--force", sid)


def test_a_task_that_ended_is_cleaned_up_by_the_janitor_pass_without_an_idle_stop(
    cli: CLI, idle_host: tuple[str, Path, str, str], tmp_path: Path
) -> None:
    name, inventory, machine, root = idle_host
    ws = make_workspace(tmp_path / "ws")
    (session,) = launch(cli, inventory, ws, "--on", name, "--runtime", "shell", "--task", "true",
                        "--network", "allowlist", "--idle-timeout", "2h")  # fmt: skip
    sid = session["id"]
    try:
        assert session["contract"]["spec"]["idle_timeout"] == 2 * HOUR
        assert "(--idle-timeout)" in session["contract"]["recovery"]["idle_timeout"]
        container = session["contract"]["identity"]["container"]
        # The task ends by itself; docker says so (no `ls`: it would reconcile first). The
        # resident agent's janitor thread may already have run a pass since (its first pass
        # comes at once): either way, after a pass its proxy is gone, and nothing is "idle".
        _on_host(machine, f"docker wait {container}")
        entry = _janitor(cli, inventory, name, 0)
        assert entry["stopped"] == [] and entry["active"] is False, entry
        assert not _proxy_alive(machine, root, sid)
        row = session_row(cli, inventory, sid, "--on", name)
        assert (row["state"], row["reason"]) == ("exited", None), row
        actions = [r["action"] for r in cli.json("-i", str(inventory), "audit", sid)["entries"]]
        assert "egress.stop" in actions and "session.idle-stop" not in actions, actions
    finally:
        cli.run("-i", str(inventory), "rm", "--force", sid)


def test_the_janitor_is_one_per_root_and_exits_when_no_session_is_active(tmp_path: Path) -> None:
    """The resident process itself, on this machine: a root with no active session."""
    from agent_host import audit, janitor

    root = str(tmp_path / "root")
    os.makedirs(janitor.janitor_dir(root))
    # Another janitor holds the root's lock: a new one says so and leaves.
    with open(janitor.lock_file(root), "a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        assert janitor.ensure_running(root) is None
    assert janitor.running_pid(root) is None
    # Free: it starts, runs a pass at once, finds nothing active, and exits.
    pid = janitor.ensure_running(root)
    assert pid is not None
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert janitor.running_pid(root) is None
    assert not os.path.exists(janitor.pid_file(root))
    actions = [(row["action"], row["target"]) for row in audit.entries(root)]
    assert actions == [
        ("janitor.start", f"pid {pid} ({janitor.janitor_dir(root)})"),
        ("janitor.stop", f"pid {pid}"),
    ], actions
