"""The laptop's merged view of every host's sessions (SQLite, through the standard library's
sqlite3: see `Tables` and docs/ARCHITECTURE.md for why not sqlite-utils). A cache: the hosts are the
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
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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


SQL_TYPES = {str: "TEXT", int: "INTEGER", float: "FLOAT"}  # the types sqlite-utils gave them


class Tables:
    """The few table operations the store needs, on one sqlite3 connection. Table and column
    names come only from this module's constants, never from a host; values are always bound
    parameters. (sqlite-utils did this before, but importing it, with click, dateutil and
    pluggy, cost every command about 0.15 CPU-s: docs/benchmarks.md, P3.)"""

    def __init__(self, path: Path) -> None:
        # Every write goes through `transaction()` (or `upsert`, which uses it).
        self.conn = sqlite3.connect(str(path), timeout=5.0)
        self.conn.row_factory = sqlite3.Row

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction around the block: all of its writes land, or none (nested: the
        outer one decides)."""
        if self.conn.in_transaction:
            yield
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.rollback()
            raise
        self.conn.commit()

    def execute(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, tuple(params))

    def query(self, sql: str, params: Iterable[Any] = ()) -> Iterator[dict[str, Any]]:
        for row in self.conn.execute(sql, tuple(params)):
            yield dict(row)

    def exists(self, table: str) -> bool:
        found = self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
        )
        return found.fetchone() is not None

    def columns(self, table: str) -> set[str]:
        return {str(row[1]) for row in self.conn.execute(f"PRAGMA table_info([{table}])")}

    def create(self, table: str, columns: Mapping[str, type], pk: str) -> None:
        """`table` if missing; else the columns an older version's table lacks, added. A
        table that is already whole costs one read, no write lock."""
        if self.exists(table) and set(columns) <= self.columns(table):
            return
        with self.transaction():
            if not self.exists(table):
                spec = ", ".join(
                    f"[{name}] {SQL_TYPES[kind]}" + (" PRIMARY KEY" if name == pk else "")
                    for name, kind in columns.items()
                )
                self.conn.execute(f"CREATE TABLE [{table}] ({spec})")
                return
            have = self.columns(table)
            for name, kind in columns.items():
                if name not in have:
                    self.conn.execute(
                        f"ALTER TABLE [{table}] ADD COLUMN [{name}] {SQL_TYPES[kind]}"
                    )

    def upsert(self, table: str, row: Mapping[str, Any], pk: str) -> None:
        """Insert `row`, or update only the columns it names in the row with its `pk`. Inside a
        caller's `transaction()` it lands with it, else at once."""
        names = list(row)
        if not all(name.isidentifier() for name in names):  # the module's own names only
            raise ValueError(f"not a column name among {names!r}")
        marks = ", ".join("?" for _ in names)
        updates = ", ".join(f"[{name}] = excluded.[{name}]" for name in names if name != pk)
        sql = f"INSERT INTO [{table}] ({', '.join(f'[{n}]' for n in names)}) VALUES ({marks})"
        sql += (
            f" ON CONFLICT([{pk}]) DO UPDATE SET {updates}"
            if updates
            else " ON CONFLICT DO NOTHING"
        )
        values = [_cell(row[name]) for name in names]
        with self.transaction():
            self.conn.execute(sql, values)


def db_path() -> Path:
    return paths.state_dir() / "jackin.db"


