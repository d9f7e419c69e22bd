"""Untrusted text never drives the terminal: role build output, agent logs, workspace file names
in errors and a compromised host's records are shown literally, through the real CLI.

Each attack carries rich markup (`[/usr/lib]`, `[/b]`, `[/red]`: rich used to read them as
closing tags and crash), OSC 52 (clipboard write), OSC 0 (window title), a screen clear, a `\\r`
overwrite, BEL, a C1 CSI and a bidi override.
"""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests import fleet as fleet_mod
from tests.conftest import CLI
from tests.e2e.helpers import TEST_ROLE, launch, make_workspace, wait_for

# As printf(1) writes it (octal escapes), and what it prints.
PRINTF_ATTACK = (
    r"[/usr/lib] x[/b] [/red]\033]52;c;cHduZWQ=\007\033]0;pwned\007\033[2J\rfake prompt"
    r" \302\233" r"31m \342\200\256evil\n"
)  # fmt: skip
ATTACK = "[/usr/lib] x[/b] [/red]\x1b]52;c;cHduZWQ=\x07\x1b]0;pwned\x07\x1b[2J\rfake prompt" \
    " \x9b31m \u202eevil\n"  # fmt: skip
SHOWN = "[/usr/lib] x[/b] [/red]\\x1b]52;c;cHduZWQ=\\x07\\x1b]0;pwned\\x07\\x1b[2J\\rfake prompt" \
    " \\x9b31m \\u202eevil"  # fmt: skip


def assert_inert(output: str) -> None:
    """No escape sequence, BEL, C1 control, bidi override or overwrite of the data's own."""
    output = re.sub(r"\x1b\[[0-9;]*m", "", output)  # rich's colours, when on a terminal
    for char in ("\x1b", "\x07", "\x08", "\x9b", "\u202e"):
        assert char not in output, (char, output[-3000:])
    assert re.search(r"\r(?!\n)", output) is None, output[-3000:]  # a pty ends lines with \r\n


def on_pty(cli: CLI, *args: str) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal as stdout and stderr; everything it wrote, decoded."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "jackin_remote", *args], env={**cli.env, "TERM": "xterm"},
        cwd=cli.cwd, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
    )  # fmt: skip
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: every writer closed its end (the CLI exited)
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    return proc.wait(timeout=600), seen.decode(errors="replace")


def hostile_role(tmp_path: Path) -> Path:
    """The test role plus a RUN step that prints the attack (a fresh nonce: never a cached
    layer, so the engine really runs it and streams its output)."""
    role = tmp_path / "role"
    shutil.copytree(TEST_ROLE, role)
    nonce = uuid.uuid4().hex
    with (role / "Dockerfile").open("a") as dockerfile:
        dockerfile.write(f"RUN printf '{PRINTF_ATTACK}' && echo build-nonce-{nonce}\n")
    return role


@pytest.fixture(params=["local", "fleet-1"])
def target(request: pytest.FixtureRequest, local_inventory: Path) -> tuple[str, Path]:
    """The local host, and a fleet host: the progress events cross an SSH channel there."""
    if request.param == "local":
        return "local", local_inventory
    return request.param, request.getfixturevalue("fleet_inventory")


def test_role_build_output_with_markup_and_escapes_is_shown_inert(
    cli: CLI, target: tuple[str, Path], tmp_path: Path
) -> None:
    host, inventory = target
    ws = make_workspace(tmp_path / "ws")
    role = hostile_role(tmp_path)
    args = ["-i", str(inventory), "launch", "--on", host, "--role", str(role), "--runtime",
            "shell", "--network", "none", "--task", "true", str(ws)]  # fmt: skip
    image = cli.json(*args[:2], "explain", *args[3:])["contracts"][0]["identity"]["image"]
    docker = () if host == "local" else ("docker", "exec", fleet_mod.container(host))
    launched: list[str] = []
    try:
        # Before the fix, `[/usr/lib]` raised inside the progress listener, killed the RPC
        # reader, and launch waited for ever: the timeout is only a guard for that failure.
        proc = cli.run(*args, "--verbose", timeout=300)  # build output is folded without it
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "build-nonce-" in proc.stderr and "Traceback" not in proc.stderr
        assert SHOWN in proc.stderr
        launched += re.findall(r"launched (\w+) on", proc.stdout)
        assert launched, proc.stdout
        assert_inert(proc.stdout)
        assert_inert(proc.stderr)
    finally:
        for sid in launched:  # only this test's: fleet-1 is shared with other tests
            cli.run("-i", str(inventory), "rm", "--force", sid)
        listed = subprocess.run(
            [*docker, "docker", "images", "--format", "{{.Repository}}:{{.Tag}}"],
            capture_output=True,
            text=True,
        )
        ours = [tag for tag in listed.stdout.split() if tag.startswith(image)]  # and -u<uid>
        if ours:
            subprocess.run([*docker, "docker", "rmi", "-f", *ours], capture_output=True)


