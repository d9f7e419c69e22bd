"""The core loop end to end, through the real CLI: sync, explain, launch, ls, logs, diff, pull,
rm — in local mode and over SSH on test hosts, through the same code path."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests import fleet as fleet_mod
from tests.conftest import CLI, add_host_copy
from tests.e2e.helpers import TEST_ROLE, git, launch, make_workspace, managed_containers, wait_for

TASK = "write hello.txt: hello from the sandbox"


def docker_prefix(host: str) -> tuple[str, ...]:
    return () if host == "local" else ("docker", "exec", fleet_mod.container(host))


@pytest.fixture(params=["local", "fleet-1"])
def target(request: pytest.FixtureRequest, local_inventory: Path) -> tuple[str, Path]:
    if request.param == "local":
        return "local", local_inventory
    return request.param, request.getfixturevalue("fleet_inventory")


def test_launch_ls_logs_diff_pull_rm(cli: CLI, target: tuple[str, Path], tmp_path: Path) -> None:
    host, inventory = target
    ws = make_workspace(tmp_path / "ws")
    head = git(ws, "rev-parse", "HEAD")
    (session,) = launch(cli, inventory, ws, "--on", host, "--runtime", "demo",
                        "--network", "none", "--task", TASK)  # fmt: skip
    sid = session["id"]
    assert session["host"] == host and session["branch"] == f"jackin/{sid}"
    assert session["contract"]["identity"]["session"] == sid

    row = wait_for(cli, inventory, sid)
    assert row["state"] == "exited" and row["agent_status"] == "done"
    assert (row["host"], row["role"], row["runtime"]) == (host, "test-agent", "demo")
    assert row["workspace"].startswith("ws-")

    logs = cli.run("-i", str(inventory), "logs", sid[:5], check=True).stdout
    assert "jackin-demo-agent: done" in logs

    diff = cli.run("-i", str(inventory), "diff", sid, check=True).stdout
    assert "+hello from the sandbox" in diff

    rm = cli.run("-i", str(inventory), "rm", sid)
    assert rm.returncode != 0 and "not pulled" in rm.stderr

    pulled = cli.json("-i", str(inventory), "pull", sid)
    assert pulled["branch"] == f"jackin/{sid}"
    assert git(ws, "show", f"jackin/{sid}:hello.txt") == "hello from the sandbox"
    # The uncommitted note travelled (the working-tree commit); secrets and ignored files did not.
    assert git(ws, "show", f"jackin/{sid}:NOTES.md") == "uncommitted note"
    tree = git(ws, "ls-tree", "-r", "--name-only", f"jackin/{sid}")
    assert ".env" not in tree.split() and "build/out.bin" not in tree
    assert head in git(ws, "rev-list", f"jackin/{sid}").split()
    # The laptop's own branch and working tree are untouched.
    assert git(ws, "rev-parse", "HEAD") == head and git(ws, "branch", "--show-current") == "main"
    assert (ws / "NOTES.md").read_text() == "uncommitted note\n"

    cli.run("-i", str(inventory), "rm", sid, check=True)
    assert sid not in managed_containers(*docker_prefix(host))
    ids = [r["id"] for r in cli.json("-i", str(inventory), "ls")["sessions"]]
    assert sid not in ids


def _tree_digest(path: Path) -> dict[str, str]:
    digest = {}
    for base, dirs, files in os.walk(path):
        for name in dirs + files:
            full = Path(base) / name
            stat = full.lstat()
            digest[str(full.relative_to(path))] = (
                f"{stat.st_mode}:{stat.st_size}:{stat.st_mtime_ns}"
            )
    return digest


def _host_state(host: str, root: Path, container: str) -> str:
    """What explain could have made on the host: its root, and a container of that name."""
    if host == "local":
        made = "\n".join(sorted(_tree_digest(root))) if root.exists() else "<no root>"
        exists = ["docker", "ps", "-a", "-q", "--filter", f"name={container}"]
    else:
        made = fleet_mod.docker_exec(
            fleet_mod.container(host), "sh", "-c", f"ls -la {root} 2>&1 || true"
        ).stdout
        exists = ["docker", "exec", fleet_mod.container(host), "docker", "ps", "-a", "-q",
                  "--filter", f"name={container}"]  # fmt: skip
    containers = subprocess.run(exists, capture_output=True, text=True, check=True).stdout
    return made + "|" + containers


def test_explain_has_no_side_effects(
    cli: CLI, target: tuple[str, Path], tmp_path: Path, laptop: Path
) -> None:
    host, inventory = target
    ws = make_workspace(tmp_path / "ws")
    # A host root of this test's own, so that other tests' sessions cannot blur the picture.
    if host == "local":
        selector, host_root = "local", tmp_path / "host-root"
    else:
        selector, host_root = "probe", Path(f"/home/jackin/explain-{os.urandom(4).hex()}")
        add_host_copy(inventory, host, selector, str(host_root))
    args = ["-i", str(inventory), "explain", "--on", selector, "--role", TEST_ROLE,
            "--runtime", "demo", "--task", TASK, str(ws)]  # fmt: skip
    container = cli.json(*args)["contracts"][0]["identity"]["container"]
    before = (_tree_digest(laptop), _tree_digest(ws), _host_state(host, host_root, container))
    human = cli.run(*args, check=True).stdout
    data = cli.json(*args)
    after = (_tree_digest(laptop), _tree_digest(ws), _host_state(host, host_root, container))
    assert after == before
    assert "No such file" in before[2] or "<no root>" in before[2]
    assert not (laptop / "jackin").exists()
    for title in (
        "identity",
        "routing",
        "filesystem",
        "credentials",
        "network",
        "docker access",
        "limits",
        "persistence",
        "host-side effects",
        "recovery",
        "warnings",
    ):
        assert title in human  # fmt: skip
    (contract,) = data["contracts"]
    assert contract["identity"]["host"] == selector
    assert contract["plan"][0]["action"].startswith("start the host agent")


def test_count_spreads_sessions_over_the_matching_hosts(
    cli: CLI, fleet_inventory: Path, tmp_path: Path
) -> None:
    ws = make_workspace(tmp_path / "ws")
    sessions = launch(cli, fleet_inventory, ws, "--on", "fleet-1,fleet-2", "--count", "2",
                      "--runtime", "shell", "--network", "none", "--task", "true")  # fmt: skip
    assert sorted(s["host"] for s in sessions) == ["fleet-1", "fleet-2"]
    for entry in sessions:
        wait_for(cli, fleet_inventory, entry["id"])
        cli.run("-i", str(fleet_inventory), "rm", "--force", entry["id"], check=True)


def test_non_git_workspace_is_copied_and_pulled_into_dot_jackin(
    cli: CLI, local_inventory: Path, tmp_path: Path
) -> None:
    ws = tmp_path / "plain"
    ws.mkdir()
    (ws / "data.txt").write_text("input\n")
    (ws / "secret.pem").write_text("-----BEGIN-----\n")
    (session,) = launch(cli, local_inventory, ws, "--runtime", "shell", "--network", "none",
                        "--task", "cat data.txt > copy.txt && ln -s /etc/passwd link && "
                        "test ! -e secret.pem")  # fmt: skip
    row = wait_for(cli, local_inventory, session["id"])
    assert row["state"] == "exited", row
    cli.run("-i", str(local_inventory), "pull", session["id"], check=True)
    pulled = ws / ".jackin" / "pulled" / session["id"]
    assert (pulled / "copy.txt").read_text() == "input\n"
    # A link out of the pulled tree is reported, not made (tests/e2e/test_pull_boundary.py).
    assert not os.path.lexists(pulled / "link")
    cli.run("-i", str(local_inventory), "rm", session["id"], check=True)