class Store:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or db_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = Tables(self.path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.create("sessions", SESSION_COLUMNS, pk="key")
        self.db.execute("CREATE INDEX IF NOT EXISTS idx_sessions_id ON sessions (id)")
        self.db.create("hosts", HOST_COLUMNS, pk="name")
        self.db.create("launches", LAUNCH_COLUMNS, pk="key")
        self.db.create("ports", PORT_COLUMNS, pk="key")

    # -- published ports (`ports --publish`) -------------------------------------------------
    def add_port(self, host: str, session: str, local: str, remote_port: int) -> None:
        self.db.upsert(
            "ports",
            {"key": f"{host}/{session}/{local}", "host": host, "id": session, "local": local,
             "remote_port": remote_port, "pid": os.getpid(), "started": time.time()},
            pk="key",
        )  # fmt: skip

    def remove_ports(self, host: str, session: str, pid: int) -> None:
        with self.db.transaction():
            self.db.execute("DELETE FROM ports WHERE host = ? AND id = ? AND pid = ?",
                            [host, session, pid])  # fmt: skip

    def active_ports(
        self, host: str | None = None, session: str | None = None
    ) -> list[dict[str, Any]]:
        """Mappings whose forwarding process still runs (a killed one leaves a stale row)."""
        rows = list(self.db.query("SELECT * FROM ports"))
        return [
            {k: row[k] for k in ("host", "id", "local", "remote_port", "started")}
            for row in rows
            if (host is None or row["host"] == host) and (session is None or row["id"] == session)
            and pid_alive(int(row["pid"]))
        ]  # fmt: skip

    # -- approved workspace egress rules (`policy approve`) ----------------------------------
    def approve_workspace_rules(self, workspace: str, file: str, digest: str) -> None:
        self.db.create(APPROVAL_TABLE, APPROVAL_COLUMNS, pk="workspace")  # on first use only:
        self.db.upsert(
            APPROVAL_TABLE,
            {
                "workspace": workspace,
                "file": file,  # explain never
                "sha256": digest,
                "approved_at": time.time(),
            },
            pk="workspace",
        )  # writes

    def revoke_workspace_rules(self, workspace: str) -> bool:
        """Forget the approval; False when there was none."""
        if self.workspace_rules_digest(workspace) is None:
            return False
        with self.db.transaction():
            self.db.execute(f"DELETE FROM {APPROVAL_TABLE} WHERE workspace = ?", [workspace])
        return True

    def workspace_rules_digest(self, workspace: str) -> str | None:
        if not self.db.exists(APPROVAL_TABLE):
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
        self.db.upsert("sessions", row, pk="key")
        if extra.get("workspace_path"):
            self.db.upsert(
                "launches",
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
        with self.db.transaction():
            for each in sorted(keys):
                self.db.execute("DELETE FROM sessions WHERE key = ?", [each])
                self.db.execute("DELETE FROM launches WHERE key = ?", [each])

    def merge_host(self, host: str, entries: Iterable[dict[str, Any]]) -> None:
        """Replace what we know of `host` with what it just told us."""
        now = time.time()
        seen = []
        with self.db.transaction():
            for entry in entries:
                self.record(host, entry)
                seen.append(f"{host}/{entry['id']}")
            marks = ",".join("?" for _ in seen) or "''"
            self.db.execute(
                f"DELETE FROM sessions WHERE host = ? AND key NOT IN ({marks})", [host, *seen]
            )
            self.db.upsert(
                "hosts",
                {"name": host, "state": "ok", "last_contact": now, "error": None, "checked": now},
                pk="name",
            )

    def record_identity(self, identity: Identity) -> None:
        """Who `identity.name` proved to be, at its last answer (kept while it is silent)."""
        self.db.upsert(
            "hosts",
            {"name": identity.name, "host_key": identity.host_key,
             "machine_id": identity.machine_id, "root_id": identity.root_id},
            pk="name",
        )  # fmt: skip

    def root_groups(self) -> dict[str, str]:
        """Each known host name -> the leader of the names proven to reach the same host root
        (core/aliases.py): their sessions are one set, seen twice."""
        return root_groups(Identity.from_row(row) for row in self.db.query("SELECT * FROM hosts"))

    def mark_unreachable(self, host: str, state: str, error: str) -> None:
        """The host did not answer: its sessions become `lost`, keeping their last-known data."""
        now = time.time()
        with self.db.transaction():
            self.db.execute("UPDATE sessions SET host_state = ? WHERE host = ?", [state, host])
            self.db.upsert(
                "hosts", {"name": host, "state": state, "error": error, "checked": now}, pk="name"
            )

    def clear(self) -> None:
        """Drop what the hosts told us (not `launches`: that is the laptop's own)."""
        with self.db.transaction():
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
        with self.db.transaction():
            self.db.execute("DELETE FROM sessions WHERE host = ?", [host])
            self.db.execute("DELETE FROM hosts WHERE name = ?", [host])


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    """A cached row's JSON columns as values (they were checked when the host sent them)."""
    for name in JSON_SESSION_COLUMNS:
        row[name] = json.loads(row[name]) if row.get(name) else None
    return row


def _cell(value: Any) -> Any:
    """A value as SQLite stores it: a structure as JSON text (as sqlite-utils stored it)."""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True)
    return value
