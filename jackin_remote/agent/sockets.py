"""Where each host's resident agent listens, remembered on the laptop, so the next command opens
a channel straight to it (SSH direct-streamlocal) instead of running a command on the host.

A local host's socket is known without asking: its root is on this machine. A remote host's is
what its resident agent reported (the root may start with `~`, which only the host can expand);
it is kept per host and agent version, and only a hello from that very version on that socket
is ever believed (agent/deploy.py open_direct). A host whose sshd refused the channel is
remembered too, so commands go straight to the exec bridge for the next hour.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from agent_host import resident
from jackin_remote import paths
from jackin_remote.inventory.model import Host

MAX_SOCKET_PATH = 104  # what a sockaddr_un holds on every system sshd runs on, with its NUL
RETRY_REFUSED = 3600.0  # seconds before a host whose sshd refused the channel is tried again


def cache_file() -> Path:
    return paths.state_dir() / "agent-sockets.json"


def usable(path: object) -> bool:
    """A socket path a host reported, fit to hand to sshd: absolute, short, printable. Pure."""
    return (
        isinstance(path, str)
        and path.startswith("/")
        and 0 < len(path.encode()) <= MAX_SOCKET_PATH
        and path.isprintable()
        and "/../" not in path + "/"
    )


def _key(host: Host) -> str:
    return f"{host.name} {host.user or ''}@{host.ssh_address}:{host.port} {host.root}"


def _read() -> dict[str, dict[str, object]]:
    try:
        data = json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def known(host: Host, agent_hash: str, now: float | None = None) -> str | None:
    """The socket to try first for `host`'s agent of this version, or None (run the command)."""
    if host.is_local:
        return resident.socket_path(os.path.expanduser(host.root), agent_hash)
    entry = _read().get(_key(host))
    if not isinstance(entry, dict) or entry.get("hash") != agent_hash:
        return None
    if refused(host, now):
        return None
    socket = entry.get("socket")
    return socket if isinstance(socket, str) and usable(socket) else None


def refused(host: Host, now: float | None = None) -> bool:
    """Whether `host`'s sshd refused a socket channel within the last RETRY_REFUSED seconds."""
    entry = _read().get(_key(host))
    if not isinstance(entry, dict) or not entry.get("refused"):
        return False
    return _recent(entry.get("at"), time.time() if now is None else now)


def _recent(at: object, now: float) -> bool:
    return isinstance(at, (int, float)) and now - at < RETRY_REFUSED


def remember(host: Host, agent_hash: str, socket: str | None, refused: bool = False) -> None:
    """Record what a command learnt: the socket the resident agent reported, or that the direct
    channel was refused. Written whole and renamed: a reader never sees half a file."""
    if host.is_local or (socket is not None and not usable(socket)):
        return
    data = _read()
    entry: dict[str, object] = {"hash": agent_hash, "socket": socket, "refused": refused}
    old = data.get(_key(host))
    now = time.time()
    same = isinstance(old, dict) and {k: old.get(k) for k in entry} == entry
    if same and (not refused or _recent(old.get("at") if isinstance(old, dict) else None, now)):
        return  # unchanged: a refusal keeps its time until it is seen again after an hour
    entry["at"] = now
    data[_key(host)] = entry
    target = cache_file()
    with contextlib.suppress(OSError):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, target)
