"""A workspace's own egress rules (.jackin/config.toml [egress]) through the real CLI, local mode:
refused until approved (nothing made anywhere), applied once approved (probed from inside the
sandbox through its proxy), refused again once the file changes.

The destinations are HTTP servers on this machine (the local host), on an address other than
loopback (the proxy never connects to loopback): the one its default route leaves from."""

from __future__ import annotations

import http.server
import ipaddress
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CLI
from tests.e2e.helpers import (
    TEST_ROLE,
    bridge_address,
    git,
    make_workspace,
    wait_for,
    workspace_containers,
)

# Runs in the sandbox: one GET through the proxy to each port, the status line and the proxy's
# reason (its 403 body names the rule).
PROBE = r"""
import os, socket, sys
phost, pport = os.environ["HTTP_PROXY"][len("http://"):].split(":")
for tag, port in (("ALLOWED", sys.argv[2]), ("DENIED", sys.argv[3])):
    s = socket.create_connection((phost, int(pport)), timeout=10)
    s.sendall(("GET http://%s:%s/ HTTP/1.1\r\nHost: x\r\n\r\n" % (sys.argv[1], port)).encode())
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    body = data.split(b"\r\n\r\n", 1)[-1].decode("utf-8", "replace").strip()
    print(tag, data.split(b"\r\n")[0].decode(), "|", body[-120:], flush=True)
print("PROBE-DONE", flush=True)
"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


def _host_address() -> str:
    """This machine's address on its default route (no packet is sent), else the docker
    bridge's gateway: an address the sandbox can only reach through its proxy."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("10.255.255.255", 1))
        found = probe.getsockname()[0]
    except OSError:
        found = "127.0.0.1"
    finally:
        probe.close()
    if ipaddress.ip_address(found).is_loopback:
        found = bridge_address([])
    if not found:
        pytest.skip("this machine has no address but loopback")
    return found


@pytest.fixture
def servers() -> Iterator[tuple[str, int, int]]:
    """Two HTTP servers on an address of this machine: (address, allowed port, denied port)."""
    address = _host_address()
    made = [socketserver.ThreadingTCPServer((address, 0), _Quiet) for _ in range(2)]
    for server in made:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield address, made[0].server_address[1], made[1].server_address[1]
    for server in made:
        server.shutdown()
        server.server_close()


def _launch_args(inventory: Path, ws: Path, task: str, *extra: str) -> list[str]:
    return ["-i", str(inventory), "launch", "--role", TEST_ROLE, "--on", "local", "--runtime",
            "shell", "--network", "allowlist", "--task", task, *extra, str(ws)]  # fmt: skip


def _refused(cli: CLI, args: list[str], ws: Path, root: Path, why: str) -> None:
    """The launch is refused before anything is made: no host root, no container."""
    done = cli.run(*args)
    said = " ".join(done.stderr.split())
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert str(ws / ".jackin" / "config.toml") in said and why in said, said
    assert f"jackin-remote policy approve {ws.resolve()}" in said, said
    assert "--workspace-rules ignore" in said, said
    assert not root.exists(), "a refused launch made the host root"
    assert workspace_containers(ws) == set()


def _logs(cli: CLI, inventory: Path, session: str) -> str:
    for _ in range(600):  # a bound on the output reaching the log, not a timing expectation
        out = cli.run("-i", str(inventory), "logs", "--raw", session, check=True).stdout
        if "PROBE-DONE" in out:
            return out
        time.sleep(0.5)
    raise AssertionError(f"the probe never finished: {out}")


