"""du, gc and the disk budget and floor through the real CLI, locally and over SSH (fleet-1).

- du: a session that wrote 3 MiB into its checkout, 2 MiB into a volume and a line of output
  shows those, measured (a root host walks the engine's files; fleet-1's agent is not root:
  logs are counted as output, the volume by `du` in a one-shot container).
- gc: a container, network and volume of a session the host has no record of, its directory,
  a stale proxy pid file, a leftover egress proxy process and a secrets directory, all made by
  hand, are listed by the dry run (which changes nothing) and removed by --apply (each removal
  audited); a checkout holding a commit no mirror has is kept and reported as recoverable; an
  object of another live host root on the same engine is never listed. A launch killed between
  the synced-mount copy and session.create leaves sessions/<id>/mounts/: gc keeps it while it
  is recent (a launch in progress), then finds and removes it.
- budget: over disk_budget warns in hosts check and explain. floor: launch refuses before
  anything is made on the host, naming host, numbers and --ignore-disk-floor; the flag lets it
  through; explain warns.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent_host import testhooks
from agent_host.wire import CROCKFORD
from tests import fleet as fleet_mod
from tests.conftest import CLI, add_host_copy
from tests.e2e.helpers import TEST_ROLE, launch, make_workspace, wait_for

MIB = 1024 * 1024
BASE_IMAGE = "jackin-test-base:latest"


@dataclass(frozen=True)
class DiskHost:
    name: str  # in the inventory
    inventory: Path
    machine: str  # local | fleet-1
    root: str
    file: Path  # the inventory file declaring it

    def sh(self, script: str, *, check: bool = True, user: str | None = None) -> str:
        """Run `script` on the machine (as root, or as `user` on a fleet host)."""
        prefix: list[str] = []
        if self.machine != "local":
            prefix = [
                "docker",
                "exec",
                *(["-u", user] if user else []),
                fleet_mod.container(self.machine),
            ]
        done = subprocess.run(
            [*prefix, "sh", "-c", script], capture_output=True, text=True, check=False
        )
        if check and done.returncode != 0:
            raise AssertionError(f"{script!r} failed: {done.stderr}")
        return done.stdout

    def exists(self, path: str) -> bool:
        return self.sh(f"test -e {shlex.quote(path)} && echo yes", check=False).strip() == "yes"

    def docker_has(self, kind: str, name: str) -> bool:
        return (
            self.sh(
                f"docker {kind} inspect {shlex.quote(name)} >/dev/null 2>&1 && echo yes",
                check=False,
            ).strip()
            == "yes"
        )

    def add(self, text: str) -> None:
        self.file.write_text(self.file.read_text() + text)


@pytest.fixture(params=["local", "fleet-1"])
def disk_host(request: pytest.FixtureRequest, tmp_path: Path, local_inventory: Path) -> DiskHost:
    """A fresh host root, on this machine or on fleet-1 (under an inventory name of its own)."""
    if request.param == "local":
        return DiskHost(
            "local",
            local_inventory,
            "local",
            str(tmp_path / "host-root"),
            local_inventory / "local.toml",
        )
    inventory = request.getfixturevalue("fleet_inventory")
    root = f"/home/jackin/disk-{secrets.token_hex(4)}"
    add_host_copy(inventory, request.param, "dk", root)
    return DiskHost("dk", inventory, request.param, root, inventory / "dk.toml")


def new_id() -> str:
    return "".join(secrets.choice(CROCKFORD) for _ in range(8))


def host_answer(data: dict[str, Any], name: str) -> dict[str, Any]:
    (host,) = data["hosts"]
    assert host["name"] == name and host["error"] is None, host
    return host


# -- du --------------------------------------------------------------------------------------------
def test_du_counts_a_sessions_checkout_logs_and_volume(
    cli: CLI, disk_host: DiskHost, tmp_path: Path
) -> None:
    host = disk_host
    ws = make_workspace(tmp_path / "ws")
    task = (
        "head -c 3145728 /dev/urandom > big.bin && head -c 2097152 /dev/urandom > /data/v.bin"
        " && echo du-probe-output"
    )
    (session,) = launch(
        cli,
        host.inventory,
        ws,
        "--on",
        host.name,
        "--runtime",
        "shell",
        "--network",
        "none",
        "--volume",
        "/data",
        "--task",
        task,
    )
    sid = session["id"]
    assert wait_for(cli, host.inventory, sid, on=host.name)["state"] == "exited"

    answer = host_answer(cli.json("-i", str(host.inventory), "du", "--on", host.name), host.name)
    (entry,) = [e for e in answer["sessions"] if e["id"] == sid]
    assert entry["state"] == "exited"
    assert 3 * MIB <= entry["checkout"]["bytes"] < 3 * MIB + 512 * 1024, entry["checkout"]
    (volume,) = entry["volumes"]
    assert volume["name"] == f"jk-{sid}-v0" and volume["error"] is None
    assert 2 * MIB <= volume["bytes"] < 2 * MIB + 256 * 1024, volume
    assert volume["basis"] == ("walk" if host.machine == "local" else "du")
    (sandbox,) = [c for c in entry["containers"] if c["part"] == "sandbox"]
    logs = sandbox["logs"]
    assert logs["bytes"] >= len("du-probe-output\n"), logs
    assert logs["basis"] == ("file" if host.machine == "local" else "output")
    assert isinstance(sandbox["writable"], int) and sandbox["writable"] < MIB  # read-only root
    image = entry["image"]
    assert image["split"] >= 1 and image["size"] > 10 * MIB and image["share"] <= image["size"]
    assert answer["totals"]["root"]["bytes"] >= entry["checkout"]["bytes"]
    assert answer["totals"]["checkouts"]["bytes"] >= entry["checkout"]["bytes"]
    assert not answer["walk"]["truncated"] and answer["engine_error"] is None

    shown = cli.run("-i", str(host.inventory), "du", "--on", host.name, "--wide", check=True)
    assert sid in shown.stdout and f"root {host.root}" in shown.stdout
    cli.run("-i", str(host.inventory), "rm", "--force", sid, check=True)


# -- gc --------------------------------------------------------------------------------------------
def labels(session: str, root_id: str, root: str) -> str:
    return " ".join(
        f"--label {shlex.quote(label)}"
        for label in (
            f"jackin.session={session}",
            "jackin.managed=true",
            f"jackin.root={root_id}",
            f"jackin.root-path={root}",
        )
    )


def backdate(host: DiskHost, *paths: str) -> None:
    """Make files look written two hours ago (not a launch in progress) by setting times."""
    quoted = " ".join(shlex.quote(p) for p in paths)
    host.sh(f"find {quoted} -exec touch -h -d '2 hours ago' {{}} +")


@pytest.fixture
def fake_proxy(disk_host: DiskHost) -> Iterator[tuple[str, int]]:
    """A process that looks like this root's egress proxy of an unknown session (its mark and
    --root in argv): (session, pid). Killed at the end whatever happened."""
    session = new_id()
    argv = [
        "python3",
        "-c",
        "import time; time.sleep(900)",
        "jackin-egress-proxy",
        "--root",
        disk_host.root,
        "--session",
        session,
    ]
    proc = None
    if disk_host.machine == "local":
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        pid = proc.pid
    else:
        script = f"{shlex.join(argv)} >/dev/null 2>&1 & echo $!"
        pid = int(disk_host.sh(script, user="jackin").strip())
    try:
        yield session, pid
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        else:
            disk_host.sh(f"kill -9 {pid} 2>/dev/null || true", user="jackin")


def proxy_running(host: DiskHost, pid: int, session: str) -> bool:
    cmdline = host.sh(f"tr '\\0' ' ' < /proc/{pid}/cmdline", check=False)
    return "jackin-egress-proxy" in cmdline and session in cmdline


def test_gc_lists_removes_and_keeps_unpulled_work(
    cli: CLI, disk_host: DiskHost, fake_proxy: tuple[str, int], tmp_path: Path
) -> None:
    host = disk_host
    inv = str(host.inventory)
    cli.json("-i", inv, "ls", "--on", host.name)  # the agent is there, the root has its id
    root_id = host.sh(f"cat {shlex.quote(host.root)}/root-id").strip()
    orphan, unpulled, secret_of = new_id(), new_id(), new_id()
    proxy_session, proxy_pid = fake_proxy
    other, other_root, other_id = new_id(), f"{host.root}-other", secrets.token_hex(16)
    container, network, volume = f"jk-{orphan}-gc", f"jk-{orphan}-egress", f"jk-{orphan}-v0"
    other_volume = f"jk-{other}-v0"
    sessions_dir = f"{host.root}/sessions"
    shm = f"/dev/shm/jackin-secrets-{secret_of}"
    as_agent = None if host.machine == "local" else "jackin"
    try:
        host.sh(
            f"docker create --name {container} {labels(orphan, root_id, host.root)} "
            f"{BASE_IMAGE} true >/dev/null && docker network create --internal "
            f"{labels(orphan, root_id, host.root)} {network} >/dev/null && docker volume "
            f"create {labels(orphan, root_id, host.root)} {volume} >/dev/null"
        )
        # Another root on this engine, alive (its directory holds its id): never touched.
        host.sh(
            f"mkdir -p {other_root} && echo {other_id} > {other_root}/root-id && docker "
            f"volume create {labels(other, other_id, other_root)} {other_volume} >/dev/null",
            user=as_agent,
        )
        host.sh(
            f"set -e; mkdir -p {sessions_dir}/{orphan}/mounts/0 {sessions_dir}/{unpulled}/work; "
            f"echo copy > {sessions_dir}/{orphan}/mounts/0/f; cd {sessions_dir}/{unpulled}/work; "
            "git init -q; echo agent > agent.txt; git add .; git -c user.name=a -c "
            "user.email=a@a commit -qm 'agent work'; echo 1 > ../egress.pid; "
            f"mkdir -p {shm}; echo value > {shm}/TOKEN",
            user=as_agent,
        )
        commit = host.sh(
            f"git -C {sessions_dir}/{unpulled}/work rev-parse HEAD", user=as_agent
        ).strip()
        backdate(host, f"{sessions_dir}/{orphan}", f"{sessions_dir}/{unpulled}", shm)
        assert proxy_running(host, proxy_pid, proxy_session)

        dry = host_answer(cli.json("-i", inv, "gc", "--on", host.name), host.name)
        items = {(i["kind"], i["name"]): i for i in dry["items"]}
        expected = {
            ("container", container): f"no record of session {orphan}",
            ("network", network): f"no record of session {orphan}",
            ("volume", volume): f"no record of session {orphan}",
            ("directory", f"{sessions_dir}/{orphan}"): f"no record of session {orphan}",
            ("file", f"{sessions_dir}/{unpulled}/egress.pid"): "egress proxy that is not running",
            ("process", f"egress proxy pid {proxy_pid}"): f"no record of session {proxy_session}",
            ("secrets", shm): f"no record of session {secret_of}",
        }
        for key, reason in expected.items():
            assert key in items, (key, sorted(items))
            assert reason in items[key]["reason"] and items[key]["action"] == "remove", items[key]
        kept = items[("directory", f"{sessions_dir}/{unpulled}")]
        assert kept["action"] == "keep" and "never pulled" in kept["kept_because"]
        assert kept["recover"] == {
            "path": f"{sessions_dir}/{unpulled}/work",
            "commit": commit,
            "clone": True,
        }
        assert not [i for i in dry["items"] if i["session"] == other]
        assert items[("container", container)]["what"] == "sandbox"
        # A dry run changes nothing.
        assert host.docker_has("container", container) and host.docker_has("volume", volume)
        assert host.exists(f"{sessions_dir}/{orphan}") and host.exists(shm)
        assert proxy_running(host, proxy_pid, proxy_session)
        shown = cli.run("-i", inv, "gc", "--on", host.name, check=True).stdout
        assert "would be removed: run with --apply" in shown and "recoverable" in shown, shown
        assert commit[:12] in shown

        done = host_answer(cli.json("-i", inv, "gc", "--on", host.name, "--apply"), host.name)
        results = {(i["kind"], i["name"]): i for i in done["items"]}
        for key in expected:
            assert results[key]["removed"] is True, results[key]
        assert not host.docker_has("container", container)
        assert not host.docker_has("network", network)
        assert not host.docker_has("volume", volume)
        assert not host.exists(f"{sessions_dir}/{orphan}") and not host.exists(shm)
        assert not host.exists(f"{sessions_dir}/{unpulled}/egress.pid")
        assert not proxy_running(host, proxy_pid, proxy_session)
        assert results[("directory", f"{sessions_dir}/{unpulled}")]["action"] == "keep"
        assert host.exists(f"{sessions_dir}/{unpulled}/work/agent.txt")  # never removed
        assert host.docker_has("volume", other_volume)
        audited = cli.json("-i", inv, "audit", orphan, "--on", host.name)["entries"]
        assert {"container.remove", "network.remove", "volume.remove", "directory.remove"} <= {
            e["action"] for e in audited if "gc:" in e["target"]
        }
    finally:
        host.sh(
            f"docker rm -f {container}; docker network rm {network}; docker volume rm -f "
            f"{volume} {other_volume}; rm -rf {shm} {other_root}",
            check=False,
        )


def test_gc_finds_what_a_launch_killed_before_create_left(
    cli: CLI, tmp_path: Path, local_inventory: Path
) -> None:
    """Killed between the synced-mount copy and session.create: sessions/<id>/mounts/ with no
    record. Kept while it may be a launch in progress, then found and removed."""
    root = tmp_path / "host-root"
    ws = make_workspace(tmp_path / "ws")
    data = tmp_path / "data"
    data.mkdir()
    (data / "input.txt").write_text("laptop data\n")
    step = "create-send"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jackin_remote",
            "-i",
            str(local_inventory),
            "launch",
            "--role",
            TEST_ROLE,
            "--runtime",
            "shell",
            "--network",
            "none",
            "--mount",
            f"{data}:/in",
            "--task",
            "cat /in/input.txt",
            str(ws),
        ],
        env={**cli.env, testhooks.ENV: step},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        for text_line in proc.stderr:
            if text_line.strip() == testhooks.MARKER + step:
                break
        else:
            raise AssertionError("the launch never paused before session.create")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    match = re.search(r"session contract (\w{8})", proc.stdout.read())
    assert match
    sid = match.group(1)
    leftover = root / "sessions" / sid
    assert (leftover / "mounts" / "0" / "input.txt").is_file()
    assert sid not in {r["id"] for r in cli.json("-i", str(local_inventory), "ls")["sessions"]}

    def item() -> dict[str, Any]:
        data = cli.json("-i", str(local_inventory), "gc")
        (found,) = [i for i in data["hosts"][0]["items"] if i["name"] == str(leftover)]
        return found

    recent = item()
    assert recent["action"] == "keep" and "launch in progress" in recent["kept_because"]
    for path in [leftover, *leftover.rglob("*")]:
        os.utime(path, (0, 0), follow_symlinks=False)  # written long ago: no launch owns it
    old = item()
    assert old["action"] == "remove" and f"no record of session {sid}" in old["reason"]
    cli.json("-i", str(local_inventory), "gc", "--apply")
    assert not leftover.exists()


# -- budget and floor ------------------------------------------------------------------------------
def test_budget_warns_and_floor_refuses_before_any_work(
    cli: CLI, disk_host: DiskHost, tmp_path: Path
) -> None:
    host = disk_host
    inv = str(host.inventory)
    ws = make_workspace(tmp_path / "ws")
    host.add('disk_budget = "1k"\n')
    check = cli.json("-i", inv, "hosts", "check", "--on", host.name)  # starts the agent: > 1k
    (entry,) = check["hosts"]
    line = next(
        n
        for n, text in enumerate(host.file.read_text().splitlines(), 1)
        if text.startswith("disk_budget")
    )
    where = f"{host.file}:{line} hosts.{host.name}.disk_budget"
    assert any(
        "over its disk_budget of 1.0 KiB" in p["message"]
        and where in p["message"]
        and p["severity"] == "warn"
        for p in entry["problems"]
    ), entry["problems"]
    opts = [
        "--on",
        host.name,
        "--role",
        TEST_ROLE,
        "--runtime",
        "shell",
        "--network",
        "none",
        "--task",
        "true",
    ]
    (contract,) = cli.json("-i", inv, "explain", *opts, str(ws))["contracts"]
    assert any("over its disk_budget" in w for w in contract["warnings"]), contract["warnings"]

    # A floor above the free space, on a root not made yet: launch refuses and makes nothing.
    fresh = f"{host.root}-floor"
    text = host.file.read_text().replace('disk_budget = "1k"\n', 'disk_floor = "100000g"\n')
    host.file.write_text(text.replace(f'root = "{host.root}"', f'root = "{fresh}"'))
    refused = cli.run("-i", inv, "launch", *opts, str(ws))
    assert refused.returncode != 0
    message = refused.stderr
    assert "cannot launch, nothing was started" in message
    assert f"{host.name} has " in message and "below its disk_floor of 97.7 TiB" in message
    assert "--ignore-disk-floor" in message
    assert not host.exists(fresh), "nothing was made on the host"
    (contract,) = cli.json("-i", inv, "explain", *opts, str(ws))["contracts"]
    assert any("below its disk_floor" in w for w in contract["warnings"]), contract["warnings"]

    (session,) = launch(
        cli,
        host.inventory,
        ws,
        "--on",
        host.name,
        "--runtime",
        "shell",
        "--network",
        "none",
        "--task",
        "true",
        "--ignore-disk-floor",
    )
    assert any("(ignored: --ignore-disk-floor)" in w for w in session["contract"]["warnings"])
    wait_for(cli, host.inventory, session["id"], on=host.name)
    cli.run("-i", inv, "rm", "--force", session["id"], check=True)
