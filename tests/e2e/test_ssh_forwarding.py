"""No forwarding reaches a host, whatever the user's ~/.ssh/config turns on (issue 6, item 3).

The laptop runs an ssh-agent holding a key and its ~/.ssh/config asks for everything: agent and
X11 forwarding, local/remote/dynamic forwards, a tunnel, a LocalCommand, a pty, a RemoteCommand
and a ControlMaster of its own. A fresh login on fleet-1 runs every command through a forced
command that records what sshd handed it (SSH_AUTH_SOCK, DISPLAY, a tty, the remote forward's
listener) before running it. Then `hosts check` (asyncssh), `launch` (asyncssh + rsync over
OpenSSH) and `attach` (OpenSSH with a terminal) run against that host.
"""

from __future__ import annotations

import os
import pty
import secrets
import select
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import fleet as fleet_mod
from tests.conftest import CLI
from tests.e2e.helpers import launch, make_workspace, wait_for

# Runs instead of every command this login is asked for: records, then runs it.
PROBE = """#!/bin/sh
cmd=$(printf %s "$SSH_ORIGINAL_COMMAND" | tr '\\n' ' ' | cut -c1-40)
listen=$(ss -Hltn "sport = :{remote_port}" | wc -l)
printf 'cmd=%s|auth_sock=%s|display=%s|tty=%s|listen=%s\\n' "$cmd" "${{SSH_AUTH_SOCK-}}" \\
  "${{DISPLAY-}}" "${{SSH_TTY:+yes}}" "$listen" >> "$HOME/probe.log"
exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def probe_login(fleet: fleet_mod.FleetInfo) -> Iterator[tuple[str, int]]:
    """A user of its own on fleet-1 whose every command goes through PROBE."""
    box = fleet.host("fleet-1").container
    user = "fwd" + secrets.token_hex(3)
    remote_port = _free_port()
    pub = Path(f"{fleet.identity_file}.pub").read_text().strip()
    setup = (
        f"useradd --create-home --shell /bin/bash --groups docker {user} && "
        f"usermod --password '*' {user} && "
        f"install -d -m 700 -o {user} -g {user} /home/{user}/.ssh && "
        f"cat > /home/{user}/probe && chmod 755 /home/{user}/probe && "
        f"printf '%s\\n' 'command=\"/home/{user}/probe\" {pub}' "
        f"> /home/{user}/.ssh/authorized_keys && "
        f"chown {user}: /home/{user}/.ssh/authorized_keys"
    )
    fleet_mod.docker_exec(box, "sh", "-c", setup, input=PROBE.format(remote_port=remote_port))
    try:
        yield user, remote_port
    finally:
        fleet_mod.docker_exec(box, "sh", "-c", f"pkill -u {user}; userdel -r {user}", check=False)


@pytest.fixture
def laptop_agent(tmp_path: Path) -> Iterator[Path]:
    """A running ssh-agent that holds a key: what a forwarded agent would hand the host."""
    sock = tmp_path / "agent.sock"
    started = subprocess.run(["ssh-agent", "-a", str(sock), "-s"], capture_output=True,
                             text=True, check=True).stdout  # fmt: skip
    pid = int(started.split("SSH_AGENT_PID=", 1)[1].split(";", 1)[0])
    try:
        key = tmp_path / "laptop_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        subprocess.run(["ssh-add", "-q", str(key)], env=env, check=True, capture_output=True)
        yield sock
    finally:
        os.kill(pid, 15)


def _attach_and_detach(cli: CLI, inventory: Path, sid: str) -> None:
    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI with the pty as its terminal
        os.chdir(cli.cwd)
        argv = [sys.executable, "-m", "jackin_remote", "-i", str(inventory), "attach", sid]
        os.execvpe(argv[0], argv, {**cli.env, "TERM": "xterm"})
    try:
        seen = b""
        while b"\x1b[?1049h" not in seen:  # tmux took the screen: the terminal is raw now
            select.select([fd], [], [], 60)
            chunk = os.read(fd, 65536)
            assert chunk, seen
            seen += chunk
        os.write(fd, b"\x02d")  # tmux prefix, then d: detach
        while True:
            try:
                if not os.read(fd, 65536):
                    break
            except OSError:
                break
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, seen[-2000:]
    finally:
        os.close(fd)


def test_no_forwarding_reaches_the_host_whatever_ssh_config_asks(
    cli: CLI,
    fleet: fleet_mod.FleetInfo,
    probe_login: tuple[str, int],
    laptop_agent: Path,
    laptop: Path,
    tmp_path: Path,
) -> None:
    user, remote_port = probe_login
    local_port, dynamic_port = _free_port(), _free_port()
    marker = tmp_path / "local-command-ran"
    ssh_dir = laptop / "home" / ".ssh"
    ssh_dir.mkdir()
    (ssh_dir / "config").write_text(
        "Host *\n"
        "  ForwardAgent yes\n  ForwardX11 yes\n  ForwardX11Trusted yes\n"
        f"  LocalForward 127.0.0.1:{local_port} 127.0.0.1:22\n"
        f"  RemoteForward 127.0.0.1:{remote_port} 127.0.0.1:22\n"
        f"  DynamicForward 127.0.0.1:{dynamic_port}\n"
        f"  PermitLocalCommand yes\n  LocalCommand touch {marker}\n"
        "  Tunnel yes\n  RequestTTY force\n  RemoteCommand echo hijacked\n"
        "  GSSAPIDelegateCredentials yes\n"
        f"  ControlMaster auto\n  ControlPath {tmp_path}/user-cm-%C\n  ControlPersist yes\n"
    )
    cli.env.update(SSH_AUTH_SOCK=str(laptop_agent), DISPLAY=":0")
    host = fleet.host("fleet-1")
    inventory = tmp_path / "inventory"
    inventory.mkdir()
    (inventory / "hosts.toml").write_text(
        f'[hosts.fwd]\naddress = "127.0.0.1"\nport = {host.port}\nuser = "{user}"\n'
        f'identity_file = "{fleet.identity_file}"\nhost_key = "{host.host_key}"\n'
    )

    entry = cli.json("-i", str(inventory), "hosts", "check", "--on", "fwd")["hosts"][0]
    assert entry["status"] == "ok", entry
    (session,) = launch(cli, inventory, make_workspace(tmp_path / "ws"), "--on", "fwd",
                        "--runtime", "shell", "--network", "none")  # fmt: skip
    wait_for(cli, inventory, session["id"], {"running"})
    _attach_and_detach(cli, inventory, session["id"])
    cli.run("-i", str(inventory), "rm", "--force", session["id"], check=True)

    log = fleet_mod.docker_exec(host.container, "cat", f"/home/{user}/probe.log").stdout
    records = [dict(f.split("=", 1) for f in line.split("|")) for line in log.splitlines()]
    commands = [r["cmd"] for r in records]
    assert any(c.startswith("/bin/sh -c") for c in commands), commands  # asyncssh
    assert any(c.startswith("rsync ") for c in commands), commands  # OpenSSH, for rsync
    assert any(r["tty"] == "yes" for r in records), records  # OpenSSH, for attach
    for record in records:
        assert record["auth_sock"] == "", record  # no agent forwarded
        assert record["display"] == "", record  # no X11
        assert record["listen"] == "0", record  # no RemoteForward
    assert not marker.exists()  # no LocalCommand
    assert not _listening(local_port) and not _listening(dynamic_port)
    assert not list(tmp_path.glob("user-cm-*"))  # the user's ControlPath is not ours
