"""OpenSSH client argv for what asyncssh cannot carry (rsync, later `attach`), with OUR host-key
policy: the only key OpenSSH accepts for a host is the one our asyncssh connection verified.

That key goes into a known_hosts file of our own under the state dir, under the alias
`jackin-<host>` (HostKeyAlias), with the user's and the system's known_hosts switched off, strict
checking on and no prompts. One ControlMaster per host (socket named by %C, a hash, so the path
stays under the AF_UNIX limit) carries every rsync of a command, and lingers a minute for the next.

Jump hosts go through ProxyCommand running this same argv for the jump host: `-J` would not pass
our options (known_hosts, alias) to the jump's ssh, so its key would be checked by other rules.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shlex
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from jackin_remote import paths
from jackin_remote.core.hoststate import HostState
from jackin_remote.core.names import is_valid_name
from jackin_remote.errors import HostError, HostKeyError, JackinError
from jackin_remote.inventory.model import Host

CONTROL_PERSIST_S = 60
MASTER_TIMEOUT_S = 30.0
_SUN_PATH_BUDGET = 100  # AF_UNIX: 104 bytes on macOS, 108 on Linux
_HASH_LEN = 40  # %C is a SHA-1 hex digest
_RSA_ALGORITHMS = "rsa-sha2-512,rsa-sha2-256,ssh-rsa"


@dataclass(frozen=True)
class SSHTarget:
    """A host, the key our asyncssh connection verified for it, and how to reach it."""

    host: Host
    key_line: str  # "TYPE BASE64"
    jump: SSHTarget | None = None

    @property
    def alias(self) -> str:
        return host_key_alias(self.host)


def host_key_alias(host: Host) -> str:
    """`jackin-<name>` for an inventory host. Any other name (an anonymous jump host,
    `jump:user@addr:port`) gets a digest under a '.', which no inventory name can hold, so
    it never shares an alias, or a known_hosts file, with an inventory host."""
    if is_valid_name(host.name):
        return f"jackin-{host.name}"
    return "jackin.jump-" + hashlib.sha256(host.name.encode()).hexdigest()[:16]


def destination(host: Host) -> str:
    return host.ssh_address


def known_hosts_path(target: SSHTarget) -> Path:
    return paths.state_dir() / "ssh" / f"{target.alias}.known_hosts"


def write_known_hosts(target: SSHTarget) -> Path:
    """Record the verified key (and the jump's) where only our OpenSSH calls look. 0600."""
    if target.jump is not None:
        write_known_hosts(target.jump)
    kind, blob, *_ = target.key_line.split()
    line = f"{target.alias} {kind} {blob}\n"
    path = known_hosts_path(target)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        if path.read_text() == line:
            return path
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(line)
    os.replace(tmp, path)  # one file per host: concurrent syncs never lose each other's line
    return path


_OPENSSH_TEMP_SUFFIX = 17


def control_dir() -> Path:
    """Where master sockets live: the state dir if short enough, else a private /tmp dir."""
    preferred = paths.state_dir() / "cm"
    # OpenSSH binds "<ControlPath>.<16 random chars>" first, then renames it into place.
    length = len(os.fsencode(str(preferred))) + 1 + _HASH_LEN + _OPENSSH_TEMP_SUFFIX
    if length <= _SUN_PATH_BUDGET:
        preferred.mkdir(parents=True, exist_ok=True, mode=0o700)
        return preferred
    tag = hashlib.sha256(os.fsencode(str(preferred))).hexdigest()[:8]
    fallback = Path(tempfile.gettempdir()) / f"jackin-{os.getuid()}-{tag}"
    fallback.mkdir(mode=0o700, exist_ok=True)
    st = fallback.lstat()
    if fallback.is_symlink() or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise JackinError(
            f"{fallback} is not a private directory of ours: refusing to put ssh sockets there",
            hint="set JACKIN_HOME to a short path",
        )
    return fallback


def _escape_percent(text: str) -> str:
    return text.replace("%", "%%")  # ssh expands %-tokens in these options


def _host_key_algorithms(key_line: str) -> str:
    kind = key_line.split()[0]
    return _RSA_ALGORITHMS if kind == "ssh-rsa" else kind


# ~/.ssh/config is honoured for where and how to log in (HostName, Port, User, IdentityFile,
# ProxyCommand...), never for what rides along. ssh keeps the FIRST value it obtains for an
# option and reads the command line before any config file, so these win over the user's
# ForwardAgent/X11/Local-/Remote-/DynamicForward/Tunnel/LocalCommand/RemoteCommand/RequestTTY.
NO_FORWARDING_OPTIONS: tuple[str, ...] = (
    "ForwardAgent=no",
    "ForwardX11=no",
    "ForwardX11Trusted=no",
    "ClearAllForwardings=yes",  # drops every Local/Remote/DynamicForward from the config
    "Tunnel=no",
    "PermitLocalCommand=no",
    "GSSAPIDelegateCredentials=no",
    "RemoteCommand=none",
    "VerifyHostKeyDNS=no",  # the one key we verified, not whatever DNS says
    "CheckHostIP=no",
)


def user_ssh_config() -> str:
    """The one config file asyncssh reads, ~/.ssh/config under $HOME (OpenSSH would take the
    passwd entry's home and add /etc/ssh/ssh_config): both clients must resolve a host alike,
    under the same rules. /dev/null when there is none, as asyncssh then reads nothing."""
    path = Path.home() / ".ssh" / "config"
    return str(path) if path.is_file() and os.access(path, os.R_OK) else os.devnull


def openssh_base_argv(target: SSHTarget, *, master: bool = True, tty: bool = False) -> list[str]:
    """`ssh` and options for `target`, without the destination (rsync appends it itself)."""
    host = target.host
    argv = [_ssh_binary(), "-F", user_ssh_config()]
    for option in NO_FORWARDING_OPTIONS:
        argv += ["-o", option]
    # A pty would corrupt rsync's byte stream: only attach asks for one.
    argv += ["-o", "RequestTTY=yes" if tty else "RequestTTY=no"]
    argv += [
        "-o", f"HostKeyAlias={target.alias}",
        "-o", f"UserKnownHostsFile={_escape_percent(str(known_hosts_path(target)))}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "UpdateHostKeys=no",
        "-o", f"HostKeyAlgorithms={_host_key_algorithms(target.key_line)}",
        "-o", "BatchMode=yes",
        # Errors only: no "Shared connection to ... closed." after attach, no "Pseudo-terminal
        # will not be allocated" notices in rsync's or our own output.
        "-o", "LogLevel=ERROR",
        "-o", "ServerAliveInterval=5",
        "-o", "ServerAliveCountMax=3",
    ]  # fmt: skip
    if master:
        socket_path = _escape_percent(str(control_dir())) + "/%C"
        argv += ["-o", "ControlMaster=auto", "-o", f"ControlPath={socket_path}",
                 "-o", f"ControlPersist={CONTROL_PERSIST_S}"]  # fmt: skip
    else:
        argv += ["-o", "ControlMaster=no", "-o", "ControlPath=none"]
    if host.port is not None:
        argv += ["-p", str(host.port)]
    if host.user is not None:
        argv += ["-l", host.user]
    if host.identity_file is not None:
        identity = _escape_percent(str(Path(host.identity_file).expanduser()))
        argv += ["-i", identity, "-o", "IdentitiesOnly=yes"]
    if target.jump is not None:
        # The jump's own ssh, under the same policy; %h/%p are the target's address and port.
        # ssh expands %-tokens in ProxyCommand, then the jump's ssh expands its own options
        # again: escape the jump's argv once more, but not the %h/%p meant for this level.
        proxy = _escape_percent(shlex.join(openssh_base_argv(target.jump, master=False)))
        proxy += " -W '[%h]:%p' " + _escape_percent(shlex.quote(destination(target.jump.host)))
        argv += ["-o", "ProxyCommand=" + proxy]
    return argv


def openssh_argv(target: SSHTarget, command: str | None = None, *, tty: bool = False) -> list[str]:
    """A full ssh argv to run `command` (a POSIX sh string) on the host."""
    argv = openssh_base_argv(target, tty=tty)
    argv.append(destination(target.host))
    if command is not None:
        argv += ["--", "/bin/sh -c " + shlex.quote(command)]
    return argv


def rsync_remote_shell(argv: list[str]) -> str:
    """rsync's -e value: rsync splits it on whitespace honouring quotes, as shlex.join writes."""
    return shlex.join(argv)


def rsync_destination(host: Host, remote_path: str) -> str:
    address = destination(host)
    if ":" in address:
        address = f"[{address}]"  # an IPv6 literal
    return f"{address}:{remote_path}"


def _ssh_binary() -> str:
    found = shutil.which("ssh")
    if found is None:
        raise JackinError(
            "the OpenSSH client (ssh) is not installed: rsync needs it",
            hint="install openssh-client",
        )
    return found


# -- ControlMaster -------------------------------------------------------------------------------

_master_locks: dict[str, asyncio.Lock] = {}


async def _ssh(argv: list[str], timeout: float) -> tuple[int, str]:
    # stderr to a file, not a pipe: a master that forks to the background must not hold our
    # pipe open (old OpenSSH releases did), or we would wait for its whole ControlPersist.
    with tempfile.TemporaryFile() as err:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=err,
        )  # fmt: skip
        try:
            code = await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
            return -1, "timed out"
        err.seek(0)
        return code, err.read().decode(errors="replace").strip()


