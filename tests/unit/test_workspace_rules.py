"""A workspace's own egress rules (.jackin/config.toml [egress]): reading without following
links, validation located as file:line: field, approvals by content hash in the laptop store."""

from __future__ import annotations

import os
from pathlib import Path
from textwrap import dedent

import pytest

from jackin_remote.core.egress_rules import (
    APPROVED,
    CHANGED,
    IGNORED,
    NOT_APPROVED,
    NOT_USED,
)
from jackin_remote.errors import UsageError
from jackin_remote.store import Store
from jackin_remote.workspace_rules import (
    MAX_BYTES,
    MAX_RULES,
    WorkspaceRulesError,
    judge,
    parse_rules,
    read_rules_file,
    refusal,
    workspace_key,
)


@pytest.fixture(autouse=True)
def _laptop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JACKIN_HOME", str(tmp_path / "jackin"))


def workspace(tmp_path: Path, text: str, name: str = "ws") -> Path:
    root = tmp_path / name
    (root / ".jackin").mkdir(parents=True)
    (root / ".jackin" / "config.toml").write_text(dedent(text))
    return root


def parse_error(text: str) -> WorkspaceRulesError:
    with pytest.raises(WorkspaceRulesError) as caught:
        parse_rules(dedent(text).encode(), "/w/.jackin/config.toml")
    return caught.value


# -- reading and validating ------------------------------------------------------------------
def test_each_rule_carries_its_own_line_workspace_relative() -> None:
    rules = parse_rules(dedent("""\
        [launch]
        runtime = "shell"

        [egress]
        # mirrors
        allow = [
          "pypi.mirror.local:8443",  # python, "quoted" in a comment
          '**.corp.example.com', "a.example.com",
          \"\"\"b.example.com\"\"\",
        ]
        deny = ["secret.corp.example.com"]
        """).encode(), "/w/.jackin/config.toml")  # fmt: skip
    assert rules == (
        ("allow", "pypi.mirror.local:8443", ".jackin/config.toml:7"),
        ("allow", "**.corp.example.com", ".jackin/config.toml:8"),
        ("allow", "a.example.com", ".jackin/config.toml:8"),
        ("allow", "b.example.com", ".jackin/config.toml:9"),
        ("deny", "secret.corp.example.com", ".jackin/config.toml:11"),
    )


def test_an_inline_table_falls_back_to_the_key_line() -> None:
    rules = parse_rules(b'\negress = { allow = ["a.example.com",\n "b.example.com"] }\n', "f")
    assert [where for _, _, where in rules] == [".jackin/config.toml:2"] * 2


def test_no_egress_section_is_no_rules() -> None:
    assert parse_rules(b'[launch]\nruntime = "shell"\n', "f") == ()
    assert parse_rules(b"[egress]\nallow = []\n", "f") == ()


@pytest.mark.parametrize(
    ("text", "line", "field", "message"),
    [
        ("[launch]\n[egres]\nallow = []\n", 2, "egres", "unknown section 'egres'"),
        ('allow = ["x.com"]\n', 1, "allow", "unknown section 'allow'"),
        ('[egress]\n\npermit = ["x.com"]\n', 3, "egress.permit", "unknown key 'permit'"),
        ('[egress]\nallow = "x.com"\n', 2, "egress.allow", "expected a list of patterns, got str"),
        ("egress = 3\n", 1, "egress", "expected a table, got integer"),
        ('[egress]\nallow = [\n  "ok.com",\n  3,\n]\n', 4, "egress.allow[1]", "got integer"),
        ('[egress]\ndeny = [\n  "ok.com",\n  "a b.com",\n]\n', 4, "egress.deny[1]", "not a host"),
        ('[egress]\nallow = ["x.com:99999"]\n', 2, "egress.allow[0]", "the port must be"),
        ('[egress]\nallow = ["a" "b"]\n', 2, None, "invalid TOML"),
    ],
)
def test_problems_name_the_file_line_and_field(
    text: str, line: int, field: str | None, message: str
) -> None:
    error = parse_error(text)
    assert (error.file, error.line, error.field) == ("/w/.jackin/config.toml", line, field)
    assert message in error.message, error.message
    assert str(error).startswith(f"/w/.jackin/config.toml:{line}: ") and error.hint


def test_hostile_text_never_reaches_a_message_raw() -> None:
    for text in ('[egress]\nallow = ["\\u001b]52;c;Zm9v\\u0007evil.com"]\n',
                 '[egress]\n"\\u202eyek" = ["x.com"]\n',
                 '["\\u001b[31mred"]\n'):  # fmt: skip
        error = parse_error(text)
        shown = str(error)
        assert "\x1b" not in shown and "\u202e" not in shown and "\x07" not in shown, shown


def test_too_many_rules_is_refused_at_the_first_rule_over() -> None:
    patterns = ",\n".join(f'"h{n}.example.com"' for n in range(MAX_RULES + 1))
    error = parse_error(f"[egress]\nallow = [\n{patterns}\n]\n")
    assert error.field == f"egress.allow[{MAX_RULES}]" and error.line == MAX_RULES + 3
    assert f"more than {MAX_RULES} rules" in error.message


def test_a_file_over_the_size_cap_is_refused(tmp_path: Path) -> None:
    root = workspace(tmp_path, "[egress]\nallow = []\n" + "#" * MAX_BYTES + "\n")
    with pytest.raises(WorkspaceRulesError, match="larger than 64 KiB"):
        read_rules_file(root)


