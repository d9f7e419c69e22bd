"""Helpers for tests that need the SSH test fleet (see scripts/fleet).

    from tests import fleet

    info = fleet.fleet_up(2)
    subprocess.run(info.ssh_argv(info.hosts[0], "true"), check=True)

Hosts are shared by every test (and every xdist worker) that asks for them: `fleet_up` only
starts what is missing. `stop_host` and `rekey_host` disturb a shared host; put it back before
the test ends (`start_host`, `rekeyed`).

The hosts belong to this checkout (scripts/fleet names them jackin-<hash of the path>-fleet-K), so
a test reaches a host's container through `container("fleet-K")`, never a literal name.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLEET_SCRIPT = ROOT / "scripts" / "fleet"
STATE_PATH = ROOT / ".fleet" / "state.json"
ADDRESS = "127.0.0.1"
USER = "jackin"
SAVED_KEYS_DIR = "/etc/ssh/jackin-saved-host-keys"


class FleetError(RuntimeError):
    """scripts/fleet or a docker command against a host failed."""


@dataclass(frozen=True)
class FleetHost:
    name: str  # fleet-K, as in the inventory
    container: str  # jackin-<ns>-fleet-K: this checkout's container for it
    port: int  # sshd on 127.0.0.1; fixed for the container's life, across stop/start
    ip: str  # on the outer docker bridge; empty if it was stopped when the state was written
    host_key: str  # "ssh-ed25519 AAAA..."


@dataclass(frozen=True)
class FleetInfo:
    inventory: Path
    known_hosts: Path
    identity_file: Path
    hosts: list[FleetHost]

    def host(self, name: str) -> FleetHost:
        for host in self.hosts:
            if name in (host.name, host.container):
                return host
        raise KeyError(name)

    def ssh_argv(self, host: FleetHost, command: str, *, strict: bool = True) -> list[str]:
        """An OpenSSH command line that trusts only .fleet/known_hosts and the fleet key."""
        checking = "yes" if strict else "no"
        return [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(self.identity_file),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            f"StrictHostKeyChecking={checking}",
            "-o",
            "ConnectTimeout=10",
            "-p",
            str(host.port),
            f"{USER}@{ADDRESS}",
            command,
        ]


def run_fleet(*args: str, timeout: float = 900) -> str:
    """Runs scripts/fleet; its own error message is in the exception."""
    proc = subprocess.run(
        [str(FLEET_SCRIPT), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise FleetError(f"scripts/fleet {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def fleet_up(n: int) -> FleetInfo:
    """Ensures hosts fleet-1..n run (building images on first use) and describes them."""
    run_fleet("up", str(n))
    wanted = {f"fleet-{k}" for k in range(1, n + 1)}
    info = load_state()
    hosts = [h for h in info.hosts if h.name in wanted]
    return FleetInfo(info.inventory, info.known_hosts, info.identity_file, hosts)


def load_state() -> FleetInfo:
    """The fleet as the last `scripts/fleet up`/`start` wrote it (every host, not only yours)."""
    state = json.loads(STATE_PATH.read_text())
    return FleetInfo(
        inventory=Path(state["inventory"]),
        known_hosts=Path(state["known_hosts"]),
        identity_file=Path(state["identity_file"]),
        hosts=[FleetHost(**h) for h in state["hosts"]],
    )


def ed25519_fingerprint(name: str) -> str:
    """What the docs tell the operator to compare against: `ssh-keygen -lf` run on the host."""
    out = docker_exec(container(name), "ssh-keygen", "-lf", "/etc/ssh/ssh_host_ed25519_key.pub")
    assert out.stdout.rstrip().endswith("(ED25519)"), out.stdout
    return str(out.stdout.split()[1])


def container(name: str) -> str:
    """The docker container of fleet host `name` (fleet-K) in this checkout's fleet."""
    return load_state().host(name).container


def docker_exec(
    container: str, *argv: str, input: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Runs argv as root inside a host container (not over ssh)."""
    cmd = ["docker", "exec", *(["-i"] if input is not None else []), container, *argv]
    proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise FleetError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def stop_host(name: str) -> None:
    """Stops the host's container, as if it were powered off (sshd and dockerd go away)."""
    run_fleet("stop", name)


def start_host(name: str) -> FleetHost:
    """Starts a stopped host and waits for sshd and its dockerd; the port does not change."""
    return FleetHost(**json.loads(run_fleet("start", name)))


def rekey_host(name: str) -> str:
    """Gives the host new sshd host keys; returns the new "ssh-ed25519 AAAA..." key.

    Clients holding the old key in known_hosts must now refuse to connect.
    """
    box = container(name)
    docker_exec(box, "sh", "-c", "rm -f /etc/ssh/ssh_host_* && ssh-keygen -A >/dev/null")
    return _reload_sshd(box)


@contextlib.contextmanager
def rekeyed(name: str) -> Iterator[str]:
    """rekey_host for the duration of a with-block, then the original keys come back."""
    box = container(name)
    save = f"mkdir -p {SAVED_KEYS_DIR} && cp -p /etc/ssh/ssh_host_* {SAVED_KEYS_DIR}/"
    docker_exec(box, "sh", "-c", save)
    try:
        yield rekey_host(name)
    finally:
        restore = f"cp -p {SAVED_KEYS_DIR}/* /etc/ssh/ && rm -rf {SAVED_KEYS_DIR}"
        docker_exec(box, "sh", "-c", restore)
        _reload_sshd(box)


@contextlib.contextmanager
def sshd_option(name: str, line: str) -> Iterator[None]:
    """One more sshd_config line (first, so no Match block holds it) for a with-block, then the
    file as it was; sshd is reloaded each way."""
    box = container(name)
    docker_exec(box, "sh", "-c", "cp -p /etc/ssh/sshd_config /etc/ssh/sshd_config.saved && "
                "{ printf '%s\\n' \"$1\"; cat /etc/ssh/sshd_config.saved; } > /etc/ssh/sshd_config",
                "sh", line)  # fmt: skip
    try:
        _reload_sshd(box)
        yield
    finally:
        docker_exec(box, "sh", "-c", "mv /etc/ssh/sshd_config.saved /etc/ssh/sshd_config")
        _reload_sshd(box)


def _reload_sshd(container: str, timeout: float = 120) -> str:
    """SIGHUPs sshd (PID 1, it re-execs itself) and waits until it serves the key on disk."""
    pub = docker_exec(container, "cat", "/etc/ssh/ssh_host_ed25519_key.pub").stdout
    key = " ".join(pub.split()[:2])
    docker_exec(container, "kill", "-HUP", "1")
    port = _published_port(container)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _scan_key(port) == key:
            return key
        time.sleep(0.2)
    raise FleetError(f"{container}: sshd did not come back with the new host key")


def _published_port(container: str) -> int:
    out = subprocess.run(
        ["docker", "port", container, "22/tcp"], capture_output=True, text=True, check=True
    ).stdout
    return int(out.split()[0].rsplit(":", 1)[1])


def _scan_key(port: int) -> str | None:
    """The ed25519 key sshd presents right now, or None while it is not answering."""
    proc = subprocess.run(
        ["ssh-keyscan", "-T", "2", "-t", "ed25519", "-p", str(port), ADDRESS],
        capture_output=True,
        text=True,
    )
    for line in proc.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 3 and not line.startswith("#"):
            return " ".join(fields[1:3])
    return None
