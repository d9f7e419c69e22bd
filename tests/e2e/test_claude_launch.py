"""The real Claude Code CLI, launched by jackin-remote in local mode, offline: its Write tool
creates a file, `pull` brings it back, and the API key never leaks out of its one delivery."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent_host.wire import TMUX_SESSION
from tests.conftest import CLI
from tests.e2e.helpers import git, launch, make_workspace, session_row, wait_for
from tests.e2e.test_sandbox_truth import docker0_address
from tests.fakes.messages_api import MessagesAPI, text, tool_use

PR = "https://example.test/acme/app/pull/42"
# The standard script (Write, then done), with the agent's last words naming its pull request,
# and a tag quoted in code that must not count.
SCRIPT = [
    [text("Creating the file."),
     tool_use("Write", {"file_path": "/workspace/hello.txt", "content": "written by claude\n"})],
    [text(f"done: <jackin:pr>{PR}</jackin:pr>\n\n```\n<jackin:pr>https://example.test/no</jackin:pr>"
          "\n```")],
]  # fmt: skip

ROLE = Path(__file__).resolve().parents[2] / "roles" / "claude-test"
SECRET = "sk-ant-test-0123456789-never-print-me"
pytestmark = pytest.mark.docker


def test_claude_writes_a_file_and_pull_brings_it_back(
    cli: CLI, local_inventory: Path, tmp_path: Path, laptop: Path
) -> None:
    if not (ROLE / "vendor" / "claude").exists():
        pytest.skip("Claude Code binary missing: run scripts/prepare-claude-role")
    ws = make_workspace(tmp_path / "ws")
    cli.env["MY_ANTHROPIC_KEY"] = SECRET
    with MessagesAPI(SCRIPT) as api:
        args = ["-i", str(local_inventory), "launch", "--role", str(ROLE), "--runtime", "claude",
                "--key-from", "MY_ANTHROPIC_KEY", "--network", "open",
                "--env", f"ANTHROPIC_BASE_URL={api.url_for(docker0_address())}",
                "--task", "create hello.txt", str(ws)]  # fmt: skip
        launched = cli.run(*args[:-1], "--json", args[-1], timeout=900)
        assert launched.returncode == 0, launched.stderr
        (session,) = json.loads(launched.stdout)["sessions"]
        sid = session["id"]
        row = wait_for(cli, local_inventory, sid, timeout=300)
        logs = cli.run("-i", str(local_inventory), "logs", sid, check=True).stdout
        assert row["state"] == "exited", logs
        assert [c.headers.get("x-api-key") for c in api.main_calls()] == [SECRET, SECRET]
    assert '"subtype":"success"' in logs.replace(" ", "")
    # What Claude Code itself reported (its stream-json result) is what `ls` shows: status,
    # tokens, cost, and the pull request its last message named.
    (result,) = [json.loads(line) for line in logs.splitlines()
                 if line.startswith("{") and json.loads(line).get("type") == "result"]  # fmt: skip
    assert row["agent_status"] == "done" and row["links"] == {"pr": [PR]}, row
    reported = result["usage"]
    assert row["usage"] == {
        "input_tokens": reported["input_tokens"], "output_tokens": reported["output_tokens"],
        "cache_read_tokens": reported.get("cache_read_input_tokens", 0),
        "cache_write_tokens": reported.get("cache_creation_input_tokens", 0),
        "cost_usd": result["total_cost_usd"]}  # fmt: skip
    assert reported["output_tokens"] > 0
    served = cli.json("-i", str(local_inventory), "usage", "--by", "session", "--cached")
    (mine,) = [g for g in served["groups"] if g["session"] == sid]
    assert (mine["output_tokens"], mine["cost_usd"]) == (reported["output_tokens"],
                                                          result["total_cost_usd"])  # fmt: skip
    credential = session["contract"]["credentials"][0]
    assert credential["source"] == "MY_ANTHROPIC_KEY" and credential["value"] == "<redacted>"

    pulled = cli.json("-i", str(local_inventory), "pull", sid)
    assert git(ws, "show", f"{pulled['branch']}:hello.txt") == "written by claude"

    # The key went to the sandbox's environment and nowhere else jackin writes or prints.
    ls_json = cli.run("-i", str(local_inventory), "ls", "--json", check=True).stdout
    for said in (launched.stdout, launched.stderr, logs, ls_json):
        assert SECRET not in said
    for path in [*laptop.rglob("*"), *(tmp_path / "host-root").rglob("*.db*")]:
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    inspect = subprocess.run(
        ["docker", "inspect", "--format", "{{json .Args}} {{json .Path}}", row["container"]],
        capture_output=True,
        text=True,
        check=True,
    )
    assert SECRET not in inspect.stdout  # not in the sandbox's argv
    cli.run("-i", str(local_inventory), "rm", sid, check=True)


# Interactive: the operator asks for a pick; Claude puts the question to them (its
# AskUserQuestion tool), then, answered, ends its turn.
QUESTION = [
    [tool_use("AskUserQuestion", {"questions": [{
        "question": "Which database should I use?", "header": "Database", "multiSelect": False,
        "options": [{"label": "Postgres", "description": "relational"},
                    {"label": "SQLite", "description": "one file"}]}]})],
    [text("Using Postgres.")],
]  # fmt: skip


def _screen(container: str) -> str:
    done = subprocess.run(["docker", "exec", container, "tmux", "capture-pane", "-p", "-t",
                           TMUX_SESSION], capture_output=True, text=True)  # fmt: skip
    return done.stdout


def _until(check: Callable[[], Any], what: str) -> Any:
    for _ in range(600):  # a bound on Claude Code getting there, never a timing expectation
        found = check()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"never: {what}")


def test_interactive_claude_shows_blocked_on_its_question_then_done(
    cli: CLI, local_inventory: Path, tmp_path: Path
) -> None:
    if not (ROLE / "vendor" / "claude").exists():
        pytest.skip("Claude Code binary missing: run scripts/prepare-claude-role")
    ws = make_workspace(tmp_path / "ws")
    cli.env["MY_ANTHROPIC_KEY"] = SECRET
    told = cli.run("-i", str(local_inventory), "explain", "--role", str(ROLE), "--runtime",
                   "claude", str(ws), check=True).stdout  # fmt: skip
    assert "status hooks added (claude --settings" in " ".join(told.split())
    with MessagesAPI(QUESTION) as api:
        (session,) = launch(cli, local_inventory, ws, "--role", str(ROLE), "--runtime", "claude",
                            "--key-from", "MY_ANTHROPIC_KEY", "--network", "open", "--env",
                            f"ANTHROPIC_BASE_URL={api.url_for(docker0_address())}")  # fmt: skip
        sid = session["id"]
        box = wait_for(cli, local_inventory, sid, {"running"})["container"]

        def status() -> str:
            return str(session_row(cli, local_inventory, sid)["agent_status"])

        _until(lambda: "\u276f" in _screen(box), "Claude Code's prompt")
        assert status() == "idle"  # no prompt yet: nothing said, nothing asked
        # The operator types a request (tmux keys: text, then Enter once it is on screen).
        subprocess.run(["docker", "exec", box, "tmux", "send-keys", "-t", TMUX_SESSION, "-l",
                        "pick a database"], check=True)  # fmt: skip
        _until(lambda: "pick a database" in _screen(box), "the typed request")
        subprocess.run(["docker", "exec", box, "tmux", "send-keys", "-t", TMUX_SESSION, "Enter"],
                       check=True)  # fmt: skip
        _until(lambda: "Which database should I use?" in _screen(box), "Claude's question")
        _until(lambda: status() == "blocked", "blocked while the question waits")
        listing = cli.json("-i", str(local_inventory), "ls")
        assert listing["fleet"]["agents"] == "blocked"
        # Answered (the first option), Claude carries on and ends its turn.
        subprocess.run(["docker", "exec", box, "tmux", "send-keys", "-t", TMUX_SESSION, "Enter"],
                       check=True)  # fmt: skip
        _until(lambda: status() == "done", "done once its turn ended")
        assert [r.reply_kind for r in api.main_calls()][-1] == "script:1"
    cli.run("-i", str(local_inventory), "rm", "--force", sid, check=True)
