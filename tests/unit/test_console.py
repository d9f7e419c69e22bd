"""The console's decisions (jackin_remote/console.py) and its screen (ui/console.py), rendered
into a fixed-size string console."""

from __future__ import annotations

import io
import subprocess
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from jackin_remote.cli.console import _command, outcome
from jackin_remote.console import (
    BACKSPACE,
    DOWN,
    ENTER,
    ESCAPE,
    INTERRUPT,
    UP,
    Action,
    ConsoleState,
    decode_keys,
    filtered,
    on_key,
    selected_row,
)
from jackin_remote.ui.console import render, window


def _row(sid: str, host: str = "h1", **extra: Any) -> dict[str, Any]:
    return {"key": f"{host}/{sid}", "id": sid, "host": host, "name": None, "workspace": "ws",
            "role": "r", "runtime": "shell", "state": "running", "agent_status": "working",
            "created_at": 1000.0, **extra}  # fmt: skip


ROWS = [_row("aaa111"), _row("bbb222", "h2", agent_status="blocked"), _row("ccc333")]


def _press(state: ConsoleState, *keys: str) -> tuple[ConsoleState, Action | None]:
    action = None
    for key in keys:
        state, action = on_key(state, key, ROWS)
    return state, action


def test_keys_are_decoded_from_what_the_terminal_sends() -> None:
    assert decode_keys("\x1b[A\x1b[Bj\r\x7f\x1b/\x03") == [
        UP, DOWN, "j", ENTER, BACKSPACE, ESCAPE, "/", INTERRUPT]  # fmt: skip
    # Unknown sequences are skipped whole, other control characters dropped.
    assert decode_keys("\x1b[15~a\x1b[1;5Cb\x00\x07c") == ["a", "b", "c"]


@given(st.text())
def test_decoding_never_yields_a_control_character(data: str) -> None:
    for key in decode_keys(data):
        assert key in (UP, DOWN, ENTER, ESCAPE, BACKSPACE, INTERRUPT) or (
            len(key) == 1 and key.isprintable()
        )


def test_moving_keeps_within_the_rows_and_the_selection_follows_its_session() -> None:
    state, _ = _press(ConsoleState(), DOWN, "j", "j", "j")
    assert state.selected == "h1/ccc333"
    state, _ = _press(state, UP, "k", "k")
    assert state.selected == "h1/aaa111"
    # A session that went away leaves the first row selected, not a stale one.
    assert selected_row(ConsoleState(selected="gone/x"), ROWS) == ROWS[0]


def test_the_filter_is_typed_kept_and_cleared() -> None:
    state, _ = _press(ConsoleState(), "/", "h", "2", "x", BACKSPACE)
    assert (state.typing, state.filter) == (True, "h2")
    # While typing, action keys are text, not actions.
    state, action = _press(state, "s")
    assert action is None and state.filter == "h2s" and state.confirm is None
    state, _ = _press(state, BACKSPACE, ENTER)
    assert (state.typing, [r["id"] for r in filtered(ROWS, state.filter)]) == (False, ["bbb222"])
    assert selected_row(state, ROWS) == ROWS[1]
    state, action = _press(state, ESCAPE)  # Escape clears the filter, and never quits
    assert (state.filter, action) == ("", None)
    _, action = _press(state, ESCAPE)
    assert action is None
    assert filtered(ROWS, "BLOCKED") == [ROWS[1]]  # any column, any case


def test_actions_name_the_selected_session_and_stop_is_asked_first() -> None:
    state, action = _press(ConsoleState(), DOWN, "o")
    assert action == Action("open", ROWS[1])
    _, action = _press(ConsoleState(), "a")
    assert action == Action("attach", ROWS[0])
    state, action = _press(ConsoleState(), "s")
    assert (state.confirm, action) == (("stop", "h1/aaa111"), None)
    state, action = _press(state, "n")
    assert action is None and state.confirm is None and "not done" in state.message
    _, action = _press(ConsoleState(), "s", "y")
    assert action == Action("stop", ROWS[0])
    _, action = _press(ConsoleState(), "q")
    assert action == Action("quit")
    _, action = _press(ConsoleState(typing=True), INTERRUPT)
    assert action == Action("quit")
    state, action = on_key(ConsoleState(), "l", [])
    assert action is None and state.message == "no session is selected"


def _screen(rows: list[dict[str, Any]], state: ConsoleState, width: int = 120) -> str:
    console = Console(file=io.StringIO(), width=width, height=30, color_system=None)
    summary = [
        {"name": "h1", "status": "ok", "running": 2, "capacity": 4, "agents": "working"},
        {"name": "h2", "status": "ok", "running": 1, "capacity": 4, "agents": "blocked"},
    ]
    console.print(render(rows, summary, {"h3": "unreachable"}, state, now=1060.0))
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_the_screen_shows_the_fleet_the_selection_its_links_and_the_keys() -> None:
    rows = [*ROWS[:2], _row("ccc333", links={"pr": ["https://x.test/pr/1"],
                                             "issue": ["https://x.test/i/2"]},
                            usage={"input_tokens": 1500, "cost_usd": 0.25})]  # fmt: skip
    shown = _screen(rows, ConsoleState(selected="h1/ccc333"))
    assert "fleet: blocked · 3 sessions" in shown
    assert "h1 2/4 running" in shown and "h2 1/4 running (blocked)" in shown
    assert "▸ccc333" in shown and "▸aaa111" not in shown
    assert "ccc333 on h1 · agent working · tokens 1.5k $0.25" in shown
    assert "pr: https://x.test/pr/1" in shown and "issue: https://x.test/i/2" in shown
    assert "h3: unreachable" in shown and "q quit" in shown
    filtered_ = _screen(rows, ConsoleState(filter="zzz"))
    assert "(0 shown) · filter: zzz" in filtered_ and "no session matches" in filtered_
    asking = _screen(rows, ConsoleState(confirm=("stop", "h1/aaa111")))
    assert "stop aaa111 on h1? y to confirm" in asking
    assert "no sessions yet" in _screen([], ConsoleState())


