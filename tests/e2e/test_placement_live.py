"""Placement asks the candidates first (issue 10, item 4): a dead host is never placed on, and
sessions that cannot all be placed are refused before any is started."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import fleet as fleet_mod
from tests.conftest import CLI, DISRUPTIVE_HOST
from tests.e2e.helpers import TEST_ROLE, make_workspace

LIVE_HOST = "fleet-2"


def _declare(inventory: Path, host: str, name: str, root: str, capacity: int) -> None:
    """`name`: fleet host `host` under another name, with a root of its own (other tests use
    the host at the same time) and a capacity."""
    block = (inventory / "fleet.toml").read_text().split(f"[hosts.{host}]", 1)[1]
    block = block.split("\n[", 1)[0]
    (inventory / f"{name}.toml").write_text(
        f'[hosts.{name}]{block}root = "{root}"\ncapacity = {capacity}\n'
    )


def _exists(host: str, path: str) -> bool:
    argv = ["docker", "exec", fleet_mod.container(host), "test", "-e", path]
    import subprocess

    return subprocess.run(argv).returncode == 0


def _launch(cli: CLI, inventory: Path, ws: Path, on: str, count: int) -> object:
    return cli.run("-i", str(inventory), "launch", "--on", on, "--count", str(count),
                   "--role", TEST_ROLE, "--runtime", "shell", "--network", "none",
                   "--task", "cat NOTES.md", "--json", str(ws))  # fmt: skip


@pytest.mark.disruptive
def test_launch_places_only_on_hosts_that_answer(
    cli: CLI, fleet_inventory: Path, tmp_path: Path
) -> None:
    import json

    tag = f"{tmp_path.name[-12:]}-{os.urandom(3).hex()}"
    live_root, dead_root = f"/home/jackin/place-live-{tag}", f"/home/jackin/place-dead-{tag}"
    # The dead host comes first and has more room: placement by counts alone picks it.
    _declare(fleet_inventory, DISRUPTIVE_HOST, "dead", dead_root, 4)
    _declare(fleet_inventory, DISRUPTIVE_HOST, "dead2", dead_root + "-2", 4)
    _declare(fleet_inventory, LIVE_HOST, "live", live_root, 2)
    (fleet_inventory / "builders.toml").write_text(
        '[groups]\nbuilders = ["dead", "live"]\nall-dead = ["dead", "dead2"]\n'
    )
    ws = make_workspace(tmp_path / "ws")
    inv = str(fleet_inventory)
    made: list[str] = []
    fleet_mod.stop_host(DISRUPTIVE_HOST)
    try:
        # Three sessions do not fit on the live host (2 slots): refused before any is started.
        proc = _launch(cli, fleet_inventory, ws, "builders", 3)
        assert proc.returncode == 3, (proc.stdout, proc.stderr)
        error = json.loads(proc.stdout)["error"]
        assert "cannot place 3 session(s)" in error["message"], error
        assert "dead (unreachable" in error["message"], error
        assert "nothing was started" in error["hint"]
        assert not _exists(LIVE_HOST, live_root), "nothing reached the live host"

        # Every candidate dead: refused, naming each, before any effect.
        proc = _launch(cli, fleet_inventory, ws, "all-dead", 1)
        assert proc.returncode == 3, (proc.stdout, proc.stderr)
        message = json.loads(proc.stdout)["error"]["message"]
        assert "no host answered" in message and "dead (" in message and "dead2 (" in message

        # explain starts nothing (the live host root stays absent), and says what its counts are.
        data = cli.json("-i", inv, "explain", "--on", "builders", "--role", TEST_ROLE,
                        "--runtime", "shell", str(ws))  # fmt: skip
        identity = data["contracts"][0]["identity"]
        assert identity["host"] == "live"
        assert identity["placed_by"].startswith("counts last known")
        assert not _exists(LIVE_HOST, live_root)

        # Two sessions: both on the live host, although the dead one has more free slots.
        proc = _launch(cli, fleet_inventory, ws, "builders", 2)
        sessions = json.loads(proc.stdout)["sessions"]
        outcome = [(s["id"], s["host"], s["state"], s["error"]) for s in sessions]
        assert proc.returncode == 0, (outcome, proc.stderr)
        made = [s["id"] for s in sessions]
        assert [(s["host"], s["error"]) for s in sessions] == [("live", None), ("live", None)]
        candidates = sessions[0]["contract"]["identity"]["candidates"]
        assert {c["host"]: c["answered"] for c in candidates} == {"dead": False, "live": True}
        assert sessions[0]["contract"]["identity"]["placed_by"].startswith("live counts")

    finally:
        fleet_mod.start_host(DISRUPTIVE_HOST)
        for sid in made:
            cli.run("-i", inv, "rm", "--force", sid)
    assert not _exists(DISRUPTIVE_HOST, dead_root), "the dead host never got anything"
