"""`hosts check`: connect, deploy the agent if needed, gather facts, judge each host.

Also the read-only capacity probe that `explain` and `launch` share with it: one shell command
over the transport (no agent, nothing written), so the limits are checked before any work.
"""

from __future__ import annotations

import time
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jackin_remote.agent.deploy import CLEAN_PATH, root_prelude
from jackin_remote.core.aliases import Alias, aliases
from jackin_remote.core.capacity import (
    Capacity,
    Misfit,
    capacity_from_facts,
    limit_misfits,
    parse_probe,
)
from jackin_remote.core.hoststate import HostState
from jackin_remote.core.tiers import BackendOrigin, backend_misfits, host_backends
from jackin_remote.core.verdict import alias_problems, misfit_problems, problems, verdict
from jackin_remote.errors import AgentCallError, HostError
from jackin_remote.fleet import HostLink, HostResult, Pool
from jackin_remote.hostid import host_identity
from jackin_remote.inventory.model import Host
from jackin_remote.inventory.origins import limit_settings
from jackin_remote.inventory.toml_lines import index_source

PINGS = 3
PROBE_TIMEOUT = 20.0

# Reads only: CPUs this account may use (what the engine's NumCPU counts), MemTotal, pid_max,
# the free space of the host root's nearest existing directory (the root may not exist yet),
# the docker engine's runtimes (runsc: the gvisor backend) on the socket the host agent uses,
# and whether /dev/kvm exists.
PROBE_SCRIPT = (
    f"PATH={CLEAN_PATH}\n"
    'p="$root"\n'
    'while [ ! -e "$p" ] && [ "$p" != / ]; do p=$(dirname -- "$p"); done\n'
    'echo "cpus $(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null)"\n'
    'echo "pid_max $(cat /proc/sys/kernel/pid_max 2>/dev/null)"\n'
    "echo \"memory_kb $(sed -n 's/^MemTotal:[[:space:]]*\\([0-9]*\\) kB$/\\1/p' /proc/meminfo"
    ' 2>/dev/null)"\n'
    'df -Pk -- "$p" 2>/dev/null | awk \'NR == 2 { print "disk_free_kb " $4 }\'\n'
    'printf "disk_path %s\\n" "$p"\n'
    'engine_info() { timeout 10 docker -H unix:///var/run/docker.sock info --format "$@"; }\n'
    "if r=$(engine_info '{{json .Runtimes}}' 2>/dev/null); then echo \"runtimes $r\"; else\n"
    '  echo "runtimes_error $(engine_info x 2>&1 >/dev/null | tr -s "\\n" " " | cut -c1-200)"; fi\n'
    'if [ -e /dev/kvm ]; then echo "kvm 1"; else echo "kvm 0"; fi\n'
)
# Only for a host with a disk_budget: what the root takes (one file system, hard links once).
USAGE_TIMEOUT = 60
USAGE_SCRIPT = (
    'if [ ! -e "$root" ]; then echo "root_usage_kb 0"\n'
    f'elif u=$(timeout {USAGE_TIMEOUT} du -skx -- "$root" 2>/dev/null | tail -n 1) && '
    '[ -n "$u" ]; then echo "root_usage_kb ${u%%[[:space:]]*}"\n'
    f'else echo "root_usage_error du gave no total within {USAGE_TIMEOUT} s"; fi\n'
)


async def read_capacity(link: HostLink) -> Capacity:
    """The host's CPUs, memory, pid_max and free disk, read without starting the agent."""
    usage = bool(link.host.disk_budget)
    done = await link.transport.run(
        root_prelude(link.host.root) + PROBE_SCRIPT + (USAGE_SCRIPT if usage else ""),
        timeout=PROBE_TIMEOUT + (USAGE_TIMEOUT if usage else 0),
    )
    return parse_probe(done.stdout.decode(errors="replace"))


def host_misfits(
    host: Host,
    capacity: Capacity,
    declared: Host | None = None,
    sources: Mapping[str, str] | None = None,
) -> list[Misfit]:
    """The limits `host` would give a sandbox that its machine cannot meet."""
    return limit_misfits(host.name, limit_settings(host, declared, sources), capacity)


def host_disk_misfits(
    host: Host,
    capacity: Capacity,
    needed: int = 0,
    *,
    launching: bool = False,
    ignore_floor: bool = False,
) -> list[Misfit]:
    """`host`'s disk_floor and disk_budget against its facts (core/disk.py): a launch writing
    `needed` bytes is refused below the floor (`launching`, unless `ignore_floor`); the rest
    are warnings."""
    from jackin_remote.core.disk import budget_misfits, floor_misfits
    from jackin_remote.inventory.origins import disk_setting

    floor = disk_setting(host, "disk_floor")
    budget = disk_setting(host, "disk_budget")
    return [
        *floor_misfits(host.name, capacity, floor, needed, launching=launching,
                       ignored=ignore_floor),
        *budget_misfits(host.name, capacity, budget, needed),
    ]  # fmt: skip


