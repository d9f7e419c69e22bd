#!/usr/bin/env python3
"""Benchmark: what the allowlist egress proxy costs a sandbox, against a direct route.

    .venv/bin/python scripts/bench_egress.py [--rounds 5] [--requests 200] [--samples 50]
                                             [--diagnose]

The real path, in local mode (this machine's docker engine, no SSH). One small HTTP server runs
in this process, bound to the docker engine's default bridge address (private, and not loopback,
which the proxy refuses). Two sessions are launched with the CLI, each a whole process:

    jackin-remote -i local.toml launch --on local --role roles/test-agent --runtime shell \\
        --network allowlist --allow ADDR:PORT --task "sleep 86400" --json WORKSPACE
    jackin-remote ... --network open ...      (the same, without --allow)

Inside each sandbox (`docker exec ... python3 -c CLIENT`) a client on raw sockets, one connection
per request (the proxy serves one request per connection; the direct client asks
`Connection: close` of the server, so both sides do the same work):

  loop          --requests sequential `GET /` (a 64-byte body), after 5 untimed: the total wall.
                Through the proxy (HTTP_PROXY, absolute-form) in the allowlist sandbox, direct to
                ADDR:PORT in the open one. Goal: proxy / direct <= 1.3x.
  ttfb http     --samples times: from connect() to the first byte of the response.
  ttfb connect  the allowlist sandbox only: connect() to the proxy, CONNECT ADDR:PORT, the 200,
                then the GET through the tunnel, to its first byte. Compared with direct ttfb.
  keep-alive    --requests GETs on one connection (after 5 untimed): through one CONNECT tunnel
                (how HTTPS clients use the proxy) in the allowlist sandbox, on one direct
                connection in the open one. The proxy then only copies bytes.

Each of --rounds runs the allowlist sandbox's client, then the open one's (interleaved, so load
drifts hit both). Medians over rounds; ttfb medians and p95s over all samples. The sessions are
removed (`rm --force`) at the end. Results go to .bench/egress.json.

--diagnose: where the proxy's time goes. Three more host processes, each listening on all
addresses (and forwarding to the origin only), are used from the open sandbox for the same loop:
EgressProxy with a no-op record sink; EgressProxy recording into a host database the way egressd
does (agent_host.state.Store.record_egress, one per connection); and the cheapest relay asyncio
allows (read the head, connect, send a fixed request, copy the answer back, close): the floor of
any one-connection-per-request Python proxy on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench_common import BENCH_DIR, ROOT, Stats, jackin_cli, load_note, local_inventory, machine

sys.path.insert(0, str(ROOT))

from tests.e2e.helpers import bridge_address

GOAL = 1.3
BODY = b"x" * 64
KEEP_ALIVE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (
    len(BODY), BODY,
)  # fmt: skip
RESPONSE = KEEP_ALIVE.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
LAUNCH = ["--on", "local", "--role", str(ROOT / "roles" / "test-agent"), "--runtime", "shell",
          "--task", "sleep 86400", "--json"]  # fmt: skip

# Runs in the sandbox (its python3): prints one JSON line. Through a proxy (`env`: HTTP_PROXY,
# or HOST:PORT) or direct (`-`); CONNECT samples and the keep-alive loop too when asked.
CLIENT = r"""
import json, os, socket, sys, time
via, host, port, requests, samples, tunnels, keep_alive = sys.argv[1], sys.argv[2], \
    int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6] == "1", int(sys.argv[7])
where = "%s:%d" % (host, port)
proxy = None
if via != "-":
    address = os.environ["HTTP_PROXY"][len("http://"):].rstrip("/") if via == "env" else via
    ph, pp = address.rsplit(":", 1)
    proxy = (ph, int(pp))

def finish(s, first):
    data = first
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    if not data.startswith(b"HTTP/1.1 200") or not data.endswith(b"x" * 64):
        raise SystemExit("bad response: %r" % data[:200])

