"""The agent output parser (agent_host/agent_events.py): tags, status and usage per runtime, and
that no hostile output makes it raise, grow, or depend on how the output was chunked."""

from __future__ import annotations

import json
import math
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_host import agent_events
from agent_host.agent_events import STATUSES, TAG_KINDS, Parser, scan_screen, without_code_spans
from agent_host.wire import LINK_KINDS, MAX_LINKS, MAX_URL, valid_url

PR = "https://github.com/acme/app/pull/7"
ISSUE = "https://github.com/acme/app/issues/3"
RUNTIMES = ("claude", "codex", "gemini", "opencode", "amp", "shell", "something-else")


def tag(kind: str, value: str) -> str:
    return f"<jackin:{kind}>{value}</jackin:{kind}>"


def lines(*events: Any) -> str:
    """Each event as one line: dicts as JSON, strings as they are."""
    return "".join((e if isinstance(e, str) else json.dumps(e)) + "\n" for e in events)


def parse(runtime: str, *events: Any) -> dict[str, Any]:
    parser = Parser(runtime)
    parser.feed(lines(*events))
    return parser.observation()


def assistant(*blocks: dict[str, Any], msg_id: str = "m1", usage: Any = None) -> dict[str, Any]:
    message: dict[str, Any] = {"id": msg_id, "content": list(blocks)}
    if usage is not None:
        message["usage"] = usage
    return {"type": "assistant", "message": message}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def claude_usage(inp: int, out: int, read: int = 0, write: int = 0) -> dict[str, int]:
    return {
        "input_tokens": inp,
        "output_tokens": out,
        "cache_read_input_tokens": read,
        "cache_creation_input_tokens": write,
    }


def usage(inp: int, out: int, read: int = 0, write: int = 0, cost: float | None = None) -> Any:
    return {
        "input_tokens": inp,
        "output_tokens": out,
        "cache_read_tokens": read,
        "cache_write_tokens": write,
        "cost_usd": cost,
    }


# -- valid_url ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        PR,
        "http://example.com",
        "https://example.com:8443/a?b=c&d=e#f",
        "https://xn--r8jz45g.jp/%E3%83%91",  # an internationalised name comes as punycode
        "https://example.com/a{b}|c^d~[e]",
        "https://h/" + "a" * (MAX_URL - len("https://h/")),
    ],
)
def test_valid_url_accepts(url: str) -> None:
    assert valid_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://user@host.example/x",  # userinfo: the operator would read the wrong host
        "https://github.com@evil.test/x",
        "http://x.test:+443/",  # ports Python 3.9's urlsplit takes and 3.11's refuses
        "http://x.test:1_0/",
        "http://[zzz]/",
        "https://x.test:99999/",
        "HTTPS://x.test/",
        "",
        "github.com/acme/app",
        "ftp://example.com/x",
        "javascript:alert(1)",
        "file:///etc/passwd",
        "HTTPS://example.com",  # the scheme must be written in lower case
        "https://",
        "https:///path",
        "http://:80/",
        "https://example.com:port/",
        "https://[::1",
        "https://example.com/a b",
        "https://example.com/a\tb",
        "https://example.com/\x1b[31m",
        "https://example.com/\u202egnp.exe",
        "https://exa\u200bmple.com/",
        "https://example.com/\u2028",
        "https://example.com/\x7f",
        "https://example.com/\ud800",
        "https://例え.jp/",
        "https://example.com/é",
        "https://example.com/\xa0",
        "https://example.com/\n",
        "https://example.com\\@evil.com",
        'https://example.com/"onclick',
        "https://example.com/'x",
        "https://example.com/<script>",
        "https://example.com/`id`",
        "https://h/" + "a" * (MAX_URL - len("https://h/") + 1),
    ],
)
def test_valid_url_refuses(url: str) -> None:
    assert not valid_url(url)


def test_valid_url_refuses_non_strings() -> None:
    for value in (None, 1, b"https://example.com", ["https://example.com"]):
        assert not valid_url(value)  # type: ignore[arg-type]


# -- the tag protocol --------------------------------------------------------------------------
def test_every_kind_of_tag_from_plain_text() -> None:
    obs = parse(
        "shell",
        "opened " + tag("pr", PR) + " for " + tag("issue", ISSUE),
        tag("repo", " https://github.com/acme/app ") + tag("link", "https://docs.example/x"),
        tag("status", " blocked "),
    )
    assert obs == {
        "status": "blocked",
        "links": {
            "pr": [PR],
            "issue": [ISSUE],
            "repo": ["https://github.com/acme/app"],
            "link": ["https://docs.example/x"],
        },
        "usage": None,
    }
    assert set(TAG_KINDS) == set(LINK_KINDS) | {"status"}


