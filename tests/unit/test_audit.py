"""The host audit: rows written and read back, bounded, redacted, never failing the caller."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent_host import audit, state
from agent_host.protocol import SpecError


def test_a_recorded_change_reads_back_with_its_undo(tmp_path: Path) -> None:
    root = str(tmp_path / "root")
    audit.record(root, "abcdefgh", "container.create", "jk-abcdefgh", "docker rm -f jk-abcdefgh")
    audit.record(root, None, "mirror.sync", "workspaces/w/mirror", "rm -rf workspaces/w")
    audit.record(root, "abcdefgh", "container.remove", "jk-abcdefgh", "")
    rows = audit.entries(root, "abcdefgh")
    assert [(r["action"], r["target"], r["undo"]) for r in rows] == [
        ("container.create", "jk-abcdefgh", "docker rm -f jk-abcdefgh"),
        ("container.remove", "jk-abcdefgh", ""),
    ]
    assert len(audit.entries(root)) == 3
    assert rows[0]["id"] < rows[1]["id"] and rows[0]["at"] > 0


def test_text_is_bounded_escaped_and_secret_shaped_values_redacted(tmp_path: Path) -> None:
    root = str(tmp_path / "root")
    audit.record(root, None, "secrets.write", "x" * 5000 + "\x1b[31m", "GITHUB_TOKEN=ghp_abc rm")
    (row,) = audit.entries(root)
    assert len(row["target"]) == audit.MAX_TARGET and row["target"].endswith("…")
    assert "ghp_abc" not in row["undo"] and row["undo"] == "GITHUB_TOKEN=<redacted> rm"
    audit.record(root, None, "file.write", "a\x1b[31mb", "")
    assert audit.entries(root)[-1]["target"] == "a\\x1b[31mb"


def test_programming_errors_raise_but_a_broken_database_does_not(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with pytest.raises(ValueError):
        audit.record(str(root), None, "not an action", "t", "")
    with pytest.raises(TypeError):
        audit.record(str(root), None, "a.b", 3, "")  # type: ignore[arg-type]
    with pytest.raises(SpecError):
        audit.record(str(root), "nope", "a.b", "t", "")
    root.mkdir()
    (root / "state.db").write_bytes(b"not a database" * 100)
    audit.record(str(root), None, "a.b", "t", "")  # swallowed: the change itself happened


def test_an_older_database_gets_the_audit_table(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    old = sqlite3.connect(root / "state.db")
    old.executescript(state.SCHEMA.split("-- Every host-side change")[0])
    old.execute("PRAGMA user_version = 4")
    old.commit()
    old.close()
    audit.record(str(root), "abcdefgh", "network.create", "jk-net", "docker network rm jk-net")
    assert [r["action"] for r in audit.entries(str(root))] == ["network.create"]
    store = state.Store(str(root))
    assert store._version() == state.SCHEMA_VERSION
    store.close()
