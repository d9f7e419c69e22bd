"""The CLI builds only the module of the command a run names (jackin_remote/cli/__init__.py):
the map from command to module holds every command of the whole app, each partial app holds
the command it was built for with the same parameters, and anything the map cannot answer
for sure builds the whole app."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from jackin_remote import cli


def _commands(app: typer.Typer) -> dict[str, list[str]]:
    """Each top-level command's name -> its parameters' option names (a group: its commands)."""
    group = typer.main.get_command(app)
    assert isinstance(group, typer.main.TyperGroup)
    found: dict[str, list[str]] = {}
    for name, command in group.commands.items():
        if isinstance(command, typer.main.TyperGroup):
            found[name] = sorted(command.commands)
        else:
            found[name] = sorted(opt for param in command.params for opt in param.opts)
    return found


def test_the_map_names_every_command_of_the_whole_app_and_nothing_else() -> None:
    assert sorted(_commands(cli._build())) == sorted(cli.COMMANDS)
    assert set(cli.COMMANDS.values()) == set(cli.MODULES)


@pytest.mark.parametrize("module", cli.MODULES)
def test_a_partial_app_holds_its_module_s_commands_as_the_whole_app_does(module: str) -> None:
    whole = _commands(cli._build())
    part = _commands(cli._build(module))
    assert part == {name: whole[name] for name in cli.COMMANDS if cli.COMMANDS[name] == module}


@pytest.mark.parametrize(
    ("argv", "module"),
    [
        (["ls", "--cached"], "sessions"),
        (["-i", "inv.toml", "hosts", "check"], "hosts"),
        (["--inventory", "ls", "du"], "disk"),  # `ls` is the inventory's value here
        (["--inventory=inv", "snapshots", "x"], "snapshots"),
        (["-iinv", "console"], "console"),
        (["daemon", "status"], "daemon"),
        (["audit", "--json"], "audit"),
        ([], None),
        (["--help"], None),
        (["--version", "ls"], None),
        (["-i"], None),
        (["lss"], None),  # click suggests among every command
        (["--unknown", "ls"], None),
    ],
)
def test_what_a_run_builds(argv: list[str], module: str | None) -> None:
    assert cli._invoked(argv) == module


def test_a_completion_request_builds_the_whole_app(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("_JACKIN_REMOTE_COMPLETE", "complete_bash")
    assert cli._invoked(["ls"]) is None


def test_the_top_level_help_still_lists_every_command(laptop: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "JACKIN_INVENTORY"}
    done = subprocess.run([sys.executable, "-m", "jackin_remote", "--help"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    listed = {line.split()[0] for line in done.stdout.splitlines() if line.startswith("  ")}
    assert set(cli.COMMANDS) <= listed


def test_an_unknown_command_is_refused_with_a_suggestion() -> None:
    result = CliRunner().invoke(cli._build(cli._invoked(["lss"])), ["lss"])
    assert result.exit_code == 2
    assert "Did you mean 'ls'" in result.output  # only the whole app knows `ls`
