"""Limits are what the contract says, seen from inside the sandbox; a memory hog ends `crashed
(oom)`, said by `ls` and kept after the container is gone. Local mode and over SSH."""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

import pytest

from tests import fleet
from tests.conftest import CLI, add_host_copy
from tests.e2e.helpers import launch, make_workspace, wait_for

LIMITS = 'limits = { memory = "64m", cpus = 0.5, pids = 128 }\n'
# cgroup v2 files first, then v1's (this machine's engine is on v1; a server is usually on v2)
PROBE = (
    "echo MEM=$(cat /sys/fs/cgroup/memory.max 2>/dev/null "
    "|| cat /sys/fs/cgroup/memory/memory.limit_in_bytes); "
    "echo CPU=$(cat /sys/fs/cgroup/cpu.max 2>/dev/null || echo "
    "$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us) $(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)); "
    "echo PIDS=$(cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max); "
    # One line of 300 MB with no newline: tail holds all of it, past the 64 MB limit.
    "head -c 300m /dev/zero | tail > /dev/null; echo HOG_DONE=$?"
)


@pytest.fixture(params=["local", "fleet-1"])
def limited(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path]:
    """(host name, inventory): a host whose sessions get the LIMITS, with a root of its own."""
    if request.param == "local":
        inventory = request.getfixturevalue("local_inventory")
        (inventory / "local.toml").write_text((inventory / "local.toml").read_text() + LIMITS)
        return "local", inventory
    inventory = request.getfixturevalue("fleet_inventory")
    add_host_copy(inventory, request.param, "limited", f"/home/jackin/lim-{secrets.token_hex(4)}")
    (inventory / "limited.toml").write_text((inventory / "limited.toml").read_text() + LIMITS)
    return "limited", inventory


def test_limits_hold_inside_and_a_memory_hog_ends_crashed_oom(
    cli: CLI, limited: tuple[str, Path], tmp_path: Path
) -> None:
    host, inventory = limited
    ws = make_workspace(tmp_path / "ws")
    (session,) = launch(cli, inventory, ws, "--on", host, "--runtime", "shell",
                        "--network", "none", "--task", PROBE)  # fmt: skip
    contract = session["contract"]
    assert contract["limits"]["memory"] == "64m" and contract["limits"]["pids"] == 128
    assert "64m" in contract["recovery"]["out_of_memory"]
    row = wait_for(cli, inventory, session["id"], on=host)
    out = cli.run("-i", str(inventory), "logs", "--raw", session["id"], check=True).stdout
    assert "MEM=67108864" in out, out
    assert "CPU=50000 100000" in out, out
    assert "PIDS=128" in out, out
    # The hog was killed (137), the agent went on and exited 0: still a crash, and why.
    assert "HOG_DONE=137" in out, out
    assert (row["state"], row["reason"]) == ("crashed", "oom"), row
    listed = cli.run("-i", str(inventory), "ls", "--on", host)
    assert listed.returncode in (0, 3), listed.stderr  # 3: a session crashed
    table = listed.stdout
    flat = " ".join(table.split())
    assert "crashed (oom)" in flat, table
    assert f"{session['id']} on {host}: crashed: out of memory" in flat, table
    # The reason is the host's record, not docker's memory: it stays once the container is gone.
    container = row["container"]
    docker = [] if host == "local" else ["docker", "exec", fleet.container("fleet-1")]
    subprocess.run([*docker, "docker", "rm", "-f", container], check=True, capture_output=True)
    row = wait_for(cli, inventory, session["id"], on=host)
    assert (row["state"], row["reason"]) == ("crashed", "oom"), row
    cli.run("-i", str(inventory), "rm", "--force", session["id"], check=True)
