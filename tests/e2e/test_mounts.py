"""Operator mounts: a host directory the inventory allows (read-only), a laptop directory synced
to the host for the session (ro or rw), a tmpfs of a size, a volume of the session's own; each in
the contract, each probed from inside. What is never mounted is refused whatever the inventory
says, and a credential store needs its name. Synced directories locally and over SSH."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agent_host import layout
from tests import fleet
from tests.conftest import CLI, add_host_copy
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
        (["--mount", "./data:/d"], "./data is not a directory on this laptop"),
        (["--mount", f"{cache}:/c:rx"], "expected LAPTOP_DIR:TARGET[:ro|rw]"),
        (["--mount", f"{tmp_path}:/t"], "is or holds your home directory"),
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


# -- laptop directories, synced -----------------------------------------------------------------
CANARY = "laptop-only-canary-7f3e"
SYNCED_PROBE = (
    "cat /data/hello.txt /data/sub/private.txt; "
    "cat /data/abs-link /data/rel-link /data/dir-link/secret.txt 2>&1; "
    "ls /data/dir-link/ 2>&1; "
    "touch /data/x 2>/dev/null && echo RO=writable || echo RO=readonly; "
    "echo agent-wrote-this > /out/hello.txt && echo RW=written; "
    "echo done"
)


@pytest.fixture(params=["local", "fleet-1"])
def synced_host(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path, str]:
    """(host name, inventory, host root): a host with a root of its own for this test."""
    if request.param == "local":
        inventory = request.getfixturevalue("local_inventory")
        return "local", inventory, str(tmp_path / "host-root")
    inventory = request.getfixturevalue("fleet_inventory")
    root = f"/home/jackin/synced-{secrets.token_hex(4)}"
    add_host_copy(inventory, request.param, "synced", root)
    return "synced", inventory, root


def _on_host(host: str, script: str) -> subprocess.CompletedProcess[str]:
    """A shell script on the host itself (as root there): this machine, or the fleet host."""
    argv = ["sh", "-c", script]
    if host != "local":
        argv = ["docker", "exec", fleet.container("fleet-1"), *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def _laptop_dir(tmp_path: Path) -> tuple[Path, Path]:
    """A laptop directory to sync, with links pointing out of it at a canary that must never
    reach the host or the sandbox."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(CANARY + "\n")
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "hello.txt").write_text("hello from the laptop\n")
    (data / "sub" / "private.txt").write_text("mode 0600\n")
    (data / "sub" / "private.txt").chmod(0o600)
    (data / "abs-link").symlink_to(outside / "secret.txt")
    (data / "rel-link").symlink_to("../outside/secret.txt")
    (data / "dir-link").symlink_to(outside)
    return data, outside


