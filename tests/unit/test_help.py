"""`--help` reads well at 80 columns: flags are not shown as taking a value, nothing is cut."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from jackin_remote.cli import app
from jackin_remote.core.runtimes import RUNTIMES


@pytest.mark.parametrize("command", [["launch"], ["ls"], ["hosts", "check"], ["rm"]])
def test_help_at_80_columns_names_flags_plainly_and_cuts_nothing(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output
    assert "…" not in result.output
    assert all(len(line) <= 80 for line in result.output.splitlines())


def test_launch_help_lists_every_runtime() -> None:
    result = CliRunner().invoke(app, ["launch", "--help"], env={"COLUMNS": "80"})
    assert "|".join(RUNTIMES) in result.output