@pytest.mark.parametrize(
    "line",
    [
        f"<jackin:pr>{PR}</jackin:issue>",  # close of another kind
        f"<jackin:PR>{PR}</jackin:PR>",
        f"<jackin:commit>{PR}</jackin:commit>",
        f"<jackin:pr>{PR}",
        "<jackin:pr>not a url</jackin:pr>",
        "<jackin:pr>https://example.com/<b></jackin:pr>",
        tag("pr", "https://example.com/\x1b[0m"),
        tag("status", "finished"),
        tag("status", "DONE"),
        tag("status", ""),
    ],
)
def test_malformed_tags_are_dropped(line: str) -> None:
    assert parse("shell", line) == {"status": None, "links": {}, "usage": None}


def test_a_tag_spans_one_line_only() -> None:
    assert parse("shell", "<jackin:pr>", PR, "</jackin:pr>")["links"] == {}
    obs = parse("claude", assistant(text("<jackin:status>\ndone</jackin:status>")))
    assert obs["status"] == "working"


def test_links_are_deduplicated_in_first_seen_order_and_capped() -> None:
    urls = [f"https://example.com/{i}" for i in range(MAX_LINKS + 5)]
    obs = parse("shell", tag("link", urls[1]), tag("link", urls[0]), tag("link", urls[1]))
    assert obs["links"] == {"link": [urls[1], urls[0]]}
    obs = parse("shell", *[tag("link", u) for u in urls], tag("pr", PR))
    assert obs["links"] == {"link": urls[:MAX_LINKS], "pr": [PR]}


def test_status_is_the_last_valid_tag() -> None:
    obs = parse("amp", tag("status", "done") + tag("status", "working"), tag("status", "bogus"))
    assert obs["status"] == "working"


def test_fenced_code_is_ignored_and_fence_state_spans_feeds() -> None:
    parser = Parser("shell")
    parser.feed("```python\n" + tag("pr", PR) + "\n")
    assert parser.to_state()["fence"] is True
    parser = Parser("shell", parser.to_state())
    parser.feed("~~~\n")  # any fence line toggles the one fence bool
    parser.feed(tag("status", "done") + "\n")
    assert parser.observation() == {"status": "done", "links": {}, "usage": None}
    obs = parse("shell", "   ~~~", tag("status", "done"), "\t```", tag("status", "blocked"))
    assert obs["status"] == "blocked"
    # A fence line carries no tag itself.
    assert parse("shell", "```" + tag("status", "done"))["status"] is None


def test_inline_code_is_ignored() -> None:
    obs = parse(
        "shell",
        "print `" + tag("status", "done") + "` please",
        "``a ` " + tag("pr", PR) + " ``",
        "a lone ` backtick " + tag("issue", ISSUE),
        "<jackin:status>`x`done</jackin:status>",  # a span inside a tag breaks it
    )
    assert obs == {"status": None, "links": {"issue": [ISSUE]}, "usage": None}


def test_without_code_spans() -> None:
    assert without_code_spans("a `b` c ``d`e`` f") == "a \0 c \0 f"
    assert without_code_spans("``a` b") == "``a` b"
    assert without_code_spans("`a``b`") == "\0"
    assert without_code_spans("no code") == "no code"


def test_quoted_lines_are_ignored() -> None:
    obs = parse(
        "shell", "> " + tag("status", "done"), "   >" + tag("pr", PR), "a > " + tag("pr", PR)
    )
    assert obs == {"status": None, "links": {"pr": [PR]}, "usage": None}


def test_a_line_split_across_feeds_is_one_line() -> None:
    whole = "see " + tag("pr", PR) + "\r\n"
    for cut in range(len(whole) + 1):
        parser = Parser("shell")
        parser.feed(whole[:cut])
        parser.feed(whole[cut:])
        assert parser.observation()["links"] == {"pr": [PR]}, cut


def test_the_last_line_counts_once_its_newline_arrives() -> None:
    parser = Parser("shell")
    parser.feed(tag("status", "done"))
    assert parser.observation()["status"] is None
    assert parser.to_state()["pending"] == tag("status", "done")
    parser.feed("\n")
    assert parser.observation()["status"] == "done"


def test_a_line_longer_than_max_pending_is_dropped_whole() -> None:
    long_line = "x" * 60 + tag("status", "done")  # its tail, a tag, must not count
    with mock.patch.object(agent_events, "MAX_PENDING", 48):
        for chunk in (1, 7, 1000):
            parser = Parser("shell")
            data = long_line + "\n" + tag("status", "blocked") + "x\n" + long_line
            for i in range(0, len(data), chunk):
                parser.feed(data[i : i + chunk])
                assert len(parser.to_state()["pending"]) <= 48
            assert parser.observation()["status"] == "blocked"
            assert parser.to_state()["skip"] is True
            parser.feed("tail\n" + tag("status", "done") + "\n")
            assert parser.observation()["status"] == "done"
        parser = Parser("shell")
        parser.feed("x" * 60)
        parser.feed(tag("status", "done") + "\n" + tag("link", "https://e.x/") + "\n")
        assert parser.observation()["links"] == {"link": ["https://e.x/"]}
        assert parser.observation()["status"] is None