def test_a_laptop_directory_is_synced_ro_or_rw_and_removed_by_rm(
    cli: CLI, synced_host: tuple[str, Path, str], tmp_path: Path
) -> None:
    host, inventory, root = synced_host
    data, _ = _laptop_dir(tmp_path)
    ws = make_workspace(tmp_path / "ws")
    done = _launch(cli, inventory, ws, "--on", host, "--mount", f"{data}:/data",
                   "--mount", f"{data}:/out:rw", "--task", SYNCED_PROBE)  # fmt: skip
    assert done.returncode == 0, (done.stdout, done.stderr)
    (session,) = json.loads(done.stdout)["sessions"]
    sid = session["id"]
    contract = session["contract"]
    mounts = {m["container"]: m for m in contract["filesystem"]["mounts"]}
    ro_copy, rw_copy = layout.synced_dir(root, sid, 0), layout.synced_dir(root, sid, 1)
    assert (mounts["/data"]["laptop"], mounts["/data"]["host"], mounts["/data"]["mode"]) == (
        str(data), ro_copy, "ro")  # fmt: skip
    assert (mounts["/out"]["host"], mounts["/out"]["mode"]) == (rw_copy, "rw")
    assert "never travels back to the laptop" in mounts["/out"]["note"]
    assert [e["target"] for e in contract["plan"] if e["action"].startswith("sync laptop")] == [
        ro_copy, rw_copy]  # fmt: skip

    row = wait_for(cli, inventory, sid, on=host)
    out = cli.run("-i", str(inventory), "logs", "--raw", sid, check=True).stdout
    assert row["state"] == "exited", out
    assert "hello from the laptop" in out and "done" in out, out
    assert "mode 0600" in out, out  # the copy is the agent's to read, whoever it runs as
    # ro cannot be written from inside; rw can.
    assert "RO=readonly" in out and "RW=written" in out, out
    # The links travelled as links: inside, they point into the sandbox, never at the laptop.
    assert CANARY not in out, out
    # The laptop's directory is as it was: rw writes stay on the host.
    assert (data / "hello.txt").read_text() == "hello from the laptop\n"
    assert not (data / "x").exists()
    assert sorted(p.name for p in data.iterdir()) == [
        "abs-link", "dir-link", "hello.txt", "rel-link", "sub"]  # fmt: skip
    seen = _on_host(host, f"cat {rw_copy}/hello.txt {ro_copy}/hello.txt {ro_copy}/sub/private.txt; "
                    f"readlink {ro_copy}/abs-link; grep -r {CANARY} {root}/sessions; "
                    f"test -e {ro_copy}/x && echo RO_COPY_CHANGED")  # fmt: skip
    assert seen.stdout.splitlines() == [
        "agent-wrote-this", "hello from the laptop", "mode 0600", str(tmp_path / "outside" /
        "secret.txt")]  # fmt: skip
    cli.run("-i", str(inventory), "rm", "--force", sid, check=True)
    gone = _on_host(host, f"test -e {layout.session_dir(root, sid)} && echo STILL_THERE; "
                    f"ls {root}/sessions")  # fmt: skip
    assert "STILL_THERE" not in gone.stdout and gone.stdout.split() == [], gone


def test_a_sensitive_laptop_directory_is_refused_before_the_host_is_touched(
    cli: CLI, synced_host: tuple[str, Path, str], tmp_path: Path
) -> None:
    host, inventory, root = synced_host
    project = tmp_path / "project"
    (project / "deploy" / ".aws").mkdir(parents=True)
    (project / "deploy" / ".aws" / "credentials").write_text(CANARY + "\n")
    ws = make_workspace(tmp_path / "ws")
    for command in ("launch", "explain"):
        done = cli.run("-i", str(inventory), command, "--on", host, "--role", TEST_ROLE,
                       "--runtime", "shell", "--mount", f"{project}:/p", str(ws))  # fmt: skip
        flat = " ".join(done.stderr.split())
        assert done.returncode == 2, (done.stdout, done.stderr)
        assert "is or holds .aws (credentials)" in flat and "--ack-sensitive .aws" in flat, flat
    # Nothing was made on the host: not even its root.
    assert _on_host(host, f"test -e {root} || echo ABSENT").stdout.strip() == "ABSENT"
    # Acknowledged by name, explain shows it (and still makes nothing).
    data = cli.json("-i", str(inventory), "explain", "--on", host, "--role", TEST_ROLE,
                    "--runtime", "shell", "--mount", f"{project}:/p", "--ack-sensitive",
                    ".aws", str(ws))  # fmt: skip
    (contract,) = data["contracts"]
    (mount,) = [m for m in contract["filesystem"]["mounts"] if m["container"] == "/p"]
    assert (mount["laptop"], mount["mode"]) == (str(project), "ro")
    assert mount["host"] == layout.synced_dir(root, contract["identity"]["session"], 0)
    assert "1 file, 24 bytes" in mount["note"], mount
    assert any(e["action"].startswith(f"sync laptop directory {project} (1 file")
               for e in contract["plan"])  # fmt: skip
    assert contract["spec"]["acknowledged"] == [".aws"]
    assert _on_host(host, f"test -e {root} || echo ABSENT").stdout.strip() == "ABSENT"
    assert os.path.exists(project / "deploy" / ".aws" / "credentials")
