"""A session's egress: its internal network, and the proxy process that is its only way out.

`network allowlist`: the sandbox is attached to a docker network of its own made `--internal`
(no route out, no outside DNS). The host runs one proxy process per session, listening on that
network's gateway address, port PROXY_PORT: the only address the sandbox can reach. The proxy
decides each destination by the session's rules (agent_host/egress.py) and counts what it let
through in the host database (`egress_log`). If it dies, nothing gets out: the network has no
other way.

The proxy outlives the agent call that starts it (it is detached in a session of its own) and
is stopped by `stop` and `rm`, started again by `start`. Python 3.9 compatible.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from agent_host import audit, layout
from agent_host.egress import Rule, decide, rules_from_wire
from agent_host.protocol import E_FAILED, E_INVALID_PARAMS, E_NOT_FOUND, RemoteError
from agent_host.wire import (
    LABEL_MANAGED,
    LABEL_SESSION,
    PROXY_PORT,
    LaunchSpec,
    Network,
    check_session_id,
    egress_network,
)

if TYPE_CHECKING:
    from agent_host.proxy import ModelRoute

READY_TIMEOUT = 30.0  # the proxy binds at once; this bounds a host too loaded to start python
MARK = "jackin-egress-proxy"  # in the proxy's argv: a pid is ours only if its cmdline says so


def rules_file(root: str, session_id: str) -> str:
    return os.path.join(layout.session_dir(root, session_id), "egress.json")


def pid_file(root: str, session_id: str) -> str:
    return os.path.join(layout.session_dir(root, session_id), "egress.pid")


def model_file(root: str, session_id: str) -> str:
    """The model route and its key: 0600, for the proxy only (the sandbox never sees the session
    directory, only its checkout); gone with the session directory at rm."""
    return os.path.join(layout.session_dir(root, session_id), "egress-model.json")


def log_file(root: str, session_id: str) -> str:
    return os.path.join(layout.session_dir(root, session_id), "egress.log")


# -- the network -------------------------------------------------------------------------------
def ensure_network(client: Any, session_id: str, root: Optional[str] = None) -> "tuple[str, str]":
    """The session's internal network (made if missing): its gateway address and subnet. An
    existing network of that name is used only if it is internal and ours."""
    from docker.errors import NotFound

    name = egress_network(session_id)
    try:
        network = client.networks.get(name)
    except NotFound:
        labels = {LABEL_MANAGED: "true", LABEL_SESSION: session_id}
        if root is not None:  # whose it is, for gc (agent_host/ownership.py)
            from agent_host.ownership import root_labels

            labels.update(root_labels(root))
        network = client.networks.create(name, driver="bridge", internal=True, labels=labels)
        network.reload()
        if root is not None:
            audit.record(root, session_id, "network.create", name, "docker network rm %s" % name)
    attrs = network.attrs
    labels = attrs.get("Labels") or {}
    if not attrs.get("Internal") or labels.get(LABEL_SESSION) != session_id:
        raise RemoteError(E_FAILED, "network %s exists but is not this session's internal one: "
                          "remove it (`docker network rm %s`)" % (name, name))  # fmt: skip
    configs = ((attrs.get("IPAM") or {}).get("Config")) or []
    config = next((c for c in configs if c.get("Gateway") and ":" not in c["Gateway"]), None)
    if config is None or not config.get("Subnet"):
        raise RemoteError(E_FAILED, "network %s has no IPv4 gateway for the egress proxy" % name)
    return str(config["Gateway"]), str(config["Subnet"])


def remove_network(client: Any, session_id: str, root: Optional[str] = None) -> None:
    from docker.errors import NotFound

    with contextlib.suppress(NotFound):
        client.networks.get(egress_network(session_id)).remove()
        if root is not None:
            audit.record(root, session_id, "network.remove", egress_network(session_id), "")


# -- the proxy process -------------------------------------------------------------------------
def start_proxy(
    root: str, spec: LaunchSpec, gateway: str, subnet: str, model_key: Optional[str] = None
) -> int:
    """Start the session's proxy, detached; return its pid once it listens (it says so)."""
    stop_proxy(root, spec.session_id)
    path = rules_file(root, spec.session_id)
    _write_private(path, json.dumps([rule.to_wire() for rule in spec.egress]))
    audit.record(root, spec.session_id, "file.write", path, "rm %s" % path)
    if spec.model_api is not None and model_key is not None:
        api = spec.model_api
        route = {"upstream": api.upstream, "header": api.header, "value": api.prefix + model_key}
        _write_private(model_file(root, spec.session_id), json.dumps(route))
        audit.record(root, spec.session_id, "file.write", model_file(root, spec.session_id) +
                     " (the model API key, for the proxy)", "rm %s" % model_file(root,
                     spec.session_id))  # fmt: skip
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = "import sys; sys.path.insert(0, sys.argv[1]); from agent_host.egressd import main; " \
        "sys.exit(main(sys.argv[2:]))"  # fmt: skip
    argv = [sys.executable, "-I", "-c", code, package_parent, MARK, "--root", root, "--session",
            spec.session_id, "--listen", gateway, "--port", str(PROXY_PORT),
            "--peers", subnet]  # fmt: skip
    with open(log_file(root, spec.session_id), "ab") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
            start_new_session=True, close_fds=True,
        )  # fmt: skip
    assert proc.stdout is not None
    line = _ready_line(proc)
    proc.stdout.close()
    if not line.startswith("ready "):
        proc.kill()
        raise RemoteError(
            E_FAILED, "the egress proxy did not start on %s:%d: %s (see %s)"
            % (gateway, PROXY_PORT, line or "it exited", log_file(root, spec.session_id)),
        )  # fmt: skip
    _write_private(pid_file(root, spec.session_id), "%d\n" % proc.pid)
    audit.record(root, spec.session_id, "egress.start", "proxy pid %d on %s:%d (log %s)" % (
        proc.pid, gateway, PROXY_PORT, log_file(root, spec.session_id)),
        "jackin-remote stop %s" % spec.session_id)  # fmt: skip
    return proc.pid