def test_a_long_line_built_from_many_small_feeds_stays_cheap() -> None:
    parser = Parser("shell")
    for _ in range(10000):
        parser.feed("x" * 64)
    parser.feed(tag("pr", PR) + "\n")
    assert parser.observation()["links"] == {"pr": [PR]}


def test_hostile_lines_are_linear() -> None:
    # Unclosed backtick runs of every length and unclosed tags: quadratic scans would hang here.
    runs = "".join("`" * n + "a" for n in range(1, 600))
    opens = "<jackin:pr>" * 20000
    obs = parse("shell", runs + tag("pr", PR), opens + tag("issue", ISSUE))
    assert obs["links"] == {"pr": [PR], "issue": [ISSUE]}


# -- claude ------------------------------------------------------------------------------------
def test_claude_tags_come_from_assistant_text_and_result_only() -> None:
    tool_result = {
        "type": "user",
        "message": {
            "role": "user",
            "content": [
                {"type": "tool_result", "content": tag("pr", "https://example.com/quoted")},
                {"type": "text", "text": tag("issue", "https://example.com/user")},
            ],
        },
    }
    obs = parse(
        "claude",
        {"type": "system", "subtype": "init", "cwd": tag("link", "https://example.com/sys")},
        assistant(text("opened " + tag("pr", PR))),
        assistant({"type": "tool_use", "name": "Bash", "input": {"command": tag("repo", PR)}}),
        tool_result,
        {"type": "result", "subtype": "success", "result": "done: " + tag("issue", ISSUE)},
    )
    assert obs["links"] == {"pr": [PR], "issue": [ISSUE]}


def test_claude_thinking_is_not_the_agent_speaking() -> None:
    obs = parse("claude", assistant({"type": "thinking", "thinking": tag("status", "done")}))
    assert obs["status"] == "working"


def test_claude_non_json_lines_are_plain_text() -> None:
    obs = parse(
        "claude",
        "warning: " + tag("pr", PR),
        '{"type": "assistant", "message": ' + tag("issue", ISSUE),  # broken JSON
        json.dumps(tag("status", "blocked")),  # JSON, but not an object
    )
    assert obs == {"status": "blocked", "links": {"pr": [PR], "issue": [ISSUE]}, "usage": None}


def test_claude_fences_are_per_text_block() -> None:
    obs = parse(
        "claude",
        assistant(text("```\nunclosed " + tag("pr", "https://example.com/in-fence"))),
        assistant(text(tag("pr", PR))),
        assistant(text("`" + tag("issue", ISSUE) + "`\n> " + tag("status", "done"))),
    )
    assert obs["links"] == {"pr": [PR]}
    assert obs["status"] == "working"


def test_claude_text_blocks_ignore_the_streams_fence() -> None:
    obs = parse("claude", "```", assistant(text(tag("pr", PR))), tag("issue", ISSUE), "```")
    assert obs["links"] == {"pr": [PR]}


def test_claude_status_transitions() -> None:
    parser = Parser("claude")
    assert parser.observation()["status"] is None
    steps = [
        ({"type": "system", "subtype": "init"}, "working"),
        (assistant({"type": "tool_use", "name": "Bash", "input": {}}), "working"),
        (assistant({"type": "tool_use", "name": "AskUserQuestion", "input": {}}), "blocked"),
        ({"type": "system", "subtype": "compact_boundary"}, "blocked"),
        ({"type": "stream_event", "event": {}}, "blocked"),
        ({"type": "user", "message": {"content": [{"type": "tool_result"}]}}, "working"),
        (assistant(text("waiting " + tag("status", "blocked"))), "blocked"),
        (assistant(text("back at it")), "working"),
        ({"type": "result", "subtype": "success", "result": "all good"}, "done"),
        (assistant(text("a new turn")), "working"),
        ({"type": "result", "subtype": "error_max_turns", "is_error": True}, "done"),
    ]
    for event, status in steps:
        parser.feed(lines(event))
        assert parser.observation()["status"] == status, event


def test_claude_tags_within_one_event_apply_in_order() -> None:
    event = assistant(
        text(tag("status", "done")), {"type": "tool_use", "name": "AskUserQuestion", "input": {}}
    )
    assert parse("claude", event)["status"] == "blocked"
    event = assistant(
        {"type": "tool_use", "name": "AskUserQuestion", "input": {}}, text(tag("status", "done"))
    )
    assert parse("claude", event)["status"] == "done"


def test_claude_result_status_tag_overrides_done() -> None:
    obs = parse("claude", {"type": "result", "result": "need a key " + tag("status", "blocked")})
    assert obs["status"] == "blocked"


