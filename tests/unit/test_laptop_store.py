"""The laptop's cache (jackin_remote/store.py) on the standard library's sqlite3: a cache an
older version made (with sqlite-utils) opens and gains the columns it lacks, a merge lands whole
or not at all, an upsert changes only the columns it names, and a reader needs no write lock."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jackin_remote.core.aliases import Identity
from jackin_remote.store import SESSION_COLUMNS, Store, Tables

# What sqlite-utils made for an early version: fewer columns, its type names.
OLD_SCHEMA = """
CREATE TABLE [sessions] ([key] TEXT PRIMARY KEY, [host] TEXT, [id] TEXT, [name] TEXT,
  [state] TEXT, [host_state] TEXT, [created_at] FLOAT, [last_seen] FLOAT);
CREATE INDEX [idx_sessions_id] ON [sessions] ([id]);
CREATE TABLE [hosts] ([name] TEXT PRIMARY KEY, [state] TEXT, [last_contact] FLOAT);
INSERT INTO sessions VALUES ('old/abc', 'old', 'abc', 'kept', 'running', 'ok', 1.0, 1.0);
INSERT INTO hosts VALUES ('old', 'ok', 1.0);
"""


def _columns(path: Path, table: str) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def test_a_cache_an_older_version_made_opens_keeps_its_rows_and_gains_columns(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jackin.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_SCHEMA)
    store = Store(path)
    assert set(SESSION_COLUMNS) <= _columns(path, "sessions")
    assert {"root_id", "host_key"} <= _columns(path, "hosts")
    assert [(row["id"], row["name"], row["links"]) for row in store.sessions()] == [
        ("abc", "kept", None)
    ]
    store.record("old", {"id": "abc", "state": "exited", "links": [{"kind": "pr", "url": "u"}]})
    (row,) = store.sessions()
    assert (row["name"], row["state"], row["links"]) == (
        "kept",
        "exited",
        [{"kind": "pr", "url": "u"}],
    )


def test_a_merge_that_fails_part_way_changes_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "jackin.db")
    store.merge_host("h", [{"id": "one", "state": "running", "created_at": 1.0}])

    def entries() -> Iterator[dict[str, Any]]:
        yield {"id": "two", "state": "running", "created_at": 2.0}
        raise OSError("the host's answer broke off")

    with pytest.raises(OSError):
        store.merge_host("h", entries())
    assert [row["id"] for row in Store(tmp_path / "jackin.db").sessions()] == ["one"]


def test_an_upsert_changes_only_the_columns_it_names(tmp_path: Path) -> None:
    store = Store(tmp_path / "jackin.db")
    store.merge_host("h", [])
    store.record_identity(
        Identity(name="h", host_key="ssh-ed25519 AAAA", machine_id="m", root_id="r")
    )
    (host,) = store.db.query("SELECT * FROM hosts")
    assert (host["state"], host["root_id"], host["host_key"]) == ("ok", "r", "ssh-ed25519 AAAA")
    assert host["last_contact"] is not None


def test_hostile_text_is_stored_as_data(tmp_path: Path) -> None:
    store = Store(tmp_path / "jackin.db")
    name = "x'); DROP TABLE sessions; --[]"
    store.record("h", {"id": "abc", "name": name, "error": "\x1b[2J", "created_at": 1.0})
    (row,) = store.sessions()
    assert (row["name"], row["error"]) == (name, "\x1b[2J")


def test_a_column_name_that_is_not_an_identifier_is_refused(tmp_path: Path) -> None:
    tables = Tables(tmp_path / "t.db")
    tables.create("t", {"key": str}, pk="key")
    with pytest.raises(ValueError, match="not a column name"):
        tables.upsert("t", {"key": "k", "a] = 1; --": "x"}, pk="key")


def test_a_reader_opens_a_whole_cache_while_another_process_holds_the_write_lock(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jackin.db"
    Store(path).record("h", {"id": "abc", "state": "running", "created_at": 1.0})
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        reader = Store(path)
        reader.db.conn.execute("PRAGMA busy_timeout = 0")  # waiting for the lock would fail
        assert [row["id"] for row in reader.view()] == ["abc"]
    finally:
        writer.execute("ROLLBACK")
        writer.close()
