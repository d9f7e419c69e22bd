"""The fleet view: one table of every session on every host."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from rich.table import Table
from rich.text import Text

STATE_STYLE = {
    "running": "green", "starting": "cyan", "exited": "blue", "crashed": "red",
    "failed_setup": "red", "stopped": "dim", "lost": "bold yellow", "purged": "dim",
}  # fmt: skip
STATUS_STYLE = {"blocked": "bold yellow", "done": "green", "working": "cyan", "idle": "dim"}


def age(since: float | None, now: float | None = None) -> str:
    if not since:
        return "-"
    seconds = max(0, int((now or time.time()) - since))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _memory(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    return f"{value / 1024**2:.0f}M" if value < 1024**3 else f"{value / 1024**3:.1f}G"


def sessions_table(rows: Sequence[dict[str, Any]], now: float | None = None) -> Table:
    table = Table(title="sessions", title_justify="left")
    for column in (
        "session",
        "host",
        "workspace",
        "role",
        "runtime",
        "state",
        "agent",
        "age",
        "cpu",
        "mem",
    ):
        table.add_column(column, no_wrap=True)  # fmt: skip
    for row in rows:
        state = row.get("shown_state") or row["state"]
        state_text = Text(state, style=STATE_STYLE.get(state, ""))
        if state == "lost":
            state_text.append(
                f" (was {row['state']}; last contact {age(row.get('last_contact'), now)} ago)",
                style="dim",
            )
        live = state == "running"
        table.add_row(
            row["id"] + (f" ({row['name']})" if row.get("name") else ""),
            row["host"], row["workspace"], row["role"], row["runtime"], state_text,
            Text(row.get("agent_status") or "unknown",
                 style=STATUS_STYLE.get(row.get("agent_status") or "", "")),
            age(row.get("created_at"), now),
            f"{row['cpu_percent']:.0f}%" if live and row.get("cpu_percent") is not None else "-",
            _memory(row.get("memory_bytes")) if live else "-",
        )  # fmt: skip
    return table
