"""Credential sources: parsed strictly, resolved on demand, failures named without values."""

from __future__ import annotations

from pathlib import Path

import pytest

from jackin_remote.credentials import Source, parse_source, resolve
from jackin_remote.errors import UsageError


@pytest.mark.parametrize(
    ("text", "kind", "ref"),
    [
        ("MY_KEY", "env", "MY_KEY"),
        ("env:MY_KEY", "env", "MY_KEY"),
        ("file:~/tok", "file", "~/tok"),
        ("command:pass show x", "command", "pass show x"),
        ("op://dev/github/token", "op", "op://dev/github/token"),
    ],
)
def test_sources_parse(text: str, kind: str, ref: str) -> None:
    assert parse_source(text, "--secret X") == Source(kind, ref)


@pytest.mark.parametrize(
    "bad",
    ["", "env:", "env:1X", "env:A-B", "ftp:x", "file:", "command:", "command:'unclosed",
     "op://dev", "op://dev//field", "op://dev/it em/f"],
)  # fmt: skip
def test_bad_sources_are_refused_naming_the_flag(bad: str) -> None:
    with pytest.raises(UsageError, match="--secret X"):
        parse_source(bad, "--secret X")


def test_values_are_read_and_failures_never_show_them(tmp_path: Path) -> None:
    file = tmp_path / "t"
    file.write_text("s3cret-value\n")
    assert resolve(Source("file", str(file)), "f") == "s3cret-value"
    assert resolve(Source("env", "V"), "f", {"V": "x"}) == "x"
    assert resolve(Source("env", "V"), "f", {}) is None
    assert resolve(Source("command", "printf abc"), "f", {"PATH": "/usr/bin:/bin"}) == "abc"
    with pytest.raises(UsageError) as caught:
        resolve(Source("command", "sh -c 'printf s3cret-%s value; exit 3'"), "--secret X",
                {"PATH": "/usr/bin:/bin"})  # fmt: skip
    assert "exit 3" in caught.value.message and "s3cret-value" not in str(caught.value)
    empty = tmp_path / "empty"
    empty.write_text("")
    with pytest.raises(UsageError, match="empty value"):
        resolve(Source("file", str(empty)), "--secret X")
    binary = tmp_path / "bin"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(UsageError, match="not UTF-8"):
        resolve(Source("file", str(binary)), "--secret X")
