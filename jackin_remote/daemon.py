"""The laptop daemon: SSH connections held between commands, in the spirit of ControlPersist.

`jackin-remote daemon run` listens on `<state>/daemon/daemon.sock` (0600 in a 0700 directory).
A command asks it for a host's agent (`{"op": "agent", ...}`, one JSON line): the daemon opens a
channel on its held connection to that host's resident agent (a direct-streamlocal channel to
the socket the host reported, or the exec bridge where sshd refuses those), answers
`{"ok": true, ...}`, and from then on relays bytes both ways. The command says hello itself and
believes only a hello from its own agent version (fleet.py). Anything else (no daemon, another
version, a host it cannot reach, no socket known yet) answers `{"ok": false, "why": ...}` and
the command connects directly, as it does without a daemon.

The daemon holds connections, never secrets: what a launch sends its host passes through as
bytes and is not kept. It leaves after `--idle` seconds (600) without a command. It is started
by the first command that needs a remote host while none runs (JACKIN_DAEMON=off: never used,
never started).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from jackin_remote import paths
from jackin_remote.inventory.model import Host, Inventory, Limits

DAEMON_ENV = "JACKIN_DAEMON"  # "off": commands never use or start the daemon
IDLE = 600.0
IDLE_ENV = "JACKIN_DAEMON_IDLE"
ANSWER_TIMEOUT = 20.0  # seconds a command waits for the daemon's answer before going direct
STOP_GRACE = 300.0  # seconds a stopping daemon lets the commands under way finish
CHUNK = 65536


def enabled(environ: dict[str, str] | None = None) -> bool:
    environ = dict(os.environ) if environ is None else environ
    return environ.get(DAEMON_ENV, "auto") != "off"


def daemon_dir() -> Path:
    return paths.state_dir() / "daemon"


def socket_path() -> Path:
    return daemon_dir() / "daemon.sock"


def log_path() -> Path:
    return daemon_dir() / "daemon.log"


@contextlib.contextmanager
def unix_address(path: Path) -> Iterator[str]:
    """An address for the socket `path` that fits a socket address (108 bytes): the path
    itself when short, else through an open descriptor of its directory (Linux)."""
    if len(str(path).encode()) < 100:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


# -- hosts on the wire (the command's definition is the daemon's: no inventory read twice) ----
def host_to_wire(host: Host) -> dict[str, Any]:
    return dataclasses.asdict(host)


def host_from_wire(data: dict[str, Any]) -> Host:
    """The Host a command sent. Only this user's processes reach the socket; a malformed one
    raises (TypeError, ValueError) and that command is answered `ok: false`."""
    fields = {f.name for f in dataclasses.fields(Host)}
    if not isinstance(data, dict) or set(data) - fields or "name" not in data:
        raise ValueError("not a host definition")
    values = dict(data)
    values["limits"] = Limits(**values.get("limits", {}))
    for name in ("labels", "host_mounts", "snapshot_excludes"):
        values[name] = tuple(values.get(name, ()))
    values["egress"] = tuple(tuple(rule) for rule in values.get("egress", ()))
    return Host(**values)


def _connection_fields(host: Host) -> dict[str, Any]:
    """What decides where and how a connection is made (not where the host was declared)."""
    return {"name": host.name, "address": host.address, "port": host.port, "user": host.user,
            "identity_file": host.identity_file, "jump": host.jump,
            "host_key": host.host_key}  # fmt: skip


def pool_key(host: Host, jump: Host | None, trust: str = "") -> str:
    """One held connection per connection definition (host and jump) and state of the trust
    files: a name that now means another machine, port, user or key, or a known_hosts or
    ssh_config that changed since, gets a connection of its own."""
    text = json.dumps([_connection_fields(host), jump and _connection_fields(jump), trust],
                      sort_keys=True)  # fmt: skip
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def trust_state(environ: dict[str, str] | None = None) -> str:
    """The files and agent that decide whom a connection trusts and how it logs in, as they
    are now: ~/.ssh/known_hosts, jackin's known_hosts, ~/.ssh/config (their size and mtime),
    and SSH_AUTH_SOCK. A change to any makes the next command connect afresh."""
    environ = dict(os.environ) if environ is None else environ
    parts = []
    for path in (paths.user_known_hosts_file(), paths.known_hosts_file(),
                 Path.home() / ".ssh" / "config"):  # fmt: skip
        try:
            st = path.stat()
            parts.append(f"{path}:{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append(f"{path}:-")
    parts.append(environ.get("SSH_AUTH_SOCK", ""))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


# -- the command's side -------------------------------------------------------------------------
ABSENT = "absent"  # no daemon answers: start one
DECLINED = "declined"  # it answered, and cannot serve this host now


async def ask_agent(
    host: Host, jump: Host | None, agent_hash: str, version: str
) -> tuple[Any, Any, dict[str, Any]] | str:
    """(reader, writer, answer) of a relay to `host`'s agent through the daemon, or why not:
    ABSENT, DECLINED or "another version" (the command connects directly)."""
    path = socket_path()
    try:
        with unix_address(path) as address:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(address, limit=MAX_LINE), ANSWER_TIMEOUT
            )
    except (OSError, TimeoutError):
        return ABSENT
    request = {"op": "agent", "version": version, "agent_hash": agent_hash, "trust": trust_state(),
               "host": host_to_wire(host), "jump": jump and host_to_wire(jump)}  # fmt: skip
    try:
        writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), ANSWER_TIMEOUT)
        answer = json.loads(line) if line else {}
    except (OSError, ValueError, TimeoutError):
        answer = {}
    if not isinstance(answer, dict) or answer.get("ok") is not True:
        writer.close()
        why = answer.get("why") if isinstance(answer, dict) else None
        return OTHER_VERSION if why == OTHER_VERSION else DECLINED
    return reader, writer, answer


OTHER_VERSION = "another version"


async def run_command(
    host: Host,
    jump: Host | None,
    version: str,
    command: str,
    input: bytes | None,
    timeout: float | None,
) -> Any:
    """`command` run on the daemon's held connection to `host`: a transport Completed, or None
    when the daemon cannot (the caller runs it on a connection of its own)."""
    from jackin_remote.transport.base import Completed

    request = {"op": "run", "version": version, "trust": trust_state(), "host": host_to_wire(host),
               "jump": jump and host_to_wire(jump), "command": command, "timeout": timeout,
               "input": None if input is None else base64.b64encode(input).decode()}  # fmt: skip
    answer = await _one_answer(request, None if timeout is None else timeout + ANSWER_TIMEOUT)
    if answer is None or answer.get("ok") is not True:
        return None
    try:
        return Completed(int(answer["returncode"]), base64.b64decode(answer["stdout"]),
                         base64.b64decode(answer["stderr"]))  # fmt: skip
    except (KeyError, TypeError, ValueError):
        return None


async def _one_answer(request: dict[str, Any], timeout: float | None) -> dict[str, Any] | None:
    try:
        with unix_address(socket_path()) as address:
            reader, writer = await asyncio.open_unix_connection(address, limit=MAX_LINE)
    except OSError:
        return None
    try:
        writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
        answer = json.loads(line) if line else None
    except (OSError, ValueError, TimeoutError):
        answer = None
    finally:
        writer.close()
    return answer if isinstance(answer, dict) else None


def start_detached() -> None:
    """Start `daemon run` in the background (its own session, output to its log); the caller
    does not wait for it: this command goes direct, the next one finds the daemon."""
    daemon_dir().mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(log_path(), "ab") as log:
        subprocess.Popen(
            [sys.executable, "-m", "jackin_remote", "daemon", "run"], stdin=subprocess.DEVNULL,
            stdout=log, stderr=log, start_new_session=True, close_fds=True, env=daemon_env(),
        )  # fmt: skip


# What the daemon keeps of the starting command's environment: where its files are and how to
# reach the SSH agent. Never the command's tokens (a launch's ANTHROPIC_API_KEY, say).
KEPT_ENV = ("HOME", "PATH", "LANG", "LC_ALL", "USER", "LOGNAME", "TMPDIR", "JACKIN_HOME",
            "XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME", "XDG_RUNTIME_DIR",
            "SSH_AUTH_SOCK", IDLE_ENV, "JACKIN_AGENT_LINGER", "JACKIN_AGENT_RESIDENT")  # fmt: skip


def daemon_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    environ = dict(os.environ) if environ is None else environ
    return {name: environ[name] for name in KEPT_ENV if name in environ}


async def request(op: str) -> dict[str, Any] | None:
    """A one-line request (`status`, `stop`) to the running daemon; None when none runs."""
    return await _one_answer({"op": op}, ANSWER_TIMEOUT)


MAX_LINE = 64 * 1024 * 1024  # agent_host.protocol.MAX_LINE_BYTES, without importing it here


# -- the daemon's side --------------------------------------------------------------------------
class Daemon:
    def __init__(self, idle: float, version: str) -> None:
        self.idle = idle
        self.version = version
        self.pools: dict[str, Any] = {}
        self.active = 0
        self.last_seen = time.monotonic()
        self.relayed = 0
        self.stop = asyncio.Event()
        self.closing: set[asyncio.Future[None]] = set()

    async def handle(self, reader: Any, writer: Any) -> None:
        self.active += 1
        try:
            line = await reader.readline()
            try:
                message = json.loads(line) if line else {}
            except ValueError:
                message = {}
            op = message.get("op") if isinstance(message, dict) else None
            if op == "agent":
                await self._agent(message, reader, writer)
            elif op == "run":
                await _answer(writer, await self._run(message))
            elif op == "status":
                await _answer(writer, self.status())
            elif op == "stop":
                await _answer(writer, {"ok": True, "pid": os.getpid()})
                self.stop.set()
            else:
                await _answer(writer, {"ok": False, "why": "unknown request"})
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self.active -= 1
            self.last_seen = time.monotonic()
            with contextlib.suppress(Exception):
                writer.close()

    def status(self) -> dict[str, Any]:
        hosts = sorted({p.held_host.name for p in self.pools.values()})
        return {"ok": True, "pid": os.getpid(), "version": self.version, "hosts": hosts,
                "relayed": self.relayed, "idle_after": self.idle}  # fmt: skip

    async def _link(
        self, message: dict[str, Any]
    ) -> tuple[Any, Host, tuple[Host | None, str]] | str:
        """The held link for the host a request names, or why not."""
        from jackin_remote.errors import HostError

        if message.get("version") != self.version:
            return OTHER_VERSION
        try:
            host = host_from_wire(message.get("host") or {})
            jump = host_from_wire(message["jump"]) if message.get("jump") else None
        except (TypeError, ValueError, KeyError):
            return "a malformed request"
        if host.is_local:
            return "a local host"
        trust = str(message.get("trust") or "")
        try:
            return await self._pool(host, jump, trust).link(host), host, (jump, trust)
        except HostError as exc:
            self._drop(host, jump, trust)
            return exc.reason

    async def _run(self, message: dict[str, Any]) -> dict[str, Any]:
        """A command run on the held connection: what `transport.run` returns, as base64."""
        got = await self._link(message)
        if isinstance(got, str):
            return {"ok": False, "why": got}
        link, host, (jump, trust) = got
        try:
            data = message.get("input")
            timeout = message.get("timeout")
            done = await link.transport.run(
                str(message["command"]),
                input=base64.b64decode(data) if isinstance(data, str) else None,
                timeout=float(timeout) if isinstance(timeout, int | float) else None,
            )
        except Exception as exc:  # the connection broke, a timeout: the command runs it itself
            self._drop(host, jump, trust)
            return {"ok": False, "why": f"{type(exc).__name__}: {exc}"}
        return {"ok": True, "returncode": done.returncode,
                "stdout": base64.b64encode(done.stdout).decode(),
                "stderr": base64.b64encode(done.stderr).decode()}  # fmt: skip

    async def _agent(self, message: dict[str, Any], reader: Any, writer: Any) -> None:
        from jackin_remote.agent import sockets
        from jackin_remote.agent.build import AgentArtifact
        from jackin_remote.agent.deploy import serve_script
        from jackin_remote.errors import HostError

        got = await self._link(message)
        if isinstance(got, str):
            await _answer(writer, {"ok": False, "why": got})
            return
        link, host, (jump, trust) = got
        agent_hash = str(message.get("agent_hash"))
        known = sockets.known(host, agent_hash)
        channel = await link.transport.open_unix(known) if known else None
        kind = "direct"
        if channel is None and (link.transport.unix_refused or sockets.refused(host)):
            artifact = AgentArtifact(Path("/nonexistent"), agent_hash)
            with contextlib.suppress(HostError, OSError):
                channel = await link.transport.spawn(serve_script(host.root, artifact, "connect"))
            kind = "bridge"
        if channel is None:
            if known or kind == "bridge":  # a channel failed: the connection may be gone
                self._drop(host, jump, trust)
            await _answer(writer, {"ok": False, "why": "no resident agent known there"})
            return
        try:
            await _answer(writer, {"ok": True, "channel": kind,
                                   "unix_refused": link.transport.unix_refused,
                                   "host_key": link.transport.verified_key()})  # fmt: skip
            self.relayed += 1
            await _relay(reader, writer, channel)
        finally:
            channel.kill()  # the command gave up before the answer, say: never left open

    def _pool(self, host: Host, jump: Host | None, trust: str) -> Any:
        from jackin_remote.fleet import Pool

        key = pool_key(host, jump, trust)
        if key not in self.pools:
            for old_key, pool in list(self.pools.items()):
                if pool.held_host.name == host.name:  # redefined, or the trust files changed
                    self._close(self.pools.pop(old_key))
            hosts = {host.name: host, **({jump.name: jump} if jump else {})}
            pool = Pool(Inventory(hosts, {}))
            pool.held_host = host  # type: ignore[attr-defined]
            self.pools[key] = pool
        return self.pools[key]

    def _drop(self, host: Host, jump: Host | None, trust: str) -> None:
        pool = self.pools.pop(pool_key(host, jump, trust), None)
        if pool is not None:
            self._close(pool)

    def _close(self, pool: Any) -> None:
        closing = asyncio.ensure_future(pool.close())
        self.closing.add(closing)
        closing.add_done_callback(self.closing.discard)

    async def watch_idle(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), 1.0)
            if self.active == 0 and time.monotonic() - self.last_seen >= self.idle:
                self.stop.set()

    async def close(self) -> None:
        for pool in list(self.pools.values()):
            with contextlib.suppress(Exception):
                await pool.close()
        self.pools.clear()


async def _answer(writer: Any, data: dict[str, Any]) -> None:
    writer.write(json.dumps(data).encode() + b"\n")
    await writer.drain()


async def _relay(reader: Any, writer: Any, channel: Any) -> None:
    """Bytes both ways until the agent's side ends (the command's end closes its stdin)."""

    async def upstream() -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(CHUNK):
                channel.write(data)
                await channel.drain()
        channel.close_stdin()

    sending = asyncio.ensure_future(upstream())
    try:
        while line := await channel.readline():
            writer.write(line)
            await writer.drain()
    except (OSError, ConnectionError):
        pass
    finally:
        sending.cancel()
        channel.kill()
        with contextlib.suppress(Exception):
            writer.close()


async def serve(idle: float, say: Callable[[dict[str, Any]], None]) -> int:
    """`daemon run`: one per state directory (a lock), until idle or stopped. `say` gets
    `{"ready": True, "pid", "socket"}` once it serves, or `{"ready": False, "why"}`."""
    import fcntl

    from jackin_remote.agent.build import build_agent

    directory = daemon_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    lock = open(directory / "daemon.lock", "a")  # noqa: SIM115 - held for the daemon's life
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        say({"ready": False, "why": "another daemon runs"})
        return 0
    daemon = Daemon(idle, version_key(build_agent().content_hash))
    path = socket_path()
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    old = os.umask(0o177)
    try:
        with unix_address(path) as address:
            server = await asyncio.start_unix_server(daemon.handle, address, limit=MAX_LINE)
    finally:
        os.umask(old)
    (directory / "daemon.pid").write_text(f"{os.getpid()}\n")
    say({"ready": True, "pid": os.getpid(), "socket": str(path)})
    try:
        await daemon.watch_idle()
    finally:
        server.close()  # no new command; those under way finish (a launch mid-create)
        deadline = time.monotonic() + STOP_GRACE
        while daemon.active > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        await daemon.close()
        lock.close()
    return 0


def version_key(agent_hash: str) -> str:
    """Who may use this daemon: a command of the same jackin-remote and agent version."""
    from jackin_remote import __version__

    return f"{__version__}+{agent_hash}"


def idle_seconds(environ: dict[str, str] | None = None) -> float:
    environ = dict(os.environ) if environ is None else environ
    value = environ.get(IDLE_ENV)
    if value is None:
        return IDLE
    try:
        return float(value)
    except ValueError:
        from jackin_remote.errors import UsageError

        raise UsageError(f"{IDLE_ENV}={value!r} is not a number of seconds") from None
