"""Put the agent on a host (only when its hash is new there) and start `serve`.

The common path is one exec: the serve script starts the agent if
`<root>/agent/jackin-agent-<hash>/` exists and exits with MISSING otherwise; only then is the
zipapp streamed over stdin into a temp file, checked against its hash, unpacked, byte-compiled
and renamed into place atomically.
"""

from __future__ import annotations

import asyncio
import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from agent_host import testhooks
from jackin_remote.agent.build import HASH_LEN, AgentArtifact
from jackin_remote.agent.client import AgentClient, AgentClosed
from jackin_remote.errors import AgentCallError
from jackin_remote.transport.base import Transport

MISSING = 3  # serve: this agent version is not on the host yet
NO_PYTHON = 4  # serve/install: no python3 on the host
CORRUPT = 5  # install: what arrived does not match the hash

# The agent never sees the user's environment or rc files: only what it needs.
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class DeployError(Exception):
    pass


REQUIRE_PYTHON = (
    f"command -v python3 >/dev/null 2>&1 || {{ echo 'python3 not found' >&2; exit {NO_PYTHON}; }}"
)


def root_prelude(root: str) -> str:
    """sh lines that set $root, expanding a leading ~ on the host (the value is quoted)."""
    return (
        f"root={shlex.quote(root)}\n"
        'case "$root" in "~") root="$HOME" ;; "~/"*) root="$HOME/${root#"~/"}" ;; esac\n'
    )


# "0": every command starts its own agent process, as before the resident agent existed.
RESIDENT_ENV = "JACKIN_AGENT_RESIDENT"
# Seconds the resident agent stays after its last connection (agent_host/resident.py LINGER).
LINGER_ENV = "JACKIN_AGENT_LINGER"


def agent_command(environ: Mapping[str, str] | None = None) -> str:
    """The agent's words after `--root "$root"`-less `python3 -I "$agent"`: `connect` (the
    resident agent, started if needed) or `serve` (a process of its own). A command carrying a
    test hook (a pause step, a clock offset) gets its own process: the hook is for it alone,
    and a resident agent serves every command. Pure."""
    environ = os.environ if environ is None else environ
    if testhooks.agent_env(environ) or environ.get(RESIDENT_ENV) == "0":
        return "serve"
    linger = environ.get(LINGER_ENV)
    if linger is None:
        return "connect"
    try:
        seconds = float(linger)
    except ValueError:
        raise ValueError(f"{LINGER_ENV}={linger!r} is not a number of seconds") from None
    return f"connect --linger {seconds!r}"


def serve_script(root: str, artifact: AgentArtifact, command: str | None = None) -> str:
    command = agent_command() if command is None else command
    return root_prelude(root) + (
        f'agent="$root/agent/{artifact.dirname}"\n'
        f'[ -f "$agent/__main__.py" ] || exit {MISSING}\n'
        f"{REQUIRE_PYTHON}\n"
        f'exec env -i HOME="$HOME" USER="$(id -un)" LANG=C.UTF-8 PATH={CLEAN_PATH} '
        f'{testhooks.agent_env()}python3 -I "$agent" {command} --root "$root"\n'
    )


def install_script(root: str, artifact: AgentArtifact) -> str:
    """sh that receives the archive on stdin, checks its hash, unpacks and byte-compiles it
    (a zipapp cannot cache bytecode: every start would recompile the docker SDK), then renames
    the directory into place, so a half-written agent is never found."""
    check = (
        "import hashlib,sys;"
        f"print(hashlib.sha256(open(sys.argv[1],'rb').read()).hexdigest()[:{HASH_LEN}])"
    )
    unpack = (
        "import compileall,sys,zipfile;zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2]);"
        "sys.exit(0 if compileall.compile_dir(sys.argv[2],quiet=1) else 1)"
    )
    return root_prelude(root) + (
        f"{REQUIRE_PYTHON}\n"
        'umask 077; mkdir -p "$root/agent" || exit 1\n'
        'tmp="$root/agent/.incoming.$$"\n'
        'cat > "$tmp.pyz" || { rm -f "$tmp.pyz"; exit 1; }\n'
        f'sum=$(python3 -I -c {shlex.quote(check)} "$tmp.pyz")\n'
        f'if [ "$sum" != {artifact.content_hash} ]; then rm -f "$tmp.pyz"; '
        f"echo 'upload corrupted' >&2; exit {CORRUPT}; fi\n"
        f'python3 -I -c {shlex.quote(unpack)} "$tmp.pyz" "$tmp" '
        '|| { rm -rf "$tmp" "$tmp.pyz"; exit 1; }\n'
        'rm -f "$tmp.pyz"\n'
        f'target="$root/agent/{artifact.dirname}"\n'
        # Another controller may have installed it meanwhile: theirs is identical, keep it.
        'if [ -e "$target" ]; then rm -rf "$tmp"; '
        'else mv "$tmp" "$target" || { rm -rf "$tmp"; exit 1; }; fi\n'
        'for old in "$root"/agent/jackin-agent-*; do\n'
        '  [ "$old" = "$target" ] || rm -rf "$old"\n'
        "done\n"
    )


