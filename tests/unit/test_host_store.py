"""The host's state database: many agents opening it at once, and a database an older agent made."""

from __future__ import annotations

import errno
import multiprocessing
import os
import re
import sqlite3
from pathlib import Path

import pytest

from agent_host import state
from agent_host.state import Store


def _open_and_write(args: tuple[str, int]) -> str:
    root, n = args
    store = Store(root)
    try:
        store.insert(_record(f"S{n:03d}"))
        return store.get(f"S{n:03d}")["id"]  # type: ignore[index]
    finally:
        store.close()


def _record(session_id: str) -> dict[str, object]:
    return {
        "id": session_id,
        "workspace": "w",
        "role": "r",
        "runtime": "shell",
        "container": "jk-" + session_id,
        "mode": "task",
        "isolation": "clone",
        "state": "starting",
        "agent_status": "unknown",
        "spec": {},
    }


def test_agents_opening_a_new_database_at_once_all_get_it(tmp_path: Path) -> None:
    """Separate processes, as separate agents are: each opens the fresh database and writes."""
    root = str(tmp_path / "root")
    with multiprocessing.get_context("spawn").Pool(8) as pool:
        ids = pool.map(_open_and_write, [(root, n) for n in range(48)])
    assert sorted(ids) == [f"S{n:03d}" for n in range(48)]
    store = Store(root)
    assert len(store.all()) == 48
    mode = store._db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    assert store._version() == state.SCHEMA_VERSION


def test_a_database_an_older_agent_made_gets_the_new_columns(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    old = sqlite3.connect(root / "state.db")
    old_schema = state.SCHEMA
    for newer in ("launch_commit TEXT,", "uid INTEGER,", "reason TEXT,"):
        old_schema = old_schema.replace(newer, "")
    old_schema = re.sub(r"\n *(links|usage|scan) TEXT[^\n]*", "", old_schema)
    old_schema = old_schema.replace("spec TEXT NOT NULL,", "spec TEXT NOT NULL")
    assert "launch_commit" not in old_schema and "scan" not in old_schema
    old.executescript(old_schema)
    old.execute(
        "INSERT INTO sessions (id, workspace, role, runtime, container, mode, isolation,"
        " state, created_at, updated_at, spec) VALUES ('OLD', 'w', 'r', 'shell', 'c',"
        " 'task', 'clone', 'exited', 1, 1, '{}')"
    )
    old.commit()
    old.close()
    store = Store(str(root))
    store.update("OLD", launch_commit="a" * 40, uid=935000001)
    record = store.get("OLD")
    assert record is not None and record["uid"] == 935000001
    assert record["launch_commit"] == "a" * 40 and record["reason"] is None
    assert record["links"] is None and record["usage"] is None and record["scan"] is None
    store.update("OLD", links={"pr": ["https://example.test/pr/1"]}, usage={"input_tokens": 3})
    again = store.get("OLD")
    assert again is not None and again["links"] == {"pr": ["https://example.test/pr/1"]}
    assert again["usage"] == {"input_tokens": 3}
    assert store._version() == state.SCHEMA_VERSION


def test_a_session_cannot_fill_the_database_with_destinations(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "root"))
    for n in range(state.MAX_EGRESS_ROWS + 50):
        store.record_egress("S1", f"h{n}.example", 443, "denied", "default", 0, 0)
    store.record_egress("S1", "h1.example", 443, "denied", "default", 0, 0)  # a known one
    rows = store.egress_log("S1")
    assert len(rows) == state.MAX_EGRESS_ROWS + 1
    others = [r for r in rows if r["host"] == state.EGRESS_OTHERS]
    assert len(others) == 1 and others[0]["count"] == 50 and others[0]["port"] == 0
    assert [r["count"] for r in rows if r["host"] == "h1.example"] == [2]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs (root only)")
def test_a_full_disk_leaves_the_database_readable_and_refuses_writes_clearly(
    tmp_path: Path,
) -> None:
    import subprocess

    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(small)], check=True)
    try:
        root = str(small / "root")
        store = Store(root)
        store.insert({"id": "abcd2345", "workspace": "w", "role": "r", "runtime": "x",
                      "container": "c", "mode": "task", "isolation": "clone",
                      "state": "running", "agent_status": "working", "spec": {}})  # fmt: skip
        store.close()
        with (small / "filler").open("wb", buffering=0) as out, pytest.raises(OSError):
            while True:
                out.write(b"\0" * (1 << 20))
        full = Store(root)  # WAL cannot make its -shm file: read as it stands
        assert full.read_only and [r["id"] for r in full.all()] == ["abcd2345"]
        with pytest.raises(OSError, match="read-only until there is") as raised:
            full.update("abcd2345", state="stopped")
        assert raised.value.errno == errno.ENOSPC
        full.close()
        (small / "filler").unlink()
        again = Store(root)
        assert not again.read_only
        again.update("abcd2345", state="stopped")
        assert (again.get("abcd2345") or {})["state"] == "stopped"
        again.close()
    finally:
        subprocess.run(["umount", "--lazy", str(small)], check=False)


def test_a_wal_holding_records_is_never_read_around(tmp_path: Path) -> None:
    """The read-only fallback reads the main file only: not while the WAL holds records."""
    root = str(tmp_path / "root")
    writer = Store(root)
    writer.insert({"id": "abcd2345", "workspace": "w", "role": "r", "runtime": "x",
                   "container": "c", "mode": "task", "isolation": "clone", "state": "running",
                   "agent_status": "working", "spec": {}})  # fmt: skip
    path = str(tmp_path / "root" / "state.db")
    assert state._wal_holds(path)  # the insert is in the WAL while the writer is open
    writer.close()
    assert not state._wal_holds(path)  # checkpointed and gone with the last connection
