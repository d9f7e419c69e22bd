"""Tables and panels rendered to strings by a fixed-width rich Console: what a person reads.

A plain rich Console (markup on, as rich defaults) is used on purpose: the renderables must be
safe by themselves, not only thanks to the CLI's SafeConsole.
"""

from __future__ import annotations

import io
import re
from typing import Any

import pytest
from rich.console import Console, RenderableType

from jackin_remote.cli.common import fail
from jackin_remote.core.contract import (
    LaunchRequest,
    RoleRef,
    TargetRef,
    WorkspaceRef,
    resolve_contract,
)
from jackin_remote.errors import JackinError
from jackin_remote.inventory.model import Host
from jackin_remote.ui.contract import contract_panel
from jackin_remote.ui.fit import ColumnSize, ColumnSpec, fit_columns
from jackin_remote.ui.hosts import check_table, hosts_table
from jackin_remote.ui.safe import SafeConsole, line, visible
from jackin_remote.ui.sessions import sessions_table

WIDTHS = (80, 120, 200)
# What a hostile host, agent or workspace can put in a string: markup, OSC 52 (clipboard),
# OSC 0 (title), a screen clear, an overwrite, BEL, backspace, a C1 CSI and a bidi override.
HOSTILE = "x[/b][/red][bold]\x1b]52;c;cHduZWQ=\x07\x1b]0;pwned\x07\x1b[2J\rY\x08\x9b31m\u202eZ"
RAW_CONTROLS = ("\x1b", "\x07", "\x08", "\r", "\x9b", "\u202e")


def render(
    renderable: RenderableType, width: int, *, terminal: bool = False, crop: bool = True
) -> str:
    console = Console(file=io.StringIO(), width=width, force_terminal=terminal,
                      color_system="standard" if terminal else None)  # fmt: skip
    console.print(renderable, crop=crop)
    return console.file.getvalue()  # type: ignore[attr-defined,no-any-return]


def plain(output: str) -> str:
    """`output` without rich's own colour codes (SGR); anything else left is the data's."""
    return re.sub(r"\x1b\[[0-9;]*m", "", output)


def assert_inert(output: str) -> None:
    for char in RAW_CONTROLS:
        assert char not in plain(output), (char, output)


# -- fitting columns to a width -------------------------------------------------------------

SPECS = (ColumnSpec("id", 0, whole=True), ColumnSpec("notes", 2), ColumnSpec("state", 0, True),
         ColumnSpec("extra", 1))  # fmt: skip


def sizes(**natural: tuple[int, int]) -> dict[str, ColumnSize]:
    return {name: ColumnSize(name, minimum, wide, minimum) for name, (minimum, wide) in
            natural.items()}  # fmt: skip


def test_fit_keeps_every_column_at_its_natural_width_when_it_fits() -> None:
    got = fit_columns(SPECS, sizes(id=(8, 8), notes=(5, 30), state=(12, 12), extra=(5, 10)), 200)
    assert got == [("id", 8), ("notes", 30), ("state", 12), ("extra", 10)]


def test_fit_folds_before_it_drops_and_drops_the_least_important_first() -> None:
    size = sizes(id=(8, 8), notes=(5, 30), state=(12, 12), extra=(5, 10))
    # 8+30+12+10 + 4*3+1 = 73: at 60 the widest foldable column is narrowed, nothing dropped.
    got = dict(fit_columns(SPECS, size, 60))
    assert got["id"] == 8 and got["state"] == 12 and set(got) == {"id", "notes", "state",
                                                                  "extra"}  # fmt: skip
    assert sum(got.values()) + 13 <= 60
    # At 40 even the minima (8+5+12+5 + 13 = 43) do not fit: "notes" (priority 2) goes first.
    assert [name for name, _ in fit_columns(SPECS, size, 40)] == ["id", "state", "extra"]
    # At 20 only the columns that are never dropped are left, at their whole width.
    assert fit_columns(SPECS, size, 20) == [("id", 8), ("state", 12)]


