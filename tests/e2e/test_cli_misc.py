"""CLI paths not covered elsewhere: editing hosts, agent failures, rebuilding the local view."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.conftest import CLI
from tests.e2e.helpers import TEST_ROLE, git, launch, make_workspace, wait_for

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHx4ZGtpYqR5Zi1rZXktZm9yLWEtdGVzdC1vbmx5LTAx"


def test_hosts_add_list_show_rm_keep_comments(cli: CLI, tmp_path: Path) -> None:
    inv = tmp_path / "inventory"
    inv.mkdir()
    (inv / "hosts.toml").write_text('# our fleet\n\n[hosts.alpha]\naddress = "10.0.0.1"\n')
    cli.run("-i", str(inv), "hosts", "add", "beta", "--address", "10.0.0.2", "--user", "dev",
            "--label", "gpu", "--capacity", "2", check=True)  # fmt: skip
    listed = cli.json("-i", str(inv), "hosts", "list", "--on", "label:gpu")["hosts"]
    assert [(h["name"], h["user"], h["capacity"]) for h in listed] == [("beta", "dev", 2)]
    shown = cli.json("-i", str(inv), "hosts", "show", "beta")["host"]
    assert shown["source"].endswith("hosts.toml:4") or "hosts.toml" in shown["source"]
    bad = cli.run("-i", str(inv), "hosts", "add", "beta", "--address", "10.0.0.3")
    assert bad.returncode == 2 and "beta" in bad.stderr
    refused = cli.run("-i", str(inv), "hosts", "add", "gamma", "--address", "-oProxyCommand=x")
    assert refused.returncode == 2
    cli.run("-i", str(inv), "hosts", "rm", "alpha", check=True)
    text = (inv / "hosts.toml").read_text()
    assert text.startswith("# our fleet") and "alpha" not in text and "[hosts.beta]" in text


def test_an_agent_that_cannot_be_installed_is_agent_error(cli: CLI, tmp_path: Path) -> None:
    inv = tmp_path / "inv.toml"
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the root should be\n")
    inv.write_text(f'[hosts.local]\ntransport = "local"\nroot = "{blocker}/root"\n')
    data = cli.json("-i", str(inv), "hosts", "check", "--on", "local", ok_codes=(3,))
    entry = data["hosts"][0]
    assert entry["status"] == "agent_error" and entry["verdict"] == "unusable"
    assert "agent" in entry["error"]["message"]


def test_the_local_view_can_be_rebuilt_from_the_hosts(
    cli: CLI, local_inventory: Path, tmp_path: Path, laptop: Path
) -> None:
    ws = make_workspace(tmp_path / "ws")
    (session,) = launch(cli, local_inventory, ws, "--runtime", "shell", "--network", "none",
                        "--task", "true")  # fmt: skip
    wait_for(cli, local_inventory, session["id"])
    db = laptop / "jackin" / "state" / "jackin.db"
    db.unlink()
    assert cli.json("-i", str(local_inventory), "ls", "--cached")["sessions"] == []
    rebuilt = cli.json("-i", str(local_inventory), "ls", "--rebuild")["sessions"]
    assert [row["id"] for row in rebuilt] == [session["id"]]
    assert rebuilt[0]["state"] == "exited"
    cli.run("-i", str(local_inventory), "rm", "--force", session["id"], check=True)


def test_explain_of_a_git_role_leaves_nothing_on_the_laptop(
    cli: CLI, local_inventory: Path, tmp_path: Path, laptop: Path
) -> None:
    role_repo = tmp_path / "role-repo"
    shutil.copytree(TEST_ROLE, role_repo)
    git(role_repo, "init", "-q", "-b", "main")
    git(role_repo, "add", ".")
    git(role_repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "role")
    ws = make_workspace(tmp_path / "ws")
    data = cli.json("-i", str(local_inventory), "explain", "--role", f"git+file://{role_repo}",
                    "--runtime", "demo", "--task", "t", str(ws))  # fmt: skip
    assert data["contracts"][0]["identity"]["role"]["name"] == "test-agent"
    assert not (laptop / "jackin").exists()
    assert not (tmp_path / "host-root").exists()


def test_ls_shows_each_hosts_load_against_its_capacity(
    cli: CLI, local_inventory: Path, tmp_path: Path
) -> None:
    ws = make_workspace(tmp_path / "ws")
    (session,) = launch(cli, local_inventory, ws, "--runtime", "shell", "--network", "none",
                        "--task", "exec sleep infinity")  # fmt: skip
    wait_for(cli, local_inventory, session["id"], {"running"})
    hosts = cli.json("-i", str(local_inventory), "ls")["hosts"]
    assert hosts == [{"name": "local", "status": "ok", "running": 1, "capacity": 4,
                      "agents": "working", "error": None}]  # fmt: skip
    assert "local 1/4 running" in cli.run("-i", str(local_inventory), "ls", check=True).stdout
    cli.run("-i", str(local_inventory), "stop", session["id"], check=True)
    stopped = cli.json("-i", str(local_inventory), "ls")["hosts"][0]
    assert (stopped["running"], stopped["agents"]) == (0, "unknown")
    cli.run("-i", str(local_inventory), "rm", "--force", session["id"], check=True)
