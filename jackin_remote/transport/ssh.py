"""SSH transport over asyncssh: one connection per host, strict host keys, keepalive.

asyncssh errors are mapped to HostError here, once, with the host state the fleet reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import shlex
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

from agent_host.protocol import MAX_LINE_BYTES
from jackin_remote.core.hoststate import HostState
from jackin_remote.errors import HostError, HostKeyError
from jackin_remote.inventory.model import Host
from jackin_remote.transport.base import Channel, Completed, StreamChannel, Transport
from jackin_remote.transport.hostkeys import (
    KeyWitness,
    TrustSources,
    describe_key,
    fingerprint,
    host_key_algorithms,
    known_key_algorithms,
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


@dataclass(frozen=True)
class ResolvedHost:
    """What ~/.ssh/config makes of an inventory host, read with asyncssh's own parser so that
    it is what the connection will use: for messages and for host-key algorithms."""

    address: str
    port: int
    identity_files: tuple[str, ...]  # IdentityFile lines of the config, as written
    host_key_algorithms: object  # HostKeyAlgorithms of the config, or None
    connect_timeout: float | None = None  # ConnectTimeout of the config, as OpenSSH honours it


def resolve_host(host: Host) -> ResolvedHost:
    port = host.port if host.port is not None else ()
    config_path = Path.home() / ".ssh" / "config"
    try:
        from asyncssh.config import SSHClientConfig

        paths = [config_path] if os.access(config_path, os.R_OK) else []
        user = host.user if host.user is not None else ()
        config = SSHClientConfig.load(None, paths, False, False, False, "", user,
                                      host.ssh_address, port)  # fmt: skip
    except Exception:  # asyncssh reports a broken config itself, when it connects
        return ResolvedHost(host.ssh_address, host.port or 22, (), None)
    address = config.get("Hostname") or host.ssh_address
    files = config.get("IdentityFile") or ()
    config_port = config.get("Port")
    timeout = config.get("ConnectTimeout")
    return ResolvedHost(
        str(address), config_port if isinstance(config_port, int) else host.port or 22,
        tuple(str(f) for f in files) if isinstance(files, list | tuple) else (),
        config.get("HostKeyAlgorithms"),
        float(timeout) if isinstance(timeout, int | float) and timeout > 0 else None,
    )  # fmt: skip


def host_key_algs(host: Host, settings: SSHSettings, resolved: ResolvedHost) -> list[str] | None:
    """The server host key algorithms to offer, or None to leave it to asyncssh (the user's
    own HostKeyAlgorithms, or a known certificate authority)."""
    if resolved.host_key_algorithms:
        return None
    names = tuple(dict.fromkeys((resolved.address, host.ssh_address)))
    known = known_key_algorithms(trust_sources(host, settings), names, resolved.port)
    if known is None:
        return None
    from asyncssh.public_key import get_public_key_algs

    return host_key_algorithms(known, [alg.decode() for alg in get_public_key_algs()])


def check_identity_files(host: Host, resolved: ResolvedHost) -> None:
    """A key file named in the inventory or ~/.ssh/config that cannot be read fails here, by
    name and by where it was named, rather than as a bare OSError from deep in asyncssh."""
    if host.identity_file is not None:
        wanted = [(host.identity_file, f"identity_file of host {host.name} in {host.where}")]
    else:
        wanted = [(f, "IdentityFile in ~/.ssh/config") for f in resolved.identity_files]
    for path, named_in in wanted:
        error = _unreadable(Path(path).expanduser())
        if error is not None:
            raise key_file_error(host, path, named_in, error)


def _unreadable(path: Path) -> OSError | None:
    try:
        with path.open("rb"):
            return None
    except OSError as exc:
        return exc


def key_file_error(host: Host, path: str, named_in: str, exc: OSError) -> HostError:
    if isinstance(exc, FileNotFoundError):
        what, hint = "does not exist", f"fix the path ({named_in}), or create the key"
    else:
        what = f"cannot be read ({exc.strerror or type(exc).__name__})"
        hint = f"check the file's permissions, or fix the path ({named_in})"
    full = str(Path(path).expanduser())
    shown = path if full == path else f"{path} ({full})"
    return HostError(
        host.name, HostState.AUTH_FAILED, f"identity file {shown} {what}: {named_in}", hint=hint
    )


async def _handshake(
    host: Host,
    settings: SSHSettings,
    witness: KeyWitness,
    tunnel: asyncssh.SSHClientConnection | None,
) -> asyncssh.SSHClientConnection:
    resolved = resolve_host(host)
    check_identity_files(host, resolved)
    kwargs = connect_kwargs(host, settings)
    timeout = resolved.connect_timeout or settings.connect_timeout
    kwargs["connect_timeout"] = timeout
    algs = host_key_algs(host, settings, resolved)
    if algs is not None:
        kwargs["server_host_key_algs"] = algs
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
        raise auth_failed(host, resolved, exc.reason) from None
    except asyncssh.KeyImportError as exc:
        raise HostError(
            host.name, HostState.AUTH_FAILED, f"an identity file cannot be used as a key: {exc}",
            hint=f"check identity_file in {host.where} (or IdentityFile in ~/.ssh/config)",
        ) from None  # fmt: skip
    except (asyncssh.ConnectionLost, ConnectionResetError) as exc:
        error = connect_failure(host, resolved, exc, timeout)
        error.transient = True
        raise error from None
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        if isinstance(exc, OSError) and exc.filename is not None:
            # A file asyncssh read on its own (a certificate, an agent socket...).
            raise key_file_error(host, str(exc.filename), "read for this connection", exc) from None
        raise connect_failure(host, resolved, exc, timeout) from None


def auth_failed(host: Host, resolved: ResolvedHost, reason: str) -> HostError:
    """Which keys were offered, so that the operator knows which one the host refused."""
    if host.identity_file is not None:
        keys = [f"{host.identity_file} (identity_file in {host.where})"]
    elif resolved.identity_files:
        keys = [f"{f} (IdentityFile in ~/.ssh/config)" for f in resolved.identity_files]
    else:
        keys = ["the default keys in ~/.ssh (id_ed25519, id_ecdsa, id_rsa...)"]
    if os.environ.get("SSH_AUTH_SOCK"):
        keys.append("the keys of ssh-agent (SSH_AUTH_SOCK)")
    user = host.user or "the ~/.ssh/config or local user"
    return HostError(
        host.name, HostState.AUTH_FAILED,
        f"authentication failed as {user} ({reason}); keys tried: {'; '.join(keys)}",
        hint=f"check user and identity_file in {host.where}, and that the key's .pub is in "
        "~/.ssh/authorized_keys on the host",
    )  # fmt: skip


def trust_sources(host: Host, settings: SSHSettings) -> TrustSources:
    return TrustSources(host.host_key, settings.known_hosts_files, names=(host.ssh_address,))


@dataclass(frozen=True)
class RecordedKey:
    """A key --accept-new recorded: what the operator is shown, so they can still check it."""

    host: str
    pattern: str  # the known_hosts host field
    key_type: str
    fingerprint: str
    file: Path

    def as_dict(self) -> dict[str, str]:
        return {"pattern": self.pattern, "key_type": self.key_type,
                "fingerprint": self.fingerprint, "file": str(self.file)}  # fmt: skip


async def open_connection(
    host: Host,
    settings: SSHSettings,
    *,
    tunnel: asyncssh.SSHClientConnection | None = None,
    on_recorded: Callable[[RecordedKey], None] | None = None,
) -> asyncssh.SSHClientConnection:
    """Connect and authenticate, or raise HostError with the right state. Never trusts silently:
    a key accepted on first use is recorded and handed to `on_recorded`."""
    witness = KeyWitness(trust_sources(host, settings), accept_new=settings.accept_new)
    conn = await _handshake(host, settings, witness, tunnel)
    if witness.accepted_new and witness.presented is not None:
        key = witness.presented
        record_trust(settings.jackin_known_hosts, witness.pattern(), key)
        if on_recorded is not None:
            on_recorded(RecordedKey(host.name, witness.pattern(), key.get_algorithm(),
                                    fingerprint(key), settings.jackin_known_hosts))  # fmt: skip
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
    witness.verified = conn.get_server_host_key()
    conn.close()
    return witness


_REFUSED = (errno.ECONNREFUSED,)
_ERRNO_IN_TEXT = re.compile(r"\[Errno (\d+)\]")
_NO_ROUTE = (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL)


def _errnos(exc: BaseException) -> set[int]:
    """The errno of an OSError, or of each attempt asyncio folds into "Multiple exceptions"."""
    found = {exc.errno} if isinstance(exc, OSError) and exc.errno is not None else set()
    for attempt in getattr(exc, "exceptions", ()) or ():
        found |= _errnos(attempt)
    if not found and "Connect call failed" in str(exc):
        found |= {int(code) for code in _ERRNO_IN_TEXT.findall(str(exc))}
    return found


def connect_failure(
    host: Host, resolved: ResolvedHost, exc: BaseException, timeout: float
) -> HostError:
    """The cause of a failed connection, in words, with what to do about that cause. The state
    (unreachable) is shown next to the message by every caller: the message does not repeat it."""
    where = f"{resolved.address}:{resolved.port}"
    check = f"check address and port of host {host.name} in {host.where}"
    if resolved.address != host.ssh_address:
        check += f" (and HostName {resolved.address} in ~/.ssh/config)"
    codes = _errnos(exc)
    if isinstance(exc, socket.gaierror):
        what = f"cannot resolve host name {resolved.address!r} ({exc.strerror or exc})"
        hint = "the name does not resolve from this machine (DNS, /etc/hosts): " + check.replace(
            "address and port", "the address", 1
        )
    elif isinstance(exc, TimeoutError):
        what = f"no answer from {where} within {timeout:g}s"
        hint = f"is the host up, and is port {resolved.port} open through any firewall? {check}"
    elif codes and codes <= set(_REFUSED):
        what = f"connection refused by {where}"
        hint = f"nothing listens on port {resolved.port} there: is sshd running? {check}"
    elif codes & set(_NO_ROUTE):
        what = f"no route to {where} ({exc})"
        hint = f"the network cannot reach that address from here: {check}"
    elif isinstance(exc, asyncssh.ConnectionLost | ConnectionResetError):
        what = f"{where} closed the connection during the SSH handshake ({exc})"
        hint = "sshd dropped it (MaxStartups, a firewall, or not an SSH server on that port?)"
    else:
        what = f"cannot connect to {where}: {exc or type(exc).__name__}"
        hint = f"is the host up and sshd listening? {check}"
    return HostError(host.name, HostState.UNREACHABLE, what, hint=hint)


def unreachable(host: Host, exc: BaseException) -> HostError:
    """A link lost after it was made (a command could not run on an open connection)."""
    return HostError(
        host.name, HostState.UNREACHABLE, f"the SSH connection failed: {exc or type(exc).__name__}",
        hint="run `jackin-remote hosts check` on this host",
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

    async def open_tcp(self, address: str, port: int) -> tuple[Any, Any]:
        """A direct-tcpip channel of this connection: the host's sshd makes the connection."""
        try:
            return await self.conn.open_connection(address, port, encoding=None)
        except (asyncssh.Error, OSError) as exc:
            raise OSError(
                f"{self.host.name} could not connect to {address}:{port}: {exc}"
            ) from None

    async def spawn(self, command: str) -> Channel:
        try:
            process = await self.conn.create_process(wrap(command), encoding=None)
        except (asyncssh.Error, OSError) as exc:
            raise unreachable(self.host, exc) from None
        return SSHChannel(process)

    def verified_key(self) -> str | None:
        key = self.conn.get_server_host_key()
        return describe_key(key) if key is not None else None

    async def open_unix(self, path: str) -> Channel | None:
        """A direct-streamlocal channel: the host's sshd connects to the socket (OpenSSH allows
        it unless AllowStreamLocalForwarding says no; then None)."""
        try:
            reader, writer = await self.conn.open_unix_connection(path, encoding=None)
        except asyncssh.ChannelOpenError as exc:
            if exc.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED:
                self.unix_refused = True
            return None
        except (asyncssh.Error, OSError):
            return None
        return StreamChannel(reader, writer, MAX_LINE_BYTES)

    async def close(self) -> None:
        self.conn.close()


def wrap(command: str) -> str:
    """Run our POSIX sh script whatever the user's login shell is (bash, zsh, fish...)."""
    return "/bin/sh -c " + shlex.quote(command)