def test_fit_never_narrows_a_whole_column_below_its_longest_word() -> None:
    size = {
        "id": ColumnSize("id", 8, 20, 8),
        "notes": ColumnSize("notes", 5, 5, 5),
        "state": ColumnSize("state", 12, 40, 12),
        "extra": ColumnSize("extra", 5, 5, 5),
    }
    for width in range(10, 120):
        got = dict(fit_columns(SPECS, size, width))
        assert got["id"] >= 8 and got["state"] >= 12, width


# -- visible() -------------------------------------------------------------------------------


def test_visible_shows_every_control_and_format_character() -> None:
    shown = visible(HOSTILE)
    assert_inert(shown)
    assert shown.startswith("x[/b][/red][bold]\\x1b]52;c;cHduZWQ=\\x07\\x1b]0;pwned\\x07")
    assert "\\x1b[2J\\rY\\x08\\x9b31m\\u202eZ" in shown


def test_visible_keeps_lines_tabs_and_real_text_but_not_a_lone_carriage_return() -> None:
    assert visible("a\tb\r\nc\n") == "a\tb\nc\n"
    assert visible("100%\rdone") == "100%\\rdone"
    text = "caf\u00e9 \u65e5\u672c \U0001f469\u200d\U0001f4bb"  # accents, CJK, a ZWJ emoji
    assert visible(text) == text
    assert visible("a\nb\tc", multiline=False) == "a\\nb\\tc"
    assert visible("\u2066\u2069\ufeff\U000e0041") == "\\u2066\\u2069\\ufeff\\U000e0041"


def test_safe_console_prints_strings_literally() -> None:
    console = SafeConsole(file=io.StringIO(), width=200, force_terminal=True)
    console.print(HOSTILE)
    console.print(line(("error:", "bold red"), " ", HOSTILE))
    output = console.file.getvalue()  # type: ignore[attr-defined]
    assert_inert(output)
    assert "x[/b][/red][bold]" in plain(output) and "\\x1b]52;c;" in plain(output)


