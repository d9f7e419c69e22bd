"""The laptop's merged view of every host's sessions (sqlite-utils). A cache: the hosts are the
source of truth, and `ls --rebuild` recreates it from them at any time.

Secret values never reach this database: host records carry none.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import sqlite_utils

from jackin_remote import paths
from jackin_remote.errors import UsageError

SESSION_COLUMNS = {
    "key": str, "host": str, "id": str, "name": str, "workspace": str, "role": str,
    "runtime": str, "image": str, "container": str, "mode": str, "isolation": str,
    "state": str, "host_state": str, "agent_status": str, "branch": str, "base_commit": str,
    "launch_commit": str, "pulled_commit": str, "exit_code": int, "error": str, "task": str,
    "network": str, "created_at": float, "started_at": float, "finished_at": float,
    "cpu_percent": float, "memory_bytes": int, "last_seen": float, "workspace_path": str,
}  # fmt: skip
HOST_COLUMNS = {"name": str, "state": str, "last_contact": float, "error": str, "checked": float}


def db_path() -> Path:
    return paths.state_dir() / "jackin.db"


class Store:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or db_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite_utils.Database(self.path)
        self.db.execute("PRAGMA journal_mode=WAL")
        sessions = self.db.table("sessions")
        if not sessions.exists():
            sessions.create(SESSION_COLUMNS, pk="key")
            sessions.create_index(["id"])
        hosts = self.db.table("hosts")
        if not hosts.exists():
            hosts.create(HOST_COLUMNS, pk="name")

    @classmethod
    def open_existing(cls) -> Store | None:
        """For read-only callers: never create a database just to find it empty."""
        return cls() if db_path().exists() else None

    # -- writes --------------------------------------------------------------------------
    def record(self, host: str, entry: dict[str, Any], **extra: Any) -> None:
        row = {key: entry.get(key) for key in SESSION_COLUMNS if key in entry}
        row.update(extra)
        row.update(key=f"{host}/{entry['id']}", host=host, host_state="ok", last_seen=time.time())
        self.db.table("sessions").upsert(row, pk="key", alter=False)

    def merge_host(self, host: str, entries: Iterable[dict[str, Any]]) -> None:
        """Replace what we know of `host` with what it just told us."""
        now = time.time()
        seen = []
        with self.db.conn:
            for entry in entries:
                self.record(host, entry)
                seen.append(f"{host}/{entry['id']}")
            marks = ",".join("?" for _ in seen) or "''"
            self.db.execute(
                f"DELETE FROM sessions WHERE host = ? AND key NOT IN ({marks})", [host, *seen]
            )
            self.db.table("hosts").upsert(
                {"name": host, "state": "ok", "last_contact": now, "error": None, "checked": now},
                pk="name",
            )

    def mark_unreachable(self, host: str, state: str, error: str) -> None:
        """The host did not answer: its sessions become `lost`, keeping their last-known data."""
        now = time.time()
        with self.db.conn:
            self.db.execute("UPDATE sessions SET host_state = ? WHERE host = ?", [state, host])
            self.db.table("hosts").upsert(
                {"name": host, "state": state, "error": error, "checked": now}, pk="name"
            )

    def clear(self) -> None:
        self.db.execute("DELETE FROM sessions")
        self.db.execute("DELETE FROM hosts")

    # -- reads ---------------------------------------------------------------------------
    def sessions(self, hosts: Iterable[str] | None = None) -> list[dict[str, Any]]:
        rows = list(self.db.query("SELECT * FROM sessions ORDER BY created_at"))
        host_info = {row["name"]: row for row in self.db.query("SELECT * FROM hosts")}
        wanted = set(hosts) if hosts is not None else None
        result = []
        for row in rows:
            if wanted is not None and row["host"] not in wanted:
                continue
            info = host_info.get(row["host"]) or {}
            row["last_contact"] = info.get("last_contact")
            if row["host_state"] != "ok":
                row["shown_state"] = "lost"
            else:
                row["shown_state"] = row["state"]
            result.append(row)
        return result

    def find(self, ref: str) -> dict[str, Any]:
        """A session by full id, unique id prefix or name."""
        rows = [
            row
            for row in self.db.query("SELECT * FROM sessions")
            if row["id"].startswith(ref) or row["name"] == ref
        ]
        exact = [row for row in rows if row["id"] == ref or row["name"] == ref]
        if len(exact) == 1:
            return exact[0]
        if not rows:
            raise UsageError(
                f"no session matches {ref!r}", hint="see `jackin-remote ls` for session ids"
            )
        if len(rows) > 1:
            listing = ", ".join(f"{row['id']} on {row['host']}" for row in rows[:6])
            raise UsageError(
                f"{ref!r} matches several sessions: {listing}", hint="type more of the id"
            )
        return rows[0]
