"""Entry point of the host agent: `python3 jackin-agent-HASH.pyz serve --root ROOT`.

Python 3.9 compatible.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Dict, List, Optional

from agent_host import facts
from agent_host.protocol import Message
from agent_host.server import Context, Handler, Server


def _facts(ctx: Context, params: Message) -> Dict[str, Any]:
    return facts.collect(ctx.root)


def _ping(ctx: Context, params: Message) -> Dict[str, Any]:
    # The host's clock, read as late as possible: the controller derives skew from it.
    return {"pong": True, "time": time.time()}


def handlers() -> Dict[str, Handler]:
    return {"facts": _facts, "ping": _ping}


def main(argv: Optional[List[str]] = None, agent_hash: Optional[str] = None) -> int:
    parser = argparse.ArgumentParser(prog="jackin-agent")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="speak JSON-lines RPC on stdio")
    serve.add_argument("--root", required=True)
    sub.add_parser("version")
    args = parser.parse_args(argv)
    if args.command == "version":
        from agent_host import AGENT_VERSION

        print(AGENT_VERSION, agent_hash or "source")
        return 0
    root = os.path.expanduser(args.root)
    server = Server(root, handlers(), sys.stdout.buffer, agent_hash=agent_hash)
    server.serve(sys.stdin.buffer)
    return 0
