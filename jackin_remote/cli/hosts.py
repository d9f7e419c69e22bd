"""`jackin-remote hosts ...`: read, edit and check the inventory's hosts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

from jackin_remote.cli import audit
from jackin_remote.cli.common import (
    EXIT_SOME_HOSTS_FAILED,
    err,
    fail,
    load,
    options,
    out,
    print_json,
    run,
)
from jackin_remote.errors import JackinError, UsageError
from jackin_remote.ui.safe import line

app = typer.Typer(help="Inventory hosts: list, show, add, rm, check, trust.", no_args_is_help=True)

JSON = typer.Option(False, "--json", help="Print a versioned JSON envelope.")
ON = typer.Option("all", "--on", help="NAME | GROUP | label:X | all (comma-separated).")
WIDE = typer.Option(
    False, "--wide", help="Every column, unfolded (wider than the terminal if need be)."
)


def _host_dict(host: Any) -> dict[str, Any]:
    from agent_host.wire import LIMIT_NAMES

    return {
        "name": host.name, "transport": host.transport, "address": host.address,
        "port": host.port, "user": host.user, "identity_file": host.identity_file,
        "jump": host.jump, "host_key": host.host_key, "labels": list(host.labels),
        "capacity": host.capacity, "root": host.root, "backend": host.backend,
        "limits": {name: getattr(host.limits, name) for name in LIMIT_NAMES},
        "source": host.where,
    }  # fmt: skip


@app.command("list")
def list_hosts(ctx: typer.Context, on: str = ON, wide: bool = WIDE, as_json: bool = JSON) -> None:
    """List inventory hosts."""
    from jackin_remote.inventory import select_hosts

    try:
        hosts = select_hosts(load(ctx), on)
    except JackinError as error:
        fail(error, as_json=as_json)
    if as_json:
        print_json(hosts=[_host_dict(h) for h in hosts])
        return
    from jackin_remote.ui.hosts import hosts_table

    out.print(hosts_table(hosts, wide=wide), crop=not wide)


@app.command("show")
def show(ctx: typer.Context, name: str, as_json: bool = JSON) -> None:
    """Show one host as the inventory resolves it (defaults applied)."""
    try:
        host = load(ctx).host(name)
        if host is None:
            raise UsageError(f"no host named {name!r}", hint="see `jackin-remote hosts list`")
    except JackinError as error:
        fail(error, as_json=as_json)
    data = _host_dict(host)
    if as_json:
        print_json(host=data)
        return
    from jackin_remote.ui.contract import shown

    for key, value in data.items():
        if isinstance(value, dict):  # limits: one word per bound, "-" for none
            value = ", ".join(f"{k} {shown(v)}" for k, v in value.items())
        out.print(line((f"{key:>14}", "bold"), "  ", shown(value)))


def _edit_target(ctx: typer.Context, file: Path | None) -> Path:
    if file is not None:
        return file
    configured = options(ctx).inventory
    base = Path(configured) if configured else Path("inventory")
    return base if base.suffix == ".toml" else base / "hosts.toml"


def _inventory_source(ctx: typer.Context, fallback: Path) -> Path:
    """Where duplicates are checked and the edited result validated: the whole inventory."""
    from jackin_remote.inventory.loader import resolve_source

    return resolve_source(options(ctx).inventory, env=os.environ) or fallback


@app.command("add")
def add(
    ctx: typer.Context,
    name: str,
    address: str | None = typer.Option(None, help="IP, DNS name or ~/.ssh/config alias."),
    port: int | None = typer.Option(None),
    user: str | None = typer.Option(None),
    identity_file: str | None = typer.Option(None, "--identity-file"),
    jump: str | None = typer.Option(None, help="ProxyJump: inventory host or [user@]host[:port]."),
    host_key: str | None = typer.Option(None, "--host-key", help="Pin this public key."),
    label: list[str] = typer.Option([], "--label", help="Repeatable."),
    capacity: int | None = typer.Option(None),
    root: str | None = typer.Option(None, help="Host directory for jackin (default ~/.jackin)."),
    transport: str | None = typer.Option(None, help="ssh (default) or local."),
    file: Path | None = typer.Option(None, "--file", help="Inventory file to write."),
    as_json: bool = JSON,
) -> None:
    """Add a host to an inventory file, keeping its comments and order."""
    from jackin_remote.inventory.editor import add_host

    fields: dict[str, Any] = {
        "address": address, "port": port, "user": user, "identity_file": identity_file,
        "jump": jump, "host_key": host_key, "labels": label or None, "capacity": capacity,
        "root": root, "transport": transport,
    }  # fmt: skip
    fields = {key: value for key, value in fields.items() if value is not None}
    target = _edit_target(ctx, file)
    try:
        add_host(target, name, fields, inventory=_inventory_source(ctx, target))
    except JackinError as error:
        fail(error, as_json=as_json)
    warnings = [] if identity_file is None else identity_file_warnings(identity_file)
    if as_json:
        print_json(added=name, file=str(target), warnings=warnings)
    else:
        out.print(line("added host ", (name, "bold"), f" to {target}"))
        for warning in warnings:
            err.print(line(("warning: ", "yellow"), warning))


def identity_file_warnings(identity_file: str) -> list[str]:
    """`hosts add --identity-file` of a file this machine cannot read: warned, not refused (the
    inventory may be shared with a machine where the file exists)."""
    path = Path(identity_file).expanduser()
    try:
        with path.open("rb"):
            return []
    except FileNotFoundError:
        what = "does not exist on this machine"
    except OSError as exc:
        what = f"cannot be read ({exc.strerror or type(exc).__name__})"
    return [f"identity file {identity_file} {what}: connections from here will fail until it "
            "does (recorded anyway, as it may exist where the inventory is used)"]  # fmt: skip


@app.command("rm")
def remove(ctx: typer.Context, name: str, as_json: bool = JSON) -> None:
    """Remove a host (and its group memberships) from the inventory files."""
    from jackin_remote.inventory.editor import remove_host

    configured = options(ctx).inventory
    source = Path(configured) if configured else Path("inventory")
    try:
        changed = remove_host(source, name, inventory=_inventory_source(ctx, source))
    except JackinError as error:
        fail(error, as_json=as_json)
    from jackin_remote.store import Store

    # Its cached sessions go too: they would still match ids (pull, logs) under a dead name.
    cache = Store.open_existing()
    if cache is not None:
        cache.forget_host(name)
    if as_json:
        print_json(removed=name, file=str(changed))
    else:
        out.print(line("removed host ", (name, "bold"), f" from {changed}"))


@app.command("check")
def check(
    ctx: typer.Context,
    on: str = ON,
    wide: bool = WIDE,
    as_json: bool = JSON,
    accept_new: bool = typer.Option(
        False, "--accept-new", help="Trust unknown host keys on first use (never changed ones)."
    ),
) -> None:
    """Connect to hosts, deploy the agent if needed, and report facts and a verdict.

    Exit code 3 when some hosts failed or are unusable.
    """
    from jackin_remote.fleet import Pool, PoolSettings
    from jackin_remote.hostcheck import check_hosts
    from jackin_remote.inventory import select_hosts

    try:
        inventory = load(ctx)
        hosts = select_hosts(inventory, on)
    except JackinError as error:
        fail(error, as_json=as_json)

    recorded: list[Any] = []

    async def go() -> list[dict[str, Any]]:
        async with Pool(inventory, PoolSettings(accept_new=accept_new)) as pool:
            entries = await check_hosts(pool, hosts)
            recorded.extend(pool.recorded_keys)
            return entries

    if not as_json and out.is_terminal:
        with err.status(f"checking {len(hosts)} host(s)..."):
            entries = run(go())
    else:
        entries = run(go())
    # Trust on first use is only as good as a later look at what was trusted: say what it was.
    by_host = {key.host: key for key in recorded}
    for entry in entries:
        if entry["name"] in by_host:
            entry["host_key_recorded"] = by_host[entry["name"]].as_dict()
    if as_json:
        print_json(hosts=entries)
    else:
        from jackin_remote.ui.hosts import check_table

        out.print(check_table(entries, wide=wide), crop=not wide)
    for key in [] if as_json else recorded:
        err.print(line((f"{key.host}: ", "bold"), "recorded new host key ",
                       (f"{key.key_type} {key.fingerprint}", "bold"),
                       f" for {key.pattern} in {key.file} (--accept-new)"))  # fmt: skip
    if any(e["status"] != "ok" or e["verdict"] == "unusable" for e in entries):
        raise typer.Exit(EXIT_SOME_HOSTS_FAILED)


def _same_fingerprint(given: str, seen: str) -> bool:
    """`--fingerprint` as ssh-keygen -l or our messages print it: "SHA256:..." or
    "ssh-ed25519 SHA256:..."; the SHA256 part must match exactly."""
    return given.split()[-1:] == [seen]


def trust_confirmation(
    *, changed: bool, replace: bool, given: str | None, seen: str, yes: bool,
    shown: str | None = None,
) -> bool:  # fmt: skip
    """Whether the flags confirm recording `seen` (True), or a prompt may still ask (False).
    `shown` is the key as messages show it (type and fingerprint).

    Raises UsageError when they cannot: a changed key needs --replace AND --fingerprint naming
    the new key (--yes is not enough); a wrong --fingerprint is always refused."""
    shown = shown or seen
    if given is not None and not _same_fingerprint(given, seen):
        raise UsageError(
            f"the host presents {shown}, not the fingerprint given ({given})",
            hint="check the fingerprint out of band; nothing was recorded",
        )
    if changed:
        if not replace or given is None:
            raise UsageError(
                f"HOST KEY CHANGED: the host now presents {shown}",
                hint="verify the new fingerprint out of band, then rerun with "
                f"--replace --fingerprint {seen} (entries in ~/.ssh/known_hosts: remove them "
                "with `ssh-keygen -R`)",
            )
        return True
    return given is not None or yes


@app.command("trust")
def trust(
    ctx: typer.Context,
    name: str,
    replace: bool = typer.Option(
        False, "--replace", help="Replace a changed key (needs --fingerprint naming the new one)."
    ),
    given: str | None = typer.Option(
        None, "--fingerprint", help="The SHA256:... fingerprint you verified: confirms it."
    ),
    yes: bool = typer.Option(
        False, "--yes", "-y", help="Do not ask for confirmation (never enough for a changed key)."
    ),
    as_json: bool = JSON,
) -> None:
    """Show a host's key fingerprint and record it in jackin's own known_hosts."""
    import sys

    from jackin_remote import paths
    from jackin_remote.fleet import Pool
    from jackin_remote.transport.hostkeys import describe_key, fingerprint, record_trust

    try:
        inventory = load(ctx)
        host = inventory.host(name)
        if host is None:
            raise UsageError(f"no host named {name!r}", hint="see `jackin-remote hosts list`")
        if host.is_local:
            raise UsageError(f"{name} is a local host: there is no host key to trust")

        async def go() -> Any:
            async with Pool(inventory) as pool:
                return await pool.fetch_host_key(host)

        witness = run(go())
    except JackinError as error:
        fail(error, as_json=as_json)
    if witness.presented is None:
        verified = witness.verified
        if as_json:
            key_fields = (
                {}
                if verified is None
                else {"fingerprint": fingerprint(verified), "key_type": verified.get_algorithm()}
            )
            print_json(host=name, trusted=True, recorded=False, **key_fields)  # fmt: skip
        else:
            what = f": {describe_key(verified)}" if verified is not None else ""
            out.print(line(f"{name}: host key already trusted{what}"))
        return
    seen = fingerprint(witness.presented)
    shown = describe_key(witness.presented)
    if host.host_key:
        fail(UsageError(
            f"{name}: the key is pinned in {host.where} and the host presents {shown}",
            hint="if the change is expected, update host_key in the inventory",
        ), as_json=as_json)  # fmt: skip
    try:
        confirmed = trust_confirmation(
            changed=witness.changed, replace=replace, given=given, seen=seen, yes=yes,
            shown=shown,
        )  # fmt: skip
    except UsageError as error:
        if witness.changed:
            known = [describe_key(k) for k in witness.trusted] + witness.mentions
            error.message = f"{name}: {error.message}; known until now: {', '.join(known)}"
        else:
            error.message = f"{name}: {error.message}"
        fail(error, as_json=as_json)
    if not confirmed:
        # Only a person at a terminal can be asked; scripts and --json must name the key.
        if as_json or not sys.stdin.isatty():
            fail(UsageError(
                f"{name} ({witness.pattern()}) presents {shown}: not recorded without "
                "confirmation",
                hint=f"verify it out of band, then rerun with --fingerprint {seen}",
            ), as_json=as_json)  # fmt: skip
        err.print(line(f"{name} ({witness.pattern()}) presents {shown}"))
        if not typer.confirm("Trust this key?", default=False, err=True):
            raise typer.Exit(1)
    record_trust(paths.known_hosts_file(), witness.pattern(), witness.presented, replace=replace)
    if as_json:
        print_json(host=name, trusted=True, recorded=True, fingerprint=seen,
                   key_type=witness.presented.get_algorithm(),
                   file=str(paths.known_hosts_file()))  # fmt: skip
    else:
        out.print(line(f"{name}: recorded {shown} in {paths.known_hosts_file()}"))


# The idle-cleanup pass the resident host agent runs, for a cron job or by hand.
app.command("janitor")(audit.janitor)
