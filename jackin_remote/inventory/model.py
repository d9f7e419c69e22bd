"""Typed inventory data. Produced by the loader, consumed by everything above it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Transport = Literal["ssh", "local"]
Backend = Literal["docker", "gvisor"]

LOCAL_HOST_NAME = "local"
DEFAULT_ROOT = "~/.jackin"
DEFAULT_CAPACITY = 4
DEFAULT_PRIVATE_DOCKER_IMAGE = "docker:27-dind"  # --docker private: a daemon with sh and openssl


@dataclass(frozen=True)
class Limits:
    """Operator defaults for each sandbox on a host. None means: the engine's default."""

    memory: str | None = "4g"
    cpus: float | None = 2.0
    pids: int | None = 512
    # Open files per process. None: the engine's own (a higher one than the engine's own hard
    # limit fails to start: where the engine runs in a container, that limit can be low).
    nofile: int | None = None


@dataclass(frozen=True)
class Host:
    name: str
    transport: Transport = "ssh"
    address: str | None = None  # IP, DNS name or ~/.ssh/config alias; defaults to `name`
    port: int | None = None  # None: ~/.ssh/config or 22
    user: str | None = None  # None: ~/.ssh/config or the local user
    identity_file: str | None = None
    jump: str | None = None  # ProxyJump: an inventory host name or [user@]host[:port]
    host_key: str | None = None  # pinned public key, "ssh-ed25519 AAAA..."
    labels: tuple[str, ...] = ()
    capacity: int = DEFAULT_CAPACITY
    root: str = DEFAULT_ROOT
    backend: Backend = "docker"
    # Disk (core/disk.py): what jackin's files under the root may take ("50g": over it, a
    # warning) and the free space a launch must leave ("5g": below it, launch refuses).
    disk_budget: str | None = None
    disk_floor: str | None = None
    limits: Limits = field(default_factory=Limits)
    # --network allowlist rules from the inventory: (allow | deny, pattern, file:line)
    egress: tuple[tuple[str, str, str], ...] = ()
    host_mounts: tuple[str, ...] = ()  # host directories sessions may mount, read-only
    # --docker private: the sidecar's image (sh, openssl, dockerd) and how it gets its privileges
    private_docker_image: str = DEFAULT_PRIVATE_DOCKER_IMAGE
    private_docker_privilege: str = "privileged"
    # Seconds a session may sit idle (interactive: no tmux activity; task: exited) before its
    # host stops it (agent_host/janitor.py); None: never.
    idle_timeout: int | None = None
    # Snapshots of session checkouts (agent_host/snapshots.py): the newest N, none older than
    # an age ("7d"), and what they leave out besides the rebuildable defaults.
    snapshot_keep: int = 20  # wire.DEFAULT_SNAPSHOT_KEEP
    snapshot_max_age: str | None = None
    snapshot_excludes: tuple[str, ...] = ()
    # Where the host was declared, for error messages ("<builtin>" for the implicit local host).
    source_file: str = "<builtin>"
    source_line: int | None = None

    @property
    def ssh_address(self) -> str:
        return self.address or self.name

    @property
    def is_local(self) -> bool:
        return self.transport == "local"

    @property
    def where(self) -> str:
        if self.source_line is None:
            return self.source_file
        return f"{self.source_file}:{self.source_line}"


BUILTIN_LOCAL = Host(name=LOCAL_HOST_NAME, transport="local")


@dataclass(frozen=True)
class Inventory:
    hosts: dict[str, Host]
    groups: dict[str, tuple[str, ...]]
    files: tuple[str, ...] = ()

    def host(self, name: str) -> Host | None:
        return self.hosts.get(name)
