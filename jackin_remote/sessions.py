"""Session commands on the controller: refresh the merged view, find a session, and act on it
through its host's agent (logs, stop, rm, pull, diff, attach)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from jackin_remote.agent.client import AgentClosed
from jackin_remote.core.hoststate import HostState
from jackin_remote.errors import HostError, UsageError
from jackin_remote.inventory import Host, Inventory

if TYPE_CHECKING:
    from jackin_remote.fleet import HostLink, HostResult, Pool
    from jackin_remote.store import Store


async def refresh(pool: Pool, hosts: Sequence[Host], store: Store) -> list[HostResult[Any]]:
    """Ask every host for its sessions and merge them; unreachable hosts' sessions turn lost."""

    async def ask(link: HostLink) -> Any:
        return await link.agent.call("session.list", {})

    async def ask_checked(link: HostLink) -> Any:
        # The host is not trusted: its answer is parsed field by field before the store sees it.
        # Who it is comes along (pipelined), so `ls` shows once what two names of one root say.
        from jackin_remote.hostid import host_identity

        listed, identity = await asyncio.gather(ask(link), host_identity(link))
        return checked_records(link.host.name, listed.get("sessions")), identity

    results = await pool.map(hosts, ask_checked)
    for result in results:
        if result.ok and result.value is not None:
            records, identity = result.value
            store.merge_host(result.host.name, records)
            store.record_identity(identity)
        else:
            reason = getattr(result.error, "reason", str(result.error))
            store.mark_unreachable(result.host.name, str(result.state), reason)
    return results


def checked_records(host: str, items: Any) -> list[dict[str, Any]]:
    """A host's session records, each parsed with the boundary's own types; a malformed one
    fails that host (named) rather than reaching the laptop's view."""
    from agent_host.wire import SpecError, records_from_wire

    try:
        return [record.to_wire() for record in records_from_wire(items)]
    except SpecError as exc:
        raise HostError(
            host, HostState.AGENT_ERROR, f"the host sent an invalid session record ({exc.message})",
            hint="the host agent is damaged or not ours; run `jackin-remote hosts check` on it",
        ) from None  # fmt: skip


def host_of(inventory: Inventory, row: dict[str, Any]) -> Host:
    host = inventory.host(row["host"])
    if host is None:
        raise UsageError(
            f"session {row['id']} is on host {row['host']!r}, which is not in the inventory",
            hint="restore the host in the inventory (or pass --inventory) to reach it",
        )
    return host


async def find_session(
    pool: Pool, inventory: Inventory, store: Store, ref: str
) -> tuple[dict[str, Any], Host]:
    """Resolve a session id, unique prefix or name; refresh from the hosts if the cache misses."""
    try:
        row = store.find(ref)
    except UsageError:
        await refresh(pool, list(inventory.hosts.values()), store)
        row = store.find(ref)
    return row, host_of(inventory, row)


async def call(
    pool: Pool,
    host: Host,
    method: str,
    params: dict[str, Any],
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
) -> Any:
    link = await pool.agent(host)
    try:
        return await link.agent.call(method, params, on_event=on_event)
    except AgentClosed:
        raise HostError(
            host.name, HostState.UNREACHABLE, "the connection to the host was lost",
            hint="sessions keep running on the host; run the command again to reconnect",
        ) from None  # fmt: skip
