"""What a session's agent says of itself: its status, its links and its usage, read from its own
output (agent_host/agent_events.py parses; this module fetches and keeps the place).

A task session's output is its container log: each read asks the engine only for what came after
the last line read (its timestamp is kept in the record's `scan`), and the parser's state is kept
with it, so a line split across two reads is one line. An interactive session's screen (its tmux
pane) is read whole each time: links add up, the status is the screen's last status tag.

The output is the agent's, so hostile: the session's secret values are redacted before parsing
(a link cannot carry one to the laptop), and every link passes wire.valid_url.
Python 3.9 compatible.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Optional, Tuple

from agent_host import agent_events
from agent_host.wire import LINK_KINDS, MAX_LINKS, SpecError, check_usage, valid_url

# A docker log line with timestamps: RFC 3339 with up to nanoseconds, then one space.
_STAMPED = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z ")
Redact = Callable[[str], str]


def stamp_key(stamp: str, fraction: Optional[str]) -> Tuple[str, int]:
    """An order over docker's timestamps (the fraction drops trailing zeros: compare it as ns)."""
    return stamp, int((fraction or "").ljust(9, "0"))


def split_stamped(data: str) -> List[Tuple[Optional[Tuple[str, int]], str]]:
    """Docker log text with timestamps as (order key, line with its newline) pairs; a line
    without a stamp (it should not happen) keeps the previous key."""
    out: List[Tuple[Optional[Tuple[str, int]], str]] = []
    key: Optional[Tuple[str, int]] = None
    for line in data.splitlines(keepends=True):
        match = _STAMPED.match(line)
        if match:
            key = stamp_key(match.group(1), match.group(2))
            line = line[match.end() :]
        out.append((key, line))
    return out


def read_task_log(
    logs: Callable[[Optional[int]], str],
    runtime: str,
    scan: Optional[Dict[str, Any]],
    redact: Redact,
    ended: bool = False,
) -> Dict[str, Any]:
    """Feed what the log holds past `scan`'s place to the parser; the new scan state. Once the
    container has `ended`, a last line without its newline is complete too.

    `logs(since)` returns the log text with timestamps from `since` (whole seconds, inclusive;
    None: from the start). Lines at or before the kept key were read already."""
    scan = scan if isinstance(scan, dict) else {}
    last: Any = scan.get("last")
    last_key = (str(last[0]), int(last[1])) if _valid_key(last) else None
    parser = agent_events.Parser(runtime, scan.get("parser"))
    since = None
    if last_key is not None:
        since = _epoch(last_key[0])
    for key, line in split_stamped(logs(since)):
        if last_key is not None and key is not None and key <= last_key:
            continue
        parser.feed(redact(line))
        if key is not None:
            last_key = key
    if ended:
        parser.feed("\n")
    return {"last": list(last_key) if last_key else None, "parser": parser.to_state(),
            "observed": parser.observation()}  # fmt: skip


def read_screen(screen: str, scan: Optional[Dict[str, Any]], redact: Redact) -> Dict[str, Any]:
    """An interactive session's screen: its links join those seen before; its status is the
    screen's last status tag (None once no tag is on the screen)."""
    scan = scan if isinstance(scan, dict) else {}
    kept = scan.get("observed")
    seen: Dict[str, Any] = kept if isinstance(kept, dict) else {}
    now = agent_events.scan_screen(redact(screen))
    observed = dict(now)
    observed["links"] = merge_links(seen.get("links"), now.get("links"))
    return {"observed": observed}


def merge_links(old: object, new: object) -> Dict[str, List[str]]:
    merged: Dict[str, List[str]] = {}
    for source in (old, new):
        if not isinstance(source, dict):
            continue
        for kind in LINK_KINDS:
            for url in source.get(kind) or []:
                have = merged.setdefault(kind, [])
                if url not in have and len(have) < MAX_LINKS and valid_url(url):
                    have.append(url)
    return merged


def observed_fields(scan: Dict[str, Any]) -> Dict[str, Any]:
    """The record fields a scan sets: links, usage, and the status the agent reported."""
    observed = scan.get("observed") or {}
    links = merge_links(None, observed.get("links"))
    try:
        usage = check_usage(observed.get("usage"), "usage")
    except SpecError:
        usage = None
    status = observed.get("status")
    return {"links": links or None, "usage": usage,
            "observed_status": status if status in agent_events.STATUSES else None}  # fmt: skip


def _valid_key(value: object) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\Z", value[0]) is not None
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
        and 0 <= value[1] < 10**9
    )


def _epoch(stamp: str) -> int:
    import calendar
    import time

    return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S"))
