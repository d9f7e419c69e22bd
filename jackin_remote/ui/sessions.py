"""The fleet view: one table of every session on every host.

Rows are what hosts answered (a compromised host chooses every string and number in them):
cells go through ui/safe.py, and numbers are formatted only when they are numbers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

from rich.text import Text

from agent_host.wire import ACTIVE_STATES, EndReason
from jackin_remote.ui.fit import ColumnSpec, FittedTable
from jackin_remote.ui.safe import line, text

STATE_STYLE = {
    "running": "green", "starting": "cyan", "exited": "blue", "crashed": "red",
    "failed_setup": "red", "stopped": "dim", "lost": "bold yellow", "purged": "dim",
}  # fmt: skip
STATUS_STYLE = {"blocked": "bold yellow", "done": "green", "working": "cyan", "idle": "dim"}


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def age(since: Any, now: float | None = None) -> str:
    if not since or not is_number(since):
        return "-"
    seconds = max(0, int((now or time.time()) - since))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _memory(value: Any) -> str:
    if not is_number(value):
        return "-"
    return f"{value / 1024**2:.0f}M" if value < 1024**3 else f"{value / 1024**3:.1f}G"


def memory_cell(row: Mapping[str, Any]) -> str:
    """`300M/2.0G` against its limit when the host knows it, else `300M`."""
    used = _memory(row.get("memory_bytes"))
    limit: Any = row.get("memory_limit_bytes")
    if not is_number(limit) or limit <= 0:
        return used
    return f"{used}/{_memory(limit)}"


# Never cut: the session, its host and its state. The rest folds, then goes, in this order.
COLUMNS = (
    ColumnSpec("session", 0, whole=True),
    ColumnSpec("host", 0, whole=True),
    ColumnSpec("workspace", 3),
    ColumnSpec("role", 5),
    ColumnSpec("runtime", 6),
    ColumnSpec("state", 0, whole=True),
    ColumnSpec("agent", 1),
    ColumnSpec("age", 2),
    ColumnSpec("cpu", 4),
    ColumnSpec("mem", 4),
    ColumnSpec("tokens", 3),
    ColumnSpec("link", 7),
)
# The roll-up of agent statuses over a host or the fleet: the first of these that any row has.
ROLLUP = ("blocked", "done", "working", "idle", "unknown")
LINK_ORDER = ("pr", "issue", "repo", "link")


def rollup(statuses: Sequence[Any]) -> str:
    """What a set of agents needs at a glance: blocked > done > working > idle > unknown."""
    have = {str(status) for status in statuses}
    return next((status for status in ROLLUP if status in have), "unknown")


def tokens(usage: Any) -> str:
    """`12.3k $0.04`: the tokens in and out a runtime reported, and the cost when it has one."""
    if not isinstance(usage, Mapping):
        return "-"
    counts = [usage.get(key) for key in ("input_tokens", "output_tokens", "cache_read_tokens",
                                         "cache_write_tokens")]  # fmt: skip
    total = sum(count for count in counts if isinstance(count, int) and is_number(count))
    shown = f"{total / 1000:.1f}k" if total >= 1000 else str(int(total))
    cost = usage.get("cost_usd")
    return shown + (f" ${cost:.2f}" if is_number(cost) else "")


def first_link(links: Any) -> str | None:
    """The link the table shows: the first pull request, else issue, repository, other link."""
    if not isinstance(links, Mapping):
        return None
    for kind in LINK_ORDER:
        urls = links.get(kind)
        if isinstance(urls, list) and urls and isinstance(urls[0], str):
            return urls[0]
    return None


def sessions_table(
    rows: Sequence[dict[str, Any]], now: float | None = None, *, wide: bool = False,
    selected: str | None = None,
) -> FittedTable:  # fmt: skip
    """`selected`: the key of a row to mark (the console's selection), with `▸` joined to its
    id so the mark never folds away from it."""
    cells = []
    for row in rows:
        mark = row.get("key") == selected and selected is not None
        label = f"{row['id']}" + (f" ({row['name']})" if row.get("name") else "")
        state = str(row.get("shown_state") or row["state"])
        state_text = text(state, style=STATE_STYLE.get(state, ""))
        if row.get("reason"):
            state_text.append_text(text(f" ({row['reason']})", style=STATE_STYLE.get(state, "")))
        if state == "lost":
            state_text.append_text(text(
                f" (was {row['state']}; last contact {age(row.get('last_contact'), now)} ago)",
                style="dim",
            ))  # fmt: skip
        live = state == "running"
        agent_status = str(row.get("agent_status") or "unknown")
        cpu = row.get("cpu_percent")
        cells.append([
            text(("▸" if mark else "") + label, style="reverse" if mark else ""),
            # "twin-a (also twin-b)": other names of its host root report it too (store.view)
            text(row["host"] + (f" (also {', '.join(row['also'])})" if row.get("also") else "")),
            *(text(row[key]) for key in ("workspace", "role", "runtime")), state_text,
            text(agent_status, style=STATUS_STYLE.get(agent_status, "")),
            text(age(row.get("created_at"), now)),
            text(f"{cpu:.0f}%" if live and is_number(cpu) else "-"),
            text(memory_cell(row) if live else "-"),
            text(tokens(row.get("usage"))),
            text(first_link(row.get("links")) or "-"),
        ])  # fmt: skip
    return FittedTable("sessions", COLUMNS, cells, wide=wide)


def capacity(hosts: Sequence[Any], rows: Sequence[dict[str, Any]],
             failed: Mapping[str, str]) -> list[dict[str, Any]]:  # fmt: skip
    """Each host's load at a glance: sessions starting or running against its capacity, or why
    it did not answer. Pure: from the inventory hosts, the merged rows and the failures."""
    running: dict[str, int] = {}
    statuses: dict[str, list[Any]] = {}
    silent = dict(failed)  # from the cache (ls --cached): the state the host was last left in
    for row in rows:
        if row.get("state") in ACTIVE_STATES or row.get("agent_status") == "done":
            statuses.setdefault(row["host"], []).append(row.get("agent_status"))
        if row.get("host_state", "ok") != "ok":
            silent.setdefault(row["host"], str(row["host_state"]))
        elif row.get("state") in ACTIVE_STATES:
            running[row["host"]] = running.get(row["host"], 0) + 1
    return [
        {"name": host.name, "status": silent.get(host.name, "ok"),
         "running": running.get(host.name, 0), "capacity": host.capacity,
         "agents": rollup(statuses.get(host.name, []))}
        for host in hosts
    ]  # fmt: skip


def capacity_line(summary: Sequence[dict[str, Any]]) -> Text:
    parts: list[Any] = ["hosts: "]
    for index, entry in enumerate(summary):
        if index:
            parts.append(" · ")
        if entry["status"] == "ok":
            parts.append(f"{entry['name']} {entry['running']}/{entry['capacity']} running")
            if entry.get("agents") in ("blocked", "done"):  # someone is waiting for the operator
                parts.append((f" ({entry['agents']})", STATUS_STYLE[entry["agents"]]))
        else:
            parts.append((f"{entry['name']} {entry['status']}", "yellow"))
    return line(*parts, multiline=False)


# What an end reason means, said under the table (the host sends the reason's name only).
REASONS = {
    EndReason.OOM.value: "out of memory: the kernel killed a process of the sandbox at its memory "
    "limit (limits.memory in the inventory or config); the checkout is kept",
    EndReason.ENGINE_RESTART.value: "the host's docker engine stopped while it ran (the host "
    "stopped or rebooted); the checkout is kept: `jackin-remote start` runs it again",
}
NOTE_CHARS = 300  # a failure reason under the table; `logs` prints the whole of it


def failure_notes(rows: Sequence[dict[str, Any]]) -> list[Text]:
    """Why a session failed, one line under the table per failed session: the host's recorded
    error (`failed_setup` keeps no container, so the reason is all there is to read)."""
    notes = []
    for row in rows:
        error = row.get("error")
        if row.get("reason") in REASONS and row.get("state") == "crashed":
            error = REASONS[row["reason"]]
        if not isinstance(error, str) or not error.strip():
            continue
        reason = " ".join(error.split())
        if len(reason) > NOTE_CHARS:
            reason = reason[:NOTE_CHARS] + f"... (see `jackin-remote logs {row['id']}`)"
        notes.append(line((f"{row['id']} on {row['host']}: {row['state']}:", "red"), " ",
                          reason, multiline=False))  # fmt: skip
    return notes
