"""The contract tells the truth: probes from inside the sandbox check what it claims."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_host.wire import LOG_MAX_FILES, LOG_MAX_SIZE, SANDBOX_UID_BASE
from tests.conftest import CLI
from tests.e2e.helpers import TEST_ROLE, launch, make_workspace, wait_for

PROBE = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5).close()
    print("PROBE: reached")
except OSError as exc:
    print("PROBE: blocked", type(exc).__name__)
"""


def docker0_address() -> str:
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "docker0"], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    return out.split()[3].split("/")[0]


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP server on the host (this machine), reachable from the docker bridge."""
    server = socket.create_server(("0.0.0.0", 0))
    port = server.getsockname()[1]
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.5)
        while not stop.is_set():
            try:
                server.accept()[0].close()
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield port
    stop.set()
    thread.join()
    server.close()


def run_task(
    cli: CLI, inventory: Path, ws: Path, task: str, *args: str
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    (session,) = launch(cli, inventory, ws, "--runtime", "shell", "--task", task, *args)
    row = wait_for(cli, inventory, session["id"])
    out = cli.run("-i", str(inventory), "logs", "--raw", session["id"], check=True).stdout
    cli.run("-i", str(inventory), "rm", "--force", session["id"], check=True)
    return out, session["contract"], row


@pytest.mark.parametrize(("network", "expected"), [("none", "blocked"), ("open", "reached")])
def test_network_policy_is_what_the_contract_says(
    cli: CLI, local_inventory: Path, tmp_path: Path, listener: int, network: str, expected: str
) -> None:
    ws = make_workspace(tmp_path / "ws")
    (ws / "probe.py").write_text(PROBE)
    out, contract, _ = run_task(cli, local_inventory, ws,
                                f"python3 probe.py {docker0_address()} {listener}",
                                "--network", network)  # fmt: skip
    assert f"PROBE: {expected}" in out, out
    assert contract["network"]["policy"] == network


def test_the_sandbox_is_hardened_and_sees_only_its_own_mounts(
    cli: CLI, local_inventory: Path, tmp_path: Path
) -> None:
    ws = make_workspace(tmp_path / "ws")
    script = (
        "echo UID=$(id -u); grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; "
        "test -e /var/run/docker.sock && echo SOCKET=yes || echo SOCKET=no; "
        "ls /run/docker.sock 2>/dev/null && echo RUNSOCK=yes; "
        "touch /usr/jackin-probe 2>/dev/null && echo ROOTFS=writable || echo ROOTFS=readonly; "
        "touch /workspace/probe && echo WORKSPACE=writable; "
        "awk '{print \"MOUNT\", $2, $3}' /proc/mounts; "
        "cat /sys/fs/cgroup/pids.max /sys/fs/cgroup/pids/pids.max 2>/dev/null | sed 's/^/PIDS=/'; "
        # Every tmpfs the agent can write to: the contract must list each one.
        "for p in $(awk '$3==\"tmpfs\"{print $2}' /proc/mounts); do "
        'touch "$p/.jackin-w" 2>/dev/null && echo "WRITABLE_TMPFS $p"; done'
    )
    out, contract, row = run_task(cli, local_inventory, ws, script, "--network", "none")
    assert "UID=0" not in out and "UID=" in out
    uid = int(out.split("UID=")[1].split()[0])
    # The uid the agent runs as is the one the host recorded, and no host account has it.
    assert row["uid"] == uid
    if os.getuid() == 0:
        assert uid >= SANDBOX_UID_BASE
        with pytest.raises(KeyError):
            pwd.getpwuid(uid)
    writable_tmpfs = {line.split()[1] for line in out.splitlines()
                      if line.startswith("WRITABLE_TMPFS ")}  # fmt: skip
    listed_tmpfs = {m["container"] for m in contract["filesystem"]["mounts"]
                    if m["mode"] == "tmpfs"}  # fmt: skip
    assert "/dev/shm" in writable_tmpfs
    assert writable_tmpfs == listed_tmpfs
    assert "CapEff:\t0000000000000000" in out
    assert "NoNewPrivs:\t1" in out
    assert "SOCKET=no" in out and "RUNSOCK=yes" not in out
    assert "ROOTFS=readonly" in out and "WORKSPACE=writable" in out
    assert "PIDS=512" in out
    mounts = [line.split()[1:] for line in out.splitlines() if line.startswith("MOUNT ")]
    host_binds = {
        point for point, kind in mounts
        if kind not in ("proc", "tmpfs", "sysfs", "cgroup", "cgroup2", "mqueue", "devpts",
                        "overlay")
    }  # fmt: skip
    # Every bind mount the sandbox sees is one the contract lists, and the reverse.
    filesystem = contract["filesystem"]
    listed = {m["container"] for m in filesystem["mounts"] if m["mode"] in ("rw", "ro")}
    assert host_binds == listed | set(filesystem["engine_files"])
    assert "/workspace" in host_binds


def test_an_agent_that_prints_forever_cannot_fill_the_host_disk(
    cli: CLI, local_inventory: Path, tmp_path: Path
) -> None:
    """The engine rotates the sandbox's log: what the contract says, what the host keeps."""
    ws = make_workspace(tmp_path / "ws")
    printed = 3 * LOG_LIMIT_BYTES  # far more than the rotation keeps
    task = f"head -c {printed} /dev/zero | tr '\\0' x | fold -w 200"
    (session,) = launch(cli, local_inventory, ws, "--runtime", "shell", "--network", "none",
                        "--task", task)  # fmt: skip
    row = wait_for(cli, local_inventory, session["id"])
    assert row["state"] == "exited", row
    assert "rotated" in session["contract"]["limits"]["logs"]
    inspect = ["docker", "inspect", "--format", "{{.LogPath}}", row["container"]]
    log_path = subprocess.run(inspect, capture_output=True, text=True, check=True).stdout.strip()
    kept = sum(p.stat().st_size for p in Path(log_path).parent.glob(Path(log_path).name + "*"))
    cli.run("-i", str(local_inventory), "rm", "--force", session["id"], check=True)
    # json-file framing roughly doubles 200-byte lines at most; unrotated it would be > printed.
    assert kept <= LOG_LIMIT_BYTES * 1.1, (kept, printed)


