"""One adapter per agent program: how to launch it headless (task mode) and interactively,
and which environment variable carries its API key. Pure data: the same operator model for all.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

from agent_host.wire import STATUS_FILE


@dataclass(frozen=True)
class ModelEndpoint:
    """How a runtime reaches its model API: where, and how it presents its key."""

    base_url_env: str  # the variable the program reads its API base URL from
    upstream: str  # the API's own URL
    header: str  # the header carrying the key
    prefix: str = ""  # "Bearer " for an Authorization header


@dataclass(frozen=True)
class Runtime:
    name: str
    key_env: str | None  # the env var the program reads its API key from, None if it needs none
    headless: tuple[str, ...]  # argv prefix; the task is appended as the last argument
    interactive: tuple[str, ...]
    description: str
    # Extra, non-secret settings every sandbox of this runtime gets.
    env: tuple[tuple[str, str], ...] = ()
    # With --network allowlist the proxy adds the key on the way to this endpoint.
    model: ModelEndpoint | None = None

    def task_argv(self, task: str) -> list[str]:
        return [*self.headless, task]

    def interactive_argv(self) -> list[str]:
        if self.name == "claude":  # its hooks tell the host when it waits on the operator
            return [*self.interactive, "--settings", claude_status_settings()]
        return list(self.interactive)


# Claude Code's hook events (interactive mode) and the status each means: a question put to
# the operator (its AskUserQuestion tool) or a notification (it needs a permission, or has
# waited for input) is `blocked`; a prompt or an answer sets it `working`; the end of a turn
# is `done` (it waits for the next prompt).
CLAUDE_STATUS_HOOKS = (
    ("UserPromptSubmit", None, "working"),
    ("PreToolUse", "AskUserQuestion", "blocked"),
    ("PostToolUse", "AskUserQuestion", "working"),
    ("Notification", None, "blocked"),
    ("Stop", None, "done"),
)


def status_command(status: str) -> str:
    """The shell command a hook runs: the status tag, replacing the status file's last one."""
    tag = f"<jackin:status>{status}</jackin:status>"
    return f"printf '%s\\n' {shlex.quote(tag)} > {shlex.quote(STATUS_FILE)}"


def claude_status_settings() -> str:
    """`claude --settings` JSON adding the status hooks (on top of the user's own settings)."""
    hooks: dict[str, list[dict[str, object]]] = {}
    for event, matcher, status in CLAUDE_STATUS_HOOKS:
        entry: dict[str, object] = {"hooks": [{"type": "command",
                                               "command": status_command(status)}]}  # fmt: skip
        if matcher is not None:
            entry["matcher"] = matcher
        hooks.setdefault(event, []).append(entry)
    return json.dumps({"hooks": hooks}, separators=(",", ":"))


RUNTIMES: dict[str, Runtime] = {
    runtime.name: runtime
    for runtime in (
        Runtime(
            "claude",
            "ANTHROPIC_API_KEY",
            (
                "claude",
                "--dangerously-skip-permissions",
                "--output-format",
                "stream-json",
                "--verbose",
                "-p",
            ),
            ("claude", "--dangerously-skip-permissions"),
            "Anthropic Claude Code",
            env=(("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),),
            model=ModelEndpoint("ANTHROPIC_BASE_URL", "https://api.anthropic.com", "x-api-key"),
        ),
        Runtime(
            "codex",
            "OPENAI_API_KEY",
            (
                "codex",
                "exec",
                "--dangerously-bypass-approvals-and-sandbox",
                "--skip-git-repo-check",
            ),
            ("codex", "--dangerously-bypass-approvals-and-sandbox"),
            "OpenAI Codex CLI",
            model=ModelEndpoint(
                "OPENAI_BASE_URL", "https://api.openai.com/v1", "authorization", "Bearer "
            ),
        ),
        Runtime(
            "amp",
            "AMP_API_KEY",
            ("amp", "--dangerously-allow-all", "-x"),
            ("amp", "--dangerously-allow-all"),
            "Sourcegraph Amp",
        ),
        Runtime(
            "opencode",
            "ANTHROPIC_API_KEY",
            ("opencode", "run"),
            ("opencode",),
            "opencode",
        ),
        Runtime(
            "gemini",
            "GEMINI_API_KEY",
            ("gemini", "--yolo", "-p"),
            ("gemini", "--yolo"),
            "Google Gemini CLI",
        ),
        Runtime(
            "shell",
            None,
            ("/bin/sh", "-c"),
            ("/bin/bash", "-l"),
            "any command: the task is a shell command line",
        ),
        Runtime(
            "demo",
            None,
            ("jackin-demo-agent",),
            ("/bin/bash", "-l"),
            "a scripted stand-in agent (roles/test-agent) for demos and tests: edits, commits",
        ),
    )
}
