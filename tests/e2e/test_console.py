"""console: the live full-screen view, driven in a real terminal (tmux) with its keys.

tmux runs the console at a fixed size; the test types keys with send-keys and reads the screen
with capture-pane. It filters to one session, opens the link its agent named (through
$BROWSER), refuses and then confirms a stop, and quits cleanly.
"""

from __future__ import annotations

import re
import secrets
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import CLI
from tests.e2e.helpers import launch, make_workspace, session_row

PR = "https://example.test/acme/app/pull/9"
BLOCKED = (
    "echo 'opened <jackin:pr>"
    + PR
    + "</jackin:pr>'; echo '<jackin:status>blocked</jackin:status>'; sleep infinity"
)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class Screen:
    """A tmux server of its own (-L), one pane running a command at 150x40."""

    def __init__(self, socket: str) -> None:
        self.base = ["tmux", "-L", socket, "-f", "/dev/null"]

    def start(self, script: Path) -> None:
        subprocess.run([*self.base, "new-session", "-d", "-x", "150", "-y", "40",
                        f"sh {shlex.quote(str(script))}"], check=True)  # fmt: skip

    def keys(self, *keys: str) -> None:
        for key in keys:  # characters literally; longer ones are tmux key names (Enter)
            literal = ["-l", key] if len(key) == 1 else [key]
            subprocess.run([*self.base, "send-keys", *literal], check=True)

    def text(self) -> str:
        done = subprocess.run([*self.base, "capture-pane", "-p"], capture_output=True, text=True)
        return done.stdout

    def until(self, ok: Callable[[str], bool], what: str) -> str:
        for _ in range(600):  # a bound on the console getting there, never a timing expectation
            shown = self.text()
            if ok(shown):
                return shown
            time.sleep(0.2)
        raise AssertionError(f"the console never showed {what}:\n{self.text()}")

    def stop(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True)


def console_script(cli: CLI, env: dict[str, str], inventory: Path, ended: Path, *args: str,
                   after: str = "") -> Path:  # fmt: skip
    """A shell script that runs the console with `env` and writes `rc=N` to `ended` (last)."""
    # The terminal's own words (TERM, its size) are tmux's, not the test runner's.
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()
                      if _NAME.match(k) and k not in ("TERM", "COLUMNS", "LINES"))  # fmt: skip
    q = shlex.quote
    script = ended.with_name("console.sh")
    script.write_text(f"unset COLUMNS LINES\n{exports}cd {q(str(cli.cwd))}\n"
                      f"{q(sys.executable)} -m jackin_remote -i {q(str(inventory))} console "
                      f"{' '.join(map(q, args))}\necho rc=$? > {q(str(ended))}.tmp\n{after}"
                      f"mv {q(str(ended))}.tmp {q(str(ended))}\n")  # fmt: skip
    return script


@pytest.fixture
def screen() -> Iterator[Screen]:
    made = Screen(f"jk-console-{secrets.token_hex(4)}")
    try:
        yield made
    finally:
        made.stop()


def _wait(check: Callable[[], bool], what: str) -> None:
    for _ in range(600):  # a bound, never a timing expectation
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"never: {what}")


def test_the_console_shows_the_fleet_live_and_its_keys_open_filter_and_stop(
    cli: CLI, local_inventory: Path, tmp_path: Path, screen: Screen
) -> None:
    ws = make_workspace(tmp_path / "ws")
    (blocked,) = launch(cli, local_inventory, ws, "--runtime", "shell", "--network", "none",
                        "--task", BLOCKED)  # fmt: skip
    (other,) = launch(cli, local_inventory, ws, "--runtime", "shell", "--network", "none",
                      "--task", "sleep infinity")  # fmt: skip
    a, b = blocked["id"], other["id"]

    # $BROWSER gets the link `o` opens; the script records how the console ended.
    seen, ended = tmp_path / "opened", tmp_path / "ended"
    opener = tmp_path / "opener"
    opener.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {seen}\n")
    opener.chmod(0o755)
    env = {**cli.env, "BROWSER": f"{opener} %s"}
    script = console_script(cli, env, local_inventory, ended, "--interval", "0.5")
    screen.start(script)

    shown = screen.until(lambda s: a in s and b in s and "fleet: blocked" in s,
                         "both sessions and the fleet blocked")  # fmt: skip
    assert "q quit" in shown and "hosts: local 2/" in shown, shown

    # Filter to the blocked session: only it is listed, with every link it named.
    screen.keys("/", *a[:6], "Enter")
    shown = screen.until(lambda s: "filter: " + a[:6] in s and b not in s, "the filter")
    assert f"pr: {PR}" in shown and "▸" + a in shown, shown

    screen.keys("o")  # its PR link goes to the laptop's opener
    _wait(seen.exists, "the opener ran")
    assert seen.read_text() == PR + "\n"
    screen.until(lambda s: f"open {a}: done" in s, "that the link was opened")

    # `l` hands the terminal to `logs`; a key gives it back to the console.
    screen.keys("l")
    screen.until(lambda s: "opened" in s and "any key goes back to the console" in s, "its logs")
    screen.keys("Enter")
    screen.until(lambda s: "q quit" in s and f"pr: {PR}" in s, "the console again")

    # Escape clears the filter; then filter to the other one and stop it, asked first.
    screen.keys("Escape", "/", *b[:6], "Enter")
    screen.until(lambda s: a not in s and "▸" + b in s, "the other filter")
    screen.keys("s")
    screen.until(lambda s: f"stop {b} on local?" in s, "the stop question")
    screen.keys("n")
    screen.until(lambda s: "stop: not done" in s, "the stop refused")
    assert session_row(cli, local_inventory, b)["state"] == "running"
    screen.keys("s", "y")
    screen.until(lambda s: f"stop {b}: done" in s, "the stop done")
    assert session_row(cli, local_inventory, b)["state"] == "stopped"
    assert session_row(cli, local_inventory, a)["state"] == "running"

    screen.keys("q")
    _wait(ended.exists, "the console ended")
    assert ended.read_text() == "rc=0\n"
    for sid in (a, b):
        cli.run("-i", str(local_inventory), "rm", "--force", sid, check=True)


