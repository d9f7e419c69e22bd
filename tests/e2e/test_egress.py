"""`--network allowlist`: each claim of the contract's network section, probed from inside the
sandbox, local and over SSH. The destinations are HTTP servers on the host itself, bound to the
address of its docker engine's default bridge (private, and not the session's network: the proxy
refuses loopback); `localhost`, which only the host's proxy resolves, is allowed but refused for
its address."""

from __future__ import annotations

import http.server
import json
import secrets
import socketserver
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import fleet
from tests.conftest import CLI, add_host_copy
from tests.e2e.helpers import TEST_ROLE, bridge_address, make_workspace, wait_for

# Runs in the sandbox: phase 1, then waits for the test to kill the proxy, then phase 2.
PROBE = r"""
import os, socket, sys, time
proxy = os.environ["HTTP_PROXY"][len("http://"):]
phost, pport = proxy.split(":")
server, allowed, denied = sys.argv[1], sys.argv[2], sys.argv[3]

def ask(head):
    try:
        s = socket.create_connection((phost, int(pport)), timeout=10)
    except OSError as exc:
        return "unreachable " + type(exc).__name__
    s.sendall(head.encode())
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n")[0].decode() + " " + data[-60:].decode("utf-8", "replace").strip()

def probe(tag):
    print(tag, "GET_ALLOWED", ask("GET http://%s:%s/ HTTP/1.1\r\nHost: x\r\n\r\n"
                                  % (server, allowed)))
    print(tag, "CONNECT_ALLOWED", ask("CONNECT %s:%s HTTP/1.1\r\n\r\n"
                                      "GET / HTTP/1.0\r\n\r\n" % (server, allowed)))
    print(tag, "CONNECT_PORTLESS", ask("CONNECT %s:1 HTTP/1.1\r\n\r\n" % server))
    print(tag, "GET_DENIED", ask("GET http://%s:%s/ HTTP/1.1\r\nHost: x\r\n\r\n"
                                 % (server, denied)))
    print(tag, "GET_LOOPBACK", ask("GET http://localhost:%s/ HTTP/1.1\r\nHost: x\r\n\r\n"
                                   % allowed))
    print(tag, "GET_UNLISTED", ask("GET http://unlisted.invalid/ HTTP/1.1\r\nHost: x\r\n\r\n"))
    for where in ((phost, int(allowed)), ("1.1.1.1", 80)):
        try:
            socket.create_connection(where, timeout=3).close()
            print(tag, "RAW", where, "reached")
        except OSError as exc:
            print(tag, "RAW", where, "blocked", type(exc).__name__)
    try:
        socket.getaddrinfo("example.com", 443)
        print(tag, "DNS resolved")
    except OSError:
        print(tag, "DNS blocked")
    sys.stdout.flush()

probe("P1")
print("PHASE1-DONE", flush=True)
for _ in range(3000):
    if os.path.exists("/workspace/go2"):
        break
    time.sleep(0.1)
probe("P2")
"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def local_servers() -> Iterator[tuple[str, int, int]]:
    """Two HTTP servers on this machine's bridge address: (address, allowed port, denied port)."""
    address = bridge_address([])
    servers = [socketserver.ThreadingTCPServer((address, 0), _Quiet) for _ in range(2)]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    yield address, servers[0].server_address[1], servers[1].server_address[1]
    for server in servers:
        server.shutdown()
        server.server_close()


# Runs on a fleet host: binds port 0 (the kernel picks a free one, so nothing else on the host
# can hold it), writes the port (or why it could not bind) to a file, then serves.
FLEET_SERVER = r"""
import http.server, os, socketserver, sys, traceback
address, report, tag = sys.argv[1], sys.argv[2], sys.argv[3]

def tell(text):
    with open(report + ".tmp", "w") as f:
        f.write(text)
    os.replace(report + ".tmp", report)

try:
    server = socketserver.ThreadingTCPServer((address, 0), http.server.SimpleHTTPRequestHandler)
except BaseException:
    tell("error " + traceback.format_exc())
    sys.exit(1)
tell(str(server.server_address[1]))
server.serve_forever()
"""


