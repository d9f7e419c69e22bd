"""The laptop daemon end to end on a real SSH host: started by a command, then serving the next
ones over its held connection; `ls` gives the same answer with it running and stopped; killed,
it is replaced and nothing is lost."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jackin_remote.daemon import DAEMON_ENV, IDLE_ENV
from tests.conftest import CLI, add_host_copy
from tests.e2e.helpers import launch, make_workspace, wait_for


@pytest.fixture
def with_daemon(cli: CLI, fleet_inventory: Path, tmp_path: Path) -> Iterator[tuple[CLI, Path]]:
    """The CLI with the daemon on (the suite runs without it), fleet-1 under a root of its own."""
    root = f"/home/jackin/daemon-{tmp_path.name[-12:]}-{os.urandom(3).hex()}"
    add_host_copy(fleet_inventory, "fleet-1", "held", root)
    on = CLI({**cli.env, DAEMON_ENV: "auto", IDLE_ENV: "600"}, cli.cwd)
    try:
        yield on, fleet_inventory
    finally:
        on.run("daemon", "stop")


def _daemon(cli: CLI) -> dict[str, Any]:
    return cli.json("daemon", "status")["daemon"]  # type: ignore[no-any-return]


def _until_running(cli: CLI) -> dict[str, Any]:
    """The daemon a command started in the background, once it answers (a state, bounded)."""
    deadline = time.monotonic() + 120
    while not (state := _daemon(cli))["running"]:
        assert time.monotonic() < deadline, "the daemon never came up"
        time.sleep(0.1)
    return state


def _alive(pid: int) -> bool:
    """Not gone, and not a zombie (a zombie's files, its socket among them, are closed)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _agent(cli: CLI, inventory: Path) -> dict[str, Any]:
    (entry,) = cli.json("-i", str(inventory), "hosts", "check", "--on", "held")["hosts"]
    return entry["agent"]  # type: ignore[no-any-return]


def _rows(cli: CLI, inventory: Path) -> list[tuple[Any, ...]]:
    rows = cli.json("-i", str(inventory), "ls", "--on", "held")["sessions"]
    return sorted((r["id"], r["state"], r["host"], r["agent_status"], r["exit_code"])
                  for r in rows)  # fmt: skip


def test_the_daemon_serves_commands_and_changes_no_answer(
    with_daemon: tuple[CLI, Path], tmp_path: Path
) -> None:
    cli, inventory = with_daemon
    assert not _daemon(cli)["running"]
    first = _agent(cli, inventory)  # connects itself, and starts the daemon
    assert first["daemon"] is False
    _until_running(cli)
    held = _agent(cli, inventory)  # the socket the first one learnt, over the held connection
    assert held["daemon"] is True and held["channel"] == "direct", held
    assert "held" in _daemon(cli)["hosts"]
    # A whole launch through it, and the same view of it with the daemon and without.
    ws = make_workspace(tmp_path / "ws")
    (session,) = launch(cli, inventory, ws, "--on", "held", "--runtime", "shell", "--network",
                        "none", "--task", "cat NOTES.md")  # fmt: skip
    row = wait_for(cli, inventory, session["id"], on="held")
    assert (row["state"], row["exit_code"]) == ("exited", 0), row
    assert "uncommitted note" in cli.run("-i", str(inventory), "logs", session["id"]).stdout
    with_it = _rows(cli, inventory)
    assert cli.json("daemon", "stop")["daemon"]["stopped"] is True
    without = _rows(CLI({**cli.env, DAEMON_ENV: "off"}, cli.cwd), inventory)
    assert with_it == without and with_it, (with_it, without)
    cli.run("-i", str(inventory), "rm", "--force", session["id"], check=True)


def test_a_killed_daemon_is_replaced_and_commands_go_on(with_daemon: tuple[CLI, Path]) -> None:
    cli, inventory = with_daemon
    _agent(cli, inventory)
    pid = _until_running(cli)["pid"]
    os.kill(pid, signal.SIGKILL)
    while _alive(pid):
        time.sleep(0.05)  # a state: the kill landed (its socket is closed)
    # Its socket file is left behind; the next command finds nobody there, goes direct, and
    # starts a new daemon.
    after = _agent(cli, inventory)
    assert after["daemon"] is False and after["channel"] == "direct", after
    state = _until_running(cli)
    assert state["pid"] != pid
    assert _agent(cli, inventory)["daemon"] is True
