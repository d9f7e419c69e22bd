"""The host audit, end to end, locally and over SSH: a session with an egress proxy, a volume,
a private docker daemon, a secret and a synced laptop directory is launched, then removed with
`rm --force`. Every docker object (container, network, volume) and every file the host made for
it is named by a row of `jackin-remote audit` with what undoes it; after rm none is left, each
with its removal recorded, and what stays under the root is the shared part (agent, database,
workspace mirror, role context), each named with its undo too. No secret value is ever in it.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests import fleet as fleet_mod
from tests.conftest import CLI, add_host_copy
from tests.e2e.helpers import launch, make_workspace

SIDECAR_SETTINGS = (
    'private_docker_image = "jackin-test-dind:latest"\nprivate_docker_privilege = "capabilities"\n'
)
SECRET_VALUE = "audit-secret-" + secrets.token_hex(8)
# Under the root, shared by every session and not any one session's: the agent, the database.
SHARED = ("agent", "state.db", "state.db-wal", "state.db-shm", "state.db.init-lock", "root-id",
          "sessions", "roles", "workspaces")  # fmt: skip
UNDONE_BY_REMOVAL = (".remove", ".purge", ".stop")


def _on_host(machine: str, script: str) -> str:
    prefix = [] if machine == "local" else ["docker", "exec", fleet_mod.container(machine)]
    return subprocess.run([*prefix, "sh", "-c", script], capture_output=True, text=True,
                          check=True).stdout  # fmt: skip


@pytest.fixture(params=["local", "fleet-1"])
def audit_host(
    request: pytest.FixtureRequest, tmp_path: Path, local_inventory: Path
) -> tuple[str, Path, str, str]:
    """(host name, inventory dir, machine, root): a fresh host root with the test sidecar."""
    if request.param == "local":
        host_file = local_inventory / "local.toml"
        host_file.write_text(host_file.read_text() + SIDECAR_SETTINGS)
        return "local", local_inventory, "local", str(tmp_path / "host-root")
    inventory = request.getfixturevalue("fleet_inventory")
    root = f"/home/jackin/audit-{secrets.token_hex(4)}"
    add_host_copy(inventory, request.param, "au", root)
    host_file = inventory / "au.toml"
    host_file.write_text(host_file.read_text() + SIDECAR_SETTINGS)
    return "au", inventory, request.param, root


def _objects(machine: str, session_id: str) -> set[str]:
    """The session's docker objects on the host, by its label or its name."""
    script = " ; ".join(
        f"docker {kind} ls {'-a' if kind == 'container' else ''} --format '{kind} {{{{.Name"
        f"{'s' if kind == 'container' else ''}}}}}' --filter {flt}"
        for kind in ("container", "network", "volume")
        for flt in (f"label=jackin.session={session_id}", f"name=jk-{session_id}")
    )
    return set(_on_host(machine, script).splitlines())


def _files(machine: str, root: str) -> set[str]:
    script = f"cd {shlex.quote(root)} && find . -mindepth 1 | sed 's|^\\./||'"
    return set(_on_host(machine, script).splitlines())


