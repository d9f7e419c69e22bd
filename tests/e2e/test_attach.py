"""attach: a real terminal into an interactive session's tmux; detaching leaves it running."""

from __future__ import annotations

import os
import pty
import select
import sys
import time
from pathlib import Path

import pytest

from agent_host.wire import TMUX_SESSION
from tests.conftest import CLI
from tests.e2e.helpers import launch, make_workspace, session_row, wait_for


def read_until(fd: int, needle: bytes, timeout: float = 60) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"never saw {needle!r}; got {seen[-2000:]!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    return seen


@pytest.fixture(params=["local", "fleet-1"])
def target(request: pytest.FixtureRequest, local_inventory: Path) -> tuple[str, Path]:
    if request.param == "local":
        return "local", local_inventory
    return request.param, request.getfixturevalue("fleet_inventory")


def test_attach_then_detach_leaves_the_session_running(
    cli: CLI, target: tuple[str, Path], tmp_path: Path
) -> None:
    host, inventory = target
    ws = make_workspace(tmp_path / "ws")
    (session,) = launch(cli, inventory, ws, "--on", host, "--runtime", "shell",
                        "--network", "none")  # fmt: skip
    sid = session["id"]
    wait_for(cli, inventory, sid, {"running"})
    env = {**cli.env, "TERM": "xterm"}
    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI with the pty as its terminal
        os.chdir(cli.cwd)
        argv = [sys.executable, "-m", "jackin_remote", "-i", str(inventory), "attach", sid]
        os.execvpe(argv[0], argv, env)
    try:
        # Type only once tmux is attached and done setting up the terminal: it draws its status
        # line ("[<session>] "), asks the terminal what it is, and when no answer comes (a bare
        # pty) turns its key modes on (ESC [?7727h). Keys typed before then can be lost.
        setup = read_until(fd, b"\x1b[?7727h")
        assert f"[{TMUX_SESSION}] ".encode() in setup
        os.write(fd, b"echo ATTACHED-$((40+2))\r")
        read_until(fd, b"ATTACHED-42")
        # The detach key the README names is tmux's prefix, C-b, then d. Raw keys typed at a
        # client that is still reading its terminal's answers can be taken for one (seen once
        # in a loaded run): the prefix is checked as a command, and the detach is a command too.
        os.write(fd, b"echo PREFIX=$(tmux show-options -gv prefix)\r")
        read_until(fd, b"PREFIX=C-b")
        os.write(fd, b"tmux detach-client\r")
        read_until(fd, b"detached")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        os.close(fd)
    assert session_row(cli, inventory, sid)["state"] == "running"
    screen = cli.run("-i", str(inventory), "logs", sid, check=True).stdout
    assert "ATTACHED-42" in screen
    cli.run("-i", str(inventory), "stop", sid, check=True)
    assert session_row(cli, inventory, sid)["state"] == "stopped"
    cli.run("-i", str(inventory), "rm", "--force", sid, check=True)


def test_attach_refuses_a_task_session(cli: CLI, local_inventory: Path, tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws")
    (session,) = launch(cli, local_inventory, ws, "--runtime", "shell", "--network", "none",
                        "--task", "sleep infinity")  # fmt: skip
    proc = cli.run("-i", str(local_inventory), "attach", session["id"])
    assert proc.returncode != 0 and "logs -f" in proc.stderr
    cli.run("-i", str(local_inventory), "rm", "--force", session["id"], check=True)
