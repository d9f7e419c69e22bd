"""Hints name only real things: every `--flag` that an error message, a hint, a help text or a
role privilege pointer tells the user to use exists on the CLI (on the command it names, when
it names one), and every value it lists for a flag is one the CLI accepts."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from jackin_remote.cli import app
from jackin_remote.roles.manifest import PRIVILEGE_KEYS

PACKAGE = Path(__file__).resolve().parents[2] / "jackin_remote"
REPO = PACKAGE.parent
FLAG = re.compile(r"(?:\b([a-z]+) )?(?<![\w-])(--[a-z][a-z0-9-]*)(?: ([a-z]+(?:\|[a-z]+)+)\b)?")


def _strings(node: ast.AST) -> Iterator[str]:
    for child in ast.walk(node):
        if isinstance(child, ast.Constant) and isinstance(child.value, str):
            yield child.value


def _user_texts() -> Iterator[tuple[str, str]]:
    """(where, text) for every text the user is meant to act on: hints, help texts, messages
    of errors, role privilege pointers."""
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            for keyword in node.keywords:
                if keyword.arg in ("hint", "help"):
                    yield from ((where, text) for text in _strings(keyword.value))
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name.endswith("Error") and node.args:
                yield from ((where, text) for text in _strings(node.args[0]))
    for key, text in PRIVILEGE_KEYS.items():
        yield f"PRIVILEGE_KEYS[{key!r}]", text


def _options() -> dict[str, set[str]]:
    """Command name -> its option names; "" holds the options every command has."""
    root = typer.main.get_command(app)
    found: dict[str, set[str]] = {"": {o for p in root.params for o in p.opts}}
    stack: list[Any] = [root]  # typer's own click: duck-typed
    while stack:
        command = stack.pop()
        stack.extend(getattr(command, "commands", {}).values())
        found.setdefault(command.name, set()).update(o for p in command.params for o in p.opts)
    return found


MENTIONS = sorted(
    {
        (where, command or "", flag, choices or "")
        for where, text in _user_texts()
        for command, flag, choices in FLAG.findall(text)
    }
)
OPTIONS = _options()


def test_hints_are_found() -> None:
    flags = {flag for _, _, flag, _ in MENTIONS}
    assert {"--network", "--key-from", "--env", "--include", "--isolation"} <= flags


@pytest.mark.parametrize(("where", "command", "flag", "choices"), MENTIONS)
def test_every_flag_a_hint_names_exists(where: str, command: str, flag: str, choices: str) -> None:
    every = set().union(*OPTIONS.values())
    assert flag in every, f"{where}: {flag} is not an option of any jackin-remote command"
    if command and command in OPTIONS:
        assert flag in OPTIONS[command] | OPTIONS[""], f"{where}: `{command}` has no {flag}"


CHOICES = sorted({(flag, value) for _, _, flag, choices in MENTIONS if choices
                  for value in choices.split("|")})  # fmt: skip


def test_some_hints_list_values() -> None:
    assert ("--network", "none") in CHOICES


@pytest.mark.parametrize(("flag", "value"), CHOICES)
def test_every_value_a_hint_lists_is_accepted(
    flag: str, value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asked through explain (no side effects): the value resolves to a contract."""
    monkeypatch.setenv("JACKIN_HOME", str(tmp_path / "jackin"))
    inventory = tmp_path / "inventory"
    inventory.mkdir()
    (inventory / "local.toml").write_text(
        f'[hosts.local]\ntransport = "local"\nroot = "{tmp_path / "root"}"\n'
    )
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "a.txt").write_text("a\n")
    result = CliRunner().invoke(app, [
        "-i", str(inventory), "explain", "--role", str(REPO / "roles" / "test-agent"),
        *(() if flag == "--runtime" else ("--runtime", "shell")),  # the role declares two
        flag, value, "--json", str(workspace),
    ])  # fmt: skip
    assert result.exit_code == 0, (flag, value, result.output)
