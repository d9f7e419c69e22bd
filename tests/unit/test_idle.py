"""Idle cleanup without time passing: the janitor's decision is pure (records + a fake clock +
tmux activity -> which to stop); the timeout's rules on the wire, in the inventory (file:line),
on the launch flag and in the contract; the test clock offset handed to the agent."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest

from agent_host import testhooks
from agent_host.janitor import IdleStop, decide
from agent_host.protocol import SpecError
from agent_host.wire import LaunchSpec, duration_seconds
from jackin_remote.core.contract import LaunchRequest, TargetRef, resolve_contract
from jackin_remote.errors import InventoryError, UsageError
from jackin_remote.inventory import load_inventory
from jackin_remote.launch import idle_timeout_option
from tests.unit.test_contract import GIT_WS, ROLE, TARGET

T0 = 1_800_000_000.0  # a fake "now" far from the real clock: nothing here reads time


def _record(sid: str, *, mode: str = "interactive", state: str = "running",
            timeout: int | None = 3600, started: float = T0 - 7200) -> dict[str, Any]:  # fmt: skip
    return {"id": sid, "mode": mode, "state": state, "started_at": started,
            "spec": {"idle_timeout": timeout}}  # fmt: skip


def test_an_interactive_session_is_stopped_once_idle_for_its_timeout_and_not_before() -> None:
    records = [_record("aaaaaaaa"), _record("bbbbbbbb")]
    activity = {"aaaaaaaa": T0 - 3600, "bbbbbbbb": T0 - 3599}
    assert decide(records, T0, activity) == [IdleStop("aaaaaaaa", 3600.0, 3600)]
    # An hour later by the clock alone, the other one is idle too.
    later = decide(records, T0 + 1, activity)
    assert [stop.session for stop in later] == ["aaaaaaaa", "bbbbbbbb"]


def test_activity_is_the_later_of_tmux_and_the_start() -> None:
    # Restarted a minute ago: tmux's old activity does not make it idle.
    restarted = _record("aaaaaaaa", started=T0 - 60)
    assert decide([restarted], T0, {"aaaaaaaa": T0 - 86400}) == []
    # Typed into a minute ago, started long before.
    typed = _record("bbbbbbbb", started=T0 - 86400)
    assert decide([typed], T0, {"bbbbbbbb": T0 - 60}) == []
    # tmux could not be read: the start time alone decides.
    unknown = _record("cccccccc", started=T0 - 3601)
    assert decide([unknown], T0, {"cccccccc": None}) == [IdleStop("cccccccc", 3601.0, 3600)]
    # Nothing says when it last did anything: never stopped on a guess.
    assert decide([_record("dddddddd", started=0)], T0, {}) == []


def test_tasks_ended_sessions_and_sessions_without_a_timeout_are_never_idle_stopped() -> None:
    old = T0 - 10 * 86400
    records = [
        _record("aaaaaaaa", mode="task", started=old),  # working until it exits
        _record("bbbbbbbb", state="exited", started=old),  # reconciliation's business
        _record("cccccccc", state="stopped", started=old),
        _record("dddddddd", state="starting", started=old),
        _record("eeeeeeee", timeout=None, started=old),
    ]
    assert decide(records, T0, {r["id"]: old for r in records}) == []


def test_durations_and_their_bounds() -> None:
    assert [duration_seconds(v) for v in ("60s", "30m", "2h", "1d", "30d")] == [
        60, 1800, 7200, 86400, 30 * 86400,
    ]  # fmt: skip
    for bad in ("59s", "31d", "0m", "1.5h", "2 h", "2H", "", "-1m", "2h30m"):
        with pytest.raises(SpecError):
            duration_seconds(bad)


def test_the_spec_carries_seconds_and_the_host_refuses_anything_else() -> None:
    spec = resolve_contract("abcd1234", TargetRef(**{**TARGET.__dict__, "idle_timeout": 7200}),
                            ROLE, GIT_WS, LaunchRequest("shell")).spec  # fmt: skip
    wire = spec.to_wire()
    assert wire["idle_timeout"] == 7200
    assert LaunchSpec.from_wire(wire).idle_timeout == 7200
    for bad in (30, "2h", 7200.0, True, 31 * 86400):
        with pytest.raises(SpecError, match="idle_timeout"):
            LaunchSpec.from_wire({**wire, "idle_timeout": bad})
    assert LaunchSpec.from_wire({**wire, "idle_timeout": None}).idle_timeout is None


def test_the_contract_says_what_happens_and_who_chose_it() -> None:
    target = TargetRef(**{**TARGET.__dict__, "idle_timeout": 7200})
    interactive = resolve_contract("abcd1234", target, ROLE, GIT_WS, LaunchRequest("shell"))
    note = interactive.recovery["idle_timeout"]
    assert note.startswith("2h (idle_timeout in the inventory): the host stops"), note
    assert "no tmux activity" not in note and "tmux activity" in note
    assert "jackin-remote start abcd1234" in note
    request = LaunchRequest("shell", task="x", idle_timeout_flag=True)
    flagged = resolve_contract("abcd1234", target, ROLE, GIT_WS, request)
    assert flagged.recovery["idle_timeout"].startswith("2h (--idle-timeout)")
    assert "once it has exited" in flagged.recovery["idle_timeout"]
    never = resolve_contract("abcd1234", TARGET, ROLE, GIT_WS, LaunchRequest("shell"))
    assert never.recovery["idle_timeout"].startswith("none")
    assert never.spec.idle_timeout is None


def test_the_inventory_key_per_host_and_in_defaults_with_file_and_line_errors(
    tmp_path: Path,
) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(dedent("""\
        [defaults]
        idle_timeout = "2h"

        [hosts.a]
        address = "10.0.0.1"

        [hosts.b]
        address = "10.0.0.2"
        idle_timeout = "off"

        [hosts.c]
        address = "10.0.0.3"
        idle_timeout = "45m"
        """))  # fmt: skip
    hosts = load_inventory(path).hosts
    assert (hosts["a"].idle_timeout, hosts["b"].idle_timeout, hosts["c"].idle_timeout) == (
        7200, None, 2700)  # fmt: skip
    for value, fragment in (('"10s"', "must be from 1m to 30d"), ('"2 hours"', "not a duration"),
                            ("7200", "expected string")):  # fmt: skip
        path.write_text(f'[hosts.a]\naddress = "10.0.0.1"\nidle_timeout = {value}\n')
        with pytest.raises(InventoryError) as caught:
            load_inventory(path)
        error = caught.value
        assert str(error).startswith(f"{path}:3: hosts.a.idle_timeout: "), str(error)
        assert fragment in str(error) and error.hint, str(error)


def test_the_launch_flag_uses_the_inventory_rule() -> None:
    assert idle_timeout_option("90m") == 5400
    assert idle_timeout_option("off") is None
    assert idle_timeout_option(None) is None
    with pytest.raises(UsageError, match="--idle-timeout: invalid idle timeout"):
        idle_timeout_option("forever")


def test_the_clock_offset_reaches_the_agent_only_when_a_test_sets_it() -> None:
    assert testhooks.agent_env({}) == ""
    assert testhooks.clock_offset({}) == 0.0
    env = {testhooks.CLOCK_ENV: "7200"}
    assert testhooks.agent_env(env) == "JACKIN_TEST_CLOCK_OFFSET=7200.0 "
    assert testhooks.clock_offset(env) == 7200.0
    both = {**env, testhooks.ENV: "host-create"}
    assert testhooks.agent_env(both) == (
        "JACKIN_TEST_CLOCK_OFFSET=7200.0 JACKIN_TEST_PAUSE_AT=host-create "
    )
    with pytest.raises(ValueError, match="not a number"):
        testhooks.agent_env({testhooks.CLOCK_ENV: "2h"})


def test_tmuxs_answer_is_bounded_and_never_later_than_now() -> None:
    from agent_host.janitor import activity_from

    assert activity_from(b"1000 1200\n", 5000.0) == 1200.0
    assert activity_from(b"1000 99999999999\n", 5000.0) == 5000.0  # a future claim: now
    assert activity_from(b"garbage", 5000.0) is None
    assert activity_from(b"9" * 40, 5000.0) is None  # no number that long is a time


def test_a_copied_command_line_is_not_a_running_janitor(tmp_path: Path) -> None:
    import fcntl
    import os

    from agent_host import janitor

    root = str(tmp_path)
    os.makedirs(janitor.janitor_dir(root))
    with open(janitor.pid_file(root), "w") as handle:
        handle.write(f"{os.getpid()}\n")  # this test's own process
    assert janitor.running_pid(root) is None  # its argv lacks the mark
    # A process whose argv copies the janitor's, at the pid file's pid: not it (no lock held).
    import subprocess
    import sys

    fake = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()", janitor.MARK,
                             "--root", root], stdin=subprocess.PIPE)  # fmt: skip
    try:
        with open(janitor.pid_file(root), "w") as handle:
            handle.write(f"{fake.pid}\n")
        assert janitor.running_pid(root) is None
    finally:
        assert fake.stdin is not None
        fake.stdin.close()
        fake.wait()
    with open(janitor.lock_file(root), "a") as lock:
        assert not janitor._lock_held(root)
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert janitor._lock_held(root)
    assert not janitor._lock_held(root)
