"""`ls --watch`: the fleet view kept fresh over held connections.

One `Pool` (one SSH connection and one agent channel per host) stays open for the whole watch,
so a round costs one `session.list` per host, not a connection and an agent start. Each round
merges into the local view like `ls`, then hands the rows to `show`.

When an agent becomes blocked (it waits for the operator), the watch says so once per time it
becomes blocked: the caller rings the terminal's bell, and runs the operator's notify command
if one is given (the session's id, host and status reach it as environment variables, never
as arguments or through a shell).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
from collections.abc import Callable, Sequence
from typing import Any

from jackin_remote.errors import UsageError
from jackin_remote.store import Store

# Test hooks: stop after this many rounds, or once some agent is blocked (deterministic ends
# for tests; nothing else reads them).
ROUNDS_ENV = "JACKIN_TEST_WATCH_ROUNDS"
UNTIL_BLOCKED_ENV = "JACKIN_TEST_WATCH_UNTIL_BLOCKED"
MIN_INTERVAL = 0.2


def newly_blocked(before: dict[str, str], rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows whose agent is blocked now and was not in the previous round. Pure."""
    return [
        row
        for row in rows
        if row.get("agent_status") == "blocked" and before.get(row["key"]) != "blocked"
    ]


def statuses(rows: Sequence[dict[str, Any]]) -> dict[str, str]:
    return {row["key"]: str(row.get("agent_status")) for row in rows}


def notify_argv(command: str) -> list[str]:
    """The operator's notify command as argv (shell words, no shell)."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise UsageError(f"--notify {command!r}: {exc}") from None
    if not argv:
        raise UsageError("--notify is empty", hint="give a command, e.g. --notify notify-send")
    return argv


def notify_env(row: dict[str, Any]) -> dict[str, str]:
    """The notify command's environment: ours, and the blocked session's id and host."""
    return {**os.environ, "JACKIN_SESSION": str(row["id"]), "JACKIN_HOST": str(row["host"]),
            "JACKIN_STATUS": "blocked"}  # fmt: skip


def run_notify(argv: list[str], row: dict[str, Any]) -> None:
    """Run the notify command for one blocked session; it never stops the watch."""
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        subprocess.run(argv, env=notify_env(row), stdin=subprocess.DEVNULL, timeout=30,
                       check=False)  # fmt: skip


async def watch(
    inventory: Any,
    hosts: Sequence[Any],
    interval: float,
    show: Callable[[list[dict[str, Any]], list[Any], list[dict[str, Any]]], None],
) -> None:
    """Refresh until interrupted (or a test hook's end): `show(rows, failed host results, rows
    newly blocked)` after each round. A round ends when a host pushes a change, or every
    `interval` seconds for hosts that cannot push (jackin_remote/feed.py)."""
    from jackin_remote.feed import Feed
    from jackin_remote.fleet import Pool

    rounds = int(os.environ.get(ROUNDS_ENV) or 0)
    until_blocked = bool(os.environ.get(UNTIL_BLOCKED_ENV))
    names = [host.name for host in hosts]
    store = Store()
    before: dict[str, str] = {}
    done = 0
    async with Pool(inventory) as pool:
        feed = Feed(pool, hosts, store)
        try:
            while True:
                results = await feed.round(max(interval, MIN_INTERVAL))
                failed = [result for result in results if not result.ok]
                rows = store.view(names)
                blocked = newly_blocked(before, rows)
                before = statuses(rows)
                show(rows, failed, blocked)
                done += 1
                if (rounds and done >= rounds) or (until_blocked and blocked):
                    return
        finally:
            await feed.close()
