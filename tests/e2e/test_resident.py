"""The resident host agent, end to end, on the laptop and on a real SSH host: commands reach it
on its socket (a direct-streamlocal channel over SSH), a killed one is started again by the next
command with every session still there, and an agent per command gives the same answers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from jackin_remote.agent.deploy import RESIDENT_ENV
from tests import fleet as fleet_mod
from tests.conftest import CLI, add_host_copy
from tests.e2e.helpers import launch, make_workspace, wait_for


@pytest.fixture(params=["local", "fleet-1"])
def target(
    request: pytest.FixtureRequest, local_inventory: Path, tmp_path: Path
) -> tuple[str, Path]:
    """(inventory name, inventory): the laptop, or fleet-1 under a root of this test's own."""
    if request.param == "local":
        return "local", local_inventory
    inventory: Path = request.getfixturevalue("fleet_inventory")
    root = f"/home/jackin/resident-{tmp_path.name[-12:]}-{os.urandom(3).hex()}"
    add_host_copy(inventory, "fleet-1", "resident", root)
    return "resident", inventory


def _agent(cli: CLI, inventory: Path, name: str, **env: str) -> dict[str, Any]:
    """The agent part of `hosts check` for `name`, run with `env` added."""
    (entry,) = _json(cli, env, "-i", str(inventory), "hosts", "check", "--on", name)["hosts"]
    return entry["agent"]  # type: ignore[no-any-return]


def _json(cli: CLI, env: dict[str, str], *args: str) -> dict[str, Any]:
    return CLI({**cli.env, **env}, cli.cwd).json(*args)


# A process is gone (its files, its socket, closed) once it is a zombie or no more.
GONE = 'while [ -e /proc/$1 ] && [ "$(cut -d" " -f3 /proc/$1/stat)" != Z ]; do sleep 0.05; done'


def _kill(name: str, pid: int) -> None:
    """SIGKILL the resident agent, and wait (for a state) until it is gone."""
    if name == "local":
        os.kill(pid, signal.SIGKILL)
        subprocess.run(["sh", "-c", GONE, "sh", str(pid)], check=True, timeout=120)
        return
    box = fleet_mod.container("fleet-1")
    fleet_mod.docker_exec(box, "kill", "-KILL", str(pid))
    fleet_mod.docker_exec(box, "sh", "-c", GONE, "sh", str(pid))


def test_a_killed_resident_agent_comes_back_with_every_session(
    cli: CLI, target: tuple[str, Path], tmp_path: Path
) -> None:
    name, inventory = target
    ws = make_workspace(tmp_path / "ws")
    (session,) = launch(cli, inventory, ws, "--on", name, "--runtime", "shell", "--network",
                        "none", "--task", "sleep infinity")  # fmt: skip
    sid = session["id"]
    wait_for(cli, inventory, sid, {"running"}, on=name)
    # The launch found the resident agent's socket: this command opens it directly.
    first = _agent(cli, inventory, name)
    assert first["channel"] == "direct", first
    _kill(name, first["pid"])
    # The next command finds nobody on the socket, runs the bridge, which starts a new one.
    listed = cli.json("-i", str(inventory), "ls", "--on", name)["sessions"]
    (row,) = [r for r in listed if r["id"] == sid]
    assert row["state"] == "running", row
    again = _agent(cli, inventory, name)
    assert again["pid"] != first["pid"], again
    assert again["channel"] == "direct", again  # the new one listens where the old one did
    # An agent of its own per command (no resident) answers the same.
    own = _agent(cli, inventory, name, **{RESIDENT_ENV: "0"})
    assert own["channel"] == "exec" and own["pid"] != again["pid"], own
    without = _json(cli, {RESIDENT_ENV: "0"}, "-i", str(inventory), "ls", "--on", name)["sessions"]
    with_it = cli.json("-i", str(inventory), "ls", "--on", name)["sessions"]

    def same(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return sorted((r["id"], r["state"], r["host"], r["agent_status"]) for r in rows)

    assert same(without) == same(with_it)
    cli.run("-i", str(inventory), "rm", "--force", sid, check=True)


def test_a_resident_agent_pushes_session_changes_without_being_asked(
    cli: CLI, local_inventory: Path, tmp_path: Path
) -> None:
    """A feed that would ask the hosts only once an hour still sees a new session and its end:
    the resident agent pushed them (jackin_remote/feed.py, session.watch)."""
    from jackin_remote.feed import Feed
    from jackin_remote.fleet import Pool
    from jackin_remote.inventory.loader import load_inventory
    from jackin_remote.store import Store

    inventory = load_inventory(local_inventory)
    hosts = list(inventory.hosts.values())
    ws = make_workspace(tmp_path / "ws")

    async def until(feed: Feed, store: Store, wanted: Any) -> list[dict[str, Any]]:
        while not wanted(rows := store.view(["local"])):
            await feed.round(HOUR)
        return rows

    async def go() -> str:
        store = Store()
        async with Pool(inventory) as pool:
            feed = Feed(pool, hosts, store)
            await feed.round(HOUR)  # the first round asks
            assert feed.pushing == {"local"}
            (session,) = await asyncio.to_thread(
                launch, cli, local_inventory, ws, "--on", "local", "--runtime", "shell",
                "--network", "none", "--task", "echo pushed",
            )  # fmt: skip
            sid = session["id"]
            rows = await until(feed, store, lambda rows: any(
                r["id"] == sid and r["state"] == "exited" for r in rows))  # fmt: skip
            assert [r["exit_code"] for r in rows if r["id"] == sid] == [0]
            assert feed.pushes >= 1
            await feed.close()
            return str(sid)

    sid = asyncio.run(asyncio.wait_for(go(), 600))
    cli.run("-i", str(local_inventory), "rm", "--force", sid, check=True)


HOUR = 3600.0


@pytest.mark.disruptive
def test_an_sshd_that_refuses_socket_channels_gets_the_exec_bridge_and_says_so(
    cli: CLI, fleet_inventory: Path, tmp_path: Path
) -> None:
    from tests.conftest import DISRUPTIVE_HOST

    root = f"/home/jackin/refuses-{tmp_path.name[-12:]}-{os.urandom(3).hex()}"
    add_host_copy(fleet_inventory, DISRUPTIVE_HOST, "refuses", root)
    assert _agent(cli, fleet_inventory, "refuses")["channel"] == "bridge"  # learns the socket
    assert _agent(cli, fleet_inventory, "refuses")["channel"] == "direct"
    with fleet_mod.sshd_option(DISRUPTIVE_HOST, "AllowStreamLocalForwarding no"):
        # sshd re-execs on SIGHUP: until the new one answers, a check may still go direct.
        deadline = 60
        while (agent := _agent(cli, fleet_inventory, "refuses"))["channel"] == "direct":
            deadline -= 1
            assert deadline, "sshd never refused the channel"
        assert agent["channel"] == "bridge" and agent["streamlocal_refused"], agent
        # Remembered: the next command does not try again, and still says why.
        again = _agent(cli, fleet_inventory, "refuses")
        assert again["channel"] == "bridge" and again["streamlocal_refused"], again
        human = cli.run("-i", str(fleet_inventory), "hosts", "check", "--on", "refuses").stdout
        assert "sshd refuses channels to Unix sockets" in " ".join(human.split()), human
        # Sessions work as ever through the bridge.
        listed = cli.json("-i", str(fleet_inventory), "ls", "--on", "refuses")
        assert listed["sessions"] == []