def _ready_line(proc: "subprocess.Popen[bytes]") -> str:
    import selectors

    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(READY_TIMEOUT):
            return "no answer within %ds" % READY_TIMEOUT
    return proc.stdout.readline(200).decode("utf-8", "replace").strip()


def proxy_pid(root: str, session_id: str) -> Optional[int]:
    """The pid of the session's running proxy, or None (a pid file alone proves nothing)."""
    try:
        with open(pid_file(root, session_id)) as handle:
            pid = int(handle.read().strip() or "0")
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            argv = handle.read().split(b"\0")
    except (OSError, ValueError):
        return None
    ours = MARK.encode() in argv and session_id.encode() in argv
    return pid if ours else None


STOP_GRACE = 5.0  # seconds a proxy gets to close its connections before it is killed


def stop_proxy(root: str, session_id: str) -> None:
    """Stop the session's proxy and wait until it is gone (a SIGKILL after STOP_GRACE), so the
    port is free for a start and no proxy holding the key is left untracked."""
    pid = proxy_pid(root, session_id)
    if pid is not None:
        _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while proxy_pid(root, session_id) == pid and time.monotonic() < deadline:
            time.sleep(0.05)
        if proxy_pid(root, session_id) == pid:
            _signal(pid, signal.SIGKILL)
        audit.record(root, session_id, "egress.stop", "proxy pid %d" % pid,
                     "jackin-remote start %s" % session_id)  # fmt: skip
    with contextlib.suppress(FileNotFoundError):
        os.unlink(pid_file(root, session_id))


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signum)


def _write_private(path: str, text: str) -> None:
    tmp = "%s.tmp%d" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


# -- the proxy process's own main --------------------------------------------------------------
def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog=MARK)
    parser.add_argument("mark", choices=[MARK])
    parser.add_argument("--root", required=True)
    parser.add_argument("--session", required=True)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--peers", required=True)  # the session network's subnet
    args = parser.parse_args(argv)
    with open(rules_file(args.root, args.session)) as handle:
        rules = rules_from_wire(json.load(handle))
    model = _model_route(model_file(args.root, args.session))
    asyncio.run(_serve(args.root, args.session, rules, args.listen, args.port, model, args.peers))
    return 0


