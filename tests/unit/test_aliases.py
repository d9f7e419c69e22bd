"""One machine under two names: the pure rules (core/aliases.py), their warnings, the store's
merged view and launch records, the wire type and the agent's root id."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from agent_host import facts
from agent_host.wire import HostIdentity, SpecError
from jackin_remote.core.aliases import Identity, aliases, root_groups, same_machine, same_root
from jackin_remote.core.verdict import alias_problems, verdict
from jackin_remote.store import Store

KEY, OTHER_KEY = "ssh-ed25519 SHA256:aaaa", "ssh-ed25519 SHA256:bbbb"
M1, M2, R1, R2 = "1" * 32, "2" * 32, "a" * 32, "b" * 32
SID = "abcd2345"


def test_one_machine_needs_agreeing_evidence() -> None:
    assert same_machine(Identity("a", KEY, None, R1), Identity("b", KEY, None, R2))
    assert same_machine(Identity("a", None, M1, R1), Identity("b", None, M1, R2))
    # Nothing to compare (a container's agent without machine-id, the local host): not proven.
    assert not same_machine(Identity("a", KEY, None, R1), Identity("b", None, M1, R1))
    assert not same_machine(Identity("a", None, None, R1), Identity("b", None, None, R1))
    # Any disagreement wins: a cloned image's machine-id with another host key, and the reverse.
    assert not same_machine(Identity("a", KEY, M1, R1), Identity("b", OTHER_KEY, M1, R1))
    assert not same_machine(Identity("a", KEY, M1, R1), Identity("b", KEY, M2, R1))


def test_same_root_needs_the_same_machine() -> None:
    assert same_root(Identity("a", KEY, None, R1), Identity("b", KEY, None, R1))
    assert not same_root(Identity("a", KEY, None, R1), Identity("b", KEY, None, R2))
    # A host claiming another's root id, without its host key, is not that root.
    assert not same_root(Identity("a", KEY, None, R1), Identity("b", OTHER_KEY, None, R1))
    assert not same_root(Identity("a", KEY, None, None), Identity("b", KEY, None, None))


def test_root_groups_are_transitive_and_stable() -> None:
    items = [Identity("c", KEY, None, R1), Identity("a", KEY, None, R1),
             Identity("b", KEY, None, R1), Identity("d", KEY, None, R2),
             Identity("e", OTHER_KEY, None, R1)]  # fmt: skip
    assert root_groups(items) == {"a": "a", "b": "a", "c": "a", "d": "d", "e": "e"}
    assert [(x.names, x.same_root) for x in aliases(items[:2] + items[3:4])] == [
        (("c", "a"), True), (("c", "d"), False), (("a", "d"), False)]  # fmt: skip


def test_warnings_name_both_names_and_what_to_do() -> None:
    twin = aliases([Identity("twin-a", KEY, None, R1, "/r"), Identity("twin-b", KEY, None, R1)])
    (problem,) = alias_problems("twin-b", twin)
    assert "twin-b and twin-a are the same host root" in problem.message
    assert KEY in problem.message and "hosts rm twin-a" in problem.hint
    assert "different roots" in problem.hint and verdict([problem]) == "degraded"
    rooms = aliases([Identity("a", KEY, None, R1, "/r1"), Identity("b", KEY, None, R2, "/r2")])
    (problem,) = alias_problems("a", rooms)
    assert "a and b are one machine" in problem.message and "/r1 and /r2" in problem.message
    assert alias_problems("c", rooms) == []


def _store(tmp_path: Path, b_key: str = KEY, launched_on: str = "twin-a") -> Store:
    store = Store(tmp_path / "jackin.db")
    for host, key in (("twin-a", KEY), ("twin-b", b_key)):
        extra = {"workspace_path": "/ws"} if host == launched_on else {}
        store.record(host, {"id": SID, "state": "running", "created_at": 1.0}, **extra)
        store.merge_host(host, [{"id": SID, "state": "running", "created_at": 1.0}])
        store.record_identity(Identity(host, key, None, R1))
    return store


def test_store_view_merges_one_root_and_shares_the_launch_record(tmp_path: Path) -> None:
    store = _store(tmp_path, launched_on="twin-b")
    (row,) = store.view()
    assert (row["host"], row["also"]) == ("twin-b", ["twin-a"])
    assert store.find(SID)["host"] == "twin-b"  # one session, not "matches several"
    assert store.find(f"twin-a:{SID}")["workspace_path"] == "/ws"
    assert [r["host"] for r in store.view(["twin-a"])] == ["twin-a"]
    store.forget(f"twin-a/{SID}")  # removed from the root: gone under both names
    assert store.view() == []


def test_store_keeps_apart_a_host_that_only_claims_the_root(tmp_path: Path) -> None:
    store = _store(tmp_path, b_key=OTHER_KEY)
    assert sorted((r["host"], r["also"]) for r in store.view()) == [
        ("twin-a", []), ("twin-b", [])]  # fmt: skip
    assert store.find(f"twin-b:{SID}")["workspace_path"] is None
    assert store.find(f"twin-a:{SID}")["workspace_path"] == "/ws"


def test_host_identity_wire_is_strict() -> None:
    assert HostIdentity.from_wire({"machine_id": None, "root_id": R1}).root_id == R1
    for bad in ({"root_id": "x" * 32}, {"root_id": R1, "extra": 1}, {"machine_id": "A" * 32},
                {"root_id": "\x1b[2J" + R1}, []):  # fmt: skip
        with pytest.raises(SpecError):
            HostIdentity.from_wire(bad)


def test_root_id_is_made_once_even_when_asked_at_once(tmp_path: Path) -> None:
    root = str(tmp_path / "root")
    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(lambda _: facts.root_id(root), range(32)))
    assert len(ids) == 1 and os.listdir(root) == ["root-id"]
    (tmp_path / "root" / "root-id").write_text("damaged\n")  # never replaced, never trusted
    assert facts.root_id(root) is None