def test_agent_logs_and_diff_show_control_characters_visibly(
    cli: CLI, local_inventory: Path, tmp_path: Path
) -> None:
    ws = make_workspace(tmp_path / "ws")
    inv = str(local_inventory)
    (session,) = launch(cli, local_inventory, ws, "--runtime", "shell", "--network", "none",
                        "--task", f"printf '{PRINTF_ATTACK}' | tee evil.txt")  # fmt: skip
    sid = session["id"]
    wait_for(cli, local_inventory, sid)

    code, shown = on_pty(cli, "-i", inv, "logs", sid)
    assert code == 0, shown
    assert SHOWN in shown.replace("\r\n", "\n")
    assert_inert(shown)
    piped = cli.run("-i", inv, "logs", sid, check=True).stdout
    assert SHOWN in piped
    assert_inert(piped)

    # --raw passes the agent's bytes through; --json carries them exactly (JSON-escaped).
    raw = subprocess.run(
        [sys.executable, "-m", "jackin_remote", "-i", inv, "logs", sid, "--raw"],
        env=cli.env,
        cwd=cli.cwd,
        capture_output=True,
        check=True,
    ).stdout
    assert ATTACK.encode() in raw.replace(b"\r\n", b"\n")  # bytes: no newline translation
    text = cli.json("-i", inv, "logs", sid)["text"]
    assert ATTACK.rstrip("\n") in text.replace("\r\n", "\n")

    # The same text written to a file reaches `diff` (a "+" line), shown the same way.
    code, diff = on_pty(cli, "-i", inv, "diff", sid)
    assert code == 0 and "+" + SHOWN in diff.replace("\r\n", "\n"), diff
    assert_inert(diff)
    cli.run("-i", inv, "rm", "--force", sid, check=True)


@pytest.mark.parametrize("case", ["worktree", "git-error", "include"])
def test_hostile_file_names_in_errors_are_shown_literally(
    cli: CLI, local_inventory: Path, tmp_path: Path, case: str
) -> None:
    # A file name holds no "/": "x[" / "b][bold]..." is the path ".../x[/b][bold]...".
    leaf = "b][bold][/red]\x1b]0;pwned\x07\x1b[2J\rY\u202e"
    name = "x[/" + leaf
    shown = "x[/b][bold][/red]\\x1b]0;pwned\\x07\\x1b[2J\\rY\\u202e"
    extra: list[str] = []
    if case == "worktree":  # the error names the workspace directory itself
        ws = tmp_path / "x[" / leaf
        ws.mkdir(parents=True)
        (ws / ".git").write_text("gitdir: /nowhere\n")
    elif case == "git-error":  # git's own error message, about a directory it was given
        ws = make_workspace(tmp_path / "x[" / leaf)
        (ws / ".git" / "index").write_bytes(b"not an index, and long enough to be read" * 4)
    else:  # a file name the user passed on, quoted back
        ws = make_workspace(tmp_path / "ws")
        extra = ["--include", f"{name}.env"]
    args = ["-i", str(local_inventory), "explain", "--role", TEST_ROLE, "--runtime", "shell",
            *extra, str(ws)]  # fmt: skip
    proc = cli.run(*args)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: ")
    assert shown in proc.stderr.replace("\n", ""), proc.stderr
    assert_inert(proc.stderr)
    code, on_terminal = on_pty(cli, *args)
    assert code == 2 and "x[/b][bold][/red]" in on_terminal, on_terminal
    assert_inert(on_terminal)
    # --json keeps the message exact: JSON escaping is safe by itself.
    data = json.loads(cli.run(*args, "--json").stdout)
    assert (repr(name)[1:-1] if case == "include" else name) in data["error"]["message"]


def test_ls_survives_a_compromised_hosts_session_records(
    cli: CLI, local_inventory: Path, tmp_path: Path
) -> None:
    ws = make_workspace(tmp_path / "ws")
    inv = str(local_inventory)
    (session,) = launch(cli, local_inventory, ws, "--runtime", "shell", "--network", "none",
                        "--task", "true")  # fmt: skip
    sid = session["id"]
    wait_for(cli, local_inventory, sid)
    # What a compromised host answers: it writes its own records (the host root of the
    # `local` host in local_inventory is tmp_path/host-root).
    db = sqlite3.connect(tmp_path / "host-root" / "state.db")
    with db:
        db.execute("UPDATE sessions SET name = ?, workspace = ?, error = ? WHERE id = ?",
                   ("[/red]" + ATTACK, "ws[/b]" + ATTACK, "[/red]" + ATTACK, sid))  # fmt: skip
    db.close()

    # The laptop may refuse such records (the host's answer is then an error that names it)
    # or show them; either way as text, and `ls` goes on.
    proc = cli.run("-i", inv, "ls")
    assert proc.returncode in (0, 3), proc.stderr
    assert "Traceback" not in proc.stderr
    assert_inert(proc.stdout + proc.stderr)
    assert "sessions" in proc.stdout and "[/red]" in proc.stdout + proc.stderr
    code, on_terminal = on_pty(cli, "-i", inv, "ls")
    assert code in (0, 3) and "sessions" in on_terminal, on_terminal
    assert_inert(on_terminal)
    assert "[/red]" in on_terminal
    # --json stays exact.
    data = cli.json("-i", inv, "ls", ok_codes=(0, 3))
    assert "[/usr/lib] x[/b]" in json.dumps(data, ensure_ascii=False)
    cli.run("-i", inv, "rm", "--force", sid, check=True)