def _audit(cli: CLI, inventory: Path, *args: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = cli.json("-i", str(inventory), "audit", *args)["entries"]
    return entries


def _undo_paths(rows: list[dict[str, Any]], root: str) -> set[str]:
    """The paths (relative to the root) that rows' undo commands remove."""
    found = set()
    for row in rows:
        words = row["undo"].split()
        if words[:1] == ["rm"] and words[-1].startswith(root + "/"):
            found.add(os.path.relpath(words[-1], root))
    return found


def _under(path: str, parents: set[str]) -> bool:
    return any(path == p or path.startswith(p + "/") for p in parents)


def test_every_host_change_of_a_session_is_audited_with_its_undo_and_rm_leaves_none(
    cli: CLI, audit_host: tuple[str, Path, str, str], tmp_path: Path
) -> None:
    name, inventory, machine, root = audit_host
    ws = make_workspace(tmp_path / "ws")
    reference = tmp_path / "reference"
    reference.mkdir()
    (reference / "data.txt").write_text("reference data\n")
    cli.env["AUDIT_TEST_SECRET"] = SECRET_VALUE
    before = _files(machine, root) if machine == "local" and os.path.isdir(root) else set()
    (session,) = launch(cli, inventory, ws, "--on", name, "--runtime", "shell", "--task",
                        "sleep 600", "--network", "allowlist", "--volume", "/data",
                        "--docker", "private", "--secret", "MY_TOKEN=env:AUDIT_TEST_SECRET",
                        "--mount", f"{reference}:/reference")  # fmt: skip
    sid = session["id"]
    removed = False
    try:
        rows = _audit(cli, inventory, sid)
        assert rows and all(row["session"] == sid and row["host"] == name for row in rows)
        actions = [row["action"] for row in rows]
        for wanted in ("session.record", "checkout.create", "network.create", "egress.start",
                       "volume.create", "container.create", "container.start", "secrets.write",
                       "mount.copy", "file.write"):  # fmt: skip
            assert wanted in actions, (wanted, actions)
        # Every creation says what undoes it.
        for row in rows:
            if not row["action"].endswith(UNDONE_BY_REMOVAL):
                assert row["undo"], row
        # Every docker object the session has is named by a creation row.
        objects = _objects(machine, sid)
        kinds = {item.split()[0] for item in objects}
        assert kinds == {"container", "network", "volume"}, objects
        created = {row["target"].split()[0] for row in rows if row["action"].endswith(".create")}
        for item in objects:
            assert item.split()[1] in created, (item, created)
        assert f"jk-{sid}-dockerd" in created and f"jk-{sid}-egress" in created, created
        assert f"jk-{sid}-v1" in created and f"jk-{sid}-docker" in created, created  # mount 1
        # The secret's directory and name are recorded, never its value.
        (written,) = [row for row in rows if row["action"] == "secrets.write"]
        assert f"jackin-secrets-{sid}" in written["target"] and "MY_TOKEN" in written["target"]
        # Every file made for the session is under a path an undo removes.
        session_files = {p for p in _files(machine, root) if p.startswith(f"sessions/{sid}")}
        assert f"sessions/{sid}/work/README.md" in session_files, session_files
        assert f"sessions/{sid}/mounts/0/data.txt" in session_files, session_files
        undone = _undo_paths(rows, root)
        for path in session_files:
            assert path == f"sessions/{sid}" or _under(path, undone), (path, undone)

        # rm --purge (where it exists) takes the session's snapshots too.
        purge = ["--purge"] if "--purge" in cli.run("rm", "--help").stdout else []
        cli.run("-i", str(inventory), "rm", "--force", *purge, sid, check=True)
        removed = True
        assert _objects(machine, sid) == set()
        gone = _on_host(machine, f"ls -d /dev/shm/jackin-secrets-{sid} 2>/dev/null || true")
        assert gone.strip() == "", gone
        after = _audit(cli, inventory, sid)
        assert after[: len(rows)] == rows  # the audit only grows
        later = after[len(rows) :]
        removals = {(row["action"], row["target"].split()[0]) for row in later}
        for item in objects:
            kind, object_name = item.split()
            assert (f"{kind}.remove", object_name) in removals, (item, removals)
        assert ("checkout.remove", f"{root}/sessions/{sid}") in removals, removals
        assert ("secrets.remove", f"/dev/shm/jackin-secrets-{sid}") in removals, removals
        assert "egress.stop" in {action for action, _ in removals}, removals
        assert "session.purge" in {action for action, _ in removals}, removals

        # What is left under the root: the shared part (and, without --purge, the session's
        # snapshots), each piece under a path an audit row's undo removes.
        everything = _audit(cli, inventory, "--on", name)
        shared_undo = _undo_paths([row for row in everything if row["session"] is None], root)
        assert any(p.startswith("workspaces/") for p in shared_undo), shared_undo
        kept_undo = _undo_paths(everything, root) - {f"sessions/{sid}"}
        left = _files(machine, root) - before
        assert not any(p.startswith(f"sessions/{sid}") for p in left), left
        if purge:
            assert not any(p.startswith(f"snapshots/{sid}") for p in left), left
        for path in left:
            assert path in SHARED or _under(path, kept_undo) or path.startswith("agent/"), (
                path, kept_undo)  # fmt: skip
        text = json.dumps(everything) + cli.run("-i", str(inventory), "audit", "--on", name).stdout
        assert SECRET_VALUE not in text
    finally:
        if not removed:
            cli.run("-i", str(inventory), "rm", "--force", sid)
