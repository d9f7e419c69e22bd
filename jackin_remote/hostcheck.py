"""`hosts check`: connect, deploy the agent if needed, gather facts, judge each host."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from jackin_remote.core.hoststate import HostState
from jackin_remote.core.verdict import problems, verdict
from jackin_remote.errors import AgentCallError, HostError
from jackin_remote.fleet import HostLink, HostResult, Pool
from jackin_remote.inventory.model import Host

PINGS = 3


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
    assert best is not None
    started = link.started
    assert started is not None
    return {
        "facts": facts,
        "latency_ms": round(best[0] * 1000, 3),
        "clock_skew_s": round(best[1], 3),
        "connect_ms": round(link.connect_seconds * 1000, 1),
        "agent": {
            "version": started.client.hello.get("agent_version"),
            "hash": started.client.hello.get("agent_hash"),
            "deployed": started.deployed,
            "bytes_sent": started.bytes_sent,
        },
    }


def report(result: HostResult[dict[str, Any]]) -> dict[str, Any]:
    """One host's entry of the `hosts check --json` envelope."""
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
        found = problems(result.value["facts"], result.value["clock_skew_s"])
        entry.update(result.value)
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
    return [report(result) for result in await pool.map(hosts, _probe)]