def test_claude_usage_counts_each_message_id_once() -> None:
    obs = parse(
        "claude",
        assistant(text("a"), msg_id="m1", usage=claude_usage(10, 1, 100, 5)),
        assistant(
            {"type": "tool_use", "name": "Bash"}, msg_id="m1", usage=claude_usage(10, 1, 100, 5)
        ),
        assistant(text("b"), msg_id="m2", usage=claude_usage(20, 2)),
        assistant(text("a again"), msg_id="m1", usage=claude_usage(10, 1, 100, 5)),
    )
    assert obs["usage"] == usage(30, 3, 100, 5)


def test_claude_usage_of_one_message_takes_the_highest_of_each_field() -> None:
    obs = parse(
        "claude",
        assistant(text("a"), msg_id="m1", usage=claude_usage(10, 1)),
        assistant(text("b"), msg_id="m1", usage=claude_usage(10, 40)),
        assistant(text("c"), msg_id="m1", usage={"output_tokens": 12}),
    )
    assert obs["usage"] == usage(10, 40)


def test_claude_usage_without_an_id_counts_every_time() -> None:
    event = {"type": "assistant", "message": {"content": [], "usage": claude_usage(1, 2)}}
    assert parse("claude", event, event)["usage"] == usage(2, 4)


def test_claude_many_message_ids_stay_bounded_and_counted() -> None:
    events = [assistant(msg_id=f"m{i}", usage=claude_usage(1, 1)) for i in range(100)]
    parser = Parser("claude")
    parser.feed(lines(*events))
    assert parser.observation()["usage"] == usage(100, 100)
    assert len(parser.to_state()["msgs"]) == agent_events.MAX_MSG_IDS


def test_claude_result_is_authoritative_and_results_add_up() -> None:
    parser = Parser("claude")
    parser.feed(lines(assistant(msg_id="m1", usage=claude_usage(10, 1))))
    assert parser.observation()["usage"] == usage(10, 1)
    parser.feed(
        lines({"type": "result", "usage": claude_usage(50, 20, 7, 3), "total_cost_usd": 0.25})
    )
    assert parser.observation()["usage"] == usage(50, 20, 7, 3, 0.25)
    # A new run: its assistant usage adds on top until its own result replaces it.
    parser.feed(lines(assistant(msg_id="m2", usage=claude_usage(5, 5))))
    parser.feed(lines(assistant(msg_id="m1", usage=claude_usage(999, 999))))  # already covered
    assert parser.observation()["usage"] == usage(55, 25, 7, 3, 0.25)
    parser.feed(lines({"type": "result", "usage": claude_usage(6, 6), "total_cost_usd": 0.5}))
    assert parser.observation()["usage"] == usage(56, 26, 7, 3, 0.75)


def test_claude_result_without_usage_keeps_the_assistant_usage() -> None:
    obs = parse(
        "claude",
        assistant(msg_id="m1", usage=claude_usage(10, 1)),
        {"type": "result", "usage": "n/a", "total_cost_usd": 0.1},
        assistant(msg_id="m2", usage=claude_usage(1, 1)),
    )
    assert obs["usage"] == usage(11, 2, cost=0.1)


def test_totals_stop_at_the_largest_exact_count_and_cost() -> None:
    big = agent_events.MAX_TOKENS
    results = [{"type": "result", "usage": claude_usage(big, 1), "total_cost_usd": 9e8}] * 3
    parser = Parser("claude")
    parser.feed(lines(*results))
    assert parser.observation()["usage"] == usage(big, 3, cost=agent_events.MAX_COST)
    assert parser.to_state()["total"][0] == big
    assert Parser("claude", parser.to_state()).to_state() == parser.to_state()
    assert parse("claude", {"type": "result", "usage": claude_usage(big + 1, 1)})["usage"] == usage(
        0, 1
    )


def test_claude_cost_only() -> None:
    assert parse("claude", {"type": "result", "total_cost_usd": 0})["usage"] == usage(0, 0, cost=0)


@pytest.mark.parametrize(
    "bad",
    [
        [1, 2],
        "10",
        {"input_tokens": "10", "output_tokens": -1},
        {"input_tokens": True, "output_tokens": False},
        {"input_tokens": 1.5, "output_tokens": 10**20},
        {"input_tokens": None, "output_tokens": [3]},
    ],
)
def test_claude_hostile_usage_is_ignored(bad: Any) -> None:
    obs = parse("claude", assistant(usage=bad), {"type": "result", "usage": bad})
    assert obs["usage"] is None


def test_claude_hostile_counts_are_ignored_one_by_one() -> None:
    bad = {"input_tokens": 7, "output_tokens": -3, "cache_read_input_tokens": True}
    assert parse("claude", {"type": "result", "usage": bad})["usage"] == usage(7, 0)


