"""Entry point of the host agent: `python3 jackin-agent-HASH.pyz serve --root ROOT`.

Python 3.9 compatible.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

from agent_host.protocol import Message
from agent_host.server import Context, Handler, Server


def _facts(ctx: Context, params: Message) -> Dict[str, Any]:
    from agent_host import facts  # not at startup: most commands never ask for facts

    return facts.collect(ctx.root)


def _identity(ctx: Context, params: Message) -> Dict[str, Any]:
    from agent_host import facts

    return facts.identity(ctx.root)


def _ping(ctx: Context, params: Message) -> Dict[str, Any]:
    # The host's clock, read as late as possible: the controller derives skew from it.
    return {"pong": True, "time": time.time()}


def handlers() -> Dict[str, Handler]:
    """Every RPC method. Feature modules each export HANDLERS; names are `area.verb`."""
    table: Dict[str, Handler] = {"facts": _facts, "identity": _identity, "ping": _ping}
    for module in _feature_modules():
        table.update(module.HANDLERS)
    return table


def _feature_modules() -> List[Any]:
    import importlib

    modules = []
    for name in FEATURES:
        modules.append(importlib.import_module("agent_host." + name))
    return modules


# Feature modules, each with a HANDLERS dict. They import heavy things (the docker SDK) inside
# their handlers: `serve` starts on every command and must stay fast.
FEATURES: Tuple[str, ...] = (
    "sessions", "workspaces", "roles", "review", "egressd", "audit", "janitor", "snapshots",
    "disk", "gc", "sampler",
)  # fmt: skip


def _attach(root: str, session_id: str) -> int:
    from agent_host.protocol import RemoteError
    from agent_host.sessions import attach_command

    try:
        argv = attach_command(root, session_id)
    except RemoteError as exc:
        sys.stderr.write("jackin: %s\n" % exc.message)
        return 2
    os.execvp(argv[0], argv)
    return 127  # not reached


def main(argv: Optional[List[str]] = None, agent_hash: Optional[str] = None) -> int:
    parser = argparse.ArgumentParser(prog="jackin-agent")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="speak JSON-lines RPC on stdio")
    serve.add_argument("--root", required=True)
    connect = sub.add_parser(
        "connect", help="relay stdio to this root's resident agent, starting it if needed"
    )
    connect.add_argument("--root", required=True)
    connect.add_argument("--linger", type=float, default=None)
    sub.add_parser("version")
    attach = sub.add_parser("attach", help="attach this terminal to a session's tmux")
    attach.add_argument("--root", required=True)
    attach.add_argument("session")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["jackin-agent-resident"]:
        from agent_host import resident

        return resident.main(argv)
    args = parser.parse_args(argv)
    if args.command == "attach":
        return _attach(os.path.expanduser(args.root), args.session)
    if args.command == "version":
        from agent_host import AGENT_VERSION

        print(AGENT_VERSION, agent_hash or "source")
        return 0
    root = os.path.expanduser(args.root)
    if args.command == "connect":
        from agent_host import resident

        linger = resident.LINGER if args.linger is None else args.linger
        return resident.connect(root, agent_hash, linger)
    server = Server(root, handlers(), sys.stdout.buffer, agent_hash=agent_hash)
    server.serve(sys.stdin.buffer)
    sys.stdout.flush()
    os._exit(0)  # abandoned streaming threads (logs -f) must not keep the process alive
