"""Helpers for end-to-end tests that drive the real CLI against real hosts."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from tests.conftest import CLI

REPO = Path(__file__).resolve().parents[2]
TEST_ROLE = str(REPO / "roles" / "test-agent")
FINAL = {"exited", "crashed", "failed_setup", "stopped"}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def make_workspace(path: Path) -> Path:
    """A git repo with one commit, an uncommitted note, and a secret that must stay behind."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    (path / "README.md").write_text("# test project\n")
    (path / ".gitignore").write_text("build/\n")
    git(path, "add", ".")
    git(path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "initial")
    (path / "NOTES.md").write_text("uncommitted note\n")
    (path / ".env").write_text("API_TOKEN=laptop-only\n")
    (path / "build").mkdir()
    (path / "build" / "out.bin").write_text("ignored\n")
    return path


def launch(cli: CLI, inventory: Path, workspace: Path, *args: str) -> list[dict[str, Any]]:
    data = cli.json("-i", str(inventory), "launch", "--role", TEST_ROLE, *args, str(workspace))
    sessions: list[dict[str, Any]] = data["sessions"]
    for entry in sessions:
        assert entry["error"] is None, entry
    return sessions


def session_row(cli: CLI, inventory: Path, session_id: str, *extra: str) -> dict[str, Any]:
    data = cli.json("-i", str(inventory), "ls", *extra, ok_codes=(0, 3))
    for row in data["sessions"]:
        if row["id"] == session_id:
            return row  # type: ignore[no-any-return]
    raise AssertionError(f"{session_id} not in ls: {data}")


def wait_for(cli: CLI, inventory: Path, session_id: str, states: set[str] = FINAL,
             timeout: float = 300, on: str = "all") -> dict[str, Any]:  # fmt: skip
    """Polls `ls` until the session is in one of `states`: a generous bound on a state, never a
    timed expectation."""
    deadline = time.monotonic() + timeout
    while True:
        row = session_row(cli, inventory, session_id, "--on", on)
        if row["state"] in states:
            return row
        if time.monotonic() > deadline:
            raise AssertionError(f"{session_id} still {row['state']} after {timeout}s")
        time.sleep(1)


def workspace_containers(workspace: Path) -> set[str]:
    """Containers made for `workspace` (by its label): other tests' containers, made meanwhile
    on the same engine, never count."""
    from jackin_remote.workspace import workspace_name

    label = f"label=jackin.workspace={workspace_name(workspace.resolve())}"
    out = subprocess.run(["docker", "ps", "-aq", "--filter", label],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return set(out.split())


def managed_containers(*docker_prefix: str) -> set[str]:
    out = subprocess.run(
        [*docker_prefix, "docker", "ps", "-a", "--filter", "label=jackin.managed=true",
         "--format", "{{.Label \"jackin.session\"}}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return {line for line in out.split() if line}


# The address of a network interface, read with the SIOCGIFADDR ioctl (python3 is on every
# test host; `ip` need not be).
_INTERFACE_ADDRESS = (
    "import fcntl, socket, struct, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
    "a = fcntl.ioctl(s.fileno(), 0x8915, struct.pack('256s', sys.argv[1].encode()[:15])); "
    "print(socket.inet_ntoa(a[20:24]))"
)


def bridge_address(on_host: list[str]) -> str:
    """The host's address on its docker engine's default bridge: private, not loopback, and not
    a session's network. An engine's first boot leaves the bridge's Gateway out of `network
    inspect` (moby/moby#26799), so then the bridge interface's own address is read."""
    done = subprocess.run([*on_host, "docker", "network", "inspect", "bridge", "-f",
                           "{{range .IPAM.Config}}{{.Gateway}}{{end}}|"
                           '{{index .Options "com.docker.network.bridge.name"}}'],
                          capture_output=True, text=True, check=True)  # fmt: skip
    gateway, _, interface = done.stdout.strip().partition("|")
    if gateway:
        return gateway
    read = subprocess.run([*on_host, "python3", "-c", _INTERFACE_ADDRESS, interface or "docker0"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return read.stdout.strip()
