"""The host's session records: SQLite (stdlib only), the source of truth for this host.

Secrets never reach this database: callers pass the session record without credential values.
Python 3.9 compatible.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sqlite3
import time
from typing import Any, Dict, List, Optional
from urllib.parse import quote

from agent_host import layout

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    name TEXT,
    workspace TEXT NOT NULL,
    role TEXT NOT NULL,
    runtime TEXT NOT NULL,
    image TEXT,
    container TEXT NOT NULL,
    mode TEXT NOT NULL,              -- task | interactive
    isolation TEXT NOT NULL,         -- clone | copy
    -- starting, running, exited, crashed, failed_setup, stopped, purged
    state TEXT NOT NULL,
    agent_status TEXT NOT NULL DEFAULT 'unknown',
    branch TEXT,
    base_commit TEXT,
    launch_commit TEXT,              -- the checkout's commit when the agent started
    pulled_commit TEXT,
    uid INTEGER,                     -- the uid the agent runs as (host-side)
    exit_code INTEGER,
    reason TEXT,                     -- why it ended, beyond the exit code (oom)
    error TEXT,
    owner_pid INTEGER,               -- the agent process that is setting this session up
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    updated_at REAL NOT NULL,
    spec TEXT NOT NULL,              -- the applied contract, secret values removed (JSON)
    links TEXT,                      -- what the agent's tags named, by kind (JSON)
    usage TEXT,                      -- tokens and cost its runtime reported (JSON)
    scan TEXT                        -- where reading its output got to (agent_host/observe.py)
);
-- What a session's egress proxy decided: one row per destination and decision, counted.
CREATE TABLE IF NOT EXISTS egress_log (
    session TEXT NOT NULL,
    host TEXT NOT NULL,              -- as the sandbox asked (checked by the proxy), or an IP
    port INTEGER NOT NULL,
    decision TEXT NOT NULL,          -- allowed | denied | failed (allowed, upstream unreachable)
    rule TEXT NOT NULL,              -- the rule that decided
    bytes_up INTEGER NOT NULL DEFAULT 0,
    bytes_down INTEGER NOT NULL DEFAULT 0,
    count INTEGER NOT NULL DEFAULT 0,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    PRIMARY KEY (session, host, port, decision, rule)
);
-- Every host-side change jackin made, and what undoes it (agent_host/audit.py). No secrets.
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    session TEXT,                    -- NULL: not one session's (a workspace mirror, a role image)
    action TEXT NOT NULL,            -- area.verb: container.create, network.remove, ...
    target TEXT NOT NULL,            -- what it acted on: a name, an id, a path under the root
    undo TEXT NOT NULL               -- what undoes it (empty: nothing to undo, e.g. a removal)
);
CREATE INDEX IF NOT EXISTS audit_session ON audit (session, id);
"""

COLUMNS = (
    "id",
    "name",
    "workspace",
    "role",
    "runtime",
    "image",
    "container",
    "mode",
    "isolation",
    "state",
    "agent_status",
    "branch",
    "base_commit",
    "launch_commit",
    "pulled_commit",
    "uid",
    "exit_code",
    "reason",
    "error",
    "owner_pid",
    "created_at",
    "started_at",
    "finished_at",
    "updated_at",
    "spec",
    "links",
    "usage",
    "scan",
)
JSON_COLUMNS = ("links", "usage", "scan")


MAX_EGRESS_ROWS = 1000  # destinations recorded one by one per session; more are counted together
MAX_EGRESS_ANSWER = 5000  # rows in one egress.log answer (the newest)
EGRESS_OTHERS = "(other destinations)"
SCHEMA_VERSION = 6  # PRAGMA user_version once the schema and its migrations are in place


