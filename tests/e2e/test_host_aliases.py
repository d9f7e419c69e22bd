"""One machine under two inventory names (issue 10, item 5): HOST:ID names a session where the
bare id matches it under both names, and `hosts rm` forgets the removed name's cached rows."""

from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import CLI, add_host_copy
from tests.e2e.helpers import git, launch, make_workspace, wait_for


def test_host_colon_id_and_hosts_rm_forget_an_alias(
    cli: CLI, fleet_inventory: Path, tmp_path: Path
) -> None:
    # fleet-3 twice, as through a jump host: one machine, one host root, two names.
    root = f"/home/jackin/twins-{tmp_path.name[-12:]}-{os.urandom(3).hex()}"
    add_host_copy(fleet_inventory, "fleet-3", "twin-a", root)
    add_host_copy(fleet_inventory, "fleet-3", "twin-b", root)
    local_inventory = fleet_inventory
    inv = str(local_inventory)
    ws = make_workspace(tmp_path / "ws")
    (entry,) = launch(cli, local_inventory, ws, "--on", "twin-a", "--runtime", "shell",
                      "--network", "none", "--task", "echo done > out.txt")  # fmt: skip
    sid = entry["id"]
    wait_for(cli, local_inventory, sid, on="twin-a")
    rows = cli.json("-i", inv, "ls", "--on", "twin-a,twin-b")["sessions"]
    assert sorted(r["host"] for r in rows if r["id"] == sid) == ["twin-a", "twin-b"]
    # The bare id is ambiguous, and says how to name it.
    proc = cli.run("-i", inv, "pull", sid)
    assert proc.returncode == 2 and f"twin-b:{sid}" in proc.stderr and "HOST:ID" in proc.stderr
    cli.run("-i", inv, "pull", f"twin-a:{sid}", check=True)  # the launching name
    assert git(ws, "rev-parse", "--verify", f"jackin/{sid}")
    # Removing the alias forgets its rows: the bare id is no longer ambiguous (no --rebuild).
    cli.run("-i", inv, "hosts", "rm", "twin-b", check=True)
    proc = cli.run("-i", inv, "logs", sid)
    assert proc.returncode == 0, proc.stderr
    cli.run("-i", inv, "rm", "--force", sid, check=True)
