"""What the console draws: the fleet's roll-up, each host's load, the sessions table with the
selection marked, the selected session's details (every link, tokens, resources), and the keys.

Pure: from the merged rows, the hosts' summary (ui/sessions.py: capacity) and the console's
state. Every value a host or an agent chose goes through ui/safe.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text

from jackin_remote.console import HELP, ConsoleState, filtered, selected_row
from jackin_remote.ui.safe import line
from jackin_remote.ui.sessions import (
    LINK_ORDER,
    STATUS_STYLE,
    capacity_line,
    is_number,
    memory_cell,
    rollup,
    sessions_table,
    tokens,
)


def _title(rows: Sequence[dict[str, Any]], shown: int, summary: Sequence[dict[str, Any]],
           state: ConsoleState) -> Text:  # fmt: skip
    fleet = rollup([entry.get("agents") for entry in summary])
    parts: list[Any] = [("jackin-remote console", "bold"), " · fleet: ",
                        (fleet, STATUS_STYLE.get(fleet, "")),
                        f" · {len(rows)} session{'s' if len(rows) != 1 else ''}"]  # fmt: skip
    if state.filter:
        parts += [f" ({shown} shown) · filter: ", (state.filter, "bold")]
    return line(*parts, multiline=False)


def details(row: Mapping[str, Any]) -> list[Text]:
    """The selected session, beyond the table's cells: its agent, usage, resources, every link
    it named and why it failed."""
    status = str(row.get("agent_status") or "unknown")
    live = (row.get("shown_state") or row.get("state")) == "running"
    cpu = row.get("cpu_percent")
    said = [line((f"{row['id']} on {row['host']}", "bold"), " · agent ",
                 (status, STATUS_STYLE.get(status, "")), " · tokens ", tokens(row.get("usage")),
                 " · cpu ", f"{cpu:.0f}%" if live and is_number(cpu) else "-",
                 " · mem ", memory_cell(row) if live else "-", multiline=False)]  # fmt: skip
    links = row.get("links")
    if isinstance(links, Mapping):
        for kind in LINK_ORDER:
            urls = links.get(kind)
            for url in urls if isinstance(urls, list) else []:
                said.append(line(f"  {kind}: ", (str(url), "underline"), multiline=False))
    error = row.get("error")
    if isinstance(error, str) and error.strip():
        said.append(line(("  error: ", "red"), " ".join(error.split())[:300], multiline=False))
    return said


def footer(state: ConsoleState, row: Mapping[str, Any] | None) -> Text:
    if state.typing:
        return line("filter: ", (state.filter, "bold"), "▏  (Enter keeps it, Esc clears it)",
                    multiline=False)  # fmt: skip
    if state.confirm is not None and row is not None:
        return line((f"{state.confirm} {row['id']} on {row['host']}?", "bold yellow"),
                    " y to confirm, any other key cancels", multiline=False)  # fmt: skip
    return Text(HELP, style="dim")


def render(
    rows: Sequence[dict[str, Any]], summary: Sequence[dict[str, Any]],
    failed: Mapping[str, str], state: ConsoleState, now: float | None = None,
) -> RenderableType:  # fmt: skip
    """The whole screen. `failed`: host name to why it did not answer this round."""
    shown = filtered(rows, state.filter)
    row = selected_row(state, rows)
    parts: list[RenderableType] = [
        _title(rows, len(shown), summary, state),
        capacity_line(summary),
        sessions_table(shown, now, selected=row["key"] if row else None),
    ]
    if row is not None:
        parts += details(row)
    elif rows:
        parts.append(line(("no session matches the filter", "dim")))
    else:
        parts.append(line(("no sessions yet: `jackin-remote launch` starts one", "dim")))
    for host, why in failed.items():
        parts.append(line((f"{host}: ", "yellow"), why, multiline=False))
    if state.message:
        parts.append(line(state.message, multiline=False))
    parts.append(footer(state, row))
    return Group(*parts)
