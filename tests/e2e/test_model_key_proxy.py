"""With `--network allowlist` the runtime's API key never enters the sandbox: the session's
proxy adds it to the model API calls. The real Claude Code CLI, offline, against the scripted
Messages API, through the proxy; a canary key is looked for everywhere else."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from agent_host.wire import MODEL_KEY_PLACEHOLDER
from tests.conftest import CLI
from tests.e2e.helpers import make_workspace, wait_for
from tests.fakes.messages_api import MessagesAPI, text, tool_use

ROLE = Path(__file__).resolve().parents[2] / "roles" / "claude-test"
CANARY = "sk-ant-canary-5b1e0c2a9d-never-anywhere"
pytestmark = pytest.mark.docker

# Run by the agent's Bash tool, inside the sandbox: where could the key be? The command is itself
# written down (the agent's transcript): it holds the canary in two halves, joined by the shell.
HALF = len(CANARY) // 2
SCAN = (
    f"c={CANARY[:HALF]}; c=${{c}}{CANARY[HALF:]}; "
    'echo ENV=$(env | grep -c "$c"); '
    "echo PROC=$(cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' | grep -c \"$c\"); "
    'echo FILES=$(grep -rls "$c" / --exclude-dir=proc --exclude-dir=sys 2>/dev/null | wc -l); '
    "echo KEYVAR=$ANTHROPIC_API_KEY; echo BASE=$ANTHROPIC_BASE_URL"
)


def test_the_model_key_reaches_the_api_through_the_proxy_and_nowhere_else(
    cli: CLI, local_inventory: Path, tmp_path: Path, laptop: Path
) -> None:
    if not (ROLE / "vendor" / "claude").exists():
        pytest.skip("Claude Code binary missing: run scripts/prepare-claude-role")
    ws = make_workspace(tmp_path / "ws")
    cli.env["MY_ANTHROPIC_KEY"] = CANARY
    script = [[text("Looking."), tool_use("Bash", {"command": SCAN})], [text("done")]]
    with MessagesAPI(script, host="127.0.0.1") as api:
        args = ["-i", str(local_inventory), "launch", "--role", str(ROLE), "--runtime", "claude",
                "--key-from", "MY_ANTHROPIC_KEY", "--network", "allowlist",
                "--model-api", f"http://localhost:{api.port}", "--json",
                "--task", "look around", str(ws)]  # fmt: skip
        launched = cli.run(*args, timeout=900)
        assert launched.returncode == 0, launched.stderr
        (session,) = json.loads(launched.stdout)["sessions"]
        sid = session["id"]
        row = wait_for(cli, local_inventory, sid, timeout=300)
        logs = cli.run("-i", str(local_inventory), "logs", "--raw", sid, check=True).stdout
        assert row["state"] == "exited", logs
        # The proxy added the key: every scripted call carried it, and nothing else did.
        calls = api.main_calls()
        assert len(calls) == 2 and all(c.headers.get("x-api-key") == CANARY for c in calls)
        assert all("authorization" not in {k.lower() for k in c.headers} for c in calls)
        (result,) = api.tool_results()
    scan = json.dumps(result.get("content"))
    for probe in ("ENV=0", "PROC=0", "FILES=0", f"KEYVAR={MODEL_KEY_PLACEHOLDER}"):
        assert probe in scan, scan
    assert "BASE=http://" in scan and "/jackin-model" in scan, scan

    contract = session["contract"]
    (credential,) = contract["credentials"]
    assert credential["delivery"] == "proxy" and "never in the sandbox" in credential["exposure"]
    assert not [w for w in contract["warnings"] if "environment variable in the sandbox" in w]
    logged = cli.json("-i", str(local_inventory), "policy", "log", sid)["entries"]
    assert [e["rule"] for e in logged if e["port"] == api.port] == [
        "the runtime's model API (its key added by the proxy)"
    ]

    # Nowhere else: docker inspect, the host's processes, every log and output, both databases.
    inspect = subprocess.run(["docker", "inspect", row["container"]], capture_output=True,
                             text=True, check=True).stdout  # fmt: skip
    assert CANARY not in inspect and MODEL_KEY_PLACEHOLDER in inspect
    ps = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout
    assert CANARY not in ps
    ls_json = cli.run("-i", str(local_inventory), "ls", "--json", check=True).stdout
    for output in (launched.stdout, launched.stderr, logs, ls_json, json.dumps(logged)):
        assert CANARY not in output
    host_root = tmp_path / "host-root"
    for path in [*laptop.rglob("*"), *host_root.rglob("*.db*"), *host_root.rglob("*.log")]:
        if path.is_file():
            assert CANARY.encode() not in path.read_bytes(), path
    # The proxy's copy (0600, outside every mount) goes with the session.
    held = host_root / "sessions" / sid / "egress-model.json"
    assert held.stat().st_mode & 0o077 == 0
    cli.run("-i", str(local_inventory), "rm", "--force", sid, check=True)
    assert not held.exists()
