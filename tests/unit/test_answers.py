"""Merging many hosts' answers (jackin_remote/answers.py): a host's bad answer fails that host
only, named, and never reaches the merged entries."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from agent_host.wire import SpecError
from jackin_remote.answers import merged_entries


@dataclass(frozen=True)
class Entry:
    at: float

    @classmethod
    def from_wire(cls, item: Any) -> Entry:
        if not isinstance(item, dict) or not isinstance(item.get("at"), float):
            raise SpecError("at", "must be a number")
        return cls(item["at"])


def _result(host: str, value: Any = None, error: Any = None) -> Any:
    return SimpleNamespace(ok=error is None, host=SimpleNamespace(name=host), value=value,
                           error=error)  # fmt: skip


def test_each_hosts_entries_are_checked_and_tagged_and_a_bad_answer_fails_only_its_host() -> None:
    results = [
        _result("a", {"entries": [{"at": 1.0}, {"at": 2.0}]}),
        _result("b", {"entries": [{"at": 3.0}, {"at": "soon"}]}),  # one bad entry: all of b's go
        _result("c", {"entries": "not a list"}),
        _result("d", None),
        _result("e", error=SimpleNamespace(reason="unreachable: connection refused")),
    ]
    entries, failed = merged_entries(results, Entry.from_wire, host_field="host_name")
    assert entries == [{"host_name": "a", "at": 1.0}, {"host_name": "a", "at": 2.0}]
    assert [f["host"] for f in failed] == ["b", "c", "d", "e"]
    assert failed[0]["error"].startswith("bad answer: ") and "at" in failed[0]["error"]
    assert failed[1]["error"] == failed[2]["error"]  # neither is a list of entries
    assert failed[3]["error"] == "unreachable: connection refused"
