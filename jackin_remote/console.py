"""`console`: the full-screen fleet view's decisions, as pure functions.

The console (cli/console.py) refreshes the merged view over held connections, like `ls --watch`,
and reads keys. What a key does is decided here, from the console's state and the rows on screen,
so it is tested without a terminal: moving the selection, filtering, and asking for an action
on the selected session (attach, logs, stop, pull, open its link). Stopping asks first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

# Decoded keys (decode_keys): printable characters stand for themselves.
UP, DOWN, ENTER, ESCAPE, BACKSPACE, INTERRUPT = "up", "down", "enter", "escape", "backspace", "^C"
_SEQUENCES = {"\x1b[A": UP, "\x1bOA": UP, "\x1b[B": DOWN, "\x1bOB": DOWN}
_SINGLE = {"\r": ENTER, "\n": ENTER, "\x7f": BACKSPACE, "\x08": BACKSPACE, "\x03": INTERRUPT}

# What each action key asks for; the console runs the matching jackin-remote command.
ACTIONS = {"a": "attach", "l": "logs", "s": "stop", "p": "pull", "o": "open"}
CONFIRM = {"stop"}  # asked again (y) before it runs
HELP = "↑↓/jk move · a attach · l logs · s stop · p pull · o open link · / filter · q quit"
NOTIFY_PER_ROUND = 5  # notify commands started in one round, at most (a host may flap)
FILTER_CHARS = 40
# The columns a filter matches, case-insensitively, anywhere in the value.
FILTERED = ("id", "name", "host", "workspace", "role", "runtime", "state", "agent_status")


@dataclass(frozen=True)
class ConsoleState:
    selected: str | None = None  # the selected row's key (host and id), kept across rounds
    filter: str = ""
    typing: bool = False  # the filter is being typed
    confirm: tuple[str, str] | None = None  # (verb, row key): an action waiting for `y`
    message: str = ""  # the last action's outcome, shown under the table


@dataclass(frozen=True)
class Action:
    verb: str  # attach, logs, stop, pull, open, or quit
    row: dict[str, Any] | None = None


def decode_keys(data: str) -> list[str]:
    """Keys from what the terminal sent: arrow sequences, Enter, Escape, Backspace, Ctrl-C, and
    printable characters. Other control characters and unknown sequences are dropped."""
    keys: list[str] = []
    index = 0
    while index < len(data):
        three = data[index : index + 3]
        if three in _SEQUENCES:
            keys.append(_SEQUENCES[three])
            index += 3
            continue
        char = data[index]
        index += 1
        if char == "\x1b":
            if data[index : index + 1] in ("[", "O"):  # an unknown sequence: skip it whole
                index += 1
                while index < len(data) and not ("@" <= data[index] <= "~"):
                    index += 1
                index += 1
                continue
            keys.append(ESCAPE)
        elif char in _SINGLE:
            keys.append(_SINGLE[char])
        elif char.isprintable():
            keys.append(char)
    return keys


def filtered(rows: Sequence[dict[str, Any]], filter_text: str) -> list[dict[str, Any]]:
    """The rows a filter keeps: any of FILTERED contains it, ignoring case. Pure."""
    needle = filter_text.casefold()
    if not needle:
        return list(rows)
    return [
        row
        for row in rows
        if any(needle in str(row.get(column) or "").casefold() for column in FILTERED)
    ]


def selected_row(state: ConsoleState, rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The selected row among those shown; the first when the selection is gone or unset."""
    shown = filtered(rows, state.filter)
    for row in shown:
        if row["key"] == state.selected:
            return row
    return shown[0] if shown else None


def _move(state: ConsoleState, rows: Sequence[dict[str, Any]], step: int) -> ConsoleState:
    shown = filtered(rows, state.filter)
    if not shown:
        return state
    current = selected_row(state, rows)
    index = shown.index(current) if current in shown else 0
    index = min(max(index + step, 0), len(shown) - 1)
    return replace(state, selected=shown[index]["key"])


def on_key(
    state: ConsoleState, key: str, rows: Sequence[dict[str, Any]]
) -> tuple[ConsoleState, Action | None]:
    """The console's next state for a key, and the action it asks for, if any. Pure."""
    if key == INTERRUPT:
        return state, Action("quit")
    if state.typing:
        if key == ENTER:
            return replace(state, typing=False), None
        if key == ESCAPE:
            return replace(state, typing=False, filter=""), None
        if key == BACKSPACE:
            return replace(state, filter=state.filter[:-1]), None
        if len(key) == 1 and len(state.filter) < FILTER_CHARS:
            return replace(state, filter=state.filter + key), None
        return state, None
    if state.confirm is not None:
        # Only the very session asked about: one that left the view meanwhile is not replaced
        # by whichever row comes first now.
        (verb, wanted), state = state.confirm, replace(state, confirm=None)
        row = next((r for r in filtered(rows, state.filter) if r["key"] == wanted), None)
        if key in ("y", "Y") and row is not None:
            return state, Action(verb, row)
        return replace(state, message=f"{verb}: not done"), None
    if key == "q":
        return state, Action("quit")
    if key == ESCAPE:  # never quits: a lone Escape byte may be the start of a key (Alt+j)
        return replace(state, filter=""), None
    if key in (UP, "k"):
        return _move(state, rows, -1), None
    if key in (DOWN, "j"):
        return _move(state, rows, 1), None
    if key == "/":
        return replace(state, typing=True, message=""), None
    if key in ACTIONS:
        row = selected_row(state, rows)
        if row is None:
            return replace(state, message="no session is selected"), None
        verb = ACTIONS[key]
        state = replace(state, selected=row["key"], message="")
        if verb in CONFIRM:
            return replace(state, confirm=(verb, row["key"])), None
        return state, Action(verb, row)
    return state, None