class Store:
    def __init__(self, root: str) -> None:
        os.makedirs(root, mode=0o700, exist_ok=True)
        path = layout.state_db(root)
        self._db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self.read_only = False  # the disk is full: read as it is, write nothing
        try:
            version = self._first_version()
        except sqlite3.OperationalError as exc:
            if not disk_trouble(exc) or not os.path.exists(path) or _wal_holds(path):
                raise  # a WAL with content holds records an immutable read would not see
            # WAL needs a -shm file a full disk cannot hold: read the database as it stands.
            self._db.close()
            self._db = sqlite3.connect("file:%s?mode=ro&immutable=1" % quote(path), uri=True,
                                       isolation_level=None, check_same_thread=False)  # fmt: skip
            self._db.row_factory = sqlite3.Row
            self.read_only = True
            version = self._version()
        if version != SCHEMA_VERSION:
            self._writable()
            self._prepare(root)

    def _writable(self) -> None:
        if self.read_only:
            raise OSError(errno.ENOSPC, "no space left: the state database is read-only until "
                          "there is")  # fmt: skip

    def _first_version(self) -> int:
        """The schema version, read as this connection's first statement.

        In WAL mode the first read of a new connection can get SQLITE_BUSY at once, without the
        busy timeout, while another agent's last connection closes (it cleans up the WAL under an
        exclusive lock) or recovers a crashed one's: retry that read, briefly (sqlite.org/wal.html).
        """
        for attempt in range(200):
            try:
                return self._version()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 199:
                    raise
                time.sleep(0.025)
        raise AssertionError("unreachable")

    def _version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _prepare(self, root: str) -> None:
        """Set the journal mode, the schema and its migrations: once per database, not per open.

        Changing the journal mode can fail with SQLITE_BUSY at once, without the busy timeout, while
        another agent of this host opens the same database; a file lock makes the agents that find
        the database unprepared take turns, and the version makes every later open skip this.
        """
        with open(layout.state_db(root) + ".init-lock", "a") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                if self._version() == SCHEMA_VERSION:
                    return
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.executescript(SCHEMA)
                self._migrate()
                self._db.execute("PRAGMA user_version = %d" % SCHEMA_VERSION)
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _migrate(self) -> None:
        """Databases made by an older agent lack newer columns: add them (never drop any)."""
        have = {row[1] for row in self._db.execute("PRAGMA table_info(sessions)")}
        added = (("launch_commit", "TEXT"), ("uid", "INTEGER"), ("reason", "TEXT"),
                 ("links", "TEXT"), ("usage", "TEXT"), ("scan", "TEXT"))  # fmt: skip
        for column, kind in added:
            if column not in have:
                self._db.execute("ALTER TABLE sessions ADD COLUMN %s %s" % (column, kind))

    def close(self) -> None:
        self._db.close()

    def insert(self, record: Dict[str, Any]) -> None:
        self._writable()
        now = time.time()
        row = {key: record.get(key) for key in COLUMNS}
        row["created_at"] = row["created_at"] or now
        row["updated_at"] = now
        row["spec"] = json.dumps(record.get("spec") or {}, sort_keys=True)
        for key in JSON_COLUMNS:
            row[key] = None if row[key] is None else json.dumps(row[key], sort_keys=True)
        marks = ", ".join("?" for _ in COLUMNS)
        self._db.execute(
            "INSERT INTO sessions (%s) VALUES (%s)" % (", ".join(COLUMNS), marks),
            [row[key] for key in COLUMNS],
        )

    def update(self, session_id: str, **fields: Any) -> None:
        self._writable()
        unknown = set(fields) - set(COLUMNS)
        if unknown:
            raise ValueError("unknown session fields: %s" % sorted(unknown))
        fields["updated_at"] = time.time()
        if "spec" in fields:
            fields["spec"] = json.dumps(fields["spec"], sort_keys=True)
        for key in JSON_COLUMNS:
            if fields.get(key) is not None:
                fields[key] = json.dumps(fields[key], sort_keys=True)
        assignments = ", ".join("%s = ?" % key for key in fields)
        self._db.execute(
            "UPDATE sessions SET %s WHERE id = ?" % assignments, [*fields.values(), session_id]
        )

    def get(self, session_id: str) -> Optional[Dict[str, Any]]:
        row = self._db.execute("SELECT * FROM sessions WHERE id = ?", (session_id,)).fetchone()
        return _record(row) if row else None

    def delete(self, session_id: str) -> None:
        """Forget a session entirely (rm --purge); its audit rows stay."""
        self._writable()
        self._db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

    def all(self, include_purged: bool = False) -> List[Dict[str, Any]]:
        query = "SELECT * FROM sessions"
        if not include_purged:
            query += " WHERE state != 'purged'"
        return [_record(row) for row in self._db.execute(query + " ORDER BY created_at")]

    def record_egress(
        self, session: str, host: str, port: int, decision: str, rule: str, up: int, down: int
    ) -> None:
        """Count one connection. A session has at most MAX_EGRESS_ROWS destinations of its own:
        past that, new ones are counted together (host OTHERS, port 0), so a sandbox that asks
        for endless names cannot fill the host's database."""
        self._writable()
        now = time.time()
        key = (session, host, port, decision, rule)
        known = self._db.execute(
            "SELECT 1 FROM egress_log WHERE session = ? AND host = ? AND port = ? AND decision = ?"
            " AND rule = ?", key).fetchone()  # fmt: skip
        if known is None:
            rows = self._db.execute(
                "SELECT COUNT(*) FROM egress_log WHERE session = ?", (session,)
            ).fetchone()[0]
            if rows >= MAX_EGRESS_ROWS:
                host, port, rule = EGRESS_OTHERS, 0, "(each decided by its rule)"
        self._db.execute(
            "INSERT INTO egress_log (session, host, port, decision, rule, bytes_up, bytes_down,"
            " count, first_seen, last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?)"
            " ON CONFLICT (session, host, port, decision, rule) DO UPDATE SET"
            " bytes_up = bytes_up + excluded.bytes_up,"
            " bytes_down = bytes_down + excluded.bytes_down,"
            " count = count + 1, last_seen = excluded.last_seen",
            (session, host, port, decision, rule, up, down, now, now),
        )

    def egress_log(self, session: Optional[str] = None) -> List[Dict[str, Any]]:
        query = "SELECT * FROM egress_log"
        args: List[Any] = []
        if session is not None:
            query, args = query + " WHERE session = ?", [session]
        newest = query + " ORDER BY last_seen DESC LIMIT %d" % MAX_EGRESS_ANSWER
        return [dict(row) for row in reversed(self._db.execute(newest, args).fetchall())]

    def forget_egress(self, session: str) -> None:
        self._writable()
        self._db.execute("DELETE FROM egress_log WHERE session = ?", (session,))

    def add_audit(self, session: Optional[str], action: str, target: str, undo: str) -> None:
        self._writable()
        self._db.execute(
            "INSERT INTO audit (at, session, action, target, undo) VALUES (?, ?, ?, ?, ?)",
            (time.time(), session, action, target, undo),
        )

    def audit(self, session: Optional[str] = None, limit: int = 5000) -> List[Dict[str, Any]]:
        """The newest `limit` audit rows (one session's, or all), oldest first."""
        query = "SELECT * FROM audit"
        args: List[Any] = []
        if session is not None:
            query, args = query + " WHERE session = ?", [session]
        newest = query + " ORDER BY id DESC LIMIT %d" % int(limit)
        return [dict(row) for row in reversed(self._db.execute(newest, args).fetchall())]

    def running_count(self) -> int:
        row = self._db.execute(
            "SELECT COUNT(*) FROM sessions WHERE state IN ('starting', 'running')"
        ).fetchone()
        return int(row[0])


def _record(row: sqlite3.Row) -> Dict[str, Any]:
    record = dict(row)
    record["spec"] = json.loads(record["spec"] or "{}")
    for key in JSON_COLUMNS:  # what the agent's output set: never fatal to a listing
        try:
            record[key] = None if record.get(key) is None else json.loads(record[key])
        except (TypeError, ValueError):
            record[key] = None
    return record


def disk_trouble(exc: sqlite3.OperationalError) -> bool:
    """sqlite's words for a disk it cannot write (full, or a quota)."""
    return "disk I/O error" in str(exc) or "database or disk is full" in str(exc)


def _wal_holds(path: str) -> bool:
    """Whether the database's write-ahead log holds frames (records not in the main file)."""
    try:
        return os.path.getsize(path + "-wal") > 0
    except OSError:
        return False
