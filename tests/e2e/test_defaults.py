"""Defaults and the everyday commands (issue 10, items 8 and 10), through the CLI in local mode:
the operator's config file and where each value came from, a workspace config applied only once
approved, --runtime required or inferred, relative roles, `start`, bulk `rm`, `logs -f` of an
interactive session, shell completion."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from agent_host import layout
from agent_host.wire import TMUX_SESSION
from tests.conftest import CLI
from tests.e2e.helpers import TEST_ROLE, launch, make_workspace, session_row, wait_for


def _operator_config(laptop: Path, text: str) -> Path:
    path = laptop / "jackin" / "config" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _one_runtime_role(where: Path, runtime: str) -> Path:
    shutil.copytree(TEST_ROLE, where)
    manifest = where / "jackin.role.toml"
    manifest.write_text(manifest.read_text().replace('["shell", "demo"]', f'["{runtime}"]'))
    return where


def test_config_show_names_every_path_and_where_each_value_came_from(
    cli: CLI, laptop: Path, local_inventory: Path, tmp_path: Path
) -> None:
    config = _operator_config(laptop, '[launch]\nrole = "roles/mine"\nruntime = "shell"\n'
                                      'on = "local"\n\n[limits]\nmemory = "256m"\n')  # fmt: skip
    # A relative role in the operator's file is read against the file's own directory.
    shutil.copytree(TEST_ROLE, config.parent / "roles" / "mine")
    ws = make_workspace(tmp_path / "ws")
    shown = cli.json("-i", str(local_inventory), "config", "show", str(ws))
    paths = shown["paths"]
    assert paths["config"] == {"path": str(config), "exists": True}
    assert paths["workspace_config"]["path"] == str(ws / ".jackin" / "config.toml")
    assert paths["workspace_config"]["status"] == "absent"
    assert paths["state"]["path"] == str(laptop / "jackin" / "state")
    assert paths["cache"]["path"] == str(laptop / "jackin" / "cache")
    assert paths["inventory"]["path"] == str(local_inventory)
    values = shown["values"]
    assert values["role"] == {"value": str(config.parent / "roles" / "mine"),
                              "source": f"{config}:2", "note": ""}  # fmt: skip
    assert values["runtime"]["source"] == f"{config}:3"
    assert values["limits.memory"] == {"value": "256m", "source": f"{config}:7", "note": ""}
    assert values["limits.cpus"]["source"] == "inventory"
    human = cli.run("-i", str(local_inventory), "config", "show", str(ws), check=True).stdout
    assert str(config) in human and "256m" in human

    # No --role, --runtime or --on: the config's, from another directory than the role's.
    (contract,) = cli.json("-i", str(local_inventory), "explain", str(ws))["contracts"]
    assert contract["identity"]["role"]["source"] == str(config.parent / "roles" / "mine")
    assert contract["identity"]["runtime"] == "shell"
    assert contract["limits"]["memory"] == "256m"
    # A flag wins over the config.
    (flagged,) = cli.json("-i", str(local_inventory), "explain", "--runtime", "demo",
                          str(ws))["contracts"]  # fmt: skip
    assert flagged["identity"]["runtime"] == "demo"


def test_a_bad_config_is_named_by_file_line_and_field(cli: CLI, laptop: Path) -> None:
    config = _operator_config(laptop, '[launch]\non = "local"\nruntime = "clade"\n')
    proc = cli.run("config", "show")
    assert proc.returncode == 2
    assert f"{config}:3: launch.runtime: unknown runtime 'clade'" in proc.stderr


def test_a_workspace_config_applies_only_once_approved(
    cli: CLI, local_inventory: Path, tmp_path: Path
) -> None:
    ws = make_workspace(tmp_path / "ws")
    ws_config = ws / ".jackin" / "config.toml"
    ws_config.parent.mkdir()
    ws_config.write_text('[launch]\nruntime = "demo"\n\n[limits]\npids = 100\n')
    inv = str(local_inventory)
    refused = cli.run("-i", inv, "explain", "--role", TEST_ROLE, str(ws))
    assert refused.returncode == 2, refused.stderr
    assert "is not approved" in refused.stderr
    assert f"jackin-remote config approve {ws}" in refused.stderr
    refused_launch = cli.run("-i", inv, "launch", "--role", TEST_ROLE, "--task", "t", str(ws))
    assert refused_launch.returncode == 2 and not (tmp_path / "host-root").exists()

    shown = cli.json("-i", inv, "config", "show", str(ws))
    assert shown["paths"]["workspace_config"]["status"] == "not approved"
    held = shown["values"]["runtime"]["not_applied"]
    assert held["value"] == "demo" and held["source"] == f"{ws_config}:2"

    cli.run("-i", inv, "config", "approve", str(ws), check=True)
    (contract,) = cli.json("-i", inv, "explain", "--role", TEST_ROLE, str(ws))["contracts"]
    assert contract["identity"]["runtime"] == "demo" and contract["limits"]["pids"] == 100
    assert cli.json("-i", inv, "config", "show", str(ws))["values"]["runtime"]["source"] == (
        f"{ws_config}:2"
    )

    # A changed file needs a new approval.
    ws_config.write_text('[launch]\nruntime = "shell"\non = "all"\n')
    again = cli.run("-i", inv, "explain", "--role", TEST_ROLE, str(ws))
    assert again.returncode == 2 and "changed since you approved it" in again.stderr
    # The operator may also leave it aside.
    (ignored,) = cli.json("-i", inv, "explain", "--role", TEST_ROLE, "--runtime", "shell",
                          "--ignore-workspace-config", str(ws))["contracts"]  # fmt: skip
    assert ignored["limits"]["pids"] == 512


def test_runtime_is_required_unless_the_role_declares_one(
    cli: CLI, local_inventory: Path, tmp_path: Path
) -> None:
    ws = make_workspace(tmp_path / "ws")
    inv = str(local_inventory)
    # test-agent declares shell and demo: the task is never silently run as a shell command.
    proc = cli.run("-i", inv, "explain", "--role", TEST_ROLE, "--task", "hi", str(ws))
    assert proc.returncode == 2
    assert "--runtime is required" in proc.stderr and "shell, demo" in proc.stderr
    role = _one_runtime_role(tmp_path / "demo-only", "demo")
    (contract,) = cli.json("-i", inv, "explain", "--role", str(role), "--task", "hi",
                           str(ws))["contracts"]  # fmt: skip
    assert contract["identity"]["runtime"] == "demo"


def test_a_relative_role_is_read_against_the_current_directory(
    cli: CLI, local_inventory: Path, tmp_path: Path
) -> None:
    ws = make_workspace(tmp_path / "ws")
    _one_runtime_role(tmp_path / "roles" / "here", "demo")
    (contract,) = cli.json("-i", str(local_inventory), "explain", "--role", "roles/here",
                           str(ws))["contracts"]  # fmt: skip
    assert contract["identity"]["role"]["source"] == str(tmp_path / "roles" / "here")
    elsewhere = CLI(env=cli.env, cwd=ws)
    missing = elsewhere.run("-i", str(local_inventory), "explain", "--role", "roles/here", ".")
    assert missing.returncode != 0 and str(ws / "roles" / "here") in missing.stderr


def test_start_runs_a_stopped_session_again(
    cli: CLI, local_inventory: Path, tmp_path: Path
) -> None:
    ws = make_workspace(tmp_path / "ws")
    inv = str(local_inventory)
    (session,) = launch(cli, local_inventory, ws, "--runtime", "shell", "--network", "none",
                        "--task", "echo started >> starts.txt; exec sleep infinity")  # fmt: skip
    sid = session["id"]
    starts = Path(layout.work_dir(str(tmp_path / "host-root"), sid)) / "starts.txt"
    wait_for(cli, local_inventory, sid, {"running"})
    busy = cli.run("-i", inv, "start", sid)
    assert busy.returncode != 0 and "already running" in busy.stderr
    assert cli.json("-i", inv, "stop", sid)["state"] == "stopped"
    started = cli.json("-i", inv, "start", sid)
    assert started["state"] == "running"
    assert session_row(cli, local_inventory, sid)["state"] == "running"
    wait_for(cli, local_inventory, sid, {"running"})
    deadline = time.monotonic() + 120  # the task runs again in the same checkout: a bound
    while starts.read_text().count("started") < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert starts.read_text() == "started\nstarted\n"
    cli.run("-i", inv, "rm", "--force", sid, check=True)


def test_rm_takes_several_ids_and_all_exited(
    cli: CLI, local_inventory: Path, tmp_path: Path
) -> None:
    ws = make_workspace(tmp_path / "ws")
    inv = str(local_inventory)
    done = launch(cli, local_inventory, ws, "--runtime", "shell", "--network", "none",
                  "--count", "3", "--task", "true")  # fmt: skip
    (running,) = launch(cli, local_inventory, ws, "--runtime", "shell", "--network", "none",
                        "--task", "exec sleep infinity")  # fmt: skip
    for entry in done:
        wait_for(cli, local_inventory, entry["id"], {"exited"})
    first, second, third = (entry["id"] for entry in done)

    removed = cli.json("-i", inv, "rm", first, second)
    assert sorted(e["session"] for e in removed["removed_sessions"]) == sorted([first, second])
    assert removed["failed"] == []
    swept = cli.json("-i", inv, "rm", "--all-exited")
    assert [e["session"] for e in swept["removed_sessions"]] == [third]
    left = [row["id"] for row in cli.json("-i", inv, "ls")["sessions"]]
    assert left == [running["id"]]
    nothing = cli.run("-i", inv, "rm")
    assert nothing.returncode == 2 and "--all-exited" in nothing.stderr
    cli.run("-i", inv, "rm", "--force", running["id"], check=True)


def test_logs_follow_streams_an_interactive_session_until_it_ends(
    cli: CLI, local_inventory: Path, tmp_path: Path
) -> None:
    ws = make_workspace(tmp_path / "ws")
    inv = str(local_inventory)
    (session,) = launch(cli, local_inventory, ws, "--runtime", "shell", "--network", "none")
    sid = session["id"]
    wait_for(cli, local_inventory, sid, {"running"})
    follow = subprocess.Popen(
        [sys.executable, "-m", "jackin_remote", "-i", inv, "logs", "-f", sid],
        env=cli.env, cwd=cli.cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert follow.stdout is not None
        # Typed after logs -f started: it can only be seen by following the pane.
        subprocess.run(["docker", "exec", session["container"], "tmux", "send-keys", "-t",
                        TMUX_SESSION, "echo MARKER-$((6*7))", "Enter"], check=True)  # fmt: skip
        seen = []
        for text in follow.stdout:  # blocks until the line comes, or logs -f ends
            seen.append(text)
            if text.strip() == "MARKER-42":
                break
        assert any(t.strip() == "MARKER-42" for t in seen), (seen, follow.stderr)
        cli.run("-i", inv, "stop", sid, check=True)
        assert follow.wait(timeout=120) == 0
    finally:
        if follow.poll() is None:
            follow.kill()
        cli.run("-i", inv, "rm", "--force", sid)


def test_completion_installs_into_a_temp_home_and_completes_names(
    cli: CLI, laptop: Path, local_inventory: Path
) -> None:
    home = laptop / "home"
    env = {**cli.env, "HOME": str(home), "SHELL": "/bin/bash"}
    installer = CLI(env=env, cwd=cli.cwd)
    installer.run("--install-completion", "bash", check=True)
    script = home / ".bash_completions" / "jackin-remote.sh"
    assert f"source '{script}'" in (home / ".bashrc").read_text()
    assert "_JACKIN_REMOTE_COMPLETE=complete_bash" in script.read_text()

    def complete(words: str) -> list[str]:
        parts = words.split(" ")
        proc = subprocess.run(
            [sys.executable, "-m", "jackin_remote"], capture_output=True, text=True,
            env={**env, "_JACKIN_REMOTE_COMPLETE": "complete_bash", "COMP_WORDS": words,
                 "COMP_CWORD": str(len(parts) - 1)}, stdin=subprocess.DEVNULL, cwd=cli.cwd,
        )  # fmt: skip
        return proc.stdout.split()

    assert "launch" in complete("jackin-remote la")
    assert complete(f"jackin-remote -i {local_inventory} ls --on lo") == ["local"]
    # Session ids come from the laptop's view (no host is asked).
    from jackin_remote.store import Store

    Store().record("local", {"id": "abcd2345", "state": "exited", "name": None})
    assert complete("jackin-remote logs ab") == ["abcd2345"]
    assert complete("jackin-remote rm x") == []