def test_error_printer_shows_markup_and_escapes_literally(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import typer

    with pytest.raises(typer.Exit):
        fail(JackinError(f"git failed on {HOSTILE}", hint=f"see {HOSTILE}"))
    err = capsys.readouterr().err
    assert f"git failed on {visible(HOSTILE)}" in err.replace("\n", "")
    assert_inert(err)


# -- hosts list ------------------------------------------------------------------------------


HOSTS = [
    Host("local", transport="local", root="/tmp/jackin-root"),
    Host(
        "web-1",
        address="10.0.0.5",
        port=2222,
        user="ops",
        labels=("gpu", "eu"),
        capacity=6,
        jump="bastion",
    ),
]


@pytest.mark.parametrize("width", WIDTHS)
def test_hosts_table(width: int) -> None:
    output = render(hosts_table(HOSTS), width)
    for header in ("name", "address", "capacity"):
        assert header in output
    assert "local" in output and "web-1" in output
    if width >= 120:
        assert "10.0.0.5:2222 via bastion" in output
        assert "gpu,eu" in output and "/tmp/jackin-root" in output
        row = next(r for r in output.splitlines() if "web-1" in r)
        assert " 6 " in row and " ops " in row


# -- hosts check -----------------------------------------------------------------------------


def check_entry(**facts: Any) -> dict[str, Any]:
    base = {
        "os": "Debian GNU/Linux 12 (bookworm)", "kernel": "6.1.0", "arch": "x86_64", "cpus": 4,
        "memory": {"total": 8 * 1024**3}, "disk": {"free": 50 * 1024**3, "path": "/"},
        "python": "3.11.2", "rsync": "3.2.7", "git": "2.39.2",
        "docker": {"installed": True, "access": True, "version": "24.0.5"},
    }  # fmt: skip
    base.update(facts)
    return {
        "name": "web-1", "status": "ok", "verdict": "ready", "latency_ms": 1.25,
        "clock_skew_s": -0.5, "facts": base, "problems": [],
        "agent": {"version": "0.4.0", "deployed": False, "channel": "direct"},
    }  # fmt: skip


def test_check_table_resources_with_and_without_load() -> None:
    with_load = render(check_table([check_entry(load=[0.52, 0.4, 0.3])]), 220)
    assert "4 cpu, 8.0G mem, 50.0G free, load 0.52" in with_load
    # A missing load used to swallow the whole cell ("load -" alone).
    without = render(check_table([check_entry()]), 220)
    assert "4 cpu, 8.0G mem, 50.0G free, load -" in without
    assert "Debian 12, 6.1.0, x86_64" in without
    assert "python 3.11.2  docker 24.0.5  rsync 3.2.7  git 2.39.2" in without
    assert "1.2ms" in without and "-0.50s" in without and "0.4.0 (current, direct)" in without


def test_check_table_says_how_the_agent_was_reached_in_its_own_words() -> None:
    entry = check_entry()
    entry["agent"].update(channel="bridge\x1b[31m", streamlocal_refused=True)
    shown = render(check_table([entry]), 240)
    assert "0.4.0 (current, unknown)" in shown
    assert "web-1: sshd refuses channels to Unix sockets" in shown
    assert "\x1b[31m" not in shown
    entry["agent"].update(channel="bridge", streamlocal_refused=False)
    shown = render(check_table([entry]), 240)
    assert "0.4.0 (current, bridge)" in shown and "refuses" not in shown


@pytest.mark.parametrize("width", WIDTHS)
def test_check_table_at_every_width(width: int) -> None:
    entries = [
        check_entry(load=[1.0]),
        {"name": "db-2", "status": "unreachable", "verdict": "unusable",
         "error": {"message": "connection refused", "hint": "is sshd running?"}},
    ]  # fmt: skip
    output = render(check_table(entries), width)
    assert "web-1" in output and "db-2" in output and "unreachable" in output
    assert "db-2: connection refused" in output and "hint: is sshd running?" in output


def test_check_table_shows_a_hostile_hosts_answers_literally() -> None:
    entry = check_entry(load=["lots"], cpus=HOSTILE, kernel=HOSTILE, python=HOSTILE,
                        docker={"installed": True, "access": True, "version": HOSTILE})  # fmt: skip
    entry["problems"] = [{"severity": "fail", "message": HOSTILE, "hint": HOSTILE}]
    failed = {"name": "db-2", "status": "agent_error", "verdict": "unusable",
              "error": {"message": HOSTILE, "hint": HOSTILE}}  # fmt: skip
    for terminal in (False, True):
        output = render(check_table([entry, failed]), 200, terminal=terminal)
        assert_inert(output)
        assert "load -" in output and "db-2: x[/b][/red][bold]\\x1b]52" in plain(output)


# -- ls --------------------------------------------------------------------------------------

NOW = 1_700_000_000.0


def session_row(**fields: Any) -> dict[str, Any]:
    row = {
        "id": "abcd2345", "name": "fix-login", "host": "web-1", "workspace": "app-1a2b3c",
        "role": "test-agent", "runtime": "demo", "state": "running", "agent_status": "working",
        "created_at": NOW - 3 * 3600, "cpu_percent": 12.4, "memory_bytes": 300 * 1024**2,
    }  # fmt: skip
    row.update(fields)
    return row


@pytest.mark.parametrize("width", WIDTHS)
def test_sessions_table(width: int) -> None:
    rows = [
        session_row(),
        session_row(
            id="efgh6789",
            name=None,
            host="db-2",
            state="exited",
            agent_status="done",
            created_at=NOW - 90,
        ),
        session_row(
            id="jkmn0123", name=None, state="running", shown_state="lost", last_contact=NOW - 7200
        ),
    ]
    output = render(sessions_table(rows, now=NOW), width)
    assert "sessions" in output and "abcd2345" in output
    if width >= 200:
        assert "abcd2345 (fix-login)" in output
        first = next(r for r in output.splitlines() if "abcd2345" in r)
        for cell in ("web-1", "app-1a2b3c", "test-agent", "demo", "running", "working", "3h",
                     "12%", "300M"):  # fmt: skip
            assert cell in first, (cell, first)
        second = next(r for r in output.splitlines() if "efgh6789" in r)
        assert "exited" in second and "done" in second and "1m" in second
        assert "12%" not in second  # only live sessions show usage
        assert "lost (was running; last contact 2h ago)" in output


FLEET_ROWS = [
    session_row(),
    session_row(id="efgh6789", name=None, host="build-1", state="failed_setup",
                agent_status="unknown"),
    session_row(id="jkmn0123", name="a-rather-long-session-name", host="gpu-box-eu-west-3",
                workspace="a-long-workspace-name-9f8e7d", role="python-data-science-agent",
                state="crashed"),
    session_row(id="pqrs4567", name=None, host="fleet-2", state="running", shown_state="lost",
                last_contact=NOW - 7200),
]  # fmt: skip
SESSION_HEADERS = ("session", "host", "workspace", "role", "runtime", "state", "agent", "age",
                   "cpu", "mem", "tokens", "link")  # fmt: skip


def assert_fits(output: str, width: int) -> None:
    """No line is wider than the terminal and nothing was cut with an ellipsis."""
    assert "\u2026" not in output, output
    for row in output.splitlines():
        assert len(row) <= width, (width, row)


def shown_headers(output: str, headers: tuple[str, ...]) -> set[str]:
    """The headers on the table's header line (between the heavy borders), each whole."""
    header_line = next(r for r in output.splitlines() if r.startswith("\u2503"))
    cells = {cell.strip() for cell in header_line.split("\u2503")}
    assert all(not cell or cell in headers for cell in cells), header_line  # none cut or blank
    return {cell for cell in cells if cell}


@pytest.mark.parametrize("width", [*WIDTHS, 240])
def test_sessions_table_never_cuts_an_id_a_host_or_a_state(width: int) -> None:
    output = render(sessions_table(FLEET_ROWS, now=NOW), width)
    assert_fits(output, width)
    words = output.split()
    for row in FLEET_ROWS:
        assert row["id"] in words and row["host"] in words, (row, output)
        assert str(row.get("shown_state") or row["state"]) in words, (row, output)
    shown = shown_headers(output, SESSION_HEADERS)
    assert {"session", "host", "state"} <= shown
    left_out = [h for h in SESSION_HEADERS if h not in shown]
    if left_out:  # a person is told what --wide would add
        assert f"not shown at this width: {', '.join(left_out)}; --wide" in output
    if width >= 240:  # every column, nothing folded
        assert not left_out and "abcd2345 (fix-login)" in output
        first = next(r for r in output.splitlines() if "abcd2345" in r)
        for cell in ("web-1", "app-1a2b3c", "test-agent", "demo", "running", "working", "3h",
                     "12%", "300M"):  # fmt: skip
            assert cell in first, (cell, first)
        assert "lost (was running; last contact" in output
    if width == 80:
        assert {"agent", "age"} <= shown  # what a person scans for comes before cpu and mem


@pytest.mark.parametrize("width", WIDTHS)
def test_sessions_table_wide_has_every_column_on_one_line(width: int) -> None:
    output = render(sessions_table(FLEET_ROWS, now=NOW, wide=True), width, crop=False)
    assert shown_headers(output, SESSION_HEADERS) == set(SESSION_HEADERS)
    body = [r for r in output.splitlines() if r.startswith("\u2502")]
    assert len(body) == len(FLEET_ROWS)  # nothing folded onto a second line
    assert "a-rather-long-session-name" in output and "python-data-science-agent" in output
    assert "not shown" not in output


CHECK_HEADERS = ("host", "status", "verdict", "rtt", "system", "resources", "tools", "backends",
                 "agent", "skew")  # fmt: skip


@pytest.mark.parametrize("width", WIDTHS)
def test_check_table_never_cuts_a_host_a_status_or_a_verdict(width: int) -> None:
    long_host = check_entry(load=[0.5])
    long_host["name"] = "gpu-box-eu-west-3"
    entries = [
        check_entry(load=[1.0]), long_host,
        {"name": "db-2", "status": "host_key_mismatch", "verdict": "unusable",
         "error": {"message": "the host key changed", "hint": "hosts trust db-2"}},
    ]  # fmt: skip
    output = render(check_table(entries), width)
    assert_fits(output, width)
    words = output.split()
    for name, status, verdict in (("web-1", "ok", "ready"), ("gpu-box-eu-west-3", "ok", "ready"),
                                  ("db-2", "host_key_mismatch", "unusable")):  # fmt: skip
        row = next(r for r in output.splitlines() if f" {name} " in r)
        assert f" {status} " in row and f" {verdict} " in row, row
        assert name in words
    shown = shown_headers(output, CHECK_HEADERS)
    assert {"host", "status", "verdict", "resources"} <= shown
    wide = render(check_table(entries, wide=True), width, crop=False)
    assert shown_headers(wide, CHECK_HEADERS) == set(CHECK_HEADERS)
    assert "4 cpu, 8.0G mem, 50.0G free, load 1.00" in wide


@pytest.mark.parametrize("width", WIDTHS)
def test_hosts_table_never_cuts_a_name(width: int) -> None:
    hosts = [*HOSTS, Host("gpu-box-eu-west-3", address="gpu.example.org", labels=("gpu",))]
    output = render(hosts_table(hosts), width)
    assert_fits(output, width)
    for host in hosts:
        assert host.name in output.split()
    assert {"name", "address"} <= shown_headers(
        output, ("name", "transport", "address", "user", "labels", "capacity", "root", "from")
    )


def test_sessions_table_shows_a_hostile_hosts_rows_literally() -> None:
    rows = [session_row(name=HOSTILE, workspace=HOSTILE, role="[/red]", runtime=HOSTILE,
                        state=HOSTILE, agent_status=HOSTILE, created_at="soon",
                        cpu_percent="lots", memory_bytes=float("nan"))]  # fmt: skip
    for terminal in (False, True):
        output = render(sessions_table(rows, now=NOW), 400, terminal=terminal)
        assert_inert(output)
        assert "x[/b][/red][bold]\\x1b]52;c;cHduZWQ=\\x07" in plain(output)


# -- the contract panel ----------------------------------------------------------------------

ROLE = RoleRef("test-agent", "ab" * 32, "jackin-role-test-agent:abababababab", "agent",
               ("shell", "demo"), "/roles/test-agent")  # fmt: skip
TARGET = TargetRef("web-1", "ssh", "10.0.0.5", "~/.jackin", "docker", "2g", 1.5, 256)


def contract(path: str = "/home/me/app", task: str = "echo hi") -> dict[str, Any]:
    workspace = WorkspaceRef(path, "app-123abc", True, "c0ffee" * 6 + "abcd", "main", True,
                             12, 3400, excluded_secrets=(".env",), tracked_secrets=())  # fmt: skip
    request = LaunchRequest("shell", task=task, network="none")
    return resolve_contract("abcd2345", TARGET, ROLE, workspace, request).to_dict()


@pytest.mark.parametrize("width", WIDTHS)
def test_contract_panel(width: int) -> None:
    output = render(contract_panel(contract()), width)
    titles = ("identity", "routing", "filesystem", "credentials", "network", "docker access",
              "limits", "persistence", "host-side effects (plan)", "recovery",
              "warnings")  # fmt: skip
    # A section's title is a line of its own (its words may also appear inside other sections).
    lines = [row.strip("\u2502 ") for row in output.splitlines()]
    positions = [lines.index(title) for title in titles]
    assert positions == sorted(positions)  # DESIGN.md's order
    assert "session contract abcd2345" in output
    assert "abcd2345" in output and "web-1" in output and "test-agent" in output
    if width >= 120:
        assert "/home/me/app" in output and "echo hi" in output
        assert "none: no credential enters the sandbox" in output
        assert "host-enforced" in output and ".env" in output


def test_contract_panel_shows_hostile_paths_and_tasks_literally() -> None:
    data = contract(path=f"/home/me/{HOSTILE}", task=HOSTILE)
    for terminal in (False, True):
        output = render(contract_panel(data), 400, terminal=terminal)
        assert_inert(output)
        assert "/home/me/x[/b][/red][bold]\\x1b]52;c;cHduZWQ=\\x07" in plain(output)


def test_a_hosts_diff_answer_cannot_choose_the_json_envelope(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A compromised host answers `session.diff` with keys of the envelope itself."""
    import json as json_mod

    from jackin_remote.cli import sessions as cli_sessions

    hostile = {"text": "d", "session": "spoofed", "host": "elsewhere", "schema_version": "v0"}
    monkeypatch.setattr(cli_sessions, "_session_call",
                        lambda *a, **k: ({"id": "abcd1234", "host": "real"}, hostile))  # fmt: skip
    cli_sessions.diff(None, "abcd1234", raw=False, as_json=True)  # type: ignore[arg-type]
    data = json_mod.loads(capsys.readouterr().out)
    assert (data["session"], data["host"], data["schema_version"]) == ("abcd1234", "real", "v1")
    assert data["text"] == "d"


@pytest.mark.parametrize("width", WIDTHS)
def test_contract_panel_says_yes_and_no_never_true_or_false(width: int) -> None:
    output = render(contract_panel(contract()), width)
    assert "True" not in output and "False" not in output
    assert re.search(r"no new privileges\s+yes", output), output
    assert re.search(r"snapshot before start\s+yes", output), output


def test_openssh_logs_errors_only() -> None:
    """ "Shared connection to ... closed." and "Pseudo-terminal will not be allocated" are
    OpenSSH notices (LogLevel INFO): they never reach rsync's or attach's output."""
    from jackin_remote.transport.openssh import SSHTarget, openssh_argv

    argv = openssh_argv(SSHTarget(HOSTS[1], "ssh-ed25519 AAAA"), "true", tty=True)
    assert "LogLevel=ERROR" in argv


def test_capacity_at_a_glance_counts_live_sessions_and_names_silent_hosts() -> None:
    from types import SimpleNamespace

    from jackin_remote.ui.sessions import capacity, capacity_line

    hosts = [SimpleNamespace(name="a", capacity=4), SimpleNamespace(name="b", capacity=2),
             SimpleNamespace(name="c", capacity=1)]  # fmt: skip
    rows = [
        {"host": "a", "state": "running", "host_state": "ok"},
        {"host": "a", "state": "starting", "host_state": "ok"},
        {"host": "a", "state": "exited", "host_state": "ok"},
        {"host": "b", "state": "running", "host_state": "unreachable"},
    ]
    summary = capacity(hosts, rows, {"c": "auth_failed"})
    assert [(e["name"], e["status"], e["running"], e["capacity"]) for e in summary] == [
        ("a", "ok", 2, 4), ("b", "unreachable", 0, 2), ("c", "auth_failed", 0, 1)]  # fmt: skip
    rendered = capacity_line(summary).plain
    assert rendered == "hosts: a 2/4 running · b unreachable · c auth_failed"


def test_the_contract_panel_says_how_a_port_is_published_and_when_none_can_be() -> None:
    closed = " ".join(render(contract_panel(contract()), 200).split())
    assert "network none: no port of it can be reached" in closed
    workspace = WorkspaceRef("/home/me/app", "app-123abc", True, "c0ffee" * 6 + "abcd", "main",
                             False, 12, 3400)  # fmt: skip
    request = LaunchRequest("shell", task="x", network="allowlist", docker="private")
    data = resolve_contract("abcd2345", TARGET, ROLE, workspace, request).to_dict()
    said = " ".join(render(contract_panel(data), 200).split())
    assert "jackin-remote ports abcd2345 --publish [LOCAL:]PORT" in said
    # The allowlist's rules and caveats, and the private daemon, are in the panel, not only --json.
    assert "allow registry.npmjs.org:443 (preset registries)" in said
    assert "- an allowed destination is still a way out" in said
    assert "jk-abcd2345-dockerd" in said and "elevated on the host" in said