async def master_alive(target: SSHTarget) -> bool:
    argv = [*openssh_base_argv(target), "-O", "check", destination(target.host)]
    code, _ = await _ssh(argv, 10.0)
    return code == 0


async def ensure_master(target: SSHTarget) -> None:
    """A live ControlMaster for `target`, started now if needed; typed errors if it cannot be."""
    write_known_hosts(target)
    lock = _master_locks.setdefault(target.alias, asyncio.Lock())
    async with lock:
        if await master_alive(target):
            return
        start = ["-o", "ControlMaster=yes", "-N", "-f", destination(target.host)]
        argv = [*openssh_base_argv(target), *start]
        code, stderr = await _ssh(argv, MASTER_TIMEOUT_S)
        if code != 0:
            raise openssh_error(target.host, code, stderr)


async def stop_master(target: SSHTarget) -> None:
    argv = [*openssh_base_argv(target), "-O", "exit", destination(target.host)]
    await _ssh(argv, 10.0)


def openssh_error(host: Host, code: int, stderr: str) -> HostError:
    """Map an OpenSSH failure (its stderr) to our host states."""
    tail = stderr.strip().splitlines()[-3:]
    detail = " / ".join(tail) or f"ssh exited {code}"
    if "Host key verification failed" in stderr or "HOST IDENTIFICATION HAS CHANGED" in stderr:
        return HostKeyError(
            host.name,
            "OpenSSH was shown a host key other than the one our SSH connection verified: "
            "refusing to connect",
            fingerprint=None, changed=True,
            hint="if the host was really reinstalled, run `jackin-remote hosts trust "
            f"{host.name} --replace` after checking its fingerprint",
        )  # fmt: skip
    if "Permission denied" in stderr:
        return HostError(
            host.name, HostState.AUTH_FAILED, f"OpenSSH authentication failed: {detail}",
            hint="OpenSSH must log in with the same key: set identity_file in the inventory",
        )  # fmt: skip
    return HostError(host.name, HostState.UNREACHABLE, f"OpenSSH: {detail}")
