"""What an agent says of itself, between its output and the operator: the wire's checks of links
and usage, the host's reading of a container log by its timestamps, the table's cells, the
roll-up, and the `usage` and `open` commands' decisions."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent_host import observe, wire
from agent_host.wire import SessionRecord, SpecError, check_links, check_usage, valid_url
from jackin_remote.cli import agents
from jackin_remote.ui.sessions import first_link, rollup, tokens

PR = "https://example.test/acme/app/pull/7"


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "file:///etc/passwd",
        "https://",
        "https://exa mple.test/",
        "https://example.test/\x1b]8;;evil\x07",
        "https://example.test/\u202eexe",
        'https://example.test/"onmouseover',
        "https://example.test/<b>",
        "https://example.test/a\\b",
        "-https://example.test/",
        "https://ex\u00e4mple.test/",
        "https://example.test/" + "a" * wire.MAX_URL,
        "",
        None,
        7,
    ],
)
def test_a_link_that_is_not_a_plain_http_url_is_refused(url: Any) -> None:
    assert not valid_url(url)


def test_plain_http_links_pass() -> None:
    for url in (PR, "http://10.0.0.1:8080/x?y=1#z", "https://xn--exmple-cua.test/"):
        assert valid_url(url), url


def test_a_hosts_links_and_usage_are_checked_by_field() -> None:
    assert check_links({"pr": [PR]}, "links") == {"pr": [PR]}
    with pytest.raises(SpecError, match="unknown link kind"):
        check_links({"status": ["done"]}, "links")
    with pytest.raises(SpecError) as refused:
        check_links({"issue": ["javascript:alert(1)"]}, "links")
    assert refused.value.field == "links.issue"
    with pytest.raises(SpecError):
        check_links({"pr": [PR] * (wire.MAX_LINKS + 1)}, "links")
    assert check_usage({"input_tokens": 5}, "usage") == {
        "input_tokens": 5, "output_tokens": 0, "cache_read_tokens": 0, "cache_write_tokens": 0,
        "cost_usd": None}  # fmt: skip
    for bad in ({"input_tokens": -1}, {"input_tokens": True}, {"input_tokens": 1.5},
                {"cost_usd": math.nan}, {"cost_usd": -0.1}, {"cost_usd": math.inf},
                {"cost_usd": "1"}, {"surprise": 1}, [1]):  # fmt: skip
        with pytest.raises(SpecError):
            check_usage(bad, "usage")


def test_a_session_record_with_a_hostile_link_fails_that_host_named() -> None:
    entry = {"id": "abcd2345", "workspace": "w", "role": "r", "runtime": "shell",
             "container": "c", "mode": "task", "isolation": "clone", "state": "running",
             "agent_status": "blocked", "created_at": 1.0}  # fmt: skip
    record = SessionRecord.from_wire({**entry, "links": {"pr": [PR]}, "usage": None})
    assert record.links == {"pr": [PR]} and record.to_wire()["links"] == {"pr": [PR]}
    with pytest.raises(SpecError) as refused:
        SessionRecord.from_wire({**entry, "links": {"pr": ["https://x.test/\x1b[2J"]}})
    assert refused.value.field == "session.links.pr"


def _log(*lines: tuple[str, str]) -> str:
    return "".join(f"{stamp} {text}\n" for stamp, text in lines)


def test_a_task_log_is_read_once_across_reads_by_its_timestamps() -> None:
    """Each read asks from the last line's second (inclusive) and skips what it had read: a
    usage line counted once, a tag seen once, a line at the same second but later read."""
    first = _log(
        ("2026-11-29T10:00:00.1Z", '{"type":"system","subtype":"init"}'),
        ("2026-11-29T10:00:01.000000001Z", "working on it <jackin:pr>" + PR + "</jackin:pr>"),
    )
    second = first + _log(("2026-11-29T10:00:01.5Z", "<jackin:status>blocked</jackin:status>"))
    asked: list[Any] = []

    def logs_of(text: str) -> Any:
        def logs(since: int | None) -> str:
            asked.append(since)
            if since is None:
                return text
            # the engine answers from that second on: everything at or after it
            return "".join(row + "\n" for row in text.splitlines() if row >= "2026-11-29T10:00:01")

        return logs

    scan = observe.read_task_log(logs_of(first), "shell", None, lambda t: t)
    assert scan["last"] == ["2026-11-29T10:00:01", 1]
    assert observe.observed_fields(scan)["links"] == {"pr": [PR]}
    scan = json.loads(json.dumps(scan))  # as the host database keeps it
    again = observe.read_task_log(logs_of(second), "shell", scan, lambda t: t)
    assert asked == [None, 1795946401]  # 2026-11-29T10:00:01Z, whole seconds
    seen = observe.observed_fields(again)
    assert seen["observed_status"] == "blocked" and seen["links"] == {"pr": [PR]}
    assert again["last"] == ["2026-11-29T10:00:01", 500000000]


def test_secrets_are_redacted_before_parsing_so_no_link_carries_one() -> None:
    text = _log(("2026-11-29T10:00:00Z", "<jackin:link>https://x.test/?k=sekret</jackin:link>"))
    scan = observe.read_task_log(lambda since: text, "shell", None,
                                 lambda t: t.replace("sekret", "<redacted:KEY>"))  # fmt: skip
    assert observe.observed_fields(scan)["links"] is None


KEPT = st.one_of(
    st.none(),
    st.text(),
    st.dictionaries(st.text(), st.text()),
    st.fixed_dictionaries({"last": st.lists(st.one_of(st.text(), st.integers()))}),
    st.fixed_dictionaries({"observed": st.dictionaries(st.text(), st.text())}),
)


@given(KEPT)
def test_a_kept_scan_the_host_cannot_trust_is_never_fatal(scan: Any) -> None:
    fresh = observe.read_task_log(lambda since: "", "claude", scan, lambda t: t)
    fields = observe.observed_fields(fresh)
    assert fields["observed_status"] in (None, "working", "blocked", "done")
    observe.read_screen("", scan, lambda t: t)


def test_an_interactive_screen_adds_links_and_says_its_last_status() -> None:
    kept = {"observed": {"links": {"pr": [PR]}, "status": "blocked"}}
    screen = "<jackin:status>blocked</jackin:status>\n<jackin:status>working</jackin:status>\n"
    scan = observe.read_screen(screen + "<jackin:issue>https://x.test/i/1</jackin:issue>\n",
                               kept, lambda t: t)  # fmt: skip
    seen = observe.observed_fields(scan)
    assert seen == {"links": {"pr": [PR], "issue": ["https://x.test/i/1"]}, "usage": None,
                    "observed_status": "working"}  # fmt: skip


def test_the_status_file_its_hooks_write_outranks_the_screen_even_inside_an_open_fence() -> None:
    mark = observe.STATUS_FILE_MARK
    screen = "```\n<jackin:status>working</jackin:status>\n"  # a fence the agent left open
    hooked = observe.read_screen(screen + mark + "<jackin:status>blocked</jackin:status>\n",
                                 None, lambda t: t)  # fmt: skip
    assert observe.observed_fields(hooked)["observed_status"] == "blocked"
    # An empty or unreadable status file leaves the screen's word; so does no file at all.
    plain = "<jackin:status>done</jackin:status>\n"
    for tail in (mark, mark + "garbage\n", mark + "<jackin:status>asleep</jackin:status>\n", ""):
        scan = observe.read_screen(plain + tail, None, lambda t: t)
        assert observe.observed_fields(scan)["observed_status"] == "done", tail
    # The screen's own copy of the mark does not hide its tags: the host's mark comes last.
    forged = observe.read_screen(f"{mark}<jackin:pr>{PR}</jackin:pr>\n{mark}", None, lambda t: t)
    assert observe.observed_fields(forged)["links"] == {"pr": [PR]}


def test_the_status_shown_is_what_the_agent_said_only_while_it_runs() -> None:
    from agent_host.sessions import agent_status

    assert agent_status("running", "task", None) == "working"
    assert agent_status("running", "interactive", None) == "idle"
    assert agent_status("running", "interactive", "blocked") == "blocked"
    assert agent_status("running", "task", "nonsense") == "working"
    assert agent_status("exited", "task", "blocked") == "done"
    assert agent_status("crashed", "task", "working") == "unknown"


def test_the_roll_up_puts_whoever_needs_the_operator_first() -> None:
    assert rollup(["working", "idle", "blocked", "done"]) == "blocked"
    assert rollup(["working", "done"]) == "done"
    assert rollup(["idle", "working"]) == "working"
    assert rollup([]) == rollup([None, "bogus"]) == "unknown"


def test_table_cells_for_usage_and_links() -> None:
    assert tokens({"input_tokens": 1200, "output_tokens": 100, "cost_usd": 0.0412}) == "1.3k $0.04"
    assert tokens({"input_tokens": 12, "output_tokens": 3, "cost_usd": None}) == "15"
    assert tokens(None) == tokens("junk") == "-"
    assert first_link({"link": ["https://x.test/l"], "issue": ["https://x.test/i"]}) == (
        "https://x.test/i"
    )
    assert first_link({"pr": "not a list"}) is None and first_link(None) is None


def test_usage_sums_per_group_and_says_where_no_cost_was_reported() -> None:
    rows = [
        {"id": "a", "host": "h1", "created_at": 100.0,
         "usage": {"input_tokens": 10, "output_tokens": 5, "cost_usd": 0.5}},
        {"id": "b", "host": "h1", "created_at": 200.0,
         "usage": {"input_tokens": 1, "output_tokens": 1, "cost_usd": None}},
        {"id": "c", "host": "h2", "created_at": 300.0, "usage": None},
    ]  # fmt: skip
    by_host = {g["host"]: g for g in agents.usage_totals(rows, "host")}
    assert by_host["h1"]["input_tokens"] == 11 and by_host["h1"]["cost_usd"] == 0.5
    assert by_host["h1"]["sessions_without_cost"] == 1 and by_host["h1"]["sessions"] == 2
    assert by_host["h2"]["cost_usd"] is None and by_host["h2"]["input_tokens"] == 0
    recent = agents.usage_totals(rows, "host", since=150.0)
    assert [(g["host"], g["sessions"]) for g in recent] == [("h1", 1), ("h2", 1)]


def test_since_takes_a_duration_and_refuses_anything_else() -> None:
    assert agents.since_seconds("90m") == 5400 and agents.since_seconds("2w") == 1209600
    for bad in ("", "7", "7 days", "-1d", "1y", "1d;rm"):
        with pytest.raises(agents.UsageError):
            agents.since_seconds(bad)


def test_open_hands_over_only_a_checked_url() -> None:
    links = {"pr": ["javascript:alert(1)", PR], "issue": ["https://x.test/i"]}
    assert agents.pick_link(links, None) == PR
    assert agents.pick_link(links, "issue") == "https://x.test/i"
    assert agents.pick_link(links, "repo") is None
    assert agents.pick_link({"pr": ["file:///etc/passwd"]}, None) is None


def test_the_cli_knows_the_wires_kinds() -> None:
    assert agents.LINK_KINDS == wire.LINK_KINDS and agents.USAGE_COUNTS == wire.USAGE_COUNTS


# -- what the security review found (each a class of input, not one case) --------------------
STAMP = "2026-11-29T10:00:00.5Z "


def test_only_the_engines_newline_ends_a_line_so_no_stamp_can_be_forged() -> None:
    """\\r, U+2028 and friends are content: a tool result holding them stays one JSON event
    (its tag ignored), the result after it counts, and text after them cannot set the place."""
    said = "<jackin:pr>https://evil.test/pull/9</jackin:pr> see\u2028more\r2099-01-01T00:00:00Z "
    tool = {"type": "user", "message": {"content": [{"type": "tool_result", "content": said}]}}
    result = {"type": "result", "result": "ok", "total_cost_usd": 0.5,
              "usage": {"input_tokens": 3, "output_tokens": 4}}  # fmt: skip
    text = STAMP + json.dumps(tool, ensure_ascii=False) + "\n"
    text += "2026-11-29T10:00:01Z " + json.dumps(result) + "\n"
    scan = observe.read_task_log(lambda since: text, "claude", None, lambda t: t)
    seen = observe.observed_fields(scan)
    assert seen["links"] is None and seen["observed_status"] == "done"
    assert seen["usage"] is not None and seen["usage"]["cost_usd"] == 0.5
    assert scan["last"] == ["2026-11-29T10:00:01", 0]


def test_a_line_docker_split_into_partial_records_is_read_once_and_whole() -> None:
    """The engine stamps each 16 KB piece of a long line; the pieces' stamps are removed, and a
    line whose end has not come yet is left for the next read, never half-parsed."""
    secret = "ghp_S3cr3tT0kenValue1234567890"
    head = "x" * (observe.PARTIAL_RECORD - 40) + "<jackin:link>https://a.test/?k=ghp_S3cr3tT0"
    rest = "kenValue1234567890</jackin:link> <jackin:pr>" + PR + "</jackin:pr>"
    first = STAMP + head  # the rest not written yet
    both = first + "2026-11-29T10:00:00.6Z " + rest + "\n"

    def redact(text: str) -> str:
        return text.replace(secret, "<redacted:TOKEN>")

    scan = observe.read_task_log(lambda since: first, "shell", None, redact)
    assert scan["last"] is None and "S3cr3t" not in json.dumps(scan)  # nothing kept of it
    scan = observe.read_task_log(lambda since: both, "shell", scan, redact)
    assert observe.observed_fields(scan)["links"] == {"pr": [PR]}  # the secret's link dropped
    assert scan["last"] == ["2026-11-29T10:00:00", 500000000]


def test_a_secret_escaped_past_redaction_never_leaves_in_a_link() -> None:
    secret = "ghp_S3cr3t"
    escaped = {"type": "result", "result": "<jackin:pr>https://e.test/?k=\\u0067hp_S3cr3t"
               "</jackin:pr> <jackin:issue>https://e.test/%67hp_S3cr3t</jackin:issue>"}  # fmt: skip
    text = STAMP + json.dumps(escaped).replace("\\\\u0067", "\\u0067") + "\n"
    scan = observe.read_task_log(lambda since: text, "claude", None,
                                 lambda t: t.replace(secret, "<redacted:T>"))  # fmt: skip
    assert observe.observed_fields(scan)["links"] is None


def test_a_session_started_again_is_read_again() -> None:
    kept = {"last": ["2026-11-29T10:00:00", 0], "final": True, "observed": {"status": "done"}}
    again = observe.restarted(kept)
    assert again is not None and again["final"] is False and again["last"] == kept["last"]
    assert observe.restarted("junk") is None


ODD_SCANS = [{"observed": "x"}, [1], "s", {"observed": {"links": 3}},
             {"observed": {"links": {"pr": "https://x.test/"}}}, None]  # fmt: skip


@pytest.mark.parametrize("scan", ODD_SCANS)
def test_a_kept_scan_of_any_shape_reads_as_nothing(scan: Any) -> None:
    assert observe.kept_status(scan) is None
    fields = observe.observed_fields(scan)  # type: ignore[arg-type]
    assert fields["links"] is None and fields["usage"] is None