def backend_origin(host: Host, declared: Host | None = None) -> BackendOrigin:
    """Where `host`'s backend was chosen: `declared` is the host as the inventory has it, so a
    backend that differs from it came from --backend; else the host's own table, its file's
    [defaults], or the built-in default (read again from the file, read-only)."""
    if declared is not None and declared.backend != host.backend:
        return BackendOrigin("flag")
    try:
        source = Path(host.source_file).read_text(encoding="utf-8")
        document = tomllib.loads(source)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return BackendOrigin("default" if host.source_file == "<builtin>" else "unknown")
    hosts = document.get("hosts")
    own = hosts.get(host.name) if isinstance(hosts, dict) else None
    defaults = document.get("defaults")
    if isinstance(own, dict) and "backend" in own:
        path: tuple[str, ...] = ("hosts", host.name, "backend")
    elif isinstance(defaults, dict) and "backend" in defaults:
        path = ("defaults", "backend")
    else:
        return BackendOrigin("default")
    line = index_source(source).line_of(path)
    where = host.source_file if line is None else f"{host.source_file}:{line}"
    return BackendOrigin("inventory", f"{where} {'.'.join(path)}")


def host_backend_misfits(
    host: Host,
    capacity: Capacity,
    declared: Host | None = None,
    network: str | None = None,
    docker: str = "none",
) -> list[Misfit]:
    """Whether `host` can run its backend (for a session with `network` and `docker` access;
    network None: no session)."""
    origin = backend_origin(host, declared)
    return backend_misfits(host.name, host.backend, origin, network, capacity, docker)


async def _probe(link: HostLink) -> dict[str, Any]:
    try:
        return await _probe_agent(link)
    except AgentCallError as exc:
        raise HostError(
            link.host.name, HostState.AGENT_ERROR, f"agent failed: {exc.reason}"
        ) from None


async def _probe_agent(link: HostLink) -> dict[str, Any]:
    """Facts plus the best of a few pings: latency is the RPC round trip, skew its midpoint."""
    best: tuple[float, float] | None = None  # (rtt, skew)
    for _ in range(PINGS):
        sent = time.time()
        reply = await link.agent.call("ping")
        received = time.time()
        rtt = received - sent
        if best is None or rtt < best[0]:
            best = (rtt, float(reply["time"]) - (sent + received) / 2)
    facts = await link.agent.call("facts")
    identity = await host_identity(link)
    # The agent's facts hold what the probe reads (no command on the host), unless a disk
    # budget asks for the root's usage (du) or the agent is older.
    capacity = None if link.host.disk_budget else capacity_from_facts(facts)
    if capacity is None:
        capacity = await read_capacity(link)
    misfits = host_misfits(link.host, capacity) + host_backend_misfits(link.host, capacity)
    misfits += host_disk_misfits(link.host, capacity)
    assert best is not None
    started = link.started
    assert started is not None
    return {
        "facts": facts,
        "identity": identity,
        "misfits": [m.as_dict() for m in misfits],
        "latency_ms": round(best[0] * 1000, 3),
        "clock_skew_s": round(best[1], 3),
        "connect_ms": round(link.connect_seconds * 1000, 1),
        "agent": {
            "version": started.client.hello.get("agent_version"),
            "hash": started.client.hello.get("agent_hash"),
            "deployed": started.deployed,
            "bytes_sent": started.bytes_sent,
            "channel": started.channel,
            "daemon": started.held,
            "pid": _number(started.client.hello.get("pid")),
            "started_at": _number(_resident(started.client.hello).get("started_at")),
            "streamlocal_refused": link.transport.unix_refused
            or started.direct_refused
            or _refused(link),
        },
    }


def _refused(link: HostLink) -> bool:
    from jackin_remote.agent import sockets

    return not link.host.is_local and sockets.refused(link.host)


def _resident(hello: dict[str, Any]) -> dict[str, Any]:
    found = hello.get("resident")
    return found if isinstance(found, dict) else {}


def _number(value: Any) -> float | int | None:
    """A number the host sent, or None: nothing else reaches the report."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def report(
    result: HostResult[dict[str, Any]], aliases_found: Sequence[Alias] = ()
) -> dict[str, Any]:
    """One host's entry of the `hosts check --json` envelope; `aliases_found`: the checked
    names that are one machine (core/aliases.py), warned about on each of them."""
    host = result.host
    entry: dict[str, Any] = {
        "name": host.name,
        "status": str(result.state),
        "transport": host.transport,
        "address": None if host.is_local else host.ssh_address,
        "port": host.port,
        "seconds": round(result.seconds, 3),
    }
    if result.value is not None:
        value = dict(result.value)
        found = problems(value["facts"], value["clock_skew_s"])
        found += misfit_problems(value.pop("misfits"))
        identity = value.pop("identity")
        found += alias_problems(host.name, aliases_found)
        entry.update(value)
        entry["backends"] = (
            host_backends(value["facts"]) if isinstance(value["facts"], dict) else {}
        )
        entry["identity"] = {"host_key": identity.host_key, "machine_id": identity.machine_id,
                             "root_id": identity.root_id}  # fmt: skip
        entry["verdict"] = verdict(found)
        entry["problems"] = [p.as_dict() for p in found]
        entry["error"] = None
    else:
        error = result.error
        entry["verdict"] = "unusable"
        entry["problems"] = []
        entry["error"] = {
            "message": getattr(error, "reason", str(error)),
            "hint": getattr(error, "hint", None),
        }
        fingerprint = getattr(error, "fingerprint", None)
        if fingerprint:
            entry["error"]["fingerprint"] = fingerprint
            entry["error"]["key_changed"] = getattr(error, "changed", None)
    return entry


async def check_hosts(pool: Pool, hosts: Sequence[Host]) -> list[dict[str, Any]]:
    results = await pool.map(hosts, _probe)
    # One machine under two names is seen only by comparing the hosts that answered.
    found = aliases(r.value["identity"] for r in results if r.value is not None)
    return [report(result, found) for result in results]
