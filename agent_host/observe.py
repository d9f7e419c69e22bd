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

# A docker log record with timestamps: RFC 3339 with up to nanoseconds, then one space. ASCII
# digits only (`\\d` would take other scripts' digits).
_STAMP = r"([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.([0-9]{1,9}))?Z "
_STAMPED = re.compile(_STAMP)
# Docker cuts a line longer than this (bytes) into partial records, each with its own stamp: in
# the text `logs(timestamps=True)` gives, the later stamps sit inside the line.
PARTIAL_RECORD = 16 * 1024
Redact = Callable[[str], str]
Key = Tuple[str, int]


def stamp_key(stamp: str, fraction: Optional[str]) -> Key:
    """An order over docker's timestamps (the fraction drops trailing zeros: compare it as ns)."""
    return stamp, int((fraction or "").ljust(9, "0"))


def split_stamped(data: str) -> Tuple[List[Tuple[Optional[Key], str]], str]:
    """Docker log text with timestamps as ((order key, complete line with its newline) pairs,
    the unterminated tail). Lines are split at "\\n" only (the engine's own record separator;
    an agent's \\r or U+2028 is content). The stamps docker put inside a long line, at its
    partial records' starts, are removed."""
    out: List[Tuple[Optional[Key], str]] = []
    pieces = data.split("\n")
    for index, line in enumerate(pieces):
        last = index == len(pieces) - 1
        match = _STAMPED.match(line)
        key = stamp_key(match.group(1), match.group(2)) if match else None
        if match:
            line = line[match.end() :]
        if len(line.encode("utf-8", "replace")) > PARTIAL_RECORD:
            line = _STAMPED.sub("", line)
        if last:
            return out, line
        out.append((key, line + "\n"))
    return out, ""


def read_task_log(
    logs: Callable[[Optional[int]], str],
    runtime: str,
    scan: Optional[Dict[str, Any]],
    redact: Redact,
    ended: bool = False,
) -> Dict[str, Any]:
    """Feed what the log holds past `scan`'s place to the parser; the new scan state.

    `logs(since)` returns the log text with timestamps from `since` (whole seconds, inclusive;
    None: from the start). Lines at or before the kept key were read already. A last line
    without its newline is left for the next read (its rest may still come, as a partial
    record), unless the container has `ended`. Each line is redacted whole, before parsing."""
    scan = scan if isinstance(scan, dict) else {}
    last: Any = scan.get("last")
    last_key = (str(last[0]), int(last[1])) if _valid_key(last) else None
    parser = agent_events.Parser(runtime, scan.get("parser"))
    since = None if last_key is None else _epoch(last_key[0])
    lines, tail = split_stamped(logs(since))
    for key, line in lines:
        if last_key is not None and key is not None and key <= last_key:
            continue
        parser.feed(redact(line))
        if key is not None and _epoch(key[0]) is not None:
            last_key = key
    if ended:
        parser.feed(redact(tail) + "\n")
    observed = parser.observation()
    observed["links"] = clean_links(observed.get("links"), redact)
    return {"last": list(last_key) if last_key else None, "parser": parser.to_state(),
            "observed": observed}  # fmt: skip


def clean_links(links: object, redact: Redact) -> Dict[str, List[str]]:
    """The links that carry no secret value: redaction of the raw text cannot see a secret that
    the agent escaped (JSON `\\u0067`, percent-encoding), so each link is checked again,
    as it is and percent-decoded; a link that held one is dropped."""
    from urllib.parse import unquote

    kept = merge_links(None, links)
    for kind in list(kept):
        kept[kind] = [url for url in kept[kind]
                      if redact(url) == url and redact(unquote(url)) == unquote(url)]  # fmt: skip
        if not kept[kind]:
            del kept[kind]
    return kept


# Between the screen and the status file in what the host reads (sessions._STATUS_SCREEN).
STATUS_FILE_MARK = "\n-- jackin status file --\n"


def read_screen(screen: str, scan: Optional[Dict[str, Any]], redact: Redact) -> Dict[str, Any]:
    """An interactive session's screen, and after STATUS_FILE_MARK the status file its hooks
    write, if any: its links join those seen before; its status is the status file's tag, else
    the screen's last status tag (None once there is neither). The file is read on its own, so
    a code fence left open on the screen cannot hide its tag."""
    scan = scan if isinstance(scan, dict) else {}
    kept = scan.get("observed")
    seen: Dict[str, Any] = kept if isinstance(kept, dict) else {}
    before, marked, hooked = screen.rpartition(STATUS_FILE_MARK)
    screen = before if marked else screen
    now = agent_events.scan_screen(redact(screen))
    observed = dict(now)
    told = agent_events.scan_screen(hooked).get("status") if marked else None
    if told is not None:
        observed["status"] = told
    observed["links"] = merge_links(seen.get("links"), clean_links(now.get("links"), redact))
    return {"observed": observed}


def restarted(scan: object) -> Optional[Dict[str, Any]]:
    """A kept scan for a session started again: read on from where it was (`final` cleared)."""
    if not isinstance(scan, dict):
        return None
    return {**scan, "final": False}


def kept_status(scan: object) -> Optional[str]:
    """The status a kept scan holds, whatever shape it has (the host's database is read back)."""
    status = observed_fields(scan if isinstance(scan, dict) else {})["observed_status"]
    return str(status) if status is not None else None


def merge_links(old: object, new: object) -> Dict[str, List[str]]:
    merged: Dict[str, List[str]] = {}
    for source in (old, new):
        if not isinstance(source, dict):
            continue
        for kind in LINK_KINDS:
            urls = source.get(kind)
            for url in urls if isinstance(urls, list) else []:
                have = merged.get(kind, [])
                if url not in have and len(have) < MAX_LINKS and valid_url(url):
                    merged[kind] = [*have, url]
    return merged


def observed_fields(scan: Dict[str, Any]) -> Dict[str, Any]:
    """The record fields a scan sets: links, usage, and the status the agent reported."""
    kept = scan.get("observed") if isinstance(scan, dict) else None
    observed: Dict[str, Any] = kept if isinstance(kept, dict) else {}
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
        and re.match(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\Z", value[0])
        is not None
        and _epoch(value[0]) is not None
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
        and 0 <= value[1] < 10**9
    )


def _epoch(stamp: str) -> Optional[int]:
    """Seconds since the epoch, or None for a stamp that is no real time (2026-19-39T99:...)."""
    import calendar
    import time

    try:
        return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S"))
    except (ValueError, OverflowError):
        return None