@pytest.mark.parametrize("cost", ["0.5", -0.5, True, "NaN", 1e300, 10**400, [1]])
def test_claude_hostile_costs_are_ignored(cost: Any) -> None:
    obs = parse("claude", {"type": "result", "usage": claude_usage(1, 1), "total_cost_usd": cost})
    assert obs["usage"] == usage(1, 1)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_claude_non_finite_costs_are_ignored(literal: str) -> None:
    line = '{"type": "result", "usage": {"input_tokens": 1}, "total_cost_usd": ' + literal + "}"
    assert parse("claude", line)["usage"] == usage(1, 0)


@pytest.mark.parametrize(
    "event",
    [
        {"type": "assistant"},
        {"type": "assistant", "message": "hi"},
        {"type": "assistant", "message": {"content": "plain " + tag("pr", PR)}},
        {"type": "assistant", "message": {"content": [None, 1, "x", {"type": "text", "text": 5}]}},
        {"type": "assistant", "message": {"content": {"type": "text"}, "id": ["x"]}},
        {"type": "result", "result": ["x"], "usage": None},
        {"type": ["assistant"]},
        {"type": None, "message": {"content": [{"type": "text", "text": tag("pr", PR)}]}},
    ],
)
def test_claude_malformed_events_do_not_raise(event: Any) -> None:
    obs = parse("claude", event)
    assert obs["links"] in ({}, {"pr": [PR]})


# -- codex -------------------------------------------------------------------------------------
def test_codex_new_generation() -> None:
    parser = Parser("codex")
    parser.feed(lines({"type": "thread.started", "thread_id": "t"}, {"type": "turn.started"}))
    assert parser.observation() == {"status": "working", "links": {}, "usage": None}
    parser.feed(
        lines(
            {"type": "item.completed", "item": {"type": "reasoning", "text": tag("pr", ISSUE)}},
            {
                "type": "item.completed",
                "item": {"type": "command_execution", "aggregated_output": tag("pr", ISSUE)},
            },
            {"type": "item.started", "item": {"type": "agent_message", "text": tag("pr", ISSUE)}},
            {"type": "item.completed", "item": {"type": "agent_message", "text": tag("pr", PR)}},
            {"type": "turn.completed", "usage": {"input_tokens": 100, "cached_input_tokens": 40,
                                                 "output_tokens": 9}},
        )
    )  # fmt: skip
    assert parser.observation() == {
        "status": "done",
        "links": {"pr": [PR]},
        "usage": usage(60, 9, 40),  # codex's input counts its cached tokens: not twice here
    }
    parser.feed(lines({"type": "turn.started"}))
    assert parser.observation()["status"] == "working"
    parser.feed(lines({"type": "turn.completed", "usage": {"input_tokens": 1, "output_tokens": 1}}))
    assert parser.observation()["usage"] == usage(61, 10, 40)
    parser.feed(lines({"type": "turn.started"}, {"type": "turn.failed", "error": {"message": "x"}}))
    assert parser.observation()["status"] == "done"
    assert parser.observation()["usage"]["cost_usd"] is None


def test_codex_early_item_format() -> None:
    item = {"id": "item_3", "item_type": "assistant_message", "text": tag("issue", ISSUE)}
    obs = parse("codex", {"type": "item.completed", "item": item})
    assert obs["links"] == {"issue": [ISSUE]}


def test_codex_old_generation() -> None:
    parser = Parser("codex")
    parser.feed(lines({"id": "0", "msg": {"type": "task_started"}}))
    assert parser.observation()["status"] == "working"
    parser.feed(
        lines(
            {"id": "0", "msg": {"type": "agent_reasoning", "text": tag("pr", ISSUE)}},
            {"id": "0", "msg": {"type": "agent_message", "message": "ok " + tag("pr", PR)}},
            {"id": "0", "msg": {"type": "token_count", "input_tokens": 10, "output_tokens": 2,
                                "cached_input_tokens": 4}},
            {"id": "0", "msg": {"type": "token_count", "input_tokens": 5, "output_tokens": 1}},
        )
    )  # fmt: skip
    assert parser.observation() == {
        "status": "working",
        "links": {"pr": [PR]},
        "usage": usage(11, 3, 4),
    }
    parser.feed(lines({"id": "0", "msg": {"type": "task_complete", "last_agent_message": "x"}}))
    assert parser.observation()["status"] == "done"


def test_codex_old_generation_cumulative_totals_replace() -> None:
    def count(inp: int, out: int) -> dict[str, Any]:
        info = {"total_token_usage": {"input_tokens": inp, "cached_input_tokens": 1,
                                      "output_tokens": out, "total_tokens": inp + out},
                "last_token_usage": {"input_tokens": 1, "output_tokens": 1}}  # fmt: skip
        return {"id": "1", "msg": {"type": "token_count", "info": info}}

    obs = parse(
        "codex", count(100, 10), count(250, 30), {"msg": {"type": "token_count", "info": None}}
    )
    assert obs["usage"] == usage(249, 30, 1)


