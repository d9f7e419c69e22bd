"""`jackin-remote audit`: every change jackin made on the hosts, and what undoes it.

Each host keeps its own audit (agent_host/audit.py, RPC `audit.list`); this merges them. Hosts'
answers are hostile text: every cell goes through ui/safe.py.
"""

from __future__ import annotations

from typing import Any

import typer

from jackin_remote.cli import complete
from jackin_remote.cli.common import fail, load, out, print_json, run
from jackin_remote.errors import JackinError, UsageError
from jackin_remote.ui.safe import line, text

JSON = typer.Option(False, "--json", help="Print a versioned JSON envelope.")


def audit(
    ctx: typer.Context,
    session: str | None = typer.Argument(
        None, help="A session (id, prefix or name); every change on the hosts if none.",
        autocompletion=complete.sessions,
    ),
    on: str = typer.Option("all", "--on", help="Host, group, label:X or all (without SESSION).",
                           autocompletion=complete.hosts),
    as_json: bool = JSON,
) -> None:  # fmt: skip
    """Every host-side change jackin made (checkouts, mirrors, images, containers, networks,
    volumes, proxies, secrets, session records), oldest first, with what undoes it."""
    try:
        entries, failed = run(_collect(ctx, session, on))
    except JackinError as error:
        fail(error, as_json=as_json)
    if as_json:
        print_json(entries=entries, failed=failed)
    else:
        _show(entries, failed)
    if failed:
        raise typer.Exit(3)


async def _collect(
    ctx: typer.Context, ref: str | None, on: str
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    from agent_host.wire import is_session_id
    from jackin_remote.fleet import Pool
    from jackin_remote.inventory import select_hosts
    from jackin_remote.sessions import call, find_session
    from jackin_remote.store import Store

    inventory = load(ctx)
    async with Pool(inventory) as pool:
        params: dict[str, Any] = {}
        hosts = select_hosts(inventory, on)
        if ref is not None:
            try:
                row, host = await find_session(pool, inventory, Store(), ref)
                hosts, params = [host], {"id": row["id"]}
            except UsageError:
                if not is_session_id(ref):
                    raise
                params = {"id": ref}  # removed (rm): its hosts still have its audit

        async def ask(link: Any) -> Any:
            return await call(pool, link.host, "audit.list", params)

        results = await pool.map(hosts, ask)
    return merged(results)


def merged(results: Any) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Each host's rows, checked (agent_host.audit.AuditEntry), tagged with the host, by time."""
    from agent_host.audit import AuditEntry
    from jackin_remote.answers import merged_entries

    entries, failed = merged_entries(results, AuditEntry.from_wire)
    entries.sort(key=lambda e: (e["at"], e["host"], e["id"]))
    return entries, failed


def _show(entries: list[dict[str, Any]], failed: list[dict[str, str]]) -> None:
    import time

    from rich.table import Table

    if not entries:
        out.print(text("no changes recorded"))
    else:
        table = Table(box=None, header_style="bold")
        for column in ("when", "host", "session", "action", "target", "undo"):
            table.add_column(column)
        for e in entries:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["at"]))
            style = "red" if e["action"].endswith((".remove", ".purge", ".stop")) else ""
            table.add_row(text(when), text(e["host"]), text(e["session"] or "-"),
                          text(e["action"], style=style), text(e["target"]),
                          text(e["undo"] or "-"))  # fmt: skip
        out.print(table)
    for entry in failed:
        out.print(line((f"{entry['host']}: ", "yellow"), entry["error"]))


def janitor(
    ctx: typer.Context,
    on: str = typer.Option("all", "--on", help="Host, group, label:X or all.",
                           autocompletion=complete.hosts),
    as_json: bool = JSON,
) -> None:  # fmt: skip
    """Run the hosts' idle cleanup now: stop the sessions idle longer than their idle timeout
    (as each host's janitor does every minute), and stop the proxy and daemon of ended ones."""
    try:
        done, failed = run(_janitor(ctx, on))
    except JackinError as error:
        fail(error, as_json=as_json)
    if as_json:
        print_json(hosts=done, failed=failed)
    else:
        for entry in done:
            stopped = ", ".join(item["id"] for item in entry["stopped"]) or "nothing to stop"
            out.print(line((f"{entry['host']}: ", "bold"), f"idle-stopped: {stopped}"))
        for entry in failed:
            out.print(line((f"{entry['host']}: ", "yellow"), entry["error"]))
    if failed:
        raise typer.Exit(3)


async def _janitor(
    ctx: typer.Context, on: str
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    from agent_host.wire import is_session_id
    from jackin_remote.fleet import Pool
    from jackin_remote.inventory import select_hosts
    from jackin_remote.sessions import call

    inventory = load(ctx)
    async with Pool(inventory) as pool:

        async def ask(link: Any) -> Any:
            return await call(pool, link.host, "host.janitor", {})

        results = await pool.map(select_hosts(inventory, on), ask)
    done: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    for result in results:
        value: dict[str, Any] = result.value if result.ok and isinstance(result.value, dict) else {}
        stopped = value.get("stopped")
        if not result.ok or not isinstance(stopped, list):
            reason = str(getattr(result.error, "reason", result.error)) if not result.ok else (
                "bad answer: stopped must be a list")  # fmt: skip
            failed.append({"host": result.host.name, "error": reason})
            continue
        pid = value.get("janitor")
        done.append({
            "host": result.host.name,
            "stopped": [{"id": item["id"]} for item in stopped
                        if isinstance(item, dict) and is_session_id(item.get("id"))],
            "active": value.get("active") is True,
            "janitor": pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
        })  # fmt: skip
    return done, failed
