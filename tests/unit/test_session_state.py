"""How a host derives a session's lifecycle state from its record and docker. Pure."""

from pathlib import Path
from typing import Any

import pytest

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


def test_a_sandbox_started_by_an_earlier_engine_and_ended_at_its_restore_ended_with_it() -> None:
    from agent_host.sessions import docker_time

    # What the engine records at its restore: started under the old run, ended as it came back.
    ended = {**box("exited", 255), "started_at": "2026-11-29T09:00:00.5Z",
             "finished_at": "2026-11-29T10:05:00.454891307Z"}  # fmt: skip
    engine = docker_time("2026-11-29T10:05:00Z")
    assert engine is not None
    assert abs(docker_time(ended["finished_at"]) - (engine + 0.454891307)) < 1e-6  # type: ignore[operator]
    assert end_reason("crashed", ended, engine) == "engine_restart"
    assert end_reason("crashed", ended, engine - 7200) is None  # started under this engine
    assert end_reason("crashed", ended, engine + 60) is None  # ended before the engine came up
    assert end_reason("crashed", ended, None) is None  # the engine's start unknown
    assert end_reason("exited", ended, engine) is None
    assert docker_time("2026-11-29T12:00:00+02:00") == docker_time("2026-11-29T10:00:00Z")
    for junk in ("0001-01-01T00:00:00Z", "yesterday", None, 5, "2026-11-29T10:00:00Z\n"):
        assert docker_time(junk) is None


def test_removing_secrets_never_follows_a_link_swapped_into_dev_shm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent_host import sessions

    victim = tmp_path / "victim"
    victim.mkdir(mode=0o755)
    (victim / "keep").write_text("x")
    entry = tmp_path / "jackin-secrets-abcd2345"
    entry.symlink_to(victim)
    monkeypatch.setattr(sessions, "secret_dir", lambda _sid: str(entry))
    sessions.remove_secret_files("abcd2345")
    assert (victim / "keep").exists() and oct(victim.stat().st_mode & 0o777) == "0o755"
    assert entry.is_symlink()
    entry.unlink()
    entry.mkdir(mode=0o500)
    (entry / "TOKEN").write_text("s")
    entry.chmod(0o500)
    sessions.remove_secret_files("abcd2345")
    assert not entry.exists()
