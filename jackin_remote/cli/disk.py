"""`du` and `gc`: what jackin takes on each host's disk, and what it left behind."""

from __future__ import annotations

from typing import Any

import typer

from jackin_remote.cli import complete
from jackin_remote.cli.common import EXIT_SOME_HOSTS_FAILED, err, fail, load, out, print_json, run
from jackin_remote.errors import JackinError
from jackin_remote.ui.safe import line

ON = typer.Option("all", "--on", help="Host, group, label:X or all.",
                  autocompletion=complete.hosts)  # fmt: skip
JSON = typer.Option(False, "--json", help="Print a versioned JSON envelope.")
WIDE = typer.Option(False, "--wide", help="Every column, unfolded.")


def _hosts(ctx: typer.Context, on: str, as_json: bool) -> tuple[Any, list[Any]]:
    from jackin_remote.inventory import select_hosts

    try:
        inventory = load(ctx)
        return inventory, select_hosts(inventory, on)
    except JackinError as error:
        fail(error, as_json=as_json)


def _envelope_hosts(results: list[Any]) -> list[dict[str, Any]]:
    hosts = []
    for result in results:
        entry: dict[str, Any] = {"name": result.host.name, "status": str(result.state)}
        if result.ok and result.value is not None:
            entry.update(result.value)
            entry["error"] = None
        else:
            entry["error"] = {"message": getattr(result.error, "reason", None)
                              or getattr(result.error, "message", str(result.error)),
                              "hint": getattr(result.error, "hint", None)}  # fmt: skip
        hosts.append(entry)
    return hosts


def _failures(results: list[Any]) -> list[Any]:
    failed = [r for r in results if not r.ok or r.value is None]
    for result in failed:
        reason = getattr(result.error, "reason", None) or getattr(result.error, "message", "")
        err.print(line((f"{result.host.name}: {result.state}:", "yellow"), " ", reason))
    return failed


def du(
    ctx: typer.Context,
    on: str = ON,
    wide: bool = WIDE,
    as_json: bool = JSON,
    max_entries: int | None = typer.Option(
        None, "--max-entries", help="Stop each host's walk after this many entries (default "
        "2000000): the figures are then lower bounds, and say so.",
    ),
) -> None:  # fmt: skip
    """Disk usage per host and session: checkouts, snapshots, image shares, writable layers,
    logs, volumes, and the host roots (hard-linked files counted once)."""
    from jackin_remote.disk import disk_usage
    from jackin_remote.fleet import Pool
    from jackin_remote.ui.disk import du_view

    inventory, hosts = _hosts(ctx, on, as_json)

    async def go() -> list[Any]:
        async with Pool(inventory) as pool:
            return await disk_usage(pool, hosts, max_entries)

    try:
        results = run(go())
    except JackinError as error:
        fail(error, as_json=as_json)
    if as_json:
        print_json(hosts=_envelope_hosts(results))
    else:
        answered = [(r.host, r.value) for r in results if r.ok and r.value is not None]
        if answered:
            out.print(du_view(answered, wide=wide), crop=not wide)
    failed = _failures(results) if not as_json else [r for r in results if not r.ok]
    if failed:
        raise typer.Exit(EXIT_SOME_HOSTS_FAILED)


def gc(
    ctx: typer.Context,
    on: str = ON,
    apply: bool = typer.Option(False, "--apply", help="Remove what is listed (default: a dry "
                               "run that only lists)."),
    images: bool = typer.Option(False, "--images", help="Also remove unused role images (the "
                                "newest of each role stays): they are the engine's, shared by "
                                "every host root on it."),
    min_age: int = typer.Option(600, "--min-age", min=0, help="Seconds: files changed more "
                                "recently are kept (a launch in progress writes its mirror, "
                                "role context and synced mounts before its record)."),
    wide: bool = WIDE,
    as_json: bool = JSON,
) -> None:  # fmt: skip
    """Find what jackin made that no session owns any more (containers, networks, volumes,
    directories, proxies, secrets); --apply removes it. Work the laptop never pulled is never
    removed: it is reported as recoverable."""
    from jackin_remote.disk import collect_garbage
    from jackin_remote.fleet import Pool
    from jackin_remote.ui.disk import gc_view

    inventory, hosts = _hosts(ctx, on, as_json)

    async def go() -> list[Any]:
        async with Pool(inventory) as pool:
            return await collect_garbage(pool, hosts, apply=apply, min_age=min_age,
                                         images=images)  # fmt: skip

    try:
        results = run(go())
    except JackinError as error:
        fail(error, as_json=as_json)
    answered = [(r.host, r.value) for r in results if r.ok and r.value is not None]
    if as_json:
        print_json(applied=apply, hosts=_envelope_hosts(results))
    else:
        out.print(gc_view(answered, applied=apply, wide=wide), crop=not wide)
    failed = _failures(results) if not as_json else [r for r in results if not r.ok]
    removal_failed = any(item.get("removed") is False for _, value in answered
                         for item in value["items"])  # fmt: skip
    if failed:
        raise typer.Exit(EXIT_SOME_HOSTS_FAILED)
    if removal_failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("du")(du)
    app.command("gc")(gc)
