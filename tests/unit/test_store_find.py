"""store.find: HOST:REF picks among hosts reporting the same session; forget_host."""

from __future__ import annotations

from pathlib import Path

import pytest

from jackin_remote.errors import UsageError
from jackin_remote.store import Store

SID = "abcd2345"


def _store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "jackin.db")
    for host in ("twin-a", "twin-b"):
        store.record(host, {"id": SID, "name": "fix-it", "state": "running", "created_at": 1.0})
    return store


def test_the_same_id_on_two_hosts_needs_host_colon_id(tmp_path: Path) -> None:
    store = _store(tmp_path)
    with pytest.raises(UsageError, match="twin-a:abcd2345") as caught:
        store.find(SID)
    assert "HOST:ID" in (caught.value.hint or "")
    for ref in (f"twin-b:{SID}", "twin-b:abcd", "twin-b:fix-it"):
        assert store.find(ref)["host"] == "twin-b"
    with pytest.raises(UsageError, match="no session"):
        store.find(f"other:{SID}")
    with pytest.raises(UsageError, match="no session"):
        store.find("twin-a:")


def test_forget_host_drops_its_rows_only(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.forget_host("twin-b")
    assert store.find(SID)["host"] == "twin-a"