def _fleet_servers(container: str, tag: str) -> tuple[str, int, int]:
    """Two HTTP servers on a fleet host's bridge address, started with docker exec: (address,
    allowed port, denied port). Each is listening once its port file exists."""
    address = bridge_address(["docker", "exec", container])
    ports = []
    for n in range(2):
        report = f"/tmp/{tag}-{n}.port"
        subprocess.run(["docker", "exec", "-d", "-w", "/tmp", container, "python3", "-c",
                        FLEET_SERVER, address, report, tag], check=True)  # fmt: skip
        for _ in range(600):  # a bound on the server starting, never an expectation of time
            done = subprocess.run(["docker", "exec", container, "cat", report],
                                  capture_output=True, text=True)  # fmt: skip
            if done.returncode == 0 and done.stdout:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"http server on {container} never wrote {report}")
        if not done.stdout.isdigit():
            raise AssertionError(f"http server on {container} failed: {done.stdout}")
        ports.append(int(done.stdout))
    return address, ports[0], ports[1]


@pytest.fixture(params=["local", "fleet-1"])
def egress_host(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, Path, list[str], tuple[str, int, int], str]]:
    """(host name, inventory, docker-exec prefix, (server address, allowed port, denied port),
    host root)."""
    if request.param == "local":
        inventory = request.getfixturevalue("local_inventory")
        ports = request.getfixturevalue("local_servers")
        yield "local", inventory, [], ports, str(tmp_path / "host-root")
        return
    inventory = request.getfixturevalue("fleet_inventory")
    root = f"/home/jackin/egress-{secrets.token_hex(4)}"
    add_host_copy(inventory, "fleet-1", "egress", root)
    container = fleet.container("fleet-1")
    tag = f"egress-server-{secrets.token_hex(4)}"
    ports = _fleet_servers(container, tag)
    try:
        yield "egress", inventory, ["docker", "exec", container], ports, root
    finally:
        subprocess.run(["docker", "exec", container, "pkill", "-f", tag], capture_output=True)


def _logs(cli: CLI, inventory: Path, session: str) -> str:
    return cli.run("-i", str(inventory), "logs", "--raw", session, check=True).stdout


def _wait_logs(cli: CLI, inventory: Path, session: str, marker: str) -> str:
    for _ in range(600):  # a bound on the sandbox getting there, not a timing expectation
        out = _logs(cli, inventory, session)
        if marker in out:
            return out
        time.sleep(0.5)
    raise AssertionError(f"{marker} never appeared: {_logs(cli, inventory, session)}")


def _lines(out: str, tag: str) -> dict[str, str]:
    found = {}
    for row in out.splitlines():
        parts = row.split(" ", 2)
        if len(parts) == 3 and parts[0] == tag:
            key = parts[1] if parts[1] != "RAW" else "RAW " + parts[2].split(")")[0] + ")"
            found[key] = parts[2]
    return found


