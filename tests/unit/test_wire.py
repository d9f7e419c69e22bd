"""The boundary types: strict parsing both ways, one rule per field, no crash on any input."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_host.wire import (
    LaunchSpec,
    Limits,
    Mode,
    SessionRecord,
    SpecError,
    check_role_user,
    memory_bytes,
)
from jackin_remote.roles.manifest import check_user

GOOD: dict[str, Any] = {
    "session_id": "abcd1234",
    "workspace": "app-1",
    "role": "test-agent",
    "role_hash": "ab" * 32,
    "user": "agent",
    "runtime": "shell",
    "mode": "task",
    "command": ["/bin/sh", "-c", "true"],
    "isolation": "clone",
    "network": "none",
    "host": "local",
    "task": "true",
    "env": {"A": "b"},
    "base_commit": "c0ffee" * 6 + "abcd",
    "limits": {"memory": "512m", "cpus": 1.5, "pids": 256},
}


def test_a_spec_survives_the_wire_both_ways() -> None:
    spec = LaunchSpec.from_wire(GOOD)
    assert LaunchSpec.from_wire(spec.to_wire()) == spec
    assert spec.mode is Mode.TASK
    assert spec.limits == Limits("512m", 1.5, 256)
    assert spec.image == "jackin-role-test-agent:abababababab"


@pytest.mark.parametrize(
    "user", ["agent", "1000", "agent:agent", "1000:1000", "_svc", "agent:1000", "a-b"]
)
def test_every_user_the_manifest_accepts_the_host_accepts(user: str) -> None:
    assert check_user(user) == user
    assert LaunchSpec.from_wire(dict(GOOD, user=user)).user == user


@pytest.mark.parametrize("user", ["root", "0", "0:0", "00", "root:agent", "Agent", "a:b:c", "$x"])
def test_every_user_the_host_refuses_the_manifest_refuses(user: str) -> None:
    with pytest.raises(SpecError):
        check_role_user(user)
    with pytest.raises(Exception, match=r"user|root"):
        check_user(user)


@pytest.mark.parametrize(
    ("value", "size"), [("6m", 6 * 2**20), ("4g", 4 * 2**30), ("7000000", 7000000)]
)
def test_memory_sizes(value: str, size: int) -> None:
    assert memory_bytes(value) == size


@pytest.mark.parametrize("value", ["0", "1k", "5m", "-1g", "4GB", "", "1.5g", " 1g"])
def test_memory_below_the_engine_minimum_or_malformed_is_refused(value: str) -> None:
    with pytest.raises(SpecError):
        memory_bytes(value)


def test_a_host_record_with_a_hostile_field_is_refused_naming_it() -> None:
    record = {"id": "abcd1234", "workspace": "app-1", "role": "r", "runtime": "shell",
              "container": "jk-x", "mode": "task", "isolation": "copy", "state": "running",
              "agent_status": "working", "created_at": 1.0}  # fmt: skip
    assert SessionRecord.from_wire(record).state.value == "running"
    hostile = [("id", "../../x"), ("state", "pwned"), ("workspace", "/etc"), ("exit_code", "0"),
               ("created_at", None), ("base_commit", "HEAD")]  # fmt: skip
    for key, value in hostile:
        with pytest.raises(SpecError, match=key):
            SessionRecord.from_wire(dict(record, **{key: value}))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(GOOD)), json_values, max_size=6))
def test_any_tampering_of_a_spec_is_either_valid_or_a_spec_error(changes: dict[str, Any]) -> None:
    try:
        spec = LaunchSpec.from_wire(dict(GOOD, **changes))
    except SpecError:
        return
    assert LaunchSpec.from_wire(spec.to_wire()) == spec


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_json_as_a_record_is_a_record_or_a_spec_error(value: Any) -> None:
    with contextlib.suppress(SpecError):
        SessionRecord.from_wire(value)


# A pattern's `$` also matches before a final newline: every check must refuse one.
@pytest.mark.parametrize(
    ("check", "good"),
    [
        (lambda v: __import__("agent_host.wire").wire.check_session_id(v), "abcd1234"),
        (lambda v: __import__("agent_host.wire").wire.check_name(v, "workspace"), "app-1"),
        (lambda v: __import__("agent_host.wire").wire.check_hash(v), "ab" * 32),
        (lambda v: __import__("agent_host.wire").wire.check_commit(v, "c"), "c0ffee" * 6 + "abcd"),
        (lambda v: check_role_user(v), "agent:agent"),
        (lambda v: __import__("agent_host.wire").wire.check_env_name(v), "GIT_TOKEN"),
        (lambda v: memory_bytes(v), "512m"),
        (lambda v: __import__("agent_host.wire").wire.check_mount_path(v, "m"), "/srv/cache"),
        (lambda v: __import__("agent_host.wire").wire.check_image_ref(v, "i"), "docker:27-dind"),
    ],
)
def test_no_check_accepts_a_trailing_newline(check: Any, good: str) -> None:
    check(good)
    for bad in (good + "\n", good + "\r\n", "\n" + good):
        with pytest.raises(SpecError):
            check(bad)


def test_an_egress_pattern_is_normalised_not_taken_verbatim() -> None:
    from agent_host.egress import parse_pattern

    assert str(parse_pattern(" A.Example.com\n", "p")) == "a.example.com"
