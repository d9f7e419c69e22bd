"""Ctrl-C during a launch says, host by host, what it left: stopped at a named step (testhooks),
never by timing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent_host import testhooks
from tests.conftest import CLI
from tests.e2e.helpers import TEST_ROLE, make_workspace


def _interrupt_at(cli: CLI, inventory: Path, ws: Path, step: str) -> tuple[int, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "jackin_remote", "-i", str(inventory), "launch", "--role",
         TEST_ROLE, "--runtime", "shell", "--network", "none", "--task", "true", str(ws)],
        env={**cli.env, testhooks.ENV: step}, cwd=cli.cwd,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    for text in proc.stderr:
        if text.strip() == testhooks.MARKER + step:
            break
    else:
        raise AssertionError(f"launch ended before {step}")
    os.kill(proc.pid, signal.SIGINT)
    rest = proc.stderr.read()
    return proc.wait(timeout=120), " ".join(rest.split())


@pytest.mark.parametrize("step", ["role-image", "create-reply"])
def test_ctrl_c_during_a_launch_says_what_it_left(
    cli: CLI, local_inventory: Path, tmp_path: Path, step: str
) -> None:
    ws = make_workspace(tmp_path / "ws")
    code, said = _interrupt_at(cli, local_inventory, ws, step)
    assert code == 130, said
    assert "interrupted: the launch stopped; nothing was undone." in said
    sessions = cli.json("-i", str(local_inventory), "ls")["sessions"]
    if step == "role-image":
        assert "local: no session was created" in said
        assert sessions == []
    else:
        (session,) = sessions  # the host made it; the laptop's ls finds it
        assert f"local: session {session['id']} may exist" in said
        assert f"jackin-remote rm --force {session['id']}" in said
        cli.run("-i", str(local_inventory), "rm", "--force", session["id"], check=True)