def test_allowlist_lets_through_only_what_the_rules_allow_and_fails_closed(
    cli: CLI, egress_host: tuple[str, Path, list[str], tuple[str, int, int], str], tmp_path: Path
) -> None:
    host, inventory, on_host, (server, allowed, denied), root = egress_host
    ws = make_workspace(tmp_path / "ws")
    (ws / "probe.py").write_text(PROBE)
    subprocess.run(["git", "-C", str(ws), "add", "probe.py"], check=True)
    subprocess.run(["git", "-C", str(ws), "-c", "user.name=t", "-c", "user.email=t@t", "commit",
                    "-qm", "probe"], check=True)  # fmt: skip
    inv = str(inventory)
    data = cli.json("-i", inv, "launch", "--role", TEST_ROLE, "--on", host, "--runtime", "shell",
                    "--network", "allowlist", "--allow", server, "--allow",
                    f"{server}:{allowed}", "--allow", "localhost", "--deny", f"{server}:{denied}",
                    "--task", f"python3 probe.py {server} {allowed} {denied}",
                    str(ws))  # fmt: skip
    (session,) = data["sessions"]
    assert session["error"] is None, session
    sid, network = session["id"], session["contract"]["network"]
    assert network["policy"] == "allowlist" and network["enforcement"] == "host-enforced"
    assert f"deny {server}:{denied} (--deny)" in network["rules"]
    assert f"allow {server} (--allow)" in network["rules"]
    assert any("not a firewall for the host" in c for c in network["caveats"])

    out = _wait_logs(cli, inventory, sid, "PHASE1-DONE")
    first = _lines(out, "P1")
    assert first["GET_ALLOWED"].startswith("HTTP/1.0 200"), out
    assert "200 Connection established" in first["CONNECT_ALLOWED"], out
    # A CONNECT off 443 through a rule without the port is denied, and says how to allow it.
    assert first["CONNECT_PORTLESS"].startswith("HTTP/1.1 403"), out
    assert f"--allow {server}:1" in first["CONNECT_PORTLESS"], out
    # Both rules match the denied port: the deny wins.
    assert first["GET_DENIED"].startswith("HTTP/1.1 403"), out
    assert f"deny {server}:{denied} (--deny)" in first["GET_DENIED"], out
    # An allowed name resolving to loopback is refused for its address.
    assert first["GET_LOOPBACK"].startswith("HTTP/1.1 403"), out
    assert first["GET_UNLISTED"].startswith("HTTP/1.1 403"), out
    assert all("blocked" in value for key, value in first.items() if key.startswith("RAW")), out
    assert first["DNS"] == "blocked", out

    logged = cli.json("-i", inv, "policy", "log", sid)["entries"]
    decided = {(e["host"], e["port"], e["decision"]): e for e in logged}
    assert decided[(server, allowed, "allowed")]["rule"] == f"allow {server}:{allowed} (--allow)"
    assert decided[(server, allowed, "allowed")]["bytes_down"] > 0
    assert decided[(server, denied, "denied")]["rule"] == f"deny {server}:{denied} (--deny)"
    assert decided[("localhost", allowed, "denied")]["rule"].startswith(
        "address refused: localhost resolves to "
    )
    unlisted = decided[("unlisted.invalid", 80, "denied")]
    assert unlisted["rule"] == "no rule allows it (deny by default)"
    checked = cli.run("-i", inv, "policy", "check", "--session", sid, f"{server}:{denied}")
    assert checked.returncode == 1 and "deny wins" not in checked.stdout
    assert f"denied by deny {server}:{denied} (--deny)" in " ".join(checked.stdout.split())

    # The proxy dies: nothing gets out any more (no other route exists).
    killed = subprocess.run([*on_host, "pkill", "-f", f"jackin-egress-proxy.*{sid}"])
    assert killed.returncode == 0, "no proxy process of the session was running"
    subprocess.run([*on_host, "touch", f"{root}/sessions/{sid}/work/go2"], check=True)
    row = wait_for(cli, inventory, sid, on=host)
    assert row["state"] == "exited", row
    second = _lines(_logs(cli, inventory, sid), "P2")
    for key in ("GET_ALLOWED", "CONNECT_ALLOWED", "GET_DENIED", "GET_UNLISTED", "GET_LOOPBACK"):
        assert second[key].startswith("unreachable"), second
    # --follow of an ended session: every entry once, then it returns by itself.
    followed = cli.run("-i", inv, "policy", "log", sid, "--follow", "--json", check=True)
    streamed = [json.loads(item)["entry"] for item in followed.stdout.splitlines()]
    assert sorted((e["host"], e["port"], e["decision"]) for e in streamed) == sorted(decided)
    cli.run("-i", inv, "rm", "--force", sid, check=True)
    listing = [*on_host, "docker", "network", "ls", "-q", "--filter", f"name=jk-{sid}-egress"]
    networks = subprocess.run(listing, capture_output=True, text=True)
    assert networks.stdout.strip() == "", "the session's network outlived rm"