def get():
    t0 = time.perf_counter()
    if proxy:
        s = socket.create_connection(proxy)
        s.sendall(("GET http://%s/ HTTP/1.1\r\nHost: %s\r\n\r\n" % (where, where)).encode())
    else:
        s = socket.create_connection((host, port))
        s.sendall(("GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % where).encode())
    first = s.recv(65536)
    t1 = time.perf_counter()
    finish(s, first)
    return t1 - t0

def open_tunnel():
    s = socket.create_connection(proxy)
    s.sendall(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (where, where)).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        if not chunk:
            raise SystemExit("CONNECT refused: %r" % head)
        head += chunk
    if not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit("CONNECT refused: %r" % head)
    return s

def tunnel():
    t0 = time.perf_counter()
    s = open_tunnel()
    s.sendall(("GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % where).encode())
    first = s.recv(65536)
    t1 = time.perf_counter()
    finish(s, first)
    return t1 - t0

for _ in range(5):
    get()
start = time.perf_counter()
for _ in range(requests):
    get()
loop = time.perf_counter() - start
def kept_alive():
    s = open_tunnel() if proxy else socket.create_connection((host, port))
    request = ("GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % where).encode()
    def one():
        s.sendall(request)
        data = b""
        while len(data) < keep_alive:
            chunk = s.recv(65536)
            if not chunk:
                raise SystemExit("the connection ended: %r" % data[:200])
            data += chunk
    for _ in range(5):
        one()
    start = time.perf_counter()
    for _ in range(requests):
        one()
    spent = time.perf_counter() - start
    s.close()
    return spent

out = {"loop_s": loop, "ttfb_http_s": [get() for _ in range(samples)]}
if tunnels:
    tunnel()
    out["ttfb_connect_s"] = [tunnel() for _ in range(samples)]
if keep_alive:
    out["keep_alive_s"] = kept_alive()
print(json.dumps(out))
"""

# --diagnose: host processes, each printing `ready PORT` once it listens on all addresses.
DIAG_PROXY = r"""
import asyncio, sys, tempfile
sys.path.insert(0, sys.argv[1])
from agent_host.proxy import EgressProxy
origin, sink = (sys.argv[2], int(sys.argv[3])), sys.argv[4]
def decide(host, port):
    return (host, port) == origin, "allow %s:%d (bench)" % origin
record = lambda entry: None
if sink == "store":
    from agent_host.state import Store
    store = Store(tempfile.mkdtemp(prefix="jkb-egress-store-"))
    def record(e):
        decision = "denied" if not e.allowed else ("failed" if e.error else "allowed")
        store.record_egress("bench", e.host, e.port, decision, e.rule, e.bytes_up, e.bytes_down)
async def main():
    proxy = EgressProxy(decide, record)
    print("ready %d" % (await proxy.start("0.0.0.0", 0))[1], flush=True)
    await asyncio.get_running_loop().create_future()
asyncio.run(main())
"""
DIAG_RELAY = r"""
import asyncio, sys
origin = (sys.argv[1], int(sys.argv[2]))
async def relay(reader, writer):
    await reader.readuntil(b"\r\n\r\n")
    up_reader, up_writer = await asyncio.open_connection(*origin)
    up_writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    writer.write(await up_reader.read())
    writer.close()
    up_writer.close()
async def main():
    server = await asyncio.start_server(relay, "0.0.0.0", 0)
    print("ready %d" % server.sockets[0].getsockname()[1], flush=True)
    await asyncio.get_running_loop().create_future()
asyncio.run(main())
"""


class Server:
    """A minimal HTTP origin (asyncio, in a thread): any request head gets the same small answer;
    the connection closes after one that asks `Connection: close`. Its cost is the same for both
    routes."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Server:
        self.thread.start()
        if not self.ready.wait(30):
            raise SystemExit("the bench's HTTP server did not start")
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._serve, self.host, 0))
        self.port = int(server.sockets[0].getsockname()[1])
        self.ready.set()
        self.loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # keep-alive, until the client asks to close or goes
                head = await reader.readuntil(b"\r\n\r\n")
                close = b"\r\nconnection: close\r\n" in head.lower()
                writer.write(RESPONSE if close else KEEP_ALIVE)
                await writer.drain()
                if close:
                    break
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def local_bridge_address() -> str:
    address = bridge_address([])
    if not address:
        raise SystemExit("the docker engine has no default bridge address to serve on")
    return address


class Sessions:
    """The two sandboxes, launched and removed with the CLI."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.env = dict(os.environ, JACKIN_HOME=str(work / "jh"))
        self.inventory = work / "local.toml"
        self.inventory.write_text(local_inventory(work / "local-root"))
        self.workspace = work / "workspace"
        self.ids: list[str] = []

    def cli(self, *args: str) -> str:
        argv = [jackin_cli(), "-i", str(self.inventory), *args]
        done = subprocess.run(argv, env=self.env, cwd=self.work, capture_output=True, text=True,
                              timeout=900)  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr}")
        return done.stdout

    def make_workspace(self) -> None:
        self.workspace.mkdir()
        (self.workspace / "README.md").write_text("egress bench\n")
        ident = ["-c", "user.name=bench", "-c", "user.email=bench@example.invalid"]
        for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "x"]):
            subprocess.run(["git", "-C", str(self.workspace), *ident, *args], check=True)

    def launch(self, *network: str) -> str:
        """Launch one sandbox; its container's name."""
        data = json.loads(self.cli("launch", *LAUNCH, *network, str(self.workspace)))
        (session,) = data["sessions"]
        if session["error"]:
            raise SystemExit(f"launch {' '.join(network)}: {session['error']}")
        self.ids.append(session["id"])
        rows = json.loads(self.cli("ls", "--json", "--on", "local"))["sessions"]
        (row,) = [r for r in rows if r["id"] == session["id"]]
        if row["state"] != "running":
            raise SystemExit(f"session {session['id']} is {row['state']}, not running")
        return str(row["container"])

    def remove(self) -> None:
        for session in self.ids:
            self.cli("rm", "--force", session, "--json")


def client(
    container: str,
    via: str,
    server: Server,
    requests: int,
    samples: int,
    tunnels: bool = False,
    keep_alive: bool = False,
) -> Any:
    argv = ["docker", "exec", container, "python3", "-c", CLIENT, via, server.host,
            str(server.port), str(requests), str(samples), "1" if tunnels else "0",
            str(len(KEEP_ALIVE)) if keep_alive else "0"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"the client (via {via}) failed in {container}:\n{done.stdout}"
                         f"{done.stderr}")  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


class HostProcess:
    """A --diagnose process on this machine, by its pid; it says `ready PORT`."""

    def __init__(self, *argv: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-I", "-c", *argv], stdout=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, text=True)  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if line[:1] != ["ready"]:
            self.stop()
            raise SystemExit(f"a --diagnose process did not start: {argv[1:]}")
        self.port = int(line[1])

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


DIAGNOSES = ("noop_sink", "store_sink", "floor_relay")


def bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": machine()}
    server = Server(local_bridge_address()).start()
    sessions = Sessions(work)
    helpers: dict[str, HostProcess] = {}
    try:
        if args.diagnose:
            origin = (server.host, str(server.port))
            helpers["noop_sink"] = HostProcess(DIAG_PROXY, str(ROOT), *origin, "noop")
            helpers["store_sink"] = HostProcess(DIAG_PROXY, str(ROOT), *origin, "store")
            helpers["floor_relay"] = HostProcess(DIAG_RELAY, *origin)
        sessions.make_workspace()
        where = f"{server.host}:{server.port}"
        proxied = sessions.launch("--network", "allowlist", "--allow", where)
        direct = sessions.launch("--network", "open")
        loops: dict[str, list[float]] = {"proxy": [], "direct": [], "tunnel_keep_alive": [],
                                         "direct_keep_alive": []}  # fmt: skip
        ttfb: dict[str, list[float]] = {"proxy_http": [], "proxy_connect": [], "direct": []}
        diagnosed: dict[str, list[float]] = {name: [] for name in helpers}
        for i in range(1, args.rounds + 1):
            through = client(proxied, "env", server, args.requests, args.samples, tunnels=True,
                             keep_alive=True)  # fmt: skip
            straight = client(direct, "-", server, args.requests, args.samples, keep_alive=True)
            loops["proxy"].append(through["loop_s"])
            loops["direct"].append(straight["loop_s"])
            loops["tunnel_keep_alive"].append(through["keep_alive_s"])
            loops["direct_keep_alive"].append(straight["keep_alive_s"])
            ttfb["proxy_http"] += through["ttfb_http_s"]
            ttfb["proxy_connect"] += through["ttfb_connect_s"]
            ttfb["direct"] += straight["ttfb_http_s"]
            line = (f"round {i}: {args.requests} GETs through the proxy "
                    f"{through['loop_s']:.3f} s, direct {straight['loop_s']:.3f} s")  # fmt: skip
            for name, helper in helpers.items():
                via = f"{server.host}:{helper.port}"
                diagnosed[name].append(client(direct, via, server, args.requests, 0)["loop_s"])
                line += f", {name} {diagnosed[name][-1]:.3f} s"
            print(line, flush=True)
    finally:
        for helper in helpers.values():
            helper.stop()
        sessions.remove()
        server.stop()
    proxy_loop, direct_loop = Stats.of(loops["proxy"]), Stats.of(loops["direct"])
    tunnel_kept, direct_kept = (
        Stats.of(loops["tunnel_keep_alive"]),
        Stats.of(loops["direct_keep_alive"]),
    )
    stats = {key: Stats.of(values) for key, values in ttfb.items()}
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    result.update(
        {
            "rounds": args.rounds,
            "requests": args.requests,
            "samples_per_round": args.samples,
            "server": "asyncio origin on the docker bridge address, 64-byte body",
            "loop_proxy": proxy_loop.as_dict(),
            "loop_direct": direct_loop.as_dict(),
            "ratio_loop": proxy_loop.median / direct_loop.median,
            "per_request_overhead_ms": (proxy_loop.median - direct_loop.median)
            / args.requests
            * 1000,
            "keep_alive_tunnel": tunnel_kept.as_dict(),
            "keep_alive_direct": direct_kept.as_dict(),
            "ratio_keep_alive": tunnel_kept.median / direct_kept.median,
            "ttfb_proxy_http": stats["proxy_http"].as_dict(),
            "ttfb_proxy_connect": stats["proxy_connect"].as_dict(),
            "ttfb_direct": stats["direct"].as_dict(),
            "ratio_ttfb_http": stats["proxy_http"].median / stats["direct"].median,
            "ratio_ttfb_connect": stats["proxy_connect"].median / stats["direct"].median,
            "goal_ratio_loop": GOAL,
        }
    )
    if diagnosed:
        result["diagnose"] = {
            name: {**Stats.of(values).as_dict(),
                   "ratio_to_direct": Stats.of(values).median / direct_loop.median}
            for name, values in diagnosed.items()
        }  # fmt: skip
    return result


def report(result: dict[str, Any]) -> str:
    ratio = result["ratio_loop"]
    verdict = "ok" if ratio <= GOAL else "MISS"

    def ms(key: str) -> str:
        data = result[key]
        return f"{data['median_s'] * 1000:7.2f} ms / {data['p95_s'] * 1000:6.2f} ms"

    loop_p, loop_d = result["loop_proxy"], result["loop_direct"]
    kept_t, kept_d = result["keep_alive_tunnel"], result["keep_alive_direct"]
    return "\n".join(
        [
            f"egress proxy, local mode, {result['rounds']} rounds (median / p95):",
            f"  {result['requests']} GETs through the proxy   {loop_p['median_s']:7.3f} s / "
            f"{loop_p['p95_s']:6.3f} s",
            f"  {result['requests']} GETs direct (open)       {loop_d['median_s']:7.3f} s / "
            f"{loop_d['p95_s']:6.3f} s",
            f"  proxy / direct = {ratio:.2f}x (goal <= {GOAL}x: {verdict}), "
            f"{result['per_request_overhead_ms']:.2f} ms more per request",
            f"  {result['requests']} GETs on one CONNECT tunnel {kept_t['median_s']:7.3f} s, "
            f"on one direct connection {kept_d['median_s']:.3f} s: "
            f"{result['ratio_keep_alive']:.2f}x",
            f"time to first byte, {result['samples_per_round'] * result['rounds']} samples each:",
            f"  http through the proxy      {ms('ttfb_proxy_http')}",
            f"  CONNECT through the proxy   {ms('ttfb_proxy_connect')}",
            f"  direct                      {ms('ttfb_direct')}",
            f"  http / direct = {result['ratio_ttfb_http']:.2f}x, "
            f"CONNECT / direct = {result['ratio_ttfb_connect']:.2f}x",
            *diagnosis(result),
            load_note(result["machine"]),
        ]
    )


def diagnosis(result: dict[str, Any]) -> list[str]:
    if "diagnose" not in result:
        return []
    said = {
        "noop_sink": "EgressProxy, no-op record sink",
        "store_sink": "EgressProxy, egressd's sqlite sink",
        "floor_relay": "the cheapest asyncio relay",
    }
    lines = [f"--diagnose, {result['requests']} GETs from the open sandbox through (median):"]
    for name, data in result["diagnose"].items():
        lines.append(f"  {said[name]:<36} {data['median_s']:7.3f} s  "
                     f"{data['ratio_to_direct']:.2f}x direct")  # fmt: skip
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--samples", type=int, default=50, help="ttfb samples per round")
    parser.add_argument("--diagnose", action="store_true", help="where the proxy's time goes")
    args = parser.parse_args()
    if min(args.rounds, args.requests, args.samples) < 1:
        parser.error("--rounds, --requests and --samples must be at least 1")
    BENCH_DIR.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="jkb-egress-") as tmp:
        result = bench(args, Path(tmp))
    out = BENCH_DIR / "egress.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(report(result))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
