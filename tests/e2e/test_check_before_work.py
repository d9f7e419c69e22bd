"""Check before work: a limit the host cannot meet is named (inventory file:line and key) by
`hosts check` and `explain`, and refused by `launch` before anything is synced, built or created;
a session that failed at setup keeps its reason visible in `ls` and `logs`.

Seen before: `hosts check` said ready and `explain` showed `cpus 4.0` on a 2-CPU host; `launch`
built the image, then failed with the engine's raw "Range of CPUs is from 0.01 to 2.00"; `ls`
said only `failed_setup` and `logs` "the container ... is gone".
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

from tests import fleet as fleet_mod
from tests.conftest import CLI, add_host_copy
from tests.e2e.helpers import REPO, make_workspace, wait_for

# The image is fine to build and its user is found, but /home is a file: the engine cannot make
# the agent's home tmpfs (/home/agent), so the host's session.create fails after `starting` was
# recorded, and the session ends failed_setup with no container.
BROKEN_HOME_STEP = "\nUSER root\nRUN rm -rf /home && touch /home\nWORKDIR /\nUSER agent\n"


def _on_host(host: str, *argv: str) -> str:
    prefix = [] if host == "local" else ["docker", "exec", fleet_mod.container(host)]
    done = subprocess.run([*prefix, *argv], capture_output=True, text=True, check=True)
    return done.stdout


def _root_listing(host: str, root: str) -> str:
    """Every path under the host root. (Launch asks a deployed agent for its sessions before it
    places any, and sqlite's WAL files come and go in the root then: paths, not mtimes.)"""
    return _on_host(host, "sh", "-c", f"find {root} 2>&1 | grep -v '/state.db-' | sort")


def _has_image(host: str, tag: str) -> bool:
    return bool(_on_host(host, "docker", "images", "-q", tag).strip())


def _role_copy(tmp_path: Path, name: str, extra_step: str = "") -> Path:
    """The test role under a name of this test's own: its image is one no other test builds."""
    role = tmp_path / name
    shutil.copytree(REPO / "roles" / "test-agent", role)
    manifest = role / "jackin.role.toml"
    manifest.write_text(manifest.read_text().replace('name = "test-agent"', f'name = "{name}"'))
    if extra_step:
        (role / "Dockerfile").write_text((role / "Dockerfile").read_text() + extra_step)
    return role


def _remove_role_images(host: str, name: str) -> None:
    prefix = [] if host == "local" else ["docker", "exec", fleet_mod.container(host)]
    listing = [*prefix, "docker", "images", "-q", "--filter", f"label=jackin.role={name}"]
    ids = subprocess.run(listing, capture_output=True, text=True).stdout.split()
    for image in set(ids):
        subprocess.run([*prefix, "docker", "rmi", "-f", image], capture_output=True)


@pytest.fixture(params=["local", "fleet-1"])
def host_inventory(
    request: pytest.FixtureRequest, tmp_path: Path, local_inventory: Path
) -> tuple[str, Path, str]:
    """(host name, inventory dir, host root): a host with a root of this test's own."""
    if request.param == "local":
        return "local", local_inventory, str(tmp_path / "host-root")
    inventory = request.getfixturevalue("fleet_inventory")
    name, root = "tight", f"/home/jackin/fit-{secrets.token_hex(4)}"
    add_host_copy(inventory, request.param, name, root)
    return name, inventory, root


def test_a_limit_the_host_cannot_meet_is_named_and_refused_before_any_work(
    cli: CLI, host_inventory: tuple[str, Path, str], tmp_path: Path
) -> None:
    name, inventory, root = host_inventory
    machine = "local" if name == "local" else "fleet-1"
    cpus = int(_on_host(machine, "nproc"))
    # The inventory asks for more CPUs than the host has, in [defaults] (as docs/two-servers.md
    # once did), from a file of its own: the message must name that file and line.
    defaults = inventory / "defaults.toml"
    limits = f'limits = {{ memory = "1g", cpus = {cpus + 2}, pids = 256 }}\n'
    defaults.write_text("# limits for every host of this file\n[defaults]\ncapacity = 4\n" + limits)
    # [defaults] apply to the hosts of their own file: move the host table there.
    own = inventory / ("local.toml" if name == "local" else f"{name}.toml")
    defaults.write_text(defaults.read_text() + "\n" + own.read_text())
    own.unlink()
    expected = (f"{defaults}:4 defaults.limits.cpus = {cpus + 2}, "
                f"but {name} has {cpus} CPU{'s' if cpus != 1 else ''}")  # fmt: skip

    ws = make_workspace(tmp_path / "ws")
    role = _role_copy(tmp_path, f"fit-{secrets.token_hex(3)}")
    args = ["-i", str(inventory), "--role", str(role), "--runtime", "demo", "--network", "none",
            "--task", "write hello.txt", "--on", name, str(ws)]  # fmt: skip
    try:
        # explain: a warning in the contract, and still nothing made on the host.
        explained = cli.json(args[0], args[1], "explain", *args[2:])
        (contract,) = explained["contracts"]
        assert any(expected in warning for warning in contract["warnings"]), contract["warnings"]
        human = cli.run(args[0], args[1], "explain", *args[2:], check=True).stdout
        assert "defaults.limits.cpus" in " ".join(human.split())
        assert "No such file" in _root_listing(machine, root)

        # hosts check: the verdict is not "ready", and the problem names file:line.
        checked = cli.json("-i", str(inventory), "hosts", "check", "--on", name,
                           ok_codes=(0, 3))  # fmt: skip
        (entry,) = checked["hosts"]
        assert entry["status"] == "ok" and entry["verdict"] != "ready", entry
        assert any(expected in p["message"] for p in entry["problems"]), entry["problems"]
        human = cli.run("-i", str(inventory), "hosts", "check", "--on", name, "--wide").stdout
        assert expected in " ".join(human.split())

        # launch: refused before the sync and the build, naming the same line.
        before = _root_listing(machine, root)
        refused = cli.run(args[0], args[1], "launch", *args[2:])
        assert refused.returncode not in (0, 3), refused.stderr
        assert expected in " ".join(refused.stderr.split()), refused.stderr
        assert "Range of CPUs" not in refused.stderr
        assert not _has_image(machine, contract["identity"]["image"])
        assert _root_listing(machine, root) == before
        assert f"{root}/workspaces\n" not in before and f"{root}/roles\n" not in before
        as_json = cli.json(args[0], args[1], "launch", *args[2:], ok_codes=(1, 2))
        assert expected in as_json["error"]["message"]
        ids = {row["id"] for row in cli.json("-i", str(inventory), "ls", "--on", name,
                                             ok_codes=(0, 3))["sessions"]}  # fmt: skip
        assert contract["identity"]["session"] not in ids
    finally:
        _remove_role_images(machine, role.name)


def test_a_session_that_failed_at_setup_shows_its_reason_in_ls_and_logs(
    cli: CLI, host_inventory: tuple[str, Path, str], tmp_path: Path
) -> None:
    """The host fails the create (the engine cannot make the agent's home): no container is
    left, so the recorded reason is all there is, and both ls and logs print it."""
    name, inventory, _root = host_inventory
    machine = "local" if name == "local" else "fleet-1"
    ws = make_workspace(tmp_path / "ws")
    role = _role_copy(tmp_path, f"homeless-{secrets.token_hex(3)}", BROKEN_HOME_STEP)
    try:
        data = cli.json("-i", str(inventory), "launch", "--on", name, "--role", str(role),
                        "--runtime", "shell", "--network", "none", "--task", "true", str(ws),
                        ok_codes=(3,))  # fmt: skip
        (entry,) = data["sessions"]
        assert entry["state"] == "failed_setup" and entry["error"], (entry, data)
        reason = " ".join(entry["error"].split())[:60]
        sid = entry["id"]
        row = wait_for(cli, inventory, sid, on=name)
        assert row["state"] == "failed_setup" and reason in " ".join(row["error"].split())

        listing = cli.run("-i", str(inventory), "ls", "--on", name).stdout
        flat = " ".join(listing.split())
        assert f"{sid} on {name}: failed_setup: {reason}" in flat, listing

        # The engine made the container but could not start it; then it is gone altogether
        # (as when the engine refuses at create, or someone cleans up): logs says why, each time.
        for gone in (False, True):
            if gone:
                _on_host(machine, "docker", "rm", "-f", entry["container"])
            logs = cli.run("-i", str(inventory), "logs", sid)
            assert logs.returncode != 0, (gone, logs.stdout)
            said = " ".join(logs.stderr.split())
            assert reason in said and "failed_setup" in said, (gone, logs.stderr)
            assert "is gone" not in said
            logs_json = cli.json("-i", str(inventory), "logs", sid, ok_codes=(1,))
            assert reason in " ".join(logs_json["error"]["message"].split())
        cli.run("-i", str(inventory), "rm", "--force", sid, check=True)
    finally:
        _remove_role_images(machine, role.name)


def test_limits_that_fit_are_quiet(cli: CLI, local_inventory: Path, tmp_path: Path) -> None:
    """The built-in limits on this machine: no warning about them, from any command."""
    ws = make_workspace(tmp_path / "ws")
    cpus = len(os.sched_getaffinity(0))
    if cpus < 2:
        pytest.skip("the built-in cpus = 2 does not fit a 1-CPU machine")
    data = cli.json("-i", str(local_inventory), "explain", "--role", str(REPO / "roles" /
                    "test-agent"), "--runtime", "demo", "--task", "x", str(ws))  # fmt: skip
    (contract,) = data["contracts"]
    assert not [w for w in contract["warnings"] if "limits." in w or "not checked" in w]