def test_links_are_refused_file_and_directory(tmp_path: Path) -> None:
    outside = workspace(tmp_path, '[egress]\nallow = ["x.example.com"]\n', "outside")
    linked_file = tmp_path / "a"
    (linked_file / ".jackin").mkdir(parents=True)
    (linked_file / ".jackin" / "config.toml").symlink_to(outside / ".jackin" / "config.toml")
    linked_dir = tmp_path / "b"
    linked_dir.mkdir()
    (linked_dir / ".jackin").symlink_to(outside / ".jackin")
    for root in (linked_file, linked_dir):
        with pytest.raises(WorkspaceRulesError, match="is a symbolic link: refused") as caught:
            read_rules_file(root)
        assert caught.value.hint and "--workspace-rules ignore" in caught.value.hint
        with pytest.raises(WorkspaceRulesError):  # launch and explain refuse it too
            judge(root)
    # the workspace itself may be reached through a link: it is the operator's own path
    (tmp_path / "via").symlink_to(outside)
    found = read_rules_file(tmp_path / "via")
    assert found is not None and found.workspace == outside.resolve()


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    (root / ".jackin").mkdir(parents=True)
    os.mkfifo(root / ".jackin" / "config.toml")
    with pytest.raises(WorkspaceRulesError, match="not a regular file"):
        read_rules_file(root)


def test_no_file_and_no_directory_are_nothing(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert read_rules_file(tmp_path / "empty") is None
    assert judge(tmp_path / "empty") is None
    (tmp_path / "plain" / ".jackin").mkdir(parents=True)
    assert read_rules_file(tmp_path / "plain") is None


# -- approvals -------------------------------------------------------------------------------
def test_approval_is_of_the_exact_content(tmp_path: Path) -> None:
    root = workspace(tmp_path, '[egress]\nallow = ["x.example.com"]\n')
    pending = judge(root)
    assert pending is not None and pending.status == NOT_APPROVED and pending.applied == ()
    assert pending.approve == f"jackin-remote policy approve {root.resolve()}"
    error = refusal(pending)
    assert isinstance(error, UsageError) and str(root / ".jackin" / "config.toml") in error.message
    hint = error.hint or ""
    assert "policy approve" in hint and "--workspace-rules ignore" in hint

    found = read_rules_file(root)
    assert found is not None
    Store().approve_workspace_rules(workspace_key(root), str(found.path), found.digest)
    approved = judge(root)
    assert approved is not None and approved.status == APPROVED
    assert approved.applied == (("allow", "x.example.com", ".jackin/config.toml:2"),)

    (root / ".jackin" / "config.toml").write_text('[egress]\nallow = ["y.example.com"]\n')
    changed = judge(root)
    assert changed is not None and changed.status == CHANGED and changed.applied == ()
    assert "changed since you approved" in refusal(changed).message

    assert Store().revoke_workspace_rules(workspace_key(root)) is True
    assert Store().revoke_workspace_rules(workspace_key(root)) is False
    again = judge(root)
    assert again is not None and again.status == NOT_APPROVED


def test_an_approval_belongs_to_one_workspace_path(tmp_path: Path) -> None:
    text = '[egress]\nallow = ["x.example.com"]\n'
    first, second = workspace(tmp_path, text, "one"), workspace(tmp_path, text, "two")
    found = read_rules_file(first)
    assert found is not None
    Store().approve_workspace_rules(workspace_key(first), str(found.path), found.digest)
    other = judge(second)
    assert other is not None and other.status == NOT_APPROVED  # same bytes, another workspace


def test_reading_an_approval_creates_no_database(tmp_path: Path) -> None:
    root = workspace(tmp_path, '[egress]\nallow = ["x.example.com"]\n')
    assert judge(root) is not None
    assert not (tmp_path / "jackin").exists()


def test_ignore_and_other_networks(tmp_path: Path) -> None:
    root = workspace(tmp_path, '[egress]\nallow = ["x.example.com"]\n')
    ignored = judge(root, mode="ignore")
    assert ignored is not None and ignored.status == IGNORED and ignored.applied == ()
    open_ = judge(root, network="open")
    assert open_ is not None and open_.status == NOT_USED and open_.applied == ()
    # an invalid file does not matter to a session that cannot use it: said, not refused
    (root / ".jackin" / "config.toml").write_text('[egress]\nallow = ["a b"]\n')
    broken = judge(root, network="none")
    assert broken is not None and broken.status == NOT_USED and "invalid" in broken.problem
    with pytest.raises(WorkspaceRulesError):
        judge(root)
    with pytest.raises(UsageError, match="expected apply or ignore"):
        judge(root, mode="maybe")


def test_the_contract_entry_and_warning(tmp_path: Path) -> None:
    root = workspace(tmp_path, '[egress]\nallow = ["x.example.com"]\n')
    pending = judge(root)
    assert pending is not None
    section = pending.section("allowlist")
    assert section["applied"] is False and section["status"] == NOT_APPROVED
    assert section["rules"] == ["allow x.example.com (workspace .jackin/config.toml:2)"]
    assert "NOT applied" in section["note"] and pending.approve in section["note"]
    (warning,) = pending.warnings("allowlist")
    assert "NOT applied" in warning and pending.approve in warning
    # with another network they are irrelevant, approved or not: said, never warned about
    assert pending.section("open")["status"] == NOT_USED and pending.warnings("open") == []
    assert "allowlist only" in pending.section("none")["note"]
