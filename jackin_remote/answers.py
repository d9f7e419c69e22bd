"""Many hosts' answers to one question, merged: each host's entries checked with the wire type
that describes them (agent_host/wire.py), tagged with the host's name; a host that failed, or
answered something that is not a list of such entries, becomes one failure naming it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any


def merged_entries(
    results: Sequence[Any], from_wire: Callable[[Any], Any], host_field: str = "host"
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """(entries, failures) from `pool.map` results whose value is `{"entries": [...]}`. Each
    entry is `from_wire(item)` as a dict, with the host's name under `host_field`. Unsorted."""
    from agent_host.wire import SpecError

    entries: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    for result in results:
        if not result.ok:
            reason = str(getattr(result.error, "reason", result.error))
            failed.append({"host": result.host.name, "error": reason})
            continue
        try:
            items = (result.value or {}).get("entries")
            if not isinstance(items, list):
                raise SpecError("entries", "must be a list")
            checked = [from_wire(item) for item in items]
        except SpecError as exc:
            failed.append({"host": result.host.name, "error": f"bad answer: {exc.message}"})
            continue
        entries += [{host_field: result.host.name, **asdict(entry)} for entry in checked]
    return entries, failed
