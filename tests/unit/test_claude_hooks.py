"""claude's interactive status hooks (core/runtimes.py): valid settings JSON whose commands
write exactly the status tag the host reads back (agent_host/observe.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from agent_host import agent_events, wire
from jackin_remote.core.runtimes import CLAUDE_STATUS_HOOKS, RUNTIMES, status_command


def test_claude_interactive_gets_the_hooks_and_no_other_runtime_does() -> None:
    argv = RUNTIMES["claude"].interactive_argv()
    assert argv[:2] == ["claude", "--dangerously-skip-permissions"] and argv[2] == "--settings"
    hooks = json.loads(argv[3])["hooks"]
    said = {(event, entry.get("matcher"), entry["hooks"][0]["command"])
            for event, entries in hooks.items() for entry in entries}  # fmt: skip
    assert said == {(e, m, status_command(s)) for e, m, s in CLAUDE_STATUS_HOOKS}
    assert ("PreToolUse", "AskUserQuestion", status_command("blocked")) in said
    assert ("Stop", None, status_command("done")) in said
    assert RUNTIMES["claude"].task_argv("t")[-1] == "t" and "--settings" not in RUNTIMES[
        "claude"].task_argv("t")  # fmt: skip
    for name, runtime in RUNTIMES.items():
        if name != "claude":
            assert runtime.interactive_argv() == list(runtime.interactive)


def test_each_hook_command_writes_the_tag_the_host_reads(tmp_path: Path) -> None:
    for _, _, status in CLAUDE_STATUS_HOOKS:
        command = status_command(status).replace(wire.STATUS_FILE, str(tmp_path / "status"))
        subprocess.run(["sh", "-c", command], check=True)
        written = (tmp_path / "status").read_text()
        assert agent_events.scan_screen(written)["status"] == status
        assert len(written.encode()) <= wire.STATUS_FILE_BYTES
