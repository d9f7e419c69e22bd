"""How a host derives a session's lifecycle state from its record and docker. Pure."""

from typing import Any

from agent_host.sessions import SETUP_GRACE, derive_state, end_reason

NOW = 10_000.0


def rec(state: str, created: float = NOW - 5) -> dict[str, Any]:
    return {"state": state, "created_at": created, "exit_code": None}


def box(status: str, code: int = 0) -> dict[str, Any]:
    return {"status": status, "exit_code": code}


def test_running_and_exits() -> None:
    assert derive_state(rec("running"), box("running"), NOW, False) == ("running", None)
    assert derive_state(rec("running"), box("exited", 0), NOW, False) == ("exited", 0)
    assert derive_state(rec("running"), box("exited", 2), NOW, False) == ("crashed", 2)


def test_a_stopped_session_stays_stopped() -> None:
    assert derive_state(rec("stopped"), box("exited", 137), NOW, False) == ("stopped", 137)


def test_starting_without_container_is_failed_setup_once_its_owner_is_gone() -> None:
    assert derive_state(rec("starting"), None, NOW, True) == ("starting", None)
    assert derive_state(rec("starting"), None, NOW, False) == ("failed_setup", None)
    old = rec("starting", created=NOW - SETUP_GRACE - 1)
    assert derive_state(old, None, NOW, True) == ("failed_setup", None)


def test_running_whose_container_vanished_is_crashed() -> None:
    assert derive_state(rec("running"), None, NOW, False)[0] == "crashed"


def test_an_oom_kill_is_a_crash_with_its_reason_whatever_the_exit_code() -> None:
    """With docker's init as pid 1, the kernel may kill the hog and leave the agent to exit 0:
    its work may still be cut short, so the session is crashed (oom), not exited."""
    for code in (0, 137):
        killed = {**box("exited", code), "oom": True}
        assert derive_state(rec("running"), killed, NOW, False) == ("crashed", code)
        assert end_reason("crashed", killed) == "oom"
    assert end_reason("crashed", box("exited", 2)) is None
    assert end_reason("crashed", None) is None  # the host keeps a reason it recorded before
    # stopped by the operator: never an oom crash, even if the kernel killed something before
    stopped = {**box("exited", 137), "oom": True}
    assert derive_state(rec("stopped"), stopped, NOW, False) == ("stopped", 137)
