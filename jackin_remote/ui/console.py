"""What the console draws: the fleet's roll-up, each host's load, the sessions table with the
selection marked, the selected session's details (every link, tokens, resources), and the keys.

Pure: from the merged rows, the hosts' summary (ui/sessions.py: capacity) and the console's
state. Every value a host or an agent chose goes through ui/safe.py.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console, Group, RenderableType
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


def details(row: Mapping[str, Any], denials: Sequence[Mapping[str, Any]] = ()) -> list[Text]:
    """The selected session, beyond the table's cells: its agent, usage, resources, every link
    it named, what its egress proxy denied lately (`denials`, for this row) and why it failed."""
    status = str(row.get("agent_status") or "unknown")
    live = (row.get("shown_state") or row.get("state")) == "running"
    cpu = row.get("cpu_percent")
    said = [line((f"{row['id']} on {row['host']}", "bold"), " · agent ",
                 (status, STATUS_STYLE.get(status, "")), " · tokens ", tokens(row.get("usage")),
                 " · cpu ", f"{cpu:.0f}%" if live and is_number(cpu) else "-",
                 " · mem ", memory_cell(row) if live else "-", multiline=False)]  # fmt: skip
    links = row.get("links")
    named: list[tuple[str, Any]] = []
    for kind in LINK_ORDER if isinstance(links, Mapping) else ():
        urls = links.get(kind) if isinstance(links, Mapping) else None
        named += [(kind, url) for url in (urls if isinstance(urls, list) else [])]
    for kind, url in named[:MAX_LINK_LINES]:
        said.append(line(f"  {kind}: ", (str(url), "underline"), multiline=False))
    if len(named) > MAX_LINK_LINES:
        said.append(line((f"  ... and {len(named) - MAX_LINK_LINES} more links "
                          f"(`jackin-remote ls --json`)", "dim")))  # fmt: skip
    for entry in denials:
        if entry.get("session") != row.get("id"):
            continue  # asked for another row (the selection moved since)
        said.append(line(("  denied: ", "yellow"), f"{entry['host']}:{entry['port']}",
                         f" ({entry['count']}x, {entry['rule']})", multiline=False))  # fmt: skip
    error = row.get("error")
    if isinstance(error, str) and error.strip():
        said.append(line(("  error: ", "red"), " ".join(error.split())[:LINE_CHARS],
                         multiline=False))  # fmt: skip
    return said


def footer(state: ConsoleState, rows: Sequence[Mapping[str, Any]]) -> Text:
    """The keys, or the filter being typed, or the question before a stop."""
    if state.typing:
        return line("filter: ", (state.filter, "bold"), "▏  (Enter keeps it, Esc clears it)",
                    multiline=False)  # fmt: skip
    if state.confirm is not None:
        verb, key = state.confirm
        asked = next((r for r in rows if r.get("key") == key), None)
        what = f"{asked['id']} on {asked['host']}" if asked else "a session no longer listed"
        return line((f"{verb} {what}?", "bold yellow"), " y to confirm, any other key cancels",
                    multiline=False)  # fmt: skip
    return Text(HELP, style="dim")


def _one_line(said: Text) -> Text:
    """A line that never wraps: a host's long words cannot push the rest off the screen."""
    said.no_wrap, said.overflow = True, "ellipsis"
    return said


def window(shown: Sequence[dict[str, Any]], selected: Mapping[str, Any] | None,
           room: int) -> list[dict[str, Any]]:  # fmt: skip
    """At most `room` rows around the selected one, so it stays on the screen. Pure."""
    if len(shown) <= room:
        return list(shown)
    index = next((i for i, r in enumerate(shown) if r is selected), 0)
    start = min(max(index - room // 2, 0), len(shown) - room)
    return list(shown[start : start + room])


TABLE_CHROME = 6  # the table's title, borders, header and the "not shown at this width" line
MAX_FAILED_LINES = 3
MAX_LINK_LINES = 5
LINE_CHARS = 300


def _lines(table: RenderableType, width: int) -> int:
    """How many lines `table` takes at `width` (its cells may fold onto several)."""
    console = Console(width=width, file=io.StringIO(), color_system=None)
    return len(console.render_lines(table, console.options, pad=False))


def render(
    rows: Sequence[dict[str, Any]], summary: Sequence[dict[str, Any]],
    failed: Mapping[str, str], state: ConsoleState, now: float | None = None,
    height: int | None = None, width: int | None = None,
    denials: Sequence[Mapping[str, Any]] = (),
) -> RenderableType:  # fmt: skip
    """The whole screen. The keys (or the question asked) come right under the title, so
    nothing a host says can push them off the screen. Given the screen's `height` and `width`,
    the table shows the rows around the selected one that fit (folded cells counted).
    `failed`: host name to why it did not answer this round; `denials`: the selected session's
    latest egress denials."""
    shown = filtered(rows, state.filter)
    row = selected_row(state, rows)
    head = [_title(rows, len(shown), summary, state), footer(state, rows)]
    if state.message:
        head.append(line(state.message[:LINE_CHARS], multiline=False))
    head.append(capacity_line(summary))
    if row is not None:
        tail = details(row, denials)
    elif rows:
        tail = [line(("no session matches the filter", "dim"))]
    else:
        tail = [line(("no sessions yet: `jackin-remote launch` starts one", "dim"))]
    hosts = list(failed.items())
    for host, why in hosts[:MAX_FAILED_LINES]:
        tail.append(line((f"{host}: ", "yellow"), str(why)[:LINE_CHARS], multiline=False))
    if len(hosts) > MAX_FAILED_LINES:
        tail.append(line((f"... and {len(hosts) - MAX_FAILED_LINES} more hosts did not answer "
                          "(`jackin-remote ls` lists them)", "yellow")))  # fmt: skip
    marked = row["key"] if row else None
    room = len(shown) if height is None else height - len(head) - len(tail) - TABLE_CHROME
    if room < len(shown):
        room -= 1  # the "rows X-Y of Z" line
    count = max(room, 1)
    listed = window(shown, row, count)
    table = sessions_table(listed, now, selected=marked)
    lines_left = None if height is None else height - len(head) - len(tail) - 1
    while width is not None and lines_left is not None and count > 1:
        used = _lines(table, width)
        if used <= lines_left:
            break
        count = max(1, min(count - 1, count * lines_left // used))  # folded rows take more
        listed = window(shown, row, count)
        table = sessions_table(listed, now, selected=marked)
    parts: list[RenderableType] = [*(_one_line(t) for t in head)]
    parts.append(table)
    if len(listed) < len(shown):
        first = shown.index(listed[0]) + 1
        parts.append(line((f"rows {first}-{first + len(listed) - 1} of {len(shown)}: ↑↓ scroll",
                           "dim")))  # fmt: skip
    parts += [_one_line(t) for t in tail]
    return Group(*parts)