def test_workspace_rules_apply_only_as_approved(
    cli: CLI, local_inventory: Path, servers: tuple[str, int, int], tmp_path: Path
) -> None:
    address, allowed, denied = servers
    inv, root = str(local_inventory), tmp_path / "host-root"
    ws = make_workspace(tmp_path / "ws")
    (ws / "probe.py").write_text(PROBE)
    rules = ws / ".jackin" / "config.toml"
    rules.parent.mkdir()
    rules.write_text(f'[egress]\nallow = ["{address}"]\ndeny = [\n  "{address}:{denied}",\n]\n')
    git(ws, "add", "probe.py", ".jackin/config.toml")
    git(ws, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "probe and rules")
    args = _launch_args(local_inventory, ws, f"python3 probe.py {address} {allowed} {denied}")

    # Not approved: explain shows them pending, launch refuses and makes nothing.
    contract = cli.json("-i", inv, "explain", "--role", TEST_ROLE, "--on", "local", "--runtime",
                        "shell", "--network", "allowlist", str(ws))["contracts"][0]  # fmt: skip
    entry = contract["network"]["workspace_rules"]
    assert entry["status"] == "not approved" and entry["applied"] is False
    assert f"allow {address} (workspace .jackin/config.toml:2)" in entry["rules"]
    assert not [rule for rule in contract["network"]["rules"] if "workspace" in rule]
    assert any(".jackin/config.toml" in w and "NOT applied" in w for w in contract["warnings"])
    _refused(cli, args, ws, root, "are not approved")

    # Approved: the rules are in the session's proxy, with their origin, and deny still wins.
    approved = cli.json("policy", "approve", str(ws))
    assert approved["was"] == "not approved"
    assert [(r["action"], r["pattern"], r["origin"]) for r in approved["rules"]] == [
        ("allow", address, ".jackin/config.toml:2"),
        ("deny", f"{address}:{denied}", ".jackin/config.toml:4"),
    ]
    checked = cli.json("policy", "check", f"{address}:{allowed}", "--workspace", str(ws))
    assert checked["rule"] == f"allow {address} (workspace .jackin/config.toml:2)"
    data = cli.json(*args)
    (session,) = data["sessions"]
    assert session["error"] is None, session
    sid, network = session["id"], session["contract"]["network"]
    assert f"allow {address} (workspace .jackin/config.toml:2)" in network["rules"]
    assert f"deny {address}:{denied} (workspace .jackin/config.toml:4)" in network["rules"]
    assert network["workspace_rules"]["applied"] is True
    out = _logs(cli, local_inventory, sid)
    lines = {row.split(" ", 1)[0]: row for row in out.splitlines() if " " in row}
    assert lines["ALLOWED"].startswith("ALLOWED HTTP/1.0 200"), out
    assert lines["DENIED"].startswith("DENIED HTTP/1.1 403"), out
    assert f"deny {address}:{denied} (workspace .jackin/config.toml:4)" in lines["DENIED"], out
    logged = cli.json("-i", inv, "policy", "log", sid)["entries"]
    decided = {(e["port"], e["decision"]): e["rule"] for e in logged}
    assert decided[(allowed, "allowed")] == f"allow {address} (workspace .jackin/config.toml:2)"
    assert wait_for(cli, local_inventory, sid)["state"] == "exited"
    made = workspace_containers(ws)
    assert len(made) == 1

    # Changed: refused again (nothing new made) until approved again; ignore leaves them out.
    rules.write_text(rules.read_text() + "# one more line: another content\n")
    refused = cli.run(*args)
    said = " ".join(refused.stderr.split())
    assert refused.returncode == 2 and "changed since you approved them" in said, said
    assert workspace_containers(ws) == made
    ignored = cli.json("-i", inv, "explain", "--role", TEST_ROLE, "--on", "local", "--runtime",
                       "shell", "--network", "allowlist", "--workspace-rules", "ignore",
                       str(ws))["contracts"][0]  # fmt: skip
    assert ignored["network"]["workspace_rules"]["status"] == "ignored"
    assert not [rule for rule in ignored["network"]["rules"] if "workspace" in rule]
    assert cli.json("policy", "approve", str(ws))["was"] == "changed since approved"
    again = cli.json("-i", inv, "explain", "--role", TEST_ROLE, "--on", "local", "--runtime",
                     "shell", "--network", "allowlist", str(ws))["contracts"][0]  # fmt: skip
    assert again["network"]["workspace_rules"]["applied"] is True
    cli.run("-i", inv, "rm", "--force", sid, check=True)


def test_policy_check_takes_the_role_and_the_hosts_groups(cli: CLI, tmp_path: Path) -> None:
    inventory = tmp_path / "inv.toml"
    inventory.write_text(
        '[hosts.local]\ntransport = "local"\n\n'
        '[groups.builders]\nmembers = ["local"]\n[groups.builders.egress]\n'
        'allow = ["artifacts.corp.example.com"]\n'
    )  # fmt: skip
    inv, claude_role = str(inventory), str(Path(TEST_ROLE).parent / "claude-test")
    # The role's only runtime is the one a launch runs: its model API is allowed.
    by_role = cli.json("policy", "check", "api.anthropic.com", "--role", claude_role)
    assert by_role["runtime"] == "claude" and by_role["allowed"] is True
    plain = cli.json("policy", "check", "api.anthropic.com", ok_codes=(1,))  # shell: no model API
    assert plain["runtime"] == "shell" and plain["allowed"] is False
    several = cli.run("policy", "check", "api.anthropic.com", "--role", TEST_ROLE)
    assert several.returncode == 2 and "--runtime is required" in several.stderr
    foreign = cli.run("policy", "check", "x.com", "--role", TEST_ROLE, "--runtime", "claude")
    assert foreign.returncode == 2 and "does not support runtime 'claude'" in foreign.stderr
    grouped = cli.json("-i", inv, "policy", "check", "artifacts.corp.example.com", "--on", "local")
    assert grouped["allowed"] is True and grouped["rule"] == (
        f"allow artifacts.corp.example.com (inventory {inventory}:7)"
    )


def test_hostile_text_in_the_file_is_shown_escaped(cli: CLI, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / ".jackin").mkdir(parents=True)
    config = ws / ".jackin" / "config.toml"
    config.write_text(
        '[egress]\nallow = [\n  "ok.example.com",\n  "\\u001b]52;c;Zm9v\\u0007x.com",\n]\n'
    )
    done = cli.run("policy", "approve", str(ws))
    assert done.returncode == 2 and "\x1b" not in done.stderr and "\x07" not in done.stderr
    said = " ".join(done.stderr.split())
    assert f"{config}:4: egress.allow[1]:" in said and "\\x1b" in said, said
    config.write_text('[egress]\n"\\u202eyek" = ["x.com"]\n')
    done = cli.run("policy", "approve", str(ws))
    assert done.returncode == 2 and "\u202e" not in done.stderr and "\\u202e" in done.stderr
    # Nothing was approved along the way; a revoke says so.
    assert cli.json("policy", "approve", "--revoke", str(ws))["revoked"] is False
