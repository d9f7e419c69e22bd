"""SSH transport over asyncssh: one connection per host, strict host keys, keepalive.

asyncssh errors are mapped to HostError here, once, with the host state the fleet reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import socket
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from agent_host.protocol import MAX_LINE_BYTES
from jackin_remote.core.hoststate import HostState
from jackin_remote.errors import HostError, HostKeyError
from jackin_remote.inventory.model import Host
from jackin_remote.transport.base import Channel, Completed, Transport
from jackin_remote.transport.hostkeys import (
    KeyWitness,
    TrustSources,
    describe_key,
    fingerprint,
    record_trust,
)


@dataclass(frozen=True)
class SSHSettings:
    known_hosts_files: tuple[Path, ...]  # read, in order
    jackin_known_hosts: Path  # the one we write to (accept-new, `hosts trust`)
    accept_new: bool = False
    connect_timeout: float = 10.0
    keepalive_interval: float = 5.0
    keepalive_count_max: int = 3


class _WitnessClient(asyncssh.SSHClient):
    def __init__(self, witness: KeyWitness) -> None:
        self._witness = witness

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        return self._witness.validate(key)


# What ~/.ssh/config may NOT decide for our connections, whatever it says. asyncssh reads
# ForwardAgent, ForwardX11Trusted, GSSAPIDelegateCredentials, RequestTTY, RemoteCommand,
# SetEnv and SendEnv from it: a forwarded agent lets a compromised host use the laptop's keys
# while we are connected, a pty would mangle the agent's JSON lines, and our environment is
# none of the host's business. Address, port, user, keys and ProxyCommand/ProxyJump still come
# from the config. OpenSSH gets the same rules in openssh.py (NO_FORWARDING_OPTIONS).
NO_FORWARDING_KWARGS: dict[str, object] = {
    "agent_forwarding": False,
    "x11_forwarding": False,
    "gss_delegate_creds": False,
    "request_pty": False,
    "command": None,
    "env": {},
    "send_env": [],
}


def connect_kwargs(host: Host, settings: SSHSettings) -> dict[str, object]:
    """asyncssh.connect keywords for an inventory host; unset fields fall to ~/.ssh/config."""
    kwargs: dict[str, object] = {
        "keepalive_interval": settings.keepalive_interval,
        "keepalive_count_max": settings.keepalive_count_max,
        "connect_timeout": settings.connect_timeout,
        "ignore_encrypted": True,
        **NO_FORWARDING_KWARGS,
    }
    if host.port is not None:
        kwargs["port"] = host.port
    if host.user is not None:
        kwargs["username"] = host.user
    if host.identity_file is not None:
        kwargs["client_keys"] = [str(Path(host.identity_file).expanduser())]
    return kwargs


async def _handshake(
    host: Host,
    settings: SSHSettings,
    witness: KeyWitness,
    tunnel: asyncssh.SSHClientConnection | None,
) -> asyncssh.SSHClientConnection:
    kwargs = connect_kwargs(host, settings)
    if tunnel is not None:
        kwargs["tunnel"] = tunnel
    try:
        return await asyncssh.connect(
            host.ssh_address,
            known_hosts=witness.known_hosts,
            client_factory=lambda: _WitnessClient(witness),
            **kwargs,
        )
    except asyncssh.HostKeyNotVerifiable:
        raise host_key_error(host, witness) from None
    except asyncssh.PermissionDenied as exc:
        raise HostError(
            host.name, HostState.AUTH_FAILED, f"authentication failed: {exc.reason}",
            hint="check user and identity_file in the inventory, or your ssh-agent",
        ) from None  # fmt: skip
    except (asyncssh.ConnectionLost, ConnectionResetError) as exc:
        error = unreachable(host, exc)
        error.transient = True
        raise error from None
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        raise unreachable(host, exc) from None


def trust_sources(host: Host, settings: SSHSettings) -> TrustSources:
    return TrustSources(host.host_key, settings.known_hosts_files, names=(host.ssh_address,))


async def open_connection(
    host: Host,
    settings: SSHSettings,
    *,
    tunnel: asyncssh.SSHClientConnection | None = None,
) -> asyncssh.SSHClientConnection:
    """Connect and authenticate, or raise HostError with the right state. Never trusts silently."""
    witness = KeyWitness(trust_sources(host, settings), accept_new=settings.accept_new)
    conn = await _handshake(host, settings, witness, tunnel)
    if witness.accepted_new and witness.presented is not None:
        record_trust(settings.jackin_known_hosts, witness.pattern(), witness.presented)
    return conn


async def fetch_host_key(
    host: Host,
    settings: SSHSettings,
    *,
    tunnel: asyncssh.SSHClientConnection | None = None,
) -> KeyWitness:
    """Handshake only to learn the key a host presents and how it compares with what we trust.

    witness.presented is None when the key is already trusted (the handshake went through).
    """
    witness = KeyWitness(trust_sources(host, settings))
    try:
        conn = await _handshake(host, settings, witness, tunnel)
    except HostKeyError:
        return witness
    except HostError as exc:
        if exc.state is HostState.AUTH_FAILED:
            return witness  # the key was trusted; authentication is not our business here
        raise
    conn.close()
    return witness


def unreachable(host: Host, exc: BaseException) -> HostError:
    if isinstance(exc, socket.gaierror):
        what = f"cannot resolve {host.ssh_address!r}"
    elif isinstance(exc, TimeoutError):
        what = "connection timed out"
    else:
        what = str(exc) or type(exc).__name__
    return HostError(
        host.name, HostState.UNREACHABLE, f"unreachable: {what}",
        hint="is the host up and sshd listening? check address/port in the inventory",
    )  # fmt: skip


def host_key_error(host: Host, witness: KeyWitness) -> HostKeyError:
    seen = fingerprint(witness.presented) if witness.presented else None
    shown = describe_key(witness.presented) if witness.presented else "a key"
    if witness.changed or host.host_key:
        if host.host_key:
            where = f"pinned in {host.where}"
        else:
            where = "known for this host in " + (", ".join(witness.mentions[:3]) or "known_hosts")
        return HostKeyError(
            host.name,
            f"HOST KEY CHANGED: the server presented {shown}, which does not match the key "
            f"{where}. Refusing to connect: this could be a man-in-the-middle attack.",
            fingerprint=seen, changed=True,
            hint="if the host was really reinstalled, verify the new fingerprint out of band, "
            f"then run `jackin-remote hosts trust {host.name} --replace --fingerprint {seen}`"
            + (" and update host_key in the inventory" if host.host_key else ""),
        )  # fmt: skip
    if witness.trouble:
        return HostKeyError(
            host.name,
            f"unknown host key {shown}, and --accept-new cannot tell that nothing is known "
            f"about this host: {'; '.join(witness.trouble[:3])}",
            fingerprint=seen, changed=False,
            hint=f"fix or remove those known_hosts lines, or verify the fingerprint and run "
            f"`jackin-remote hosts trust {host.name} --fingerprint {seen}`",
        )  # fmt: skip
    return HostKeyError(
        host.name,
        f"unknown host key {shown}: not pinned in the inventory and not in any known_hosts",
        fingerprint=seen, changed=False,
        hint=f"verify the fingerprint, then run `jackin-remote hosts trust {host.name} "
        f"--fingerprint {seen}` (or pass --accept-new to trust keys on first use)",
    )  # fmt: skip


class SSHChannel(Channel):
    def __init__(self, process: asyncssh.SSHClientProcess[bytes]) -> None:
        self._process = process

    def write(self, data: bytes) -> None:
        # A dead peer is noticed by the reader (EOF), which fails every pending call.
        with contextlib.suppress(asyncssh.Error, ConnectionError, BrokenPipeError):
            self._process.stdin.write(data)

    async def drain(self) -> None:
        with contextlib.suppress(asyncssh.Error, ConnectionError, BrokenPipeError):
            await self._process.stdin.drain()

    async def readline(self) -> bytes:
        # asyncssh hands back a line longer than the receive window (2 MB) in pieces: join them,
        # or the reply is taken for noise and its call waits for ever.
        parts: list[bytes] = []
        size = 0
        while True:
            try:
                piece = await self._process.stdout.readline()
            except (asyncssh.Error, ConnectionError, asyncio.IncompleteReadError):
                return b""
            parts.append(piece)
            size += len(piece)
            if not piece or piece.endswith(b"\n") or size > MAX_LINE_BYTES:
                return b"".join(parts)

    def close_stdin(self) -> None:
        with contextlib.suppress(Exception):
            self._process.stdin.write_eof()

    async def wait(self) -> int:
        try:
            done = await self._process.wait()
        except asyncssh.Error:
            return -1
        return done.exit_status if done.exit_status is not None else -1

    async def read_stderr(self) -> bytes:
        try:
            return await self._process.stderr.read()
        except asyncssh.Error:
            return b""

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self._process.close()


class SSHTransport(Transport):
    kind = "ssh"

    def __init__(self, host: Host, conn: asyncssh.SSHClientConnection) -> None:
        self.host = host
        self.conn = conn

    async def run(
        self, command: str, *, input: bytes | None = None, timeout: float | None = None
    ) -> Completed:
        try:
            done = await self.conn.run(
                wrap(command), input=input, encoding=None, check=False, timeout=timeout
            )
        except asyncssh.TimeoutError:
            raise TimeoutError(f"{self.host.name}: command timed out") from None
        except (asyncssh.Error, OSError) as exc:
            raise unreachable(self.host, exc) from None
        out = done.stdout if isinstance(done.stdout, bytes) else b""
        err = done.stderr if isinstance(done.stderr, bytes) else b""
        status = done.exit_status if done.exit_status is not None else -1
        return Completed(status, out, err)

    async def spawn(self, command: str) -> Channel:
        try:
            process = await self.conn.create_process(wrap(command), encoding=None)
        except (asyncssh.Error, OSError) as exc:
            raise unreachable(self.host, exc) from None
        return SSHChannel(process)

    async def close(self) -> None:
        self.conn.close()


def wrap(command: str) -> str:
    """Run our POSIX sh script whatever the user's login shell is (bash, zsh, fish...)."""
    return "/bin/sh -c " + shlex.quote(command)