def test_codex_hostile_usage_is_ignored() -> None:
    obs = parse(
        "codex",
        {"type": "turn.completed", "usage": [1, 2, 3]},
        {"type": "turn.completed", "usage": {"input_tokens": "1", "output_tokens": -1}},
        {"msg": {"type": "token_count", "info": {"total_token_usage": "all"}}},
        {"msg": {"type": "token_count", "info": {"total_token_usage": {"input_tokens": 1.0}}}},
        {"msg": "token_count", "type": "turn.started"},
        {"type": "item.completed", "item": ["agent_message"]},
    )
    assert obs == {"status": "working", "links": {}, "usage": None}


# -- gemini, opencode, plain runtimes -----------------------------------------------------------
@pytest.mark.parametrize("runtime", ["gemini", "opencode"])
def test_json_text_fields(runtime: str) -> None:
    obs = parse(
        runtime,
        {"type": "message", "role": "user", "content": "print " + tag("status", "done")},
        {"type": "message", "message": {"role": "user", "text": tag("link", "https://u.example")}},
        {"type": "message", "role": "assistant", "content": tag("pr", PR), "delta": True},
        {"type": "text", "part": {"type": "text", "text": tag("issue", ISSUE)}},
        {"type": "text", "part": {"type": "reasoning", "text": tag("status", "done")}},
        {"type": "tool_result", "output": tag("repo", "https://example.com/tool")},
        {"type": "tool_use", "part": {"state": {"output": tag("repo", "https://example.com/x")}}},
        {"response": tag("status", "blocked"), "stats": {"result": 3}},
        "plain " + tag("link", "https://docs.example"),
        {"type": "text", "part": {"text": "```\n" + tag("status", "done")}},
    )
    assert obs == {
        "status": "blocked",
        "links": {"pr": [PR], "issue": [ISSUE], "link": ["https://docs.example"]},
        "usage": None,
    }


@pytest.mark.parametrize("runtime", ["shell", "amp", "unknown-agent"])
def test_other_runtimes_read_plain_text(runtime: str) -> None:
    obs = parse(
        runtime,
        json.dumps({"type": "result", "result": tag("pr", PR), "total_cost_usd": 1}),
        json.dumps({"type": "turn.completed", "usage": {"input_tokens": 5}}),
    )
    assert obs == {"status": None, "links": {"pr": [PR]}, "usage": None}


# -- scan_screen -------------------------------------------------------------------------------
def test_scan_screen() -> None:
    screen = "\n".join(
        [
            "> when done print <jackin:status>done</jackin:status> and the PR link",
            "⏺ Opened " + tag("pr", PR),
            "  " + tag("status", "working"),
            "⏺ Waiting for you: " + tag("status", "blocked"),
            "  `" + tag("status", "done") + "`",
            "─" * 40,
            "> ",
        ]
    )
    assert scan_screen(screen) == {"status": "blocked", "links": {"pr": [PR]}, "usage": None}
    assert scan_screen(tag("status", "done")) == {"status": "done", "links": {}, "usage": None}
    assert scan_screen("")["status"] is None


# -- state -------------------------------------------------------------------------------------
def test_state_resumes_exactly() -> None:
    data = lines(
        assistant(text("```\n" + tag("pr", ISSUE)), msg_id="m1", usage=claude_usage(3, 4)),
        assistant(text(tag("pr", PR)), msg_id="m1", usage=claude_usage(3, 4)),
        {"type": "result", "usage": claude_usage(9, 9), "total_cost_usd": 0.125},
        assistant(text("x"), msg_id="m1", usage=claude_usage(100, 100)),
    )
    whole = Parser("claude")
    whole.feed(data)
    for cut in range(0, len(data), 17):
        first = Parser("claude")
        first.feed(data[:cut])
        state = json.loads(json.dumps(first.to_state()))
        second = Parser("claude", state)
        second.feed(data[cut:])
        assert second.observation() == whole.observation()
        assert second.to_state() == whole.to_state()


def good_state() -> dict[str, Any]:
    parser = Parser("claude")
    parser.feed(lines(assistant(text(tag("pr", PR)), usage=claude_usage(1, 2))) + "```")
    return parser.to_state()