@dataclass
class StartedAgent:
    client: AgentClient
    deployed: bool  # True when this start had to send the archive
    bytes_sent: int
    direct: bool = False  # True when reached on the resident agent's socket, no command run
    held: bool = False  # True when the channel came through the laptop daemon
    direct_failed: bool = False  # a channel to the resident agent's socket could not be opened

    @property
    def direct_refused(self) -> bool:
        """The socket channel failed although a resident agent was already listening there (it
        had served others before this command's bridge): the host refuses such channels.
        OpenSSH says "open failed" alike for a refusal and for nobody listening."""
        resident = self.client.hello.get("resident")
        served = resident.get("served") if isinstance(resident, dict) else None
        return self.direct_failed and isinstance(served, int) and served > 1

    @property
    def channel(self) -> str:
        """How the controller reaches the agent: `direct` (a channel to the resident agent's
        socket), `bridge` (a command relaying to it), or `exec` (a process of its own)."""
        if self.direct:
            return "direct"
        return "bridge" if self.client.hello.get("resident") else "exec"

    @property
    def socket(self) -> str | None:
        """The resident agent's socket on the host, as it reported it."""
        resident = self.client.hello.get("resident")
        found = resident.get("socket") if isinstance(resident, dict) else None
        return found if isinstance(found, str) else None


async def _try_start(
    transport: Transport, root: str, artifact: AgentArtifact, host: str | None
) -> AgentClient:
    client = AgentClient(await transport.spawn(serve_script(root, artifact)), host)
    try:
        await client.start()
    except AgentCallError as exc:
        raise DeployError(f"agent refused hello: {exc.reason}") from None
    return client


DIRECT_HELLO_TIMEOUT = 10.0  # seconds a resident agent's socket has to answer hello


async def open_direct(
    transport: Transport, socket: str, artifact: AgentArtifact, host: str | None
) -> tuple[AgentClient | None, bool]:
    """A client on the resident agent's socket, if one answers there as this very version;
    None otherwise (no socket, refused, another version, no answer): the caller runs the
    command instead, which starts what is missing. Also: whether the channel itself could not
    be opened (StartedAgent.direct_failed)."""
    channel = await transport.open_unix(socket)
    if channel is None:
        return None, True
    client = AgentClient(channel, host)
    try:
        hello = await asyncio.wait_for(client.start(), DIRECT_HELLO_TIMEOUT)
    except (AgentCallError, AgentClosed, TimeoutError):
        await client.close()
        return None, False
    if hello.get("agent_hash") != artifact.content_hash or not hello.get("resident"):
        await client.close()
        return None, False
    return client, False


async def _start_present(
    transport: Transport, root: str, artifact: AgentArtifact, host: str | None, direct: str | None
) -> StartedAgent:
    """The agent already on the host: on the resident agent's socket `direct` when given and it
    answers, else by a command (AgentClosed when that fails, MISSING: this version is not there)."""
    channel_failed = False
    if direct is not None:
        client, channel_failed = await open_direct(transport, direct, artifact, host)
        if client is not None:
            return StartedAgent(client, False, 0, direct=True)
    started = await _try_start(transport, root, artifact, host)
    return StartedAgent(started, False, 0, direct_failed=channel_failed)


async def start_agent(
    transport: Transport,
    root: str,
    artifact: AgentArtifact,
    host: str | None = None,
    direct: str | None = None,
) -> StartedAgent:
    """The agent, reached on the resident agent's socket `direct` when given and it answers,
    else by a command (which deploys the agent first when this version is not there)."""
    try:
        return await _start_present(transport, root, artifact, host, direct)
    except AgentClosed as exc:
        if exc.returncode != MISSING:
            raise DeployError(_explain(exc)) from None
    data = artifact.read()
    done = await transport.run(install_script(root, artifact), input=data, timeout=120)
    if done.returncode != 0:
        raise DeployError(f"agent install failed ({done.returncode}): {done.stderr_text}")
    try:
        client = await _try_start(transport, root, artifact, host)
    except AgentClosed as exc:
        raise DeployError(_explain(exc)) from None
    return StartedAgent(client, True, len(data))


async def start_deployed_agent(
    transport: Transport,
    root: str,
    artifact: AgentArtifact,
    host: str | None = None,
    direct: str | None = None,
) -> StartedAgent | None:
    """Start this agent version only if it is already on the host; None when it is not.
    Sends and installs nothing (placement asks hosts before any contract is resolved)."""
    try:
        return await _start_present(transport, root, artifact, host, direct)
    except AgentClosed as exc:
        if exc.returncode == MISSING:
            return None
        raise DeployError(_explain(exc)) from None


def _explain(exc: AgentClosed) -> str:
    if exc.returncode == NO_PYTHON:
        return "python3 not found on the host (the agent needs python3 >= 3.9)"
    return f"agent exited ({exc.returncode}): {exc.stderr or 'no output'}"


def attach_script(root: str, artifact: AgentArtifact, session_id: str) -> str:
    """sh that hands the caller's terminal to a session's tmux, through the agent's checks."""
    return root_prelude(root) + (
        f'exec env -i HOME="$HOME" TERM="${{TERM:-xterm-256color}}" LANG=C.UTF-8 '
        f'PATH={CLEAN_PATH} python3 -I "$root/agent/{artifact.dirname}" attach '
        f'--root "$root" {shlex.quote(session_id)}\n'
    )
