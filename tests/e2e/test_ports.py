"""`ports SESSION --publish`: a sandbox's service answers on the laptop's loopback, through the
host (over SSH for a fleet host), shows in `ports` and `ls --json`, and is gone once the
session stops: the forwarding command returns by itself."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import CLI
from tests.e2e.helpers import launch, make_workspace, wait_for

SERVE = "echo served-from-the-sandbox > page.txt; exec python3 -m http.server 8000"


@pytest.fixture(params=["local", "fleet-1"])
def target(request: pytest.FixtureRequest, local_inventory: Path) -> tuple[str, Path]:
    if request.param == "local":
        return "local", local_inventory
    return request.param, request.getfixturevalue("fleet_inventory")


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return str(answer.read().decode())


def test_a_published_port_answers_on_the_laptop_until_the_session_stops(
    cli: CLI, target: tuple[str, Path], tmp_path: Path
) -> None:
    host, inventory = target
    ws = make_workspace(tmp_path / "ws")
    (session,) = launch(cli, inventory, ws, "--on", host, "--runtime", "shell", "--network",
                        "allowlist", "--task", SERVE)  # fmt: skip
    sid = session["id"]
    wait_for(cli, inventory, sid, {"running"}, on=host)
    argv = [sys.executable, "-m", "jackin_remote", "-i", str(inventory), "ports", sid,
            "--publish", "0:8000", "--json"]  # fmt: skip
    forwarding = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=cli.env, cwd=cli.cwd)  # fmt: skip
    try:
        assert forwarding.stdout is not None
        mapping = json.loads(forwarding.stdout.readline())  # printed once it listens
        url = f"http://{mapping['local']}/page.txt"
        for _ in range(300):  # a bound on the sandbox's server starting, not a timing test
            try:
                page = _get(url)
                break
            except OSError:
                time.sleep(0.2)
        else:
            raise AssertionError(f"{url} never answered")
        assert page.strip() == "served-from-the-sandbox"
        listed = cli.json("-i", str(inventory), "ports", sid)["ports"]
        assert [(p["local"], p["remote_port"]) for p in listed] == [(mapping["local"], 8000)]
        rows = cli.json("-i", str(inventory), "ls", "--on", host)["sessions"]
        (row,) = [r for r in rows if r["id"] == sid]
        assert row["ports"] == [{"local": mapping["local"], "remote_port": 8000}]

        cli.run("-i", str(inventory), "stop", sid, check=True)
        assert forwarding.wait(timeout=120) == 0, (
            forwarding.stderr.read() if forwarding.stderr else ""
        )
        with pytest.raises(OSError):
            _get(url)
        assert cli.json("-i", str(inventory), "ports", sid)["ports"] == []
    finally:
        if forwarding.poll() is None:
            forwarding.kill()
        forwarding.wait()
    cli.run("-i", str(inventory), "rm", "--force", sid, check=True)


def test_a_session_without_a_network_has_no_port_to_publish(
    cli: CLI, local_inventory: Path, tmp_path: Path
) -> None:
    ws = make_workspace(tmp_path / "ws")
    (session,) = launch(cli, local_inventory, ws, "--runtime", "shell", "--network", "none",
                        "--task", "sleep infinity")  # fmt: skip
    wait_for(cli, local_inventory, session["id"], {"running"})
    done = cli.run("-i", str(local_inventory), "ports", session["id"], "--publish", "8000")
    assert done.returncode != 0 and "network none" in done.stderr, done.stderr
    bad = cli.run("-i", str(local_inventory), "ports", session["id"], "--publish", "x:80")
    assert bad.returncode == 2 and "expected PORT or LOCAL:PORT" in bad.stderr
    cli.run("-i", str(local_inventory), "rm", "--force", session["id"], check=True)
