"""One machine under two inventory names (issue 10, item 5).

HOST:ID names a session where the bare id matches it under both names, and `hosts rm` forgets
the removed name's cached rows. Two names that reach the same host root (same machine: host
key / machine-id; same root id) are warned about by `hosts check`, show each session once in
`ls` (`also` names the other), and share the laptop's launch record, so `pull NAME:ID` works
under either. Two names of one machine with different roots are one machine, their sessions
not merged. A host that merely claims another's root id is not merged with it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests import fleet as fleet_mod
from tests.conftest import CLI, add_host_copy
from tests.e2e.helpers import git, launch, make_workspace, wait_for


def _root(tmp_path: Path, tag: str) -> str:
    return f"/home/jackin/{tag}-{tmp_path.name[-12:]}-{os.urandom(3).hex()}"


def _check(cli: CLI, inv: Path, on: str) -> dict[str, dict[str, Any]]:
    hosts = cli.json("-i", str(inv), "hosts", "check", "--on", on, ok_codes=(0, 3))["hosts"]
    return {entry["name"]: entry for entry in hosts}


def _warnings(entry: dict[str, Any]) -> list[str]:
    return [p["message"] + " / " + p["hint"] for p in entry["problems"] if p["severity"] == "warn"]


def _rows(cli: CLI, inv: Path, on: str, sid: str) -> list[dict[str, Any]]:
    rows = cli.json("-i", str(inv), "ls", "--on", on)["sessions"]
    return [row for row in rows if row["id"] == sid]


def test_host_colon_id_and_hosts_rm_forget_an_alias(
    cli: CLI, fleet_inventory: Path, tmp_path: Path
) -> None:
    # fleet-3 twice, as through a jump host: one machine, one host root, two names.
    root = _root(tmp_path, "twins")
    add_host_copy(fleet_inventory, "fleet-3", "twin-a", root)
    add_host_copy(fleet_inventory, "fleet-3", "twin-b", root)
    inv = str(fleet_inventory)

    # hosts check: not silently ready; both names named, and what to do.
    checked = _check(cli, fleet_inventory, "twin-a,twin-b")
    for name, other in (("twin-a", "twin-b"), ("twin-b", "twin-a")):
        entry = checked[name]
        assert entry["status"] == "ok" and entry["verdict"] == "degraded", entry
        (warning,) = [w for w in _warnings(entry) if "same host root" in w]
        assert f"{name} and {other}" in warning and "hosts rm" in warning
        assert "different roots" in warning and "ssh-ed25519 SHA256:" in warning
    wide = CLI({**cli.env, "COLUMNS": "200"}, cli.cwd)
    human = wide.run("-i", inv, "hosts", "check", "--on", "twin-a,twin-b").stdout
    assert "twin-a and twin-b are the same host root" in " ".join(human.split())

    ws = make_workspace(tmp_path / "ws")
    (entry,) = launch(cli, fleet_inventory, ws, "--on", "twin-a", "--runtime", "shell",
                      "--network", "none", "--task", "echo done > out.txt")  # fmt: skip
    sid = entry["id"]
    wait_for(cli, fleet_inventory, sid, on="twin-a")
    # ls: once, under the launching name, saying the other (json and human).
    (row,) = _rows(cli, fleet_inventory, "twin-a,twin-b", sid)
    assert row["host"] == "twin-a" and row["also"] == ["twin-b"], row
    table = wide.run("-i", inv, "ls", "--on", "twin-a,twin-b", "--cached").stdout
    assert table.count(sid) == 1 and "twin-a (also twin-b)" in table, table
    # The bare id is one session, not two; the other name serves pull with the laptop's record.
    proc = cli.run("-i", inv, "logs", sid)
    assert proc.returncode == 0, proc.stderr
    pulled = cli.json("-i", inv, "pull", f"twin-b:{sid}")
    assert pulled["host"] == "twin-b" and pulled["branch"] == f"jackin/{sid}", pulled
    assert git(ws, "rev-parse", "--verify", f"jackin/{sid}")
    # Removing the alias forgets its rows: the session is plainly twin-a's (no --rebuild).
    cli.run("-i", inv, "hosts", "rm", "twin-b", check=True)
    (row,) = _rows(cli, fleet_inventory, "all", sid)
    assert row["host"] == "twin-a" and row["also"] == [], row
    cli.run("-i", inv, "rm", "--force", sid, check=True)


def test_one_machine_two_roots_is_one_machine_with_separate_sessions(
    cli: CLI, fleet_inventory: Path, tmp_path: Path
) -> None:
    add_host_copy(fleet_inventory, "fleet-3", "room-a", _root(tmp_path, "room-a"))
    add_host_copy(fleet_inventory, "fleet-3", "room-b", _root(tmp_path, "room-b"))
    add_host_copy(fleet_inventory, "fleet-2", "elsewhere", _root(tmp_path, "elsewhere"))
    inv = str(fleet_inventory)
    checked = _check(cli, fleet_inventory, "room-a,room-b,elsewhere")
    (warning,) = _warnings(checked["room-a"])
    assert "room-a and room-b are one machine" in warning and "different roots" in warning
    assert "room-b and room-a are one machine" in _warnings(checked["room-b"])[0]
    assert checked["elsewhere"]["verdict"] == "ready", checked["elsewhere"]

    ws = make_workspace(tmp_path / "ws")
    (entry,) = launch(cli, fleet_inventory, ws, "--on", "room-a", "--runtime", "shell",
                      "--network", "none", "--task", "echo done > out.txt")  # fmt: skip
    sid = entry["id"]
    wait_for(cli, fleet_inventory, sid, on="room-a")
    (row,) = _rows(cli, fleet_inventory, "room-a,room-b", sid)
    assert row["host"] == "room-a" and row["also"] == [], row
    # room-b does not have it: its root is another set of sessions.
    proc = cli.run("-i", inv, "logs", f"room-b:{sid}")
    assert proc.returncode == 2 and "no session matches" in proc.stderr, proc.stderr
    cli.run("-i", inv, "rm", "--force", sid, check=True)


def test_a_host_claiming_another_root_is_not_merged(
    cli: CLI, fleet_inventory: Path, tmp_path: Path
) -> None:
    """fleet-2 copies fleet-3's root id and session records: without fleet-3's host key it is
    not the same root, so its copy is listed apart and gets no launch record (pull needs --into)."""
    real, fake = _root(tmp_path, "real"), _root(tmp_path, "fake")
    add_host_copy(fleet_inventory, "fleet-3", "real", real)
    add_host_copy(fleet_inventory, "fleet-2", "liar", fake)
    inv = str(fleet_inventory)
    ws = make_workspace(tmp_path / "ws")
    (entry,) = launch(cli, fleet_inventory, ws, "--on", "real", "--runtime", "shell",
                      "--network", "none", "--task", "echo done > out.txt")  # fmt: skip
    sid = entry["id"]
    wait_for(cli, fleet_inventory, sid, on="real")
    _check(cli, fleet_inventory, "liar")  # the liar's root exists, with an id of its own
    _copy_root_claims(real, fake)
    checked = _check(cli, fleet_inventory, "real,liar")
    assert checked["real"]["identity"]["root_id"] == checked["liar"]["identity"]["root_id"]
    assert not [w for w in _warnings(checked["real"]) if "liar" in w], checked["real"]
    rows = _rows(cli, fleet_inventory, "real,liar", sid)
    assert sorted((r["host"], r["also"]) for r in rows) == [("liar", []), ("real", [])], rows
    proc = cli.run("-i", inv, "pull", f"liar:{sid}")
    assert proc.returncode != 0 and "--into" in proc.stderr, proc.stderr
    with pytest.raises(subprocess.CalledProcessError):
        git(ws, "rev-parse", "--verify", f"jackin/{sid}")
    cli.run("-i", inv, "rm", "--force", f"real:{sid}", check=True)


def _copy_root_claims(real: str, fake: str) -> None:
    """What a compromised host can say: another root's id and session records, copied."""
    src, dst = fleet_mod.container("fleet-3"), fleet_mod.container("fleet-2")
    # sqlite's backup: one consistent file, whatever is still in the WAL.
    backup = (f"import sqlite3; sqlite3.connect('{real}/state.db')"
              f".backup(sqlite3.connect('/tmp/claim-{os.getpid()}.db'))")  # fmt: skip
    subprocess.run(["docker", "exec", src, "python3", "-c", backup], check=True)
    copies = {"root-id": f"{real}/root-id", "state.db": f"/tmp/claim-{os.getpid()}.db"}
    for name, path in copies.items():
        data = subprocess.run(["docker", "exec", src, "cat", path],
                              check=True, capture_output=True).stdout  # fmt: skip
        subprocess.run(["docker", "exec", "-i", "-u", "jackin", dst, "sh", "-c",
                        f'cat > "{fake}/{name}"'], input=data, check=True)  # fmt: skip
    subprocess.run(["docker", "exec", src, "rm", "-f", copies["state.db"]], check=True)