@pytest.mark.parametrize(
    "change",
    [
        {"v": 0},
        {"v": 2},
        {"runtime": "codex"},
        {"pending": 5},
        {"pending": "x" * (agent_events.MAX_PENDING + 1)},
        {"skip": True},  # skipping while holding a pending line
        {"fence": "yes"},
        {"seen": 1},
        {"status": "idle"},
        {"status": ["done"]},
        {"links": {"pr": [PR]}},
        {"links": {"pr": [PR, PR], "issue": [], "repo": [], "link": []}},
        {"links": {"pr": ["javascript:x"], "issue": [], "repo": [], "link": []}},
        {"links": {"pr": [[PR]], "issue": [], "repo": [], "link": []}},
        {"links": {"pr": [PR] * (MAX_LINKS + 1), "issue": [], "repo": [], "link": []}},
        {"total": [1, 2, 3]},
        {"total": [1, 2, 3, -4]},
        {"total": [1, 2, 3, True]},
        {"total": [1, 2, 3, agent_events.MAX_TOKENS + 1]},
        {"open": "0000"},
        {"cost": -1.0},
        {"cost": float("nan")},
        {"cost": "0.5"},
        {"msgs": [["m1"]]},
        {"msgs": [["m1", [1, 1, 1, 1]], ["m1", None]]},
        {"msgs": [[{"id": 1}, None]]},
        {"msgs": [["x" * 500, None]]},
        {"msgs": [[f"m{i}", None] for i in range(agent_events.MAX_MSG_IDS + 1)]},
        {"msgs": [["m1", [1, "2", 3, 4]]]},
    ],
)
def test_a_malformed_state_is_ignored(change: dict[str, Any]) -> None:
    state = good_state()
    assert Parser("claude", state).to_state() == state  # the unchanged state is taken
    state.update(change)
    parser = Parser("claude", state)
    assert parser.to_state() == Parser("claude").to_state()
    assert parser.observation() == {"status": None, "links": {}, "usage": None}


@pytest.mark.parametrize(
    "state", [{}, [], "state", None, 7, {"v": 1}, {"v": 1, "runtime": "claude"}]
)
def test_a_state_of_the_wrong_shape_is_ignored(state: Any) -> None:
    assert Parser("claude", state).to_state() == Parser("claude").to_state()


def test_missing_keys_are_malformed() -> None:
    for key in good_state():
        state = good_state()
        del state[key]
        assert Parser("claude", state).to_state() == Parser("claude").to_state(), key


# -- hostile input -----------------------------------------------------------------------------
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_hostile_lines_do_not_raise(runtime: str) -> None:
    parser = Parser(runtime)
    parser.feed("[" * 200000 + "\n")
    parser.feed('{"a":' * 200000 + "\n")
    parser.feed('{"type": "result", "usage": {"input_tokens": %s}}\n' % ("9" * 5000))
    parser.feed("{" + "\x00\ud800\u202e" * 10 + "}\n")
    parser.feed("\r\r\n\n\x1b[2J" + tag("status", "done") + "\n")
    obs = parser.observation()
    assert obs["status"] == "done"
    json.dumps(obs, allow_nan=False)


FRAGMENTS = [
    tag("pr", PR),
    tag("issue", ISSUE),
    tag("link", "https://example.com/%d"),
    tag("status", "done"),
    tag("status", "blocked"),
    tag("status", "working"),
    tag("pr", "javascript:alert(1)"),
    "<jackin:pr>",
    "</jackin:pr>",
    "<jackin:",
    "```",
    "~~~",
    "`",
    "``",
    ">",
    " ",
    "\n",
    "\r",
    "\r\n",
    "{",
    "}",
    '"',
    "\\",
    "\x1b",
    "é",
    "text",
    "x" * 30,
    json.dumps({"type": "system", "subtype": "init"}),
    json.dumps(assistant(text("```\n" + tag("pr", PR)), msg_id="a", usage=claude_usage(1, 2))),
    json.dumps(assistant(text(tag("status", "done")), msg_id="b", usage=claude_usage(5, 1, 2))),
    json.dumps(assistant({"type": "tool_use", "name": "AskUserQuestion"}, msg_id="c")),
    json.dumps({"type": "user", "message": {"content": [{"type": "tool_result"}]}}),
    json.dumps(
        {
            "type": "result",
            "result": tag("issue", ISSUE),
            "usage": claude_usage(7, 7),
            "total_cost_usd": 0.1,
        }
    ),
    json.dumps({"type": "turn.started"}),
    json.dumps({"type": "turn.completed", "usage": {"input_tokens": 3, "output_tokens": 2}}),
    json.dumps(
        {"type": "item.completed", "item": {"type": "agent_message", "text": tag("pr", PR)}}
    ),
    json.dumps(
        {"msg": {"type": "token_count", "info": {"total_token_usage": {"input_tokens": 8}}}}
    ),
    json.dumps({"msg": {"type": "token_count", "input_tokens": 2, "output_tokens": 2}}),
    json.dumps({"msg": {"type": "agent_message", "message": tag("status", "blocked")}}),
    json.dumps(
        {"type": "message", "role": "assistant", "content": tag("link", "https://g.example")}
    ),
]

texts = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=8)), max_size=40).map(
    "".join
)