def test_a_attaches_to_an_interactive_session_and_detaching_comes_back_to_the_console(
    cli: CLI, local_inventory: Path, tmp_path: Path, screen: Screen
) -> None:
    ws = make_workspace(tmp_path / "ws")
    (session,) = launch(cli, local_inventory, ws, "--runtime", "shell", "--network", "none")
    sid = session["id"]
    ended = tmp_path / "ended"
    screen.start(console_script(cli, dict(cli.env), local_inventory, ended))
    screen.until(lambda s: "▸" + sid in s and "q quit" in s, "the session")
    screen.keys("a")
    screen.until(lambda s: "q quit" not in s, "the session's terminal")
    screen.keys(*"echo INSIDE-$((6*7))", "Enter")
    screen.until(lambda s: "INSIDE-42" in s, "the command run inside the sandbox")
    screen.keys("C-b", "d")  # tmux's detach: the session runs on, the console comes back
    screen.until(lambda s: "▸" + sid in s and "q quit" in s, "the console again")
    screen.keys("q")
    _wait(ended.exists, "the console ended")
    assert ended.read_text() == "rc=0\n"
    assert session_row(cli, local_inventory, sid)["state"] == "running"
    cli.run("-i", str(local_inventory), "rm", "--force", sid, check=True)


def test_the_console_shows_what_the_selected_sessions_proxy_denied(
    cli: CLI, local_inventory: Path, tmp_path: Path, screen: Screen
) -> None:
    ws = make_workspace(tmp_path / "ws")
    ask = ("python3 -c \"import urllib.request as u\ntry: u.urlopen('http://blocked.example.test/')"
           "\nexcept Exception as e: print(e)\"; sleep infinity")  # fmt: skip
    (session,) = launch(cli, local_inventory, ws, "--runtime", "shell", "--network", "allowlist",
                        "--task", ask)  # fmt: skip
    sid = session["id"]
    ended = tmp_path / "ended"
    screen.start(console_script(cli, dict(cli.env), local_inventory, ended, "--interval", "0.5"))
    shown = screen.until(lambda s: "denied: blocked.example.test:80" in s, "the denial")
    assert "▸" + sid in shown and "deny by default" in shown, shown
    screen.keys("q")
    _wait(ended.exists, "the console ended")
    cli.run("-i", str(local_inventory), "rm", "--force", sid, check=True)


def test_q_ends_the_console_while_a_host_does_not_answer_and_gives_the_terminal_back(
    cli: CLI, local_inventory: Path, tmp_path: Path, screen: Screen
) -> None:
    ended, modes = tmp_path / "ended", tmp_path / "modes"
    env = {**cli.env, "JACKIN_TEST_PAUSE_AT": "host-list"}  # session.list waits for the test
    script = console_script(cli, env, local_inventory, ended,
                            after=f"stty -a > {shlex.quote(str(modes))}\n")  # fmt: skip
    pause = tmp_path / "host-root" / "test-pause"
    screen.start(script)
    try:
        _wait((pause / "host-list.reached").exists, "the host got session.list")
        screen.keys("q")
        _wait(ended.exists, "the console ended without the host's answer")
    finally:
        (pause / "host-list.resume").touch()  # the agent carries on and exits
    assert ended.read_text() == "rc=0\n"
    words = modes.read_text().split()
    assert "echo" in words and "icanon" in words and "isig" in words, words  # as it was before


def test_sigterm_ends_the_console_with_143_and_gives_the_terminal_back(
    cli: CLI, local_inventory: Path, tmp_path: Path, screen: Screen
) -> None:
    ended, modes = tmp_path / "ended", tmp_path / "modes"
    script = console_script(cli, dict(cli.env), local_inventory, ended,
                            after=f"stty -a > {shlex.quote(str(modes))}\n")  # fmt: skip
    screen.start(script)
    screen.until(lambda s: "q quit" in s, "the console")
    pattern = f"jackin_remote -i {local_inventory} console"
    killed = subprocess.run(["pkill", "-TERM", "-f", pattern], capture_output=True)
    assert killed.returncode == 0, killed.stderr
    _wait(ended.exists, "the console ended")
    assert ended.read_text() == "rc=143\n"
    words = modes.read_text().split()
    assert "echo" in words and "icanon" in words and "isig" in words, words


def test_the_console_refuses_to_run_without_a_terminal(cli: CLI, local_inventory: Path) -> None:
    said = cli.run("-i", str(local_inventory), "console")
    assert said.returncode == 2, (said.stdout, said.stderr)
    assert "the console needs a terminal" in said.stderr and "ls --watch" in said.stderr
