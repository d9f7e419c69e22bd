"""Snapshots of a session's checkout, on the controller: take, list, restore, diff --since.

The host does the work (agent_host/snapshots.py); this module finds the session, sends the
operator's current snapshot policy from the inventory (retention and excludes), and parses every
answer with the wire's types (a host is not trusted). A session that `rm` removed keeps its
snapshots: it is found on its host (`session.list {all}`) when the laptop no longer lists it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from jackin_remote.core.hoststate import HostState
from jackin_remote.errors import HostError, UsageError

if TYPE_CHECKING:
    from agent_host.wire import SnapshotInfo, SnapshotPolicy
    from jackin_remote.fleet import Pool
    from jackin_remote.inventory import Host, Inventory
    from jackin_remote.store import Store

_SNAPSHOT_REF = re.compile(r"^s?([1-9][0-9]{0,8})\Z")


def snapshot_ref(value: str, flag: str) -> str:
    """`s3` (or `3`) as the wire's snapshot id; a clear error naming the flag otherwise."""
    match = _SNAPSHOT_REF.match(value.strip())
    if match is None:
        raise UsageError(f"{flag}: {value!r} is not a snapshot id",
                         hint="snapshot ids are s1, s2, ...: see `jackin-remote snapshots "
                         "SESSION`")  # fmt: skip
    return "s" + match.group(1)


def policy_for(host: Host) -> SnapshotPolicy:
    """The inventory's snapshot settings for `host` as they stand now."""
    from agent_host.wire import SnapshotPolicy

    return SnapshotPolicy(keep=host.snapshot_keep, max_age=host.snapshot_max_age,
                          excludes=host.snapshot_excludes)  # fmt: skip


def checked_info(host: str, data: Any) -> SnapshotInfo:
    from agent_host.wire import SnapshotInfo, SpecError

    try:
        return SnapshotInfo.from_wire(data)
    except SpecError as exc:
        raise _bad_answer(host, exc.message) from None


def _bad_answer(host: str, problem: str) -> HostError:
    return HostError(host, HostState.AGENT_ERROR, f"the host sent an invalid snapshot answer "
                     f"({problem})", hint="the host agent is damaged or not ours; run "
                     "`jackin-remote hosts check` on it")  # fmt: skip


async def find(
    pool: Pool, inventory: Inventory, store: Store, ref: str
) -> tuple[dict[str, Any], Host]:
    """A session the laptop lists, else one that `rm` removed but whose host still keeps its
    record (and its snapshots): asked of every host, by full id or unique id prefix."""
    from jackin_remote.sessions import checked_records, find_session, host_of

    try:
        return await find_session(pool, inventory, store, ref)
    except UsageError as missing:
        wanted = ref.rpartition(":")[2]
        hosts = [h for h in inventory.hosts.values() if h.name == ref.rpartition(":")[0]] or list(
            inventory.hosts.values()
        )

        async def ask(link: Any) -> Any:
            listed = await link.agent.call("session.list", {"all": True, "stats": False})
            return checked_records(link.host.name, listed.get("sessions"))

        found = []
        for result in await pool.map(hosts, ask):
            for record in result.value if result.ok and result.value else []:
                named = record["id"].startswith(wanted) or record.get("name") == wanted
                if record["state"] == "purged" and wanted and named:
                    found.append({**record, "host": result.host.name,
                                  "key": f"{result.host.name}/{record['id']}"})  # fmt: skip
        if len(found) != 1:
            if len(found) > 1:
                listing = ", ".join(f"{row['host']}:{row['id']}" for row in found[:6])
                hint = "type more of the id, or name its host as HOST:ID"
                raise UsageError(f"{ref!r} matches several removed sessions: {listing}",
                                 hint=hint) from None  # fmt: skip
            raise missing from None
        return found[0], host_of(inventory, found[0])


async def call(pool: Pool, host: Host, method: str, params: dict[str, Any]) -> Any:
    from jackin_remote.sessions import call as session_call

    answer = await session_call(pool, host, method, params)
    if not isinstance(answer, dict):
        raise _bad_answer(host.name, "not an object")
    return answer


async def take(pool: Pool, host: Host, session_id: str) -> SnapshotInfo:
    answer = await call(pool, host, "snapshot.take",
                        {"id": session_id, "policy": policy_for(host).to_wire()})  # fmt: skip
    return checked_info(host.name, answer)


async def listing(pool: Pool, host: Host, session_id: str) -> tuple[list[SnapshotInfo], str]:
    answer = await call(pool, host, "snapshot.list", {"id": session_id})
    items = answer.get("snapshots")
    if not isinstance(items, list):
        raise _bad_answer(host.name, "snapshots must be a list")
    state = answer.get("state")
    return [checked_info(host.name, item) for item in items], str(state)


async def restore(
    pool: Pool, host: Host, session_id: str, snapshot: str | None, stop: bool
) -> dict[str, Any]:
    """Restore the checkout; the answer parsed: restored id, the pre-restore snapshot, whether
    the sandbox was stopped first, its state now."""
    from agent_host.wire import SessionState, SpecError, check_snapshot_id

    params: dict[str, Any] = {"id": session_id, "stop": stop,
                              "policy": policy_for(host).to_wire()}  # fmt: skip
    if snapshot is not None:
        params["snapshot"] = snapshot
    answer = await call(pool, host, "snapshot.restore", params)
    try:
        restored = check_snapshot_id(answer.get("restored"), "restored")
        state = SessionState(answer.get("state")).value
    except (SpecError, ValueError) as exc:
        raise _bad_answer(host.name, str(exc)) from None
    entries = answer.get("entries")
    return {
        "restored": restored,
        "pre_restore": checked_info(host.name, answer.get("pre_restore")).to_wire(),
        "stopped": answer.get("stopped") is True,
        "entries": entries if isinstance(entries, int) and not isinstance(entries, bool) else 0,
        "state": state,
    }