@st.composite
def split_text(draw: Any) -> list[str]:
    data = draw(texts)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=8)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def check_observation(obs: dict[str, Any]) -> None:
    json.dumps(obs, allow_nan=False)
    assert obs["status"] in (None, *STATUSES)
    assert set(obs["links"]) <= set(LINK_KINDS)
    for urls in obs["links"].values():
        assert urls and len(urls) <= MAX_LINKS and len(set(urls)) == len(urls)
        assert all(valid_url(u) for u in urls)
    if obs["usage"] is not None:
        counts = [obs["usage"][k] for k in agent_events.USAGE_FIELDS]
        assert all(type(n) is int and n >= 0 for n in counts)
        cost = obs["usage"]["cost_usd"]
        assert cost is None or (type(cost) is float and math.isfinite(cost) and cost >= 0)


@settings(max_examples=300, deadline=None)
@given(runtime=st.sampled_from(RUNTIMES), pieces=split_text())
def test_chunking_and_persisting_do_not_change_the_observation(
    runtime: str, pieces: list[str]
) -> None:
    whole = Parser(runtime)
    whole.feed("".join(pieces))
    chunked = Parser(runtime)
    persisted = Parser(runtime)
    for piece in pieces:
        chunked.feed(piece)
        persisted = Parser(runtime, json.loads(json.dumps(persisted.to_state())))
        persisted.feed(piece)
    assert chunked.observation() == whole.observation()
    assert persisted.observation() == whole.observation()
    assert persisted.to_state() == whole.to_state()
    check_observation(whole.observation())


@settings(max_examples=200, deadline=None)
@given(runtime=st.sampled_from(RUNTIMES), pieces=split_text())
def test_long_lines_are_dropped_the_same_however_chunked(runtime: str, pieces: list[str]) -> None:
    with mock.patch.object(agent_events, "MAX_PENDING", 64):
        whole = Parser(runtime)
        whole.feed("".join(pieces))
        chunked = Parser(runtime)
        for piece in pieces:
            chunked.feed(piece)
            chunked = Parser(runtime, chunked.to_state())
            assert len(chunked.to_state()["pending"]) <= 64
        assert chunked.observation() == whole.observation()
        assert chunked.to_state() == whole.to_state()


KEYS = [
    "type", "subtype", "message", "content", "text", "usage", "id", "name", "result", "msg",
    "info", "total_token_usage", "item", "item_type", "role", "response", "part",
    "total_cost_usd", "input_tokens", "output_tokens", "cached_input_tokens",
    "cache_read_input_tokens", "cache_creation_input_tokens", "v", "runtime", "pending",
    "skip", "fence", "status", "links", "seen", "total", "cost", "open", "msgs", *LINK_KINDS,
]  # fmt: skip
SCALARS = [
    "assistant", "user", "result", "system", "init", "text", "tool_use", "AskUserQuestion",
    "turn.started", "turn.completed", "turn.failed", "item.completed", "agent_message",
    "task_started", "task_complete", "token_count", "claude", "m1", PR, tag("pr", PR),
    tag("status", "done"), "```", 1, 0, -1, 10**20, 1.5, float("nan"), float("inf"), True,
    None,
]  # fmt: skip
json_values = st.recursive(
    st.one_of(st.sampled_from(SCALARS), st.integers(), st.floats(), st.text(max_size=10)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(KEYS), inner, max_size=5),
    ),
    max_leaves=12,
)
json_objects = st.dictionaries(st.sampled_from(KEYS), json_values, max_size=6)


@settings(max_examples=150, deadline=None)
@given(runtime=st.sampled_from(RUNTIMES), events=st.lists(json_objects, max_size=6))
def test_arbitrary_events_do_not_raise(runtime: str, events: list[dict[str, Any]]) -> None:
    parser = Parser(runtime)
    for event in events:
        parser.feed(json.dumps(event) + "\n")
        check_observation(parser.observation())
        resumed = Parser(runtime, json.loads(json.dumps(parser.to_state())))
        assert resumed.observation() == parser.observation()


@settings(max_examples=150, deadline=None)
@given(runtime=st.sampled_from(RUNTIMES), state=st.one_of(json_objects, json_values))
def test_arbitrary_states_do_not_raise(runtime: str, state: Any) -> None:
    parser = Parser(runtime, state)
    parser.feed(tag("status", "done") + "\n")
    check_observation(parser.observation())
    json.dumps(parser.to_state(), allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(changes=st.dictionaries(st.sampled_from(sorted(good_state())), json_values, max_size=3))
def test_a_good_state_with_arbitrary_values_does_not_raise(changes: dict[str, Any]) -> None:
    state = {**good_state(), **changes}
    parser = Parser("claude", state)
    assert parser.to_state() in (state, Parser("claude").to_state())  # all of it or nothing
    parser.feed(tag("status", "done") + "\n")
    check_observation(parser.observation())


@given(value=st.text(max_size=60).map(lambda s: "https://" + s))
def test_valid_url_never_raises_and_what_passes_is_clean(value: str) -> None:
    if valid_url(value):
        assert all(0x21 <= ord(c) <= 0x7E and c not in "\\\"'<>`" for c in value)