LOG_LIMIT_BYTES = LOG_MAX_FILES * int(LOG_MAX_SIZE.rstrip("m")) * 1024 * 1024


def test_the_plan_names_the_paths_the_host_really_created(
    cli: CLI, local_inventory: Path, tmp_path: Path
) -> None:
    """A role of its own, so that every `if missing` effect happens in this run too."""
    ws = make_workspace(tmp_path / "ws")
    role, name = tmp_path / "role", f"plan-{secrets.token_hex(3)}"
    shutil.copytree(TEST_ROLE, role)
    manifest = role / "jackin.role.toml"
    manifest.write_text(manifest.read_text().replace('name = "test-agent"', f'name = "{name}"'))
    data = cli.json("-i", str(local_inventory), "launch", "--role", str(role), "--runtime",
                    "shell", "--network", "none", "--task", "true", str(ws))  # fmt: skip
    (session,) = data["sessions"]
    wait_for(cli, local_inventory, session["id"])
    images = subprocess.run(["docker", "images", "-q", "--filter", f"label=jackin.role={name}"],
                            capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    subprocess.run(["docker", "rmi", "-f", *set(images)], capture_output=True)
    root = str(tmp_path / "host-root")
    paths = [effect["target"] for effect in session["contract"]["plan"]
             if effect["target"].startswith(root)]  # fmt: skip
    # agent, mirror, role, state db, checkout, and the snapshot taken before the agent starts
    assert len(paths) == 6, session["contract"]["plan"]
    for path in paths:
        assert Path(path).exists(), f"the plan names {path}, which the host never made"
    cli.run("-i", str(local_inventory), "rm", "--force", session["id"], check=True)
