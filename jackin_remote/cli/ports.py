"""`jackin-remote ports`: publish a sandbox's service ports on this laptop, and list them."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import typer

from jackin_remote.cli.common import fail, load, out, print_json, run
from jackin_remote.errors import JackinError
from jackin_remote.ui.safe import line

WATCH_EVERY = 2.0  # seconds between two looks at the session's state while forwarding


def ports(
    ctx: typer.Context,
    session: str = typer.Argument(..., help="A session (id, prefix or name)."),
    publish: list[str] = typer.Option([], "--publish", "-p", help="[LOCAL:]PORT: forward "
                                      "127.0.0.1:LOCAL on this laptop to the sandbox's PORT "
                                      "(LOCAL 0: any free port; repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="JSON (one line per mapping while "
                                 "forwarding)."),
) -> None:  # fmt: skip
    """Forward laptop ports to a session's service ports until it stops (Ctrl-C ends it too);
    without --publish, list the mappings that are active."""
    from jackin_remote.ports import parse_publish

    try:
        wanted = [parse_publish(item) for item in publish]
        if not wanted:
            _list(ctx, session, as_json)
            return
        run(_forward(ctx, session, wanted, as_json))
    except JackinError as error:
        fail(error, as_json=as_json)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _list(ctx: typer.Context, ref: str, as_json: bool) -> None:
    from jackin_remote.store import Store

    store = Store()
    row = store.find(ref)
    active = store.active_ports(row["host"], row["id"])
    if as_json:
        print_json(session=row["id"], host=row["host"], ports=active)
        return
    if not active:
        out.print(line(f"{row['id']}: no published ports"))
    for mapping in active:
        out.print(line(f"{mapping['local']} -> {row['id']}:{mapping['remote_port']} "
                       f"(on {row['host']})"))  # fmt: skip


async def _forward(ctx: typer.Context, ref: str, wanted: list[Any], as_json: bool) -> None:
    import asyncio

    from agent_host.wire import ACTIVE_STATES
    from jackin_remote.fleet import Pool
    from jackin_remote.ports import serve
    from jackin_remote.sessions import call, find_session, refresh
    from jackin_remote.store import Store

    inventory = load(ctx)
    store = Store()
    async with Pool(inventory) as pool:
        row, host = await find_session(pool, inventory, store, ref)
        answer = await call(pool, host, "session.address", {"id": row["id"]})
        address = _checked_address(answer)
        link = await pool.link(host)
        servers = []
        try:
            for publish in wanted:

                async def opener(port: int = publish.remote) -> tuple[Any, Any]:
                    return await link.transport.open_tcp(address, port)

                server = await serve(publish, opener)
                servers.append(server)
                bound = server.sockets[0].getsockname()
                local = f"{bound[0]}:{bound[1]}"
                store.add_port(host.name, row["id"], local, publish.remote)
                if as_json:
                    mapping = {"schema_version": "v1", "local": local, "session": row["id"],
                               "host": host.name, "remote_port": publish.remote}  # fmt: skip
                    sys.stdout.write(json.dumps(mapping) + "\n")
                    sys.stdout.flush()
                else:
                    out.print(line(f"forwarding {local} -> {row['id']}:{publish.remote} "
                                   f"(on {host.name}); Ctrl-C to stop"))  # fmt: skip
            while True:  # until the session is no longer running
                await asyncio.sleep(WATCH_EVERY)
                await refresh(pool, [host], store)
                rows = [r for r in store.sessions([host.name]) if r["id"] == row["id"]]
                if not rows or rows[0]["state"] not in ACTIVE_STATES:
                    if not as_json:
                        out.print(line(f"{row['id']} is no longer running: stopped forwarding"))
                    return
        finally:
            for server in servers:
                server.close()
            store.remove_ports(host.name, row["id"], os.getpid())


def _checked_address(answer: Any) -> str:
    """The host's answer is not trusted: an IP address, nothing else."""
    import ipaddress

    value = answer.get("address") if isinstance(answer, dict) else None
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        raise JackinError("the host answered session.address without an IP address") from None
