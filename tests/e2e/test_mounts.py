"""Operator mounts: a host directory the inventory allows (read-only), a tmpfs of a size, a
volume of the session's own; each in the contract, each probed from inside. What is never
mounted is refused whatever the inventory says, and a credential store needs its name."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.conftest import CLI
from tests.e2e.helpers import TEST_ROLE, make_workspace, wait_for

PROBE = (
    "cat /cache/hello.txt; "
    "touch /cache/x 2>/dev/null && echo CACHE=writable || echo CACHE=readonly; "
    "echo SCRATCH=$(df -k /scratch | awk 'NR==2 {print $2}'); "
    "echo hi > /data/f && echo DATA=writable; "
    "echo OWNER=$(stat -c %u /data) ME=$(id -u)"
)


def _inventory(local_inventory: Path, *allowed: Path | str) -> Path:
    listed = ", ".join(f'"{path}"' for path in allowed)
    hosts = local_inventory / "local.toml"
    hosts.write_text(hosts.read_text() + f"host_mounts = [{listed}]\n")
    return local_inventory


def _launch(cli: CLI, inventory: Path, ws: Path, *args: str) -> Any:
    return cli.run("-i", str(inventory), "launch", "--role", TEST_ROLE, "--runtime", "shell",
                   "--network", "none", "--json", *args, str(ws))  # fmt: skip


def test_mounts_are_what_the_contract_says(cli: CLI, local_inventory: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "hello.txt").write_text("from the host cache\n")
    inventory = _inventory(local_inventory, cache)
    ws = make_workspace(tmp_path / "ws")
    done = _launch(cli, inventory, ws, "--mount", f"host:{cache}:/cache", "--tmpfs",
                   "/scratch:64m", "--volume", "/data", "--task", PROBE)  # fmt: skip
    assert done.returncode == 0, done.stderr
    (session,) = json.loads(done.stdout)["sessions"]
    mounts = {m["container"]: m for m in session["contract"]["filesystem"]["mounts"]}
    assert (mounts["/cache"]["host"], mounts["/cache"]["mode"]) == (str(cache), "ro")
    assert mounts["/scratch"]["mode"] == "tmpfs" and "size=64m" in mounts["/scratch"]["note"]
    assert mounts["/data"]["host"] == f"engine volume jk-{session['id']}-v2"
    row = wait_for(cli, inventory, session["id"])
    out = cli.run("-i", str(inventory), "logs", "--raw", session["id"], check=True).stdout
    assert row["state"] == "exited", out
    assert "from the host cache" in out and "CACHE=readonly" in out
    assert "SCRATCH=65536" in out and "DATA=writable" in out
    assert f"OWNER={row['uid']} ME={row['uid']}" in out
    assert not (cache / "x").exists()
    volume = f"jk-{session['id']}-v2"
    assert (
        subprocess.run(["docker", "volume", "inspect", volume], capture_output=True).returncode == 0
    )
    cli.run("-i", str(inventory), "rm", "--force", session["id"], check=True)
    assert (
        subprocess.run(["docker", "volume", "inspect", volume], capture_output=True).returncode != 0
    )


def test_what_is_never_mounted_is_refused_whatever_the_inventory_allows(
    cli: CLI, local_inventory: Path, tmp_path: Path
) -> None:
    outer = tmp_path / "homes"
    home = outer / "alice"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("not a real key\n")
    inventory = _inventory(local_inventory, "/run", home, tmp_path / "host-root", outer)
    ws = make_workspace(tmp_path / "ws")

    # The engine's socket: the inventory lists /run, the host refuses it all the same.
    asked = _launch(cli, inventory, ws, "--mount", "host:/run:/sock", "--task", "true")
    (session,) = json.loads(asked.stdout)["sessions"]
    assert asked.returncode != 0 and "never mounted" in str(session["error"]), asked.stdout
    # jackin's own root (its database, every checkout) is never mounted either.
    root = tmp_path / "host-root"
    asked = _launch(cli, inventory, ws, "--mount", f"host:{root}:/r", "--task", "true")
    assert "never mounted" in str(json.loads(asked.stdout)["sessions"][0]["error"])

    # A directory holding a home that holds .ssh: refused, one level down as well.
    asked = _launch(cli, inventory, ws, "--mount", f"host:{outer}:/t", "--task", "true")
    assert "holds .ssh" in str(json.loads(asked.stdout)["sessions"][0]["error"]), asked.stdout
    # A directory holding .ssh: refused until acknowledged by that name.
    asked = _launch(cli, inventory, ws, "--mount", f"host:{home}:/h", "--task", "true")
    refusal = str(json.loads(asked.stdout)["sessions"][0]["error"])
    assert "holds .ssh: acknowledge it" in refusal, refusal
    allowed = _launch(cli, inventory, ws, "--mount", f"host:{home}:/h", "--ack-sensitive",
                      ".ssh", "--task", "ls /h/.ssh")  # fmt: skip
    assert allowed.returncode == 0, allowed.stdout
    sid = json.loads(allowed.stdout)["sessions"][0]["id"]
    wait_for(cli, inventory, sid)
    assert "id_ed25519" in cli.run("-i", str(inventory), "logs", "--raw", sid).stdout
    cli.run("-i", str(inventory), "rm", "--force", sid, check=True)


def test_bad_mounts_are_refused_before_any_work(
    cli: CLI, local_inventory: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    inventory = _inventory(local_inventory, cache)
    ws = make_workspace(tmp_path / "ws")
    base = ["-i", str(inventory), "explain", "--role", TEST_ROLE, "--runtime", "shell"]
    for args, said in (
        (["--mount", "host:/srv/other:/o"], "local does not allow it: list it in host_mounts"),
        (["--mount", f"host:{cache}:/c:rw"], "host directories are mounted read-only"),
        (["--mount", "./data:/d"], "only host directories can be mounted"),
        (["--mount", f"host:{cache}:/workspace/x"], "is the sandbox's own"),
        (["--mount", f"host:{cache}/../etc:/e"], "must be a normal path"),
        (["--mount", f"host:{cache}/.aws:/a"], "is sensitive (.aws): acknowledge it by name"),
        (["--tmpfs", "/scratch"], "expected TARGET:SIZE"),
        (["--tmpfs", "/s:1k"], "mounts.size"),
        (["--volume", "/proc/x"], "is the sandbox's own"),
        (["--volume", "/a", "--volume", "/a/b"], "overlaps another mount"),
        (["--ack-sensitive", ".bashrc", "--volume", "/a"], "not a sensitive name"),
    ):
        done = cli.run(*base, *args, str(ws))
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert said in " ".join(done.stderr.split()), (args, done.stderr)