def test_a_stop_confirmed_after_its_session_left_the_view_stops_nothing_else() -> None:
    state, _ = _press(ConsoleState(), DOWN, "s")
    assert state.confirm == ("stop", "h2/bbb222")
    # Between the question and the answer, a refresh dropped that session.
    state, action = on_key(state, "y", [ROWS[0], ROWS[2]])
    assert action is None and state.message == "stop: not done"


def test_the_keys_stay_on_screen_and_the_selection_stays_in_view() -> None:
    many = [_row(f"s{n:05d}") for n in range(200)]
    selected = many[150]["key"]
    failed = {f"h{n}": "x" * 5000 for n in range(10)}
    console = Console(file=io.StringIO(), width=100, height=24, color_system=None)
    console.print(render(many, [], failed, ConsoleState(selected=selected, confirm=("stop",
                         selected)), height=24, width=100))  # fmt: skip
    lines = console.file.getvalue().splitlines()  # type: ignore[attr-defined]
    assert len(lines) <= 24, len(lines)
    assert "stop s00150 on h1? y to confirm" in lines[1]
    assert any("▸s00150" in each for each in lines)
    assert any("of 200: ↑↓ scroll" in each for each in lines)
    assert sum("xxxx" in each for each in lines) == 3  # three hosts' reasons, one line each
    assert any("7 more hosts did not answer" in each for each in lines)
    assert window(many, many[0], 5) == many[:5] and window(many, many[199], 5) == many[195:]


def test_rows_whose_cells_fold_still_leave_the_selection_on_screen() -> None:
    # At 80 columns a lost session's state cell folds onto several lines; 30 links are many.
    lost = [_row(f"s{n:05d}", state="lost", last_contact=1.0, workspace="w" * 30)
            for n in range(60)]  # fmt: skip
    lost[40]["links"] = {"pr": [f"https://x.test/pr/{n}" for n in range(30)]}
    console = Console(file=io.StringIO(), width=80, height=24, color_system=None)
    console.print(render(lost, [], {}, ConsoleState(selected=lost[40]["key"]), now=5000.0,
                         height=24, width=80))  # fmt: skip
    lines = console.file.getvalue().splitlines()  # type: ignore[attr-defined]
    assert len(lines) <= 24, "\n".join(lines)
    assert any("▸s00040" in each for each in lines), "\n".join(lines)
    assert any("25 more links" in each for each in lines)


def test_the_selected_sessions_latest_egress_denials_are_shown_and_no_other_sessions() -> None:
    denied = {"session": "aaa111", "host": "evil.example", "port": 443, "decision": "denied",
              "rule": "no rule allows it (deny by default)", "count": 3}  # fmt: skip
    other = {**denied, "session": "bbb222", "host": "other.example"}
    console = Console(file=io.StringIO(), width=120, height=30, color_system=None)
    console.print(render(ROWS, [], {}, ConsoleState(), denials=[denied, other]))
    shown = console.file.getvalue()  # type: ignore[attr-defined]
    assert "denied: evil.example:443 (3x, no rule allows it (deny by default))" in shown
    assert "other.example" not in shown


def test_hostile_text_from_a_host_reaches_the_screen_as_visible_characters() -> None:
    evil = "\x1b]52;c;cm0gLXJm\x07\x1b[2J"
    rows = [_row("aaa111", workspace=evil, error=f"boom {evil}",
                 links={"pr": [f"https://x.test/{evil}"], "issue": "not-a-list"})]  # fmt: skip
    shown = _screen(rows, ConsoleState(message=evil), width=200)
    assert "\x1b" not in shown and "\x07" not in shown
    assert "\\x1b]52;c;cm0gLXJm" in shown  # shown, escaped, never obeyed
    assert "issue:" not in shown  # a malformed value is not iterated as characters


def test_an_action_names_its_session_whole_and_reports_how_it_went() -> None:
    row = _row("aaa111")
    assert _command("/inv", "stop", row)[-5:] == ["-i", "/inv", "stop", "h1:aaa111", "--json"]
    assert _command(None, "attach", row)[-2:] == ["attach", "h1:aaa111"]

    def proc(code: int, stdout: str, stderr: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess([], code, stdout, stderr)

    assert outcome("stop", row, proc(0, '{"schema_version": "v1"}')) == "stop aaa111: done"
    failed = proc(1, '{"error": {"message": "session aaa111 is gone"}}')
    assert outcome("stop", row, failed) == "stop aaa111: session aaa111 is gone"
    assert outcome("pull", row, proc(1, "", "Traceback\nboom\n")) == "pull aaa111: failed (boom)"
    assert outcome("pull", row, proc(9, "")) == "pull aaa111: failed (exit 9)"
