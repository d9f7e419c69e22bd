"""The egress policy: patterns, presets and decisions (deny wins). Pure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent_host.egress import (
    DEFAULT_DENY,
    PRESETS,
    Rule,
    decide,
    parse_pattern,
    preset_rules,
    rules_from_wire,
)
from agent_host.wire import SpecError


def rule(action: str, pattern: str, source: str = "--allow") -> Rule:
    return Rule(action, parse_pattern(pattern), source)


@pytest.mark.parametrize(
    ("pattern", "host", "port", "matches"),
    [
        ("example.com", "example.com", 443, True),
        ("example.com", "EXAMPLE.com.", 80, True),  # case and a trailing dot do not matter
        ("example.com", "a.example.com", 443, False),
        ("*.example.com", "a.example.com", 443, True),
        ("*.example.com", "a.b.example.com", 443, False),  # one level only
        ("*.example.com", "example.com", 443, False),
        ("*.example.com", "badexample.com", 443, False),
        ("**.example.com", "a.b.example.com", 443, True),
        ("**.example.com", "example.com", 443, False),
        ("**.example.com", "evil-example.com", 443, False),
        ("example.com:443", "example.com", 443, True),
        ("example.com:443", "example.com", 80, False),
        ("10.0.0.5:8080", "10.0.0.5", 8080, True),
        ("10.0.0.5", "10.0.0.50", 80, False),
        ("[::1]:80", "::1", 80, True),
        ("[::1]:80", "[0:0::1]", 80, True),  # IPs are compared normalised
    ],
)
def test_patterns_match_what_the_docs_say(
    pattern: str, host: str, port: int, matches: bool
) -> None:
    assert decide(host, port, [rule("allow", pattern)]).allowed is matches


@pytest.mark.parametrize(
    "bad",
    ["", "exa mple.com", "*.com", "a.*.com", "***.x.com", "example.com:0", "example.com:65536",
     "example.com:http", "-x.com", "x..com", "*.10.0.0.1", "::1", "[::1", "[nope]:80",
     "a" * 64 + ".com", "ex\x1bample.com", "example.com/path", "user@example.com"],
)  # fmt: skip
def test_bad_patterns_are_refused_by_name(bad: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_pattern(bad, "--allow")
    assert caught.value.field == "--allow"


@given(st.text(max_size=80))
def test_any_text_is_a_pattern_or_a_spec_error(text: str) -> None:
    try:
        pattern = parse_pattern(text)
    except SpecError:
        return
    assert parse_pattern(str(pattern)) == pattern  # what is shown is what was meant


def test_deny_wins_whatever_the_order() -> None:
    allow, deny = rule("allow", "**.example.com"), rule("deny", "secret.example.com", "--deny")
    for rules in ([allow, deny], [deny, allow]):
        decision = decide("secret.example.com", 443, rules)
        assert not decision.allowed and decision.rule == "deny secret.example.com (--deny)"
        assert decide("www.example.com", 443, rules).allowed
    nothing = decide("other.org", 443, [allow, deny])
    assert not nothing.allowed and nothing.rule == DEFAULT_DENY


@given(
    st.lists(st.sampled_from(["a.example.com", "*.example.com", "**.example.com",
                              "example.com:443", "b.example.com:80"]), min_size=1),
    st.sampled_from(["a.example.com", "b.example.com", "example.com", "x.a.example.com"]),
    st.sampled_from([80, 443]),
)  # fmt: skip
def test_a_matching_deny_is_never_overruled(patterns: list[str], host: str, port: int) -> None:
    denies = [rule("deny", p, "--deny") for p in patterns]
    allows = [rule("allow", "**.example.com"), rule("allow", "example.com")]
    decision = decide(host, port, allows + denies)
    if any(d.pattern.matches(host, port) for d in denies):
        assert not decision.allowed and decision.rule.startswith("deny ")


def test_presets_parse_and_name_their_source() -> None:
    for name in PRESETS:
        rules = preset_rules([name])
        assert rules and all(r.source == f"preset {name}" for r in rules)
    allowed = decide("api.anthropic.com", 443, preset_rules(["anthropic"]))
    assert allowed.allowed and "preset anthropic" in allowed.rule
    assert not decide("api.anthropic.com", 80, preset_rules(["anthropic"])).allowed
    with pytest.raises(SpecError):
        preset_rules(["nope"])


def test_rules_cross_the_wire_checked() -> None:
    rules = (rule("allow", "*.example.com:443"), rule("deny", "x.example.com", "--deny"))
    assert rules_from_wire([r.to_wire() for r in rules]) == rules
    for bad in (
        [{"action": "permit", "pattern": "x.com", "source": "s"}],
        [{"action": "allow", "pattern": "x .com", "source": "s"}],
        [{"action": "allow", "pattern": "x.com", "source": "s\x1b[2J"}],
        [{"action": "allow", "pattern": "x.com"}],
        {"action": "allow"},
    ):
        with pytest.raises(SpecError):
            rules_from_wire(bad)


def test_a_trailing_dot_in_a_pattern_still_matches() -> None:
    deny = rule("deny", "secret.example.com.", "--deny")
    assert not decide("secret.example.com", 443, [rule("allow", "**.example.com"), deny]).allowed
    assert str(parse_pattern("*.example.com.")) == "*.example.com"


def test_a_proxy_whose_session_is_gone_knows_it_is_an_orphan(tmp_path: Path) -> None:
    from agent_host import egressd, layout

    root, sid = str(tmp_path), "abcd2345"
    os.makedirs(layout.session_dir(root, sid))
    assert not egressd.orphaned(root, sid, os.getpid())  # its session is there, no other proxy
    with open(egressd.pid_file(root, sid), "w") as handle:
        handle.write(f"{os.getpid()}\n")  # not a proxy's argv: no other proxy either
    assert not egressd.orphaned(root, sid, os.getpid())
    os.unlink(egressd.pid_file(root, sid))
    os.rmdir(layout.session_dir(root, sid))  # rm, or a wiped root
    assert egressd.orphaned(root, sid, os.getpid())
