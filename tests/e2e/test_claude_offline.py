"""The real Claude Code CLI, offline, in a sandbox like the one sessions get.

The CLI talks to tests/fakes/messages_api.py (a scripted Messages API) on the gateway of an
--internal docker network, so nothing but that server is reachable. The script makes the agent
use its Write tool, then says "done" once the tool result comes back.

Needs: a docker engine, jackin-test-base:latest (`scripts/fleet images`) and the CLI binary in
roles/claude-test/vendor (`scripts/prepare-claude-role`, fetched from npm on this machine).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.messages_api import MessagesAPI, write_then_done

pytestmark = pytest.mark.docker

ROLE_DIR = Path(__file__).resolve().parents[2] / "roles" / "claude-test"
VENDOR_BINARY = ROLE_DIR / "vendor" / "claude"
BASE_IMAGE = "jackin-test-base:latest"
IMAGE = "jackin-role-claude-test:e2e"
CONTENT = "hello from the scripted agent\n"
TASK = "create hello.txt"

# What the lead's sandbox applies to every session (agent_host/sessions.py).
HARDENED = [
    "--read-only", "--tmpfs", "/tmp", "--tmpfs", "/home/agent:uid=1000,gid=1000",
    "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
]  # fmt: skip


def _docker(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def image() -> str:
    if not VENDOR_BINARY.exists():
        pytest.skip(
            "Claude Code binary missing: run scripts/prepare-claude-role (fetches it from npm)"
        )
    if shutil.which("docker") is None or _docker("info", timeout=30).returncode != 0:
        pytest.skip("no usable docker engine")
    if _docker("image", "inspect", BASE_IMAGE).returncode != 0:
        pytest.skip(f"{BASE_IMAGE} missing: run scripts/fleet images")
    built = _docker("build", "-q", "--network", "none", "-t", IMAGE, str(ROLE_DIR), timeout=600)
    assert built.returncode == 0, built.stderr
    return IMAGE


@pytest.fixture
def network() -> Iterator[str]:
    """An --internal network: the container reaches its gateway (our server) and nothing else."""
    name = f"jk-test-claude-{secrets.token_hex(4)}"
    made = _docker("network", "create", "--internal", name)
    assert made.returncode == 0, made.stderr
    try:
        yield name
    finally:
        _docker("network", "rm", name)


def gateway(network: str) -> str:
    done = _docker("network", "inspect", network, "--format",
                   "{{range .IPAM.Config}}{{.Gateway}}{{end}}")  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip(), done.stderr
    return done.stdout.strip()


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    repo = tmp_path / "workspace"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    (repo / "README.md").write_text("a test workspace\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], check=True)
    repo.chmod(0o777)  # the agent (uid 1000) writes here, whoever runs the test
    return repo


def run_claude(
    image: str, network: str, workspace: Path, api: MessagesAPI, extra: list[str]
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    name = f"jk-test-claude-{secrets.token_hex(4)}"
    argv = [
        "docker", "run", "--rm", "--name", name, "--network", network, "--user", "agent",
        "-v", f"{workspace}:/workspace", "-w", "/workspace",
        "-e", f"ANTHROPIC_BASE_URL={api.url_for(gateway(network))}",
        "-e", "ANTHROPIC_API_KEY=sk-test-fake",
        "-e", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1",
        "-e", "HOME=/home/agent",
        *extra, image,
        "claude", "-p", TASK, "--output-format", "stream-json", "--verbose",
        "--dangerously-skip-permissions",
    ]  # fmt: skip
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        _docker("rm", "-f", name)
        raise
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return done, events


@pytest.mark.parametrize("sandbox", ["plain", "hardened"])
def test_claude_code_writes_a_file_offline(
    image: str, network: str, workspace: Path, sandbox: str
) -> None:
    script = write_then_done("/workspace/hello.txt", CONTENT)
    with MessagesAPI(script) as api:
        done, events = run_claude(image, network, workspace, api,
                                  HARDENED if sandbox == "hardened" else [])  # fmt: skip
    detail = f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    assert done.returncode == 0, detail
    assert (workspace / "hello.txt").read_text() == CONTENT

    init = [e for e in events if e.get("type") == "system" and e.get("subtype") == "init"]
    assert len(init) == 1 and init[0]["session_id"] and init[0]["cwd"] == "/workspace", detail
    assert init[0]["permissionMode"] == "bypassPermissions"
    result = events[-1]
    assert result["type"] == "result" and result["subtype"] == "success", detail
    assert result["is_error"] is False and result["result"] == "done"
    assert result["usage"]["output_tokens"] > 0 and "total_cost_usd" in result
    tool_uses = [b for e in events if e.get("type") == "assistant"
                 for b in e["message"]["content"] if b.get("type") == "tool_use"]  # fmt: skip
    assert [t["name"] for t in tool_uses] == ["Write"]

    # The server saw the tool's result for exactly the tool_use it scripted, without error.
    results = api.tool_results()
    assert [r["tool_use_id"] for r in results] == [tool_uses[0]["id"]]
    assert not results[0].get("is_error")
    assert [r.reply_kind for r in api.main_calls()] == ["script:0", "script:1"]
    assert all(r.headers.get("x-api-key") == "sk-test-fake" for r in api.main_calls())
    assert not [r for r in api.requests if r.reply_kind == "unknown"], "unexpected endpoint"
    # The agent wrote as the sandbox user, not as root.
    assert os.stat(workspace / "hello.txt").st_uid == 1000
