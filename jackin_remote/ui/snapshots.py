"""A session's snapshots as a table. Every value is a host's answer, parsed (wire.SnapshotInfo):
cells go through ui/safe.py."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jackin_remote.ui.fit import ColumnSpec, FittedTable
from jackin_remote.ui.safe import text
from jackin_remote.ui.sessions import age

COLUMNS = (
    ColumnSpec("snapshot", 0, whole=True),
    ColumnSpec("taken", 0, whole=True),
    ColumnSpec("reason", 0, whole=True),
    ColumnSpec("files", 2),
    ColumnSpec("size", 1),
    ColumnSpec("new on disk", 1),
    ColumnSpec("left out", 3),
)
REASON_STYLE = {"before-start": "cyan", "manual": "green", "before-restore": "yellow"}


def size(value: int) -> str:
    for unit, scale in (("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if value >= scale:
            return f"{value / scale:.1f}{unit}"
    return f"{value}B"


def snapshots_table(items: Sequence[dict[str, Any]], now: float | None = None) -> FittedTable:
    cells = []
    for item in items:
        left_out = f"{item['excluded']} excluded" + (
            f", {item['skipped']} skipped" if item["skipped"] else ""
        )
        cells.append([
            text(item["id"]), text(f"{age(item['taken_at'], now)} ago"),
            text(item["reason"], style=REASON_STYLE.get(item["reason"], "")),
            text(str(item["files"])), text(size(item["bytes"])),
            text(f"{size(item['bytes_new'])} ({item['files_linked']} files linked)"),
            text(left_out),
        ])  # fmt: skip
    return FittedTable("snapshots", COLUMNS, cells)