def test_allowlist_flags_are_checked(cli: CLI, local_inventory: Path, tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws")
    base = ["-i", str(local_inventory), "explain", "--role", TEST_ROLE, "--runtime", "shell"]
    cases = (
        (
            ["--network", "open", "--allow", "x.com"],
            "--allow and --deny apply to --network allowlist only",
        ),
        (
            ["--network", "none", "--deny", "x.com"],
            "--allow and --deny apply to --network allowlist only",
        ),
        (["--network", "allowlist", "--allow", "a.*.com"], "--allow: 'a.*.com' is not a host"),
        (["--network", "allowlist", "--deny", "x.com:99999"], "--deny: 'x.com:99999': the port"),
        (["--network", "wide"], "--network 'wide': expected one of open, none, allowlist"),
    )
    for args, said in cases:
        done = cli.run(*base, *args, str(ws))
        assert done.returncode == 2, (args, done.stderr)
        assert said in " ".join(done.stderr.split()), done.stderr
    # Without --network the session gets allowlist (this host can enforce it): --allow applies.
    (contract,) = cli.json(*base, "--allow", "x.com", str(ws))["contracts"]
    assert contract["network"]["policy"] == "allowlist", contract["network"]
    assert "allow x.com (--allow)" in contract["network"]["rules"], contract["network"]["rules"]


def test_inventory_rules_are_edited_in_place_and_reach_the_contract(
    cli: CLI, local_inventory: Path, tmp_path: Path
) -> None:
    inv = local_inventory
    hosts = inv / "local.toml"
    hosts.write_text("# this laptop\n" + hosts.read_text() + "\n# the end, kept\n")
    said = cli.run("-i", str(inv), "policy", "allow", "**.corp.example.com", "--on", "local")
    assert said.returncode == 0, said.stderr
    cli.run("-i", str(inv), "policy", "deny", "secret.corp.example.com", "--on", "local",
            check=True)  # fmt: skip
    again = cli.json("-i", str(inv), "policy", "deny", "secret.corp.example.com", "--on", "local")
    assert again["changed"] is False
    text = hosts.read_text()
    assert text.startswith("# this laptop\n") and "\n# the end, kept\n" in text
    assert text.endswith('"]\n')  # one newline at the end, as before
    assert '[hosts.local.egress]\nallow = ["**.corp.example.com"]\n' in text
    assert 'deny = ["secret.corp.example.com"]' in text
    bad = cli.run("-i", str(inv), "policy", "allow", "a b.com", "--on", "local")
    assert bad.returncode == 2 and hosts.read_text() == text  # nothing half-written

    allow_line = text.splitlines().index('allow = ["**.corp.example.com"]') + 1
    ws = make_workspace(tmp_path / "ws")
    contract = cli.json("-i", str(inv), "explain", "--role", TEST_ROLE, "--runtime", "shell",
                        "--network", "allowlist", str(ws))["contracts"][0]  # fmt: skip
    rules = contract["network"]["rules"]
    assert f"allow **.corp.example.com (inventory {hosts}:{allow_line})" in rules
    assert any(r.startswith("deny secret.corp.example.com (inventory ") for r in rules)
    checked = cli.json("-i", str(inv), "policy", "check", "secret.corp.example.com", "--on",
                       "local", ok_codes=(1,))  # fmt: skip
    assert checked["allowed"] is False and "inventory" in checked["rule"]
    assert cli.json("-i", str(inv), "policy", "check", "a.corp.example.com", "--on",
                    "local")["allowed"] is True  # fmt: skip