def _model_route(path: str) -> "Optional[ModelRoute]":
    from agent_host.proxy import ModelRoute
    from agent_host.wire import split_upstream

    try:
        with open(path) as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return None
    scheme, host, port, base = split_upstream(data["upstream"])
    return ModelRoute(scheme, host, port, base, str(data["header"]), str(data["value"]))


async def _serve(
    root: str,
    session_id: str,
    rules: "tuple[Rule, ...]",
    host: str,
    port: int,
    model: "Optional[ModelRoute]" = None,
    peers: Optional[str] = None,
) -> None:
    from agent_host.proxy import ConnectionRecord, EgressProxy, run_forever
    from agent_host.state import Store

    store = Store(root)

    def record(entry: ConnectionRecord) -> None:
        decision = "denied" if not entry.allowed else ("failed" if entry.error else "allowed")
        store.record_egress(session_id, entry.host, entry.port, decision, entry.rule,
                            entry.bytes_up, entry.bytes_down)  # fmt: skip

    def ready(address: "tuple[str, int]") -> None:
        sys.stdout.write("ready %s %d\n" % address)
        sys.stdout.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)  # the starter stops reading: nothing else goes there
        os.close(devnull)

    proxy = EgressProxy(lambda h, p: _decided(h, p, rules), record, model=model, peers=peers)
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(run_forever(proxy, host, port, ready))
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    watch = asyncio.ensure_future(_orphan_watch(root, session_id, task))
    try:
        await task
    except asyncio.CancelledError:
        pass
    finally:
        watch.cancel()
        await proxy.close()
        store.close()


WATCH_EVERY = 2.0  # seconds between two looks at whether this proxy is still the session's


async def _orphan_watch(root: str, session_id: str, serving: "asyncio.Future[None]") -> None:
    """Ends the proxy once it is nobody's: its session directory is gone (rm, a wiped root) or
    another proxy's pid is in its pid file. A proxy left behind would hold its gateway address
    and port, which a later network of the same subnet needs."""
    while not serving.done():
        await asyncio.sleep(WATCH_EVERY)
        if orphaned(root, session_id, os.getpid()):
            serving.cancel()
            return


def orphaned(root: str, session_id: str, pid: int) -> bool:
    if not os.path.isdir(layout.session_dir(root, session_id)):
        return True
    owner = proxy_pid(root, session_id)
    return owner is not None and owner != pid


def _decided(host: str, port: int, rules: "tuple[Rule, ...]") -> "tuple[bool, str]":
    decision = decide(host, port, rules)
    return decision.allowed, decision.rule


# -- RPC handlers (`egress.log`, `egress.check`) -----------------------------------------------
def log_entries(ctx: Any, params: Any) -> Dict[str, Any]:
    """What the proxies of this host decided: every session's, or one's."""
    from agent_host.state import Store

    session = params.get("id")
    if session is not None:
        check_session_id(session, "id")
    store = Store(ctx.root)
    try:
        return {"entries": store.egress_log(session)}
    finally:
        store.close()


def check(ctx: Any, params: Any) -> Dict[str, Any]:
    """Would the session's proxy let `host:port` through, and by which rule. Sends nothing."""
    from agent_host.state import Store

    session = check_session_id(params.get("id"), "id")
    host, port = params.get("host"), params.get("port")
    if not isinstance(host, str) or not host or len(host) > 260:
        raise RemoteError(E_INVALID_PARAMS, "host: must be a host name or an IP address")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise RemoteError(E_INVALID_PARAMS, "port: must be a number from 1 to 65535")
    store = Store(ctx.root)
    try:
        record = store.get(session)
    finally:
        store.close()
    if record is None:
        raise RemoteError(E_NOT_FOUND, "no session %s on this host" % session)
    spec = LaunchSpec.from_wire(record["spec"])
    if spec.network is Network.OPEN:
        return {"network": "open", "allowed": True, "rule": "network open: no rules apply"}
    if spec.network is Network.NONE:
        return {"network": "none", "allowed": False, "rule": "network none: nothing gets out"}
    decision = decide(host, port, spec.egress)
    return {"network": "allowlist", "allowed": decision.allowed, "rule": decision.rule}


HANDLERS = {"egress.log": log_entries, "egress.check": check}
