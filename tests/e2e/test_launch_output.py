"""What a person reads after `launch`, through the real CLI against real hosts: one contract per
batch, build output folded into a line per host (kept for --verbose and shown on failure), the
next steps (attach for an interactive session), and an `ls` that fits 80 columns.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests import fleet as fleet_mod
from tests.conftest import CLI
from tests.e2e.helpers import TEST_ROLE, make_workspace


def fresh_role(tmp_path: Path, *, fail: bool = False) -> tuple[Path, str]:
    """The test role plus a RUN step printing a nonce (never a cached layer: the engine really
    builds, and streams those lines); with `fail`, the step then fails."""
    role = tmp_path / "role"
    shutil.copytree(TEST_ROLE, role)
    nonce = f"build-nonce-{uuid.uuid4().hex}"
    with (role / "Dockerfile").open("a") as dockerfile:
        dockerfile.write(f"RUN for i in 1 2 3; do echo {nonce}-$i; done" +
                         (" && false\n" if fail else "\n"))  # fmt: skip
    return role, nonce


def remove_images(host: str, image: str) -> None:
    docker = () if host == "local" else ("docker", "exec", fleet_mod.container(host))
    listed = subprocess.run([*docker, "docker", "images", "--format", "{{.Repository}}:{{.Tag}}"],
                            capture_output=True, text=True)  # fmt: skip
    ours = [tag for tag in listed.stdout.split() if tag.startswith(image)]  # and -u<uid>
    if ours:
        subprocess.run([*docker, "docker", "rmi", "-f", *ours], capture_output=True)


@pytest.fixture(params=["local", "fleet"])
def target(request: pytest.FixtureRequest, local_inventory: Path) -> tuple[list[str], Path]:
    """Two sessions on the local host; or one on each of two fleet hosts (over SSH, where the
    batch's sessions differ by host and host paths too)."""
    if request.param == "local":
        return ["local"], local_inventory
    return ["fleet-1", "fleet-2"], request.getfixturevalue("fleet_inventory")


def test_count_2_prints_one_contract_folded_builds_and_next_steps(
    cli: CLI, target: tuple[list[str], Path], tmp_path: Path
) -> None:
    hosts, inventory = target
    ws = make_workspace(tmp_path / "ws")
    role, nonce = fresh_role(tmp_path)
    args = ["-i", str(inventory), "launch", "--on", ",".join(hosts), "--count", "2",
            "--role", str(role), "--runtime", "shell", "--network", "none", "--task", "true",
            str(ws)]  # fmt: skip
    explained = cli.json(*args[:2], "explain", *args[3:])["contracts"]
    assert len(explained) == 2  # --json keeps every contract
    image = explained[0]["identity"]["image"]
    launched: list[str] = []
    try:
        proc = cli.run(*args, timeout=600)
        launched += re.findall(r"launched (\w+) on", proc.stdout)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert len(launched) == 2, proc.stdout
        # One contract for the batch, then a row per session naming its host and checkout.
        assert proc.stdout.count("session contract ") == 1, proc.stdout
        assert "this batch: 2 sessions" in proc.stdout
        batch = proc.stdout.split("this batch: 2 sessions", 1)[1]
        for sid in launched:
            row = next(r for r in batch.splitlines() if r.startswith(sid))
            assert f"/sessions/{sid}/work" in row, row
            assert any(f" {host} " in row for host in hosts), row
        # Build output is folded: one line per host that built, none of the build's own lines.
        assert nonce not in proc.stderr + proc.stdout
        built = [r for r in proc.stderr.splitlines() if "role image built (" in r]
        assert sorted(r.split(":", 1)[0] for r in built) == sorted(hosts), proc.stderr
        assert "--verbose shows them" in built[0]
        # Next steps name every session; a task session has nothing to attach to.
        steps = proc.stdout.split("next steps:", 1)[1]
        for sid in launched:
            assert f"jackin-remote logs -f {sid}" in steps and f"jackin-remote pull {sid}" in steps
        assert "attach" not in steps
        # And `ls` at 80 columns shows each id, host and state whole.
        narrow = CLI(env={**cli.env, "COLUMNS": "80"}, cwd=cli.cwd)
        listing = narrow.run("-i", str(inventory), "ls", "--on", ",".join(hosts))
        assert listing.returncode == 0, listing.stderr
        assert "\u2026" not in listing.stdout
        for sid in launched:
            row = next(r for r in listing.stdout.splitlines() if sid in r)
            assert any(f" {host} " in row for host in hosts), row
            assert re.search(r" (starting|running|exited) ", row), row
        assert all(len(r) <= 80 for r in listing.stdout.splitlines()), listing.stdout
    finally:
        for sid in launched:  # only this test's: fleet hosts are shared with other tests
            cli.run("-i", str(inventory), "rm", "--force", sid)
        for host in hosts:
            remove_images(host, image)


def test_a_failed_build_prints_its_whole_log(
    cli: CLI, local_inventory: Path, tmp_path: Path
) -> None:
    ws = make_workspace(tmp_path / "ws")
    role, nonce = fresh_role(tmp_path, fail=True)
    proc = cli.run("-i", str(local_inventory), "launch", "--role", str(role), "--runtime",
                   "shell", "--task", "true", str(ws), timeout=600)  # fmt: skip
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "build output (" in proc.stderr, proc.stderr
    for index in (1, 2, 3):
        assert f"{nonce}-{index}" in proc.stderr, proc.stderr
    assert "next steps:" not in proc.stdout  # nothing was made


def test_interactive_launch_says_how_to_attach_and_detach(
    cli: CLI, local_inventory: Path, tmp_path: Path
) -> None:
    ws = make_workspace(tmp_path / "ws")
    proc = cli.run("-i", str(local_inventory), "launch", "--role", TEST_ROLE, "--runtime",
                   "shell", "--network", "none", str(ws), timeout=600)  # fmt: skip
    (sid,) = re.findall(r"launched (\w+) on", proc.stdout) or [""]
    try:
        assert proc.returncode == 0 and sid, proc.stdout + proc.stderr
        steps = proc.stdout.split("next steps:", 1)[1]
        assert f"jackin-remote attach {sid}" in steps
        assert "detach: Ctrl-b d" in steps and "Ctrl-b Ctrl-b d" in steps  # nested tmux
        assert f"jackin-remote pull {sid}" in steps
    finally:
        if sid:
            cli.run("-i", str(local_inventory), "rm", "--force", sid)
