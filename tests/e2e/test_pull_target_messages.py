"""pull names the repository it writes to, and refuses the wrong one with a reason."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import CLI
from tests.e2e.helpers import git, launch, make_workspace, wait_for


def test_pull_into_the_wrong_repository_says_so_and_a_relative_path_works(
    cli: CLI, local_inventory: Path, tmp_path: Path
) -> None:
    ws = make_workspace(tmp_path / "ws")
    (session,) = launch(cli, local_inventory, ws, "--runtime", "demo", "--network", "none",
                        "--task", "write b.txt: from the agent")  # fmt: skip
    sid = session["id"]
    wait_for(cli, local_inventory, sid)
    other = make_workspace(tmp_path / "other")
    wrong = cli.run("-i", str(local_inventory), "pull", sid, "--into", "other")
    assert wrong.returncode == 1, wrong.stderr
    assert f"{other} is not the repository session {sid} was launched from" in wrong.stderr
    assert git(other, "branch", "--list", f"jackin/{sid}") == ""
    # A relative --into (cli.cwd is tmp_path) lands in that repository, named in full.
    right = cli.run("-i", str(local_inventory), "pull", sid, "--into", "ws", check=True)
    assert f"into branch jackin/{sid} of {ws}" in right.stdout
    assert "from the agent" in git(ws, "show", f"jackin/{sid}:b.txt")
    cli.run("-i", str(local_inventory), "rm", sid, check=True)
