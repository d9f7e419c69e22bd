"""Snapshot commands: snapshot, snapshots, restore. (`diff SESSION --since SNAPSHOT` is the
diff command's.) The work is the host's: agent_host/snapshots.py; the controller's part is
jackin_remote/snapshots.py."""

from __future__ import annotations

from typing import Any

import typer

from jackin_remote.cli.common import err, fail, load, out, print_json, run
from jackin_remote.cli.sessions import JSON, SESSION
from jackin_remote.errors import JackinError
from jackin_remote.ui.safe import line


def _on_session(ctx: typer.Context, session: str, work: Any) -> tuple[dict[str, Any], Any]:
    """Find the session (one that rm removed too: its snapshots stay) and run `work(pool, host,
    row)` on its host."""
    from jackin_remote import snapshots as snap
    from jackin_remote.fleet import Pool
    from jackin_remote.store import Store

    inventory = load(ctx)

    async def go() -> tuple[dict[str, Any], Any]:
        async with Pool(inventory) as pool:
            row, host = await snap.find(pool, inventory, Store(), session)
            return row, await work(pool, host, row)

    return run(go())


def _skipped(info: Any) -> None:
    if info.skipped:
        err.print(line(("warning:", "yellow"), f" {info.skipped} entr"
                       f"{'y' if info.skipped == 1 else 'ies'} could not be taken:"))  # fmt: skip
        for item in info.skipped_sample:
            err.print(line("  ", item, multiline=False))


def snapshot(ctx: typer.Context, session: str = SESSION, as_json: bool = JSON) -> None:
    """Snapshot a session's checkout on its host now (.git included; unchanged files are hard
    links to the previous snapshot's). Retention (snapshot_keep, snapshot_max_age) prunes old
    ones afterwards."""
    from jackin_remote import snapshots as snap

    try:
        row, info = _on_session(
            ctx, session, lambda pool, host, row: snap.take(pool, host, row["id"])
        )
    except JackinError as error:
        fail(error, as_json=as_json)
    if as_json:
        print_json(session=row["id"], host=row["host"], snapshot=info.to_wire())
        return
    from jackin_remote.ui.snapshots import size

    out.print(line(("snapshot", "green"), f" {info.id} of {row['id']} on {row['host']}: "
                   f"{info.files} files, {size(info.bytes)} ({info.files_linked} unchanged, "
                   f"linked; {size(info.bytes_new)} new on disk)"))  # fmt: skip
    _skipped(info)


def snapshots(ctx: typer.Context, session: str = SESSION, as_json: bool = JSON) -> None:
    """List a session's snapshots, oldest first (a session rm removed keeps them until
    rm --purge)."""
    from jackin_remote import snapshots as snap

    try:
        row, (items, state) = _on_session(
            ctx, session, lambda pool, host, row: snap.listing(pool, host, row["id"])
        )
    except JackinError as error:
        fail(error, as_json=as_json)
    data = [item.to_wire() for item in items]
    if as_json:
        print_json(session=row["id"], host=row["host"], state=state, snapshots=data)
        return
    if not data:
        out.print(line(f"{row['id']} on {row['host']} has no snapshot"))
        return
    from jackin_remote.ui.snapshots import snapshots_table

    out.print(snapshots_table(data))
    if state == "purged":
        out.print(line((f"{row['id']} was removed: `jackin-remote rm --purge {row['id']}` "
                        "removes these too", "dim")))  # fmt: skip


SNAPSHOT_ARG = typer.Argument(
    None, help="Snapshot id (s1, s2...). Default: the newest one a restore did not make.",
    show_default=False, metavar="[SNAPSHOT]",
)  # fmt: skip
STOP = typer.Option(False, "--stop", help="Stop the session's sandbox first if it runs.")


def restore(
    ctx: typer.Context,
    session: str = SESSION,
    snapshot_id: str | None = SNAPSHOT_ARG,
    stop: bool = STOP,
    as_json: bool = JSON,
) -> None:
    """Put a session's whole checkout (.git included) back as a snapshot holds it.

    Refuses while the agent runs, unless --stop. The checkout as it is now is snapshotted
    first, so restoring that snapshot undoes the restore. Excluded trees (node_modules...) are
    kept as they are."""
    from jackin_remote import snapshots as snap

    async def work(pool: Any, host: Any, row: dict[str, Any]) -> dict[str, Any]:
        from jackin_remote.sessions import refresh
        from jackin_remote.store import Store

        result = await snap.restore(pool, host, row["id"], wanted, stop)
        if result["stopped"]:
            await refresh(pool, [host], Store())  # the laptop's view says `stopped` too
        return result

    try:
        wanted = None if snapshot_id is None else snap.snapshot_ref(snapshot_id, "SNAPSHOT")
        row, result = _on_session(ctx, session, work)
    except JackinError as error:
        fail(error, as_json=as_json)
    if as_json:
        print_json(session=row["id"], host=row["host"], **result)
        return
    sid, before = row["id"], result["pre_restore"]["id"]
    if result["stopped"]:
        out.print(line(f"stopped {sid} first"))
    out.print(line(("restored", "green"), f" {sid} on {row['host']} to {result['restored']}"))
    out.print(line(f"  the checkout as it was is snapshot {before}: `jackin-remote restore {sid} "
                   f"{before}` undoes this"))  # fmt: skip
    if result["state"] != "running":
        out.print(line(f"  start the agent again: jackin-remote start {sid}"))


def register(app: typer.Typer) -> None:
    app.command("snapshot")(snapshot)
    app.command("snapshots")(snapshots)
    app.command("restore")(restore)
