"""The fleet layer: one connection and one agent per host, reused within a command, and
concurrent fan-out where a failure on one host never stops the others.

Policy lives here (retries, bounded handshakes, host states); transports only move bytes.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from jackin_remote import paths
from jackin_remote.agent.build import AgentArtifact, build_agent
from jackin_remote.agent.client import AgentClient, AgentClosed
from jackin_remote.core.hoststate import HostState
from jackin_remote.errors import HostError, JackinError
from jackin_remote.inventory.model import Host, Inventory
from jackin_remote.transport.base import Transport
from jackin_remote.transport.local import LocalTransport

if TYPE_CHECKING:
    import asyncssh

    from jackin_remote.agent.deploy import StartedAgent
    from jackin_remote.transport.ssh import RecordedKey, SSHSettings

T = TypeVar("T")

# sshd's MaxStartups starts dropping unauthenticated connections past 10: stay under it.
DEFAULT_MAX_HANDSHAKES = 8
HANDSHAKE_RETRIES = 2
_JUMP_RE = re.compile(r"^(?:(?P<user>[^@]+)@)?(?P<host>[^:@]+)(?::(?P<port>\d+))?\Z")


@dataclass(frozen=True)
class PoolSettings:
    accept_new: bool = False
    max_handshakes: int = DEFAULT_MAX_HANDSHAKES
    connect_timeout: float = 10.0
    known_hosts_files: tuple[Path, ...] | None = None  # None: ~/.ssh + jackin's own


@dataclass
class HostResult(Generic[T]):
    host: Host
    state: HostState
    value: T | None = None
    error: JackinError | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.state is HostState.OK and self.error is None


@dataclass
class HostLink:
    """A live link to one host: its transport and (once asked for) its agent."""

    host: Host
    transport: Transport
    connect_seconds: float
    started: StartedAgent | None = None

    @property
    def agent(self) -> AgentClient:
        assert self.started is not None, "call Pool.agent() first"
        return self.started.client


class Pool:
    def __init__(self, inventory: Inventory, settings: PoolSettings | None = None) -> None:
        self.inventory = inventory
        self.settings = settings or PoolSettings()
        self._links: dict[str, asyncio.Task[HostLink]] = {}
        self._agents: dict[str, asyncio.Task[HostLink]] = {}
        self._conns: dict[str, asyncio.Task[asyncssh.SSHClientConnection]] = {}
        self._handshakes = asyncio.Semaphore(self.settings.max_handshakes)
        self._artifact: AgentArtifact | None = None
        self._daemon_asked = False  # this command started (or stopped) the laptop daemon
        self.recorded_keys: list[RecordedKey] = []  # what --accept-new recorded, to be shown

    # -- connections ---------------------------------------------------------------------
    def _ssh_settings(self) -> SSHSettings:
        from jackin_remote.transport.ssh import SSHSettings

        files = self.settings.known_hosts_files
        if files is None:
            files = (paths.user_known_hosts_file(), paths.known_hosts_file())
        return SSHSettings(
            known_hosts_files=files,
            jackin_known_hosts=paths.known_hosts_file(),
            accept_new=self.settings.accept_new,
            connect_timeout=self.settings.connect_timeout,
        )

    async def _connect_ssh(self, host: Host) -> asyncssh.SSHClientConnection:
        from jackin_remote.transport.ssh import open_connection

        tunnel = await self._tunnel_for(host)
        for attempt in range(HANDSHAKE_RETRIES + 1):
            async with self._handshakes:
                try:
                    return await open_connection(host, self._ssh_settings(), tunnel=tunnel,
                                                 on_recorded=self.recorded_keys.append)  # fmt: skip
                except HostError as exc:
                    if not exc.transient or attempt == HANDSHAKE_RETRIES:
                        raise
            await asyncio.sleep(random.uniform(0.1, 0.5) * (attempt + 1))
        raise AssertionError("unreachable")

    async def _tunnel_for(self, host: Host) -> asyncssh.SSHClientConnection | None:
        if not host.jump:
            return None
        jump = self.inventory.host(host.jump) or _adhoc_jump_host(host)
        try:
            return await self._connection(jump)
        except HostError as exc:
            raise HostError(
                host.name, exc.state, f"via jump host {jump.name}: {exc.reason}", hint=exc.hint
            ) from None

    def _connection(self, host: Host) -> asyncio.Task[asyncssh.SSHClientConnection]:
        if host.name not in self._conns:
            self._conns[host.name] = asyncio.ensure_future(self._connect_ssh(host))
        return self._conns[host.name]

    async def _open_link(self, host: Host) -> HostLink:
        start = time.perf_counter()
        if host.is_local:
            transport: Transport = LocalTransport()
        else:
            from jackin_remote.transport.ssh import SSHTransport

            transport = SSHTransport(host, await self._connection(host))
        return HostLink(host, transport, time.perf_counter() - start)

    async def link(self, host: Host) -> HostLink:
        """The transport for `host`, connecting once per command however many ask."""
        if host.name not in self._links:
            self._links[host.name] = asyncio.ensure_future(self._open_link(host))
        return await self._links[host.name]

    async def fetch_host_key(self, host: Host) -> Any:
        """The key `host` presents and how it compares with what we trust (`hosts trust`)."""
        from jackin_remote.transport.ssh import fetch_host_key

        tunnel = await self._tunnel_for(host)
        async with self._handshakes:
            return await fetch_host_key(host, self._ssh_settings(), tunnel=tunnel)

    # -- agents --------------------------------------------------------------------------
    def artifact(self) -> AgentArtifact:
        if self._artifact is None:
            self._artifact = build_agent()
        return self._artifact

    def _direct_socket(self, host: Host) -> str | None:
        """The resident agent's socket to try first, unless agents run one per command."""
        from jackin_remote.agent import sockets
        from jackin_remote.agent.deploy import agent_command

        if not agent_command().startswith("connect"):
            return None
        return sockets.known(host, self.artifact().content_hash)

    def _learnt(self, link: HostLink) -> None:
        """Remember where the resident agent listens (or that the host refused the channel)."""
        from jackin_remote.agent import sockets

        started = link.started
        if started is None or started.direct or started.channel != "bridge":
            return
        if started.client.hello.get("agent_hash") != self.artifact().content_hash:
            return  # another version's socket: never tried as ours
        refused = (link.transport.unix_refused or started.direct_refused
                   or sockets.refused(link.host))  # fmt: skip
        sockets.remember(link.host, self.artifact().content_hash, started.socket, refused=refused)

    async def _held_agent(self, host: Host) -> HostLink | None:
        """`host`'s resident agent through the laptop daemon (jackin_remote/daemon.py), or None:
        then this command connects itself (and starts the daemon for the next one)."""
        from jackin_remote import daemon
        from jackin_remote.agent.deploy import DIRECT_HELLO_TIMEOUT, StartedAgent, agent_command
        from jackin_remote.errors import AgentCallError
        from jackin_remote.transport.base import StreamChannel
        from jackin_remote.transport.held import HeldTransport

        if (host.is_local or self.settings != PoolSettings() or not daemon.enabled()
                or not agent_command().startswith("connect")):  # fmt: skip
            return None  # trust settings of its own, or an agent of its own: connect itself
        jump = (self.inventory.host(host.jump) or _adhoc_jump_host(host)) if host.jump else None
        if jump is not None and jump.jump:
            return None  # a chain of jumps: the daemon holds one hop's definition only
        start = time.perf_counter()
        agent_hash = self.artifact().content_hash
        got = await daemon.ask_agent(host, jump, agent_hash, daemon.version_key(agent_hash))
        if isinstance(got, str):
            if got != daemon.DECLINED and not self._daemon_asked:
                self._daemon_asked = True  # once per command, however many hosts
                if got == daemon.OTHER_VERSION:
                    await daemon.request("stop")  # left by an older jackin-remote; the next
                else:  # command starts a new one (this one would lose the lock race)
                    daemon.start_detached()
            return None
        reader, writer, answer = got
        client = AgentClient(StreamChannel(reader, writer, daemon.MAX_LINE), host.name)
        try:
            hello = await asyncio.wait_for(client.start(), DIRECT_HELLO_TIMEOUT)
        except (AgentCallError, AgentClosed, TimeoutError):
            await client.close()
            return None
        if hello.get("agent_hash") != agent_hash or not hello.get("resident"):
            await client.close()
            return None
        started = StartedAgent(client, False, 0, direct=answer.get("channel") == "direct",
                               held=True)  # fmt: skip

        async def own_connection() -> Transport:
            return (await self.link(host)).transport

        async def on_daemon(command: str, data: bytes | None, timeout: float | None) -> Any:
            return await daemon.run_command(host, jump, daemon.version_key(agent_hash), command,
                                            data, timeout)  # fmt: skip

        key = answer.get("host_key")
        transport = HeldTransport(own_connection, answer.get("unix_refused") is True,
                                  key if isinstance(key, str) else None, on_daemon)  # fmt: skip
        return HostLink(host, transport, time.perf_counter() - start, started)

    async def _start_agent(self, host: Host) -> HostLink:
        from jackin_remote.agent.deploy import DeployError, start_agent

        held = await self._held_agent(host)
        if held is not None:
            return held
        link = await self.link(host)
        try:
            link.started = await start_agent(link.transport, host.root, self.artifact(), host.name,
                                             direct=self._direct_socket(host))  # fmt: skip
            self._learnt(link)
        except (DeployError, AgentClosed) as exc:
            raise HostError(
                host.name, HostState.AGENT_ERROR, f"host agent failed to start: {exc}",
                hint="run `jackin-remote hosts check` for details",
            ) from None  # fmt: skip
        return link

    async def agent(self, host: Host) -> HostLink:
        """A link whose agent is deployed (if needed), started and greeted."""
        if host.name not in self._agents:
            self._agents[host.name] = asyncio.ensure_future(self._start_agent(host))
        return await self._agents[host.name]

    def is_resident(self, host: Host) -> bool:
        """Whether `host`'s agent, already started by this pool, is a resident one (it can
        push: agent_host/resident.py)."""
        task = self._agents.get(host.name)
        if task is None or not task.done() or task.cancelled() or task.exception() is not None:
            return False
        started = task.result().started
        return started is not None and started.channel != "exec"

    async def deployed_agent(self, host: Host) -> HostLink | None:
        """`host`'s agent if this version is already deployed there (then kept, as agent()
        keeps it), else None: nothing is sent or installed. Unreachable hosts raise HostError."""
        from jackin_remote.agent.deploy import DeployError, start_deployed_agent

        if host.name not in self._agents:
            link = await self.link(host)
            try:
                started = await start_deployed_agent(
                    link.transport, host.root, self.artifact(), host.name,
                    direct=self._direct_socket(host),
                )  # fmt: skip
            except (DeployError, AgentClosed) as exc:
                raise HostError(
                    host.name, HostState.AGENT_ERROR, f"host agent failed to start: {exc}",
                    hint="run `jackin-remote hosts check` for details",
                ) from None  # fmt: skip
            if started is None:
                return None
            link.started = started
            self._learnt(link)

            async def ready() -> HostLink:
                return link

            self._agents[host.name] = asyncio.ensure_future(ready())
        return await self._agents[host.name]

    # -- fan-out -------------------------------------------------------------------------
    async def map(
        self, hosts: Sequence[Host], work: Callable[[HostLink], Awaitable[T]]
    ) -> list[HostResult[T]]:
        """Run `work` on every host's agent link concurrently; results in the hosts' order."""
        return list(await asyncio.gather(*(self._run_one(host, work) for host in hosts)))

    async def _run_one(self, host: Host, work: Callable[[HostLink], Awaitable[T]]) -> HostResult[T]:
        start = time.perf_counter()
        try:
            link = await self.agent(host)
            value = await work(link)
        except HostError as exc:
            return HostResult(host, exc.state, error=exc, seconds=time.perf_counter() - start)
        except AgentClosed as exc:
            error = HostError(host.name, HostState.AGENT_ERROR, f"agent channel closed: {exc}")
            return HostResult(host, error.state, error=error, seconds=time.perf_counter() - start)
        except JackinError as exc:
            return HostResult(host, HostState.OK, error=exc, seconds=time.perf_counter() - start)
        except Exception as exc:
            # An answer of the wrong shape (a list where an object was due, say) fails that
            # host, named: the other hosts' results still count.
            error = HostError(host.name, HostState.AGENT_ERROR,
                              f"unexpected answer: {type(exc).__name__}: {exc}")  # fmt: skip
            return HostResult(host, error.state, error=error, seconds=time.perf_counter() - start)
        return HostResult(host, HostState.OK, value=value, seconds=time.perf_counter() - start)

    async def close(self) -> None:
        for agent_task in self._agents.values():
            if _succeeded(agent_task) and agent_task.result().started:
                await agent_task.result().agent.close()
        for conn_task in self._conns.values():
            if _succeeded(conn_task):
                conn_task.result().close()
        pending: list[asyncio.Task[Any]] = [*self._agents.values(), *self._links.values(),
                                            *self._conns.values()]  # fmt: skip
        for task in pending:
            if not task.done():
                task.cancel()
            elif not task.cancelled():
                task.exception()  # mark retrieved: failures were already reported per host

    async def __aenter__(self) -> Pool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _succeeded(task: asyncio.Task[Any]) -> bool:
    return task.done() and not task.cancelled() and task.exception() is None


def _adhoc_jump_host(host: Host) -> Host:
    """A jump given as [user@]host[:port]: trusted through known_hosts, like any host.

    Its name keys the pool's connections and OpenSSH's host-key alias, so it must never equal
    an inventory name: ':' is not allowed in those (core/names.py). Hosts naming the same
    address share it."""
    spec = host.jump or ""
    match = _JUMP_RE.match(spec)
    if match is None:
        raise HostError(host.name, HostState.UNREACHABLE, f"bad jump {host.jump!r}")
    port = match.group("port")
    return Host(
        name=adhoc_jump_name(spec),
        address=match.group("host"),
        user=match.group("user"),
        port=int(port) if port else None,
        source_file=host.source_file,
        source_line=host.source_line,
    )


def adhoc_jump_name(spec: str) -> str:
    return f"jump:{spec}"
