"""Limits are what the contract says, seen from inside the sandbox; a memory hog ends `crashed
(oom)`, said by `ls` and kept after the container is gone. Local mode and over SSH."""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

import pytest

from tests import fleet
from tests.conftest import CLI, add_host_copy
from tests.e2e.helpers import TEST_ROLE, launch, make_workspace, wait_for

LIMITS = 'limits = { memory = "64m", cpus = 0.5, pids = 128 }\n'
# cgroup v2 files first, then v1's (this machine's engine is on v1; a server is usually on v2)
PROBE = (
    "echo MEM=$(cat /sys/fs/cgroup/memory.max 2>/dev/null "
    "|| cat /sys/fs/cgroup/memory/memory.limit_in_bytes); "
    "echo CPU=$(cat /sys/fs/cgroup/cpu.max 2>/dev/null || echo "
    "$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us) $(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)); "
    "echo PIDS=$(cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max); "
    "echo NOFILE=$(ulimit -n)/$(ulimit -Hn); "
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
    # The inventory's memory and cpus; flags win over its pids, and set the open files.
    (session,) = launch(cli, inventory, ws, "--on", host, "--runtime", "shell", "--pids", "100",
                        "--nofile", "1024", "--network", "none", "--task", PROBE)  # fmt: skip
    contract = session["contract"]
    assert contract["limits"]["memory"] == "64m" and contract["limits"]["pids"] == 100
    assert contract["limits"]["nofile"] == 1024
    assert "64m" in contract["recovery"]["out_of_memory"]
    row = wait_for(cli, inventory, session["id"], on=host)
    out = cli.run("-i", str(inventory), "logs", "--raw", session["id"], check=True).stdout
    assert "MEM=67108864" in out, out
    assert "CPU=50000 100000" in out, out
    assert "PIDS=100" in out and "NOFILE=1024/1024" in out, out
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


def test_limit_flags_are_checked_and_named_in_a_refusal(
    cli: CLI, local_inventory: Path, tmp_path: Path
) -> None:
    ws = make_workspace(tmp_path / "ws")
    base = ["-i", str(local_inventory), "explain", "--role", TEST_ROLE, "--runtime", "shell"]
    for flag, value, problem in (
        ("--memory", "1k", "invalid memory '1k'"),
        ("--nofile", "10", "must be between 64 and 1048576"),
        ("--cpus", "0", "must be at least 0.01"),
    ):
        done = cli.run(*base, flag, value, str(ws))
        assert done.returncode == 2, (flag, done.stdout, done.stderr)
        assert f"{flag}: {problem}" in " ".join(done.stderr.split()), done.stderr
    # A flag the host cannot meet: launch refuses before any work, naming the flag, not a file.
    cpus = os.cpu_count() or 1
    done = cli.run("-i", str(local_inventory), "launch", "--role", TEST_ROLE, "--runtime",
                   "shell", "--task", "true", "--cpus", str(cpus + 2), str(ws))  # fmt: skip
    said = " ".join(done.stderr.split())
    assert done.returncode != 0 and f"--cpus = {cpus + 2}, but local has {cpus} CPU" in said, said
    assert f"pass --cpus {cpus} or less" in said, said
    assert not (tmp_path / "host-root").exists() or not list((tmp_path / "host-root").glob("w*"))


def test_an_open_file_limit_the_engine_cannot_give_says_so(
    cli: CLI, local_inventory: Path, tmp_path: Path
) -> None:
    """The engine's own hard limit is the ceiling (low where it runs in a container, as here):
    the sandbox gets the limit asked for, or the session fails saying which limit to lower."""
    ws = make_workspace(tmp_path / "ws")
    data = cli.json("-i", str(local_inventory), "launch", "--role", TEST_ROLE, "--runtime",
                    "shell", "--network", "none", "--nofile", "1048576", "--task",
                    "echo NOFILE=$(ulimit -Hn)", str(ws), ok_codes=(0, 3))  # fmt: skip
    (session,) = data["sessions"]
    row = wait_for(cli, local_inventory, session["id"])
    if row["state"] == "failed_setup":
        assert "cannot give the sandbox 1048576 open files" in row["error"], row
        assert "lower limits.nofile" in row["error"], row
    else:
        out = cli.run("-i", str(local_inventory), "logs", "--raw", session["id"], check=True)
        assert "NOFILE=1048576" in out.stdout, out.stdout
    cli.run("-i", str(local_inventory), "rm", "--force", session["id"], check=True)
