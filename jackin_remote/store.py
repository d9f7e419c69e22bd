"""The laptop's merged view of every host's sessions (sqlite-utils). A cache: the hosts are the
source of truth, and `ls --rebuild` recreates it from them at any time.

Except for what only the laptop knows: where on this laptop a session's workspace lives
(`launches`, written at launch). A host is not trusted to say it, so it is never taken from a
host's answer, never replaced by a merge, and kept across `ls --rebuild` (no host could rebuild
it). `pull` writes there, so a host that could set it would choose where files land here.

Secret values never reach this database: host records carry none.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import sqlite_utils

from agent_host.procs import pid_alive
from jackin_remote import paths
from jackin_remote.core.aliases import Identity, root_groups
from jackin_remote.errors import UsageError

SESSION_COLUMNS = {
    "key": str, "host": str, "id": str, "name": str, "workspace": str, "role": str,
    "runtime": str, "image": str, "container": str, "mode": str, "isolation": str,
    "state": str, "host_state": str, "agent_status": str, "branch": str, "base_commit": str,
    "launch_commit": str, "pulled_commit": str, "exit_code": int, "error": str, "task": str,
    "network": str, "created_at": float, "started_at": float, "finished_at": float,
    "cpu_percent": float, "memory_bytes": int, "last_seen": float, "workspace_path": str,
    "uid": int, "reason": str, "snapshots": int,
    "memory_limit_bytes": int, "pids": int, "oom_kills": int,
    "links": str, "usage": str,  # JSON: what the agent's tags named; its runtime's tokens and cost
}  # fmt: skip
JSON_SESSION_COLUMNS = ("links", "usage")
HOST_COLUMNS = {
    "name": str, "state": str, "last_contact": float, "error": str, "checked": float,
    "host_key": str, "machine_id": str, "root_id": str,  # core/aliases.py: who the host is
}  # fmt: skip
# Known only to this laptop: never read from a host's entry (see the module doc).
LAPTOP_COLUMNS = frozenset({"workspace_path"})
LAUNCH_COLUMNS = {"key": str, "host": str, "id": str, "workspace_path": str, "launched_at": float}
# `ports --publish` mappings while they run (the laptop's own; rows of a dead process are stale).
PORT_COLUMNS = {"key": str, "host": str, "id": str, "local": str, "remote_port": int,
                "pid": int, "started": float}  # fmt: skip
# `policy approve`: the sha256 of a workspace's .jackin/config.toml whose egress rules the operator
# approved (jackin_remote/workspace_rules.py), per resolved workspace path. The laptop's own.
APPROVAL_TABLE = "egress_approvals"
APPROVAL_COLUMNS = {"workspace": str, "file": str, "sha256": str, "approved_at": float}


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
        else:  # a cache made by an older version: add what it lacks
            have = sessions.columns_dict
            for column, kind in SESSION_COLUMNS.items():
                if column not in have:
                    sessions.add_column(column, kind)
        hosts = self.db.table("hosts")
        if not hosts.exists():
            hosts.create(HOST_COLUMNS, pk="name")
        else:
            for column, kind in HOST_COLUMNS.items():
                if column not in hosts.columns_dict:
                    hosts.add_column(column, kind)
        launches = self.db.table("launches")
        if not launches.exists():
            launches.create(LAUNCH_COLUMNS, pk="key")
        if not self.db.table("ports").exists():
            self.db.table("ports").create(PORT_COLUMNS, pk="key")

    # -- published ports (`ports --publish`) -------------------------------------------------
    def add_port(self, host: str, session: str, local: str, remote_port: int) -> None:
        self.db.table("ports").upsert(
            {"key": f"{host}/{session}/{local}", "host": host, "id": session, "local": local,
             "remote_port": remote_port, "pid": os.getpid(), "started": time.time()},
            pk="key",
        )  # fmt: skip

    def remove_ports(self, host: str, session: str, pid: int) -> None:
        self.db.execute("DELETE FROM ports WHERE host = ? AND id = ? AND pid = ?",
                        [host, session, pid])  # fmt: skip
        self.db.conn.commit()

    def active_ports(
        self, host: str | None = None, session: str | None = None
    ) -> list[dict[str, Any]]:
        """Mappings whose forwarding process still runs (a killed one leaves a stale row)."""
        rows = list(self.db.table("ports").rows) if self.db.table("ports").exists() else []
        return [
            {k: row[k] for k in ("host", "id", "local", "remote_port", "started")}
            for row in rows
            if (host is None or row["host"] == host) and (session is None or row["id"] == session)
            and pid_alive(int(row["pid"]))
        ]  # fmt: skip

    # -- approved workspace egress rules (`policy approve`) ----------------------------------
    def approve_workspace_rules(self, workspace: str, file: str, digest: str) -> None:
        table = self.db.table(APPROVAL_TABLE)
        if not table.exists():  # made on first use: explain never writes it
            table.create(APPROVAL_COLUMNS, pk="workspace")
        table.upsert({"workspace": workspace, "file": file, "sha256": digest,
                      "approved_at": time.time()}, pk="workspace")  # fmt: skip

    def revoke_workspace_rules(self, workspace: str) -> bool:
        """Forget the approval; False when there was none."""
        if self.workspace_rules_digest(workspace) is None:
            return False
        with self.db.conn:
            self.db.execute(f"DELETE FROM {APPROVAL_TABLE} WHERE workspace = ?", [workspace])
        return True

    def workspace_rules_digest(self, workspace: str) -> str | None:
        if not self.db.table(APPROVAL_TABLE).exists():
            return None
        query = f"SELECT sha256 FROM {APPROVAL_TABLE} WHERE workspace = ?"
        row = next(self.db.query(query, [workspace]), None)
        return None if row is None else str(row["sha256"])

    @classmethod
    def open_existing(cls) -> Store | None:
        """For read-only callers: never create a database just to find it empty."""
        return cls() if db_path().exists() else None

    # -- writes --------------------------------------------------------------------------
    def record(self, host: str, entry: dict[str, Any], **extra: Any) -> None:
        """Store `host`'s `entry`; `extra` is what the laptop itself adds (at launch: the
        workspace_path). Laptop-owned fields in `entry` are ignored: a host cannot set them."""
        row = {key: entry.get(key) for key in SESSION_COLUMNS
               if key in entry and key not in LAPTOP_COLUMNS}  # fmt: skip
        row.update({key: value for key, value in extra.items() if key not in LAPTOP_COLUMNS})
        for name in JSON_SESSION_COLUMNS:
            if row.get(name) is not None:
                row[name] = json.dumps(row[name], sort_keys=True)
        key = f"{host}/{entry['id']}"
        row.update(key=key, host=host, host_state="ok", last_seen=time.time())
        self.db.table("sessions").upsert(row, pk="key", alter=False)
        if extra.get("workspace_path"):
            self.db.table("launches").upsert(
                {"key": key, "host": host, "id": entry["id"],
                 "workspace_path": str(extra["workspace_path"]), "launched_at": time.time()},
                pk="key",
            )  # fmt: skip

    def forget(self, key: str) -> None:
        """A removed session: its cached row and the laptop's launch record, under every name
        proven to reach the same host root (it is gone from that root, whatever its name)."""
        host, _, session = key.partition("/")
        groups = self.root_groups()
        keys = {key} | {f"{name}/{session}" for name, leader in groups.items()
                        if host in groups and leader == groups[host]}  # fmt: skip
        with self.db.conn:
            for each in sorted(keys):
                self.db.execute("DELETE FROM sessions WHERE key = ?", [each])
                self.db.execute("DELETE FROM launches WHERE key = ?", [each])

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

    def record_identity(self, identity: Identity) -> None:
        """Who `identity.name` proved to be, at its last answer (kept while it is silent)."""
        self.db.table("hosts").upsert(
            {"name": identity.name, "host_key": identity.host_key,
             "machine_id": identity.machine_id, "root_id": identity.root_id},
            pk="name", alter=False,
        )  # fmt: skip

    def root_groups(self) -> dict[str, str]:
        """Each known host name -> the leader of the names proven to reach the same host root
        (core/aliases.py): their sessions are one set, seen twice."""
        return root_groups(Identity.from_row(row) for row in self.db.query("SELECT * FROM hosts"))

    def mark_unreachable(self, host: str, state: str, error: str) -> None:
        """The host did not answer: its sessions become `lost`, keeping their last-known data."""
        now = time.time()
        with self.db.conn:
            self.db.execute("UPDATE sessions SET host_state = ? WHERE host = ?", [state, host])
            self.db.table("hosts").upsert(
                {"name": host, "state": state, "error": error, "checked": now}, pk="name"
            )

    def clear(self) -> None:
        """Drop what the hosts told us (not `launches`: that is the laptop's own)."""
        self.db.execute("DELETE FROM sessions")
        self.db.execute("DELETE FROM hosts")

    def _laptop_fields(
        self, row: dict[str, Any], groups: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """`row` with the laptop-owned fields from `launches` (whatever the row held): this
        name's launch record, else one made under a name proven to reach the same host root
        (never a name merely claiming it: the proof needs the host key the laptop verified)."""
        groups = self.root_groups() if groups is None else groups
        leader = groups.get(row["host"])
        query = "SELECT * FROM launches WHERE id = ? ORDER BY launched_at"
        launches = [
            launch
            for launch in self.db.query(query, [row["id"]])
            if launch["key"] == row["key"]
            or (leader is not None and groups.get(launch["host"]) == leader)
        ]
        mine = [launch for launch in launches if launch["key"] == row["key"]]
        chosen = mine or launches
        row["workspace_path"] = chosen[-1]["workspace_path"] if chosen else None
        return row

    def _launched_here(self, row: dict[str, Any]) -> bool:
        found = self.db.query("SELECT 1 FROM launches WHERE key = ?", [row["key"]])
        return next(found, None) is not None

    def _merge_aliases(
        self, rows: list[dict[str, Any]], groups: dict[str, str]
    ) -> list[dict[str, Any]]:
        """One row per session where names reach the same host root, `also` naming the other
        names (every row gets `also`). Shown: the name that answered, then the one this
        laptop launched under, then the first by name."""
        by_session: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for row in rows:
            by_session.setdefault((groups.get(row["host"], row["host"]), row["id"]), []).append(row)
        merged = []
        for row in rows:
            same = by_session[(groups.get(row["host"], row["host"]), row["id"])]
            best = min(same, key=lambda r: (r["host_state"] != "ok", not self._launched_here(r),
                                            r["host"]))  # fmt: skip
            if row is best:
                row["also"] = sorted(r["host"] for r in same if r is not row)
                merged.append(row)
        return merged

    # -- reads ---------------------------------------------------------------------------
    def view(self, hosts: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """`sessions(hosts)` as the operator reads it: a session that several names report
        from one host root (one machine declared twice) once, `also` naming the others."""
        return self._merge_aliases(self.sessions(hosts), self.root_groups())

    def sessions(self, hosts: Iterable[str] | None = None) -> list[dict[str, Any]]:
        rows = list(self.db.query("SELECT * FROM sessions ORDER BY created_at"))
        host_info = {row["name"]: row for row in self.db.query("SELECT * FROM hosts")}
        groups = self.root_groups()
        wanted = set(hosts) if hosts is not None else None
        result = []
        for row in rows:
            if wanted is not None and row["host"] not in wanted:
                continue
            info = host_info.get(row["host"]) or {}
            _decode(row)
            self._laptop_fields(row, groups)
            row["last_contact"] = info.get("last_contact")
            if row["host_state"] != "ok":
                row["shown_state"] = "lost"
            else:
                row["shown_state"] = row["state"]
            result.append(row)
        return result

    def find(self, ref: str) -> dict[str, Any]:
        """A session by full id, unique id prefix or name, optionally as HOST:REF (host names
        never hold ':', session ids and names neither) to pick among hosts that report the same
        id, e.g. one machine under two inventory names."""
        host, _, wanted = ref.rpartition(":")
        groups = self.root_groups()
        rows = [
            _decode(row)
            for row in self.db.query("SELECT * FROM sessions")
            if (row["id"].startswith(wanted) or row["name"] == wanted)
            and (not host or row["host"] == host)
        ]
        # One session that two names of one host root both report is one match, not two.
        rows = self._merge_aliases(rows, groups)
        exact = [row for row in rows if row["id"] == wanted or row["name"] == wanted]
        if len(exact) == 1:
            return self._laptop_fields(exact[0], groups)
        if not rows or not wanted:
            raise UsageError(
                f"no session matches {ref!r}", hint="see `jackin-remote ls` for session ids"
            )
        if len(rows) > 1:
            listing = ", ".join(f"{row['host']}:{row['id']}" for row in rows[:6])
            raise UsageError(
                f"{ref!r} matches several sessions: {listing}",
                hint="type more of the id, or name its host as HOST:ID",
            )
        return self._laptop_fields(rows[0], groups)

    def forget_host(self, host: str) -> None:
        """A host removed from the inventory: its cached sessions and state (not `launches`,
        the laptop's own record, should the host come back)."""
        with self.db.conn:
            self.db.execute("DELETE FROM sessions WHERE host = ?", [host])
            self.db.execute("DELETE FROM hosts WHERE name = ?", [host])


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    """A cached row's JSON columns as values (they were checked when the host sent them)."""
    for name in JSON_SESSION_COLUMNS:
        row[name] = json.loads(row[name]) if row.get(name) else None
    return row
