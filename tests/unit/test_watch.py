"""`ls --watch`'s decisions: who became blocked this round, and the notify command's words."""

from __future__ import annotations

import pytest

from jackin_remote.errors import UsageError
from jackin_remote.watch import newly_blocked, notify_argv, statuses


def row(key: str, status: str) -> dict[str, str]:
    return {"key": key, "id": key.split("/")[1], "host": key.split("/")[0], "agent_status": status}


def test_a_session_rings_once_each_time_it_becomes_blocked() -> None:
    first = [row("a/s1", "blocked"), row("a/s2", "working")]
    assert [r["key"] for r in newly_blocked({}, first)] == ["a/s1"]  # blocked when first seen
    second = [row("a/s1", "blocked"), row("a/s2", "blocked")]
    assert [r["key"] for r in newly_blocked(statuses(first), second)] == ["a/s2"]
    third = [row("a/s1", "working"), row("a/s2", "blocked")]
    assert newly_blocked(statuses(second), third) == []
    fourth = [row("a/s1", "blocked"), row("a/s2", "blocked")]
    assert [r["key"] for r in newly_blocked(statuses(third), fourth)] == ["a/s1"]


def test_the_notify_command_is_words_never_a_shell_line() -> None:
    assert notify_argv("notify-send 'agent blocked'") == ["notify-send", "agent blocked"]
    assert notify_argv("a; rm -rf /") == ["a;", "rm", "-rf", "/"]  # no shell: ';' is a word
    for bad in ("", "   ", "'unclosed"):
        with pytest.raises(UsageError):
            notify_argv(bad)
