"""One adapter per agent program: how to launch it headless (task mode) and interactively,
and which environment variable carries its API key. Pure data: the same operator model for all.
"""

from __future__ import annotations

from dataclasses import dataclass


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
        return list(self.interactive)


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
