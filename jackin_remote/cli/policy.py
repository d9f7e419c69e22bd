"""`jackin-remote policy`: what the egress proxies decided, and what they would decide.

Hosts' answers are hostile text: every cell goes through ui/safe.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from jackin_remote.cli import complete
from jackin_remote.cli.common import fail, load, out, print_json, run
from jackin_remote.errors import JackinError, UsageError
from jackin_remote.ui.safe import line, text

app = typer.Typer(help="Egress policy of --network allowlist sessions: the log, and checks.",
                  no_args_is_help=True)  # fmt: skip
JSON = typer.Option(False, "--json", help="Print a versioned JSON envelope.")


@app.command("log")
def log(
    ctx: typer.Context,
    session: str | None = typer.Argument(None, help="A session (id, prefix or name); all if none."),
    on: str = typer.Option("all", "--on", help="Host, group, label:X or all.",
                           autocompletion=complete.hosts),
    follow: bool = typer.Option(False, "--follow", "-f", help="Print each new or changed entry "
                                "as it comes, until Ctrl-C (with SESSION: until it ends)."),
    as_json: bool = JSON,
) -> None:  # fmt: skip
    """Every destination the sessions' proxies allowed or denied, by which rule, merged across
    the fleet: bytes each way, how often, first and last seen."""
    if follow:
        try:
            run(_follow(ctx, session, on, as_json))
        except JackinError as error:
            fail(error, as_json=as_json)
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        return
    try:
        entries, failed = run(_log(ctx, session, on))
    except JackinError as error:
        fail(error, as_json=as_json)
    if as_json:
        print_json(entries=entries, failed=failed)
    else:
        _show_log(entries, failed)
    if failed:
        raise typer.Exit(3)


FOLLOW_EVERY = 2.0  # seconds between two looks of `policy log --follow`


async def _log(
    ctx: typer.Context, ref: str | None, on: str
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    from jackin_remote.fleet import Pool

    inventory = load(ctx)
    async with Pool(inventory) as pool:
        hosts, params = await _targets(pool, inventory, ref, on)
        return await _ask(pool, hosts, params)


async def _targets(pool: Any, inventory: Any, ref: str | None, on: str) -> tuple[Any, Any]:
    from jackin_remote.inventory import select_hosts
    from jackin_remote.sessions import find_session
    from jackin_remote.store import Store

    if ref is not None:
        row, host = await find_session(pool, inventory, Store(), ref)
        return [host], {"id": row["id"]}
    return select_hosts(inventory, on), {}


async def _follow(ctx: typer.Context, ref: str | None, on: str, as_json: bool) -> None:
    """Look every FOLLOW_EVERY seconds over held connections; print what is new or changed.
    With a session: stop once it has ended (after a last look)."""
    import asyncio
    import json
    import sys

    from agent_host.wire import ACTIVE_STATES
    from jackin_remote.fleet import Pool
    from jackin_remote.sessions import refresh
    from jackin_remote.store import Store

    inventory = load(ctx)
    seen: dict[tuple[Any, ...], int] = {}
    async with Pool(inventory) as pool:
        hosts, params = await _targets(pool, inventory, ref, on)
        while True:
            ended = False
            if ref is not None:
                store = Store()
                await refresh(pool, hosts, store)
                rows = [r for r in store.sessions([hosts[0].name]) if r["id"] == params["id"]]
                ended = not rows or rows[0]["state"] not in ACTIVE_STATES
            entries, failed = await _ask(pool, hosts, params)
            fresh = []
            for entry in entries:
                key = tuple(entry[k] for k in ("host_name", "session", "host", "port",
                                               "decision", "rule"))  # fmt: skip
                if seen.get(key) != entry["count"]:
                    seen[key] = entry["count"]
                    fresh.append(entry)
            if as_json:
                for entry in fresh:
                    sys.stdout.write(json.dumps({"schema_version": "v1", "entry": entry}) + "\n")
                sys.stdout.flush()
            elif fresh or failed:
                _show_log(fresh, failed, empty_note=False)
            if ended:
                return
            await asyncio.sleep(FOLLOW_EVERY)


async def _ask(
    pool: Any, hosts: Any, params: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    from agent_host.wire import EgressEntry
    from jackin_remote.answers import merged_entries
    from jackin_remote.sessions import call

    async def ask(link: Any) -> Any:
        return await call(pool, link.host, "egress.log", params)

    results = await pool.map(hosts, ask)
    entries, failed = merged_entries(results, EgressEntry.from_wire, host_field="host_name")
    entries.sort(key=lambda e: e["last_seen"])
    return entries, failed


def _show_log(
    entries: list[dict[str, Any]], failed: list[dict[str, str]], empty_note: bool = True
) -> None:
    from rich.table import Table

    from jackin_remote.ui.sessions import age

    if not entries:
        if empty_note:
            out.print(text("no egress recorded (only --network allowlist sessions have a proxy)"))
    else:
        table = Table(box=None, header_style="bold")
        for column in ("session", "host", "destination", "decision", "rule", "up", "down",
                       "count", "last seen"):  # fmt: skip
            table.add_column(column)
        for e in entries:
            style = {"allowed": "green", "denied": "red", "failed": "yellow"}[e["decision"]]
            table.add_row(text(e["session"]), text(e["host_name"]),
                          text(f"{e['host']}:{e['port']}"), text(e["decision"], style=style),
                          text(e["rule"]), text(str(e["bytes_up"])), text(str(e["bytes_down"])),
                          text(str(e["count"])), text(age(e["last_seen"]) + " ago"))  # fmt: skip
        out.print(table)
    for entry in failed:
        out.print(line((f"{entry['host']}: ", "yellow"), entry["error"]))


@app.command("check")
def check(
    ctx: typer.Context,
    destination: str = typer.Argument(..., help="HOST or HOST:PORT (default port 443)."),
    session: str | None = typer.Option(None, "--session", help="Ask that session's own rules."),
    role: str | None = typer.Option(None, "--role", help="Without --session: the role a launch "
                                    "would use (directory or git URL); it decides the runtime as "
                                    "launch does (its only one, unless --runtime)."),
    runtime: str | None = typer.Option(None, "--runtime", help="Without --session: the rules a "
                                       "launch of this runtime gets (default: the role's only "
                                       "one; without --role: shell)."),
    allow: list[str] = typer.Option([], "--allow", help="Without --session: an --allow to add."),
    deny: list[str] = typer.Option([], "--deny", help="Without --session: a --deny to add."),
    on: str | None = typer.Option(None, "--on", help="Without --session: with this host's rules "
                                  "from the inventory (its defaults', groups' and own).",
                                  autocompletion=complete.hosts),
    workspace: Path | None = typer.Option(None, "--workspace", help="Without --session: with this "
                                          "workspace's approved .jackin/config.toml rules "
                                          "(default: the current directory)."),
    workspace_rules: str = typer.Option("apply", "--workspace-rules",
                                        help="apply | ignore the workspace's rules."),
    as_json: bool = JSON,
) -> None:  # fmt: skip
    """Would the proxy let DESTINATION through, and by which rule? Sends nothing to it.
    Exit 0: allowed; 1: denied."""
    note = None
    try:
        host, port = _destination(destination)
        if session is not None:
            if allow or deny or role or runtime or on or workspace is not None:
                raise UsageError("--allow, --deny, --role, --runtime, --on and --workspace "
                                 "describe a launch; a --session has its rules")  # fmt: skip
            answer = _ask_session(ctx, session, host, port)
        else:
            chosen = _launch_runtime(role, runtime)
            found = _workspace_rules(workspace or Path("."), workspace_rules)
            applied = found.applied if found is not None else ()
            answer = _ask_launch(chosen, allow, deny, host, port, _host_rules(ctx, on), applied)
            if found is not None:
                answer["workspace_rules"] = {"file": found.file, "status": found.status,
                                             "applied": bool(applied)}  # fmt: skip
                if not applied:
                    note = f"{found.file}: {found.section('allowlist')['note']}"
    except JackinError as error:
        fail(error, as_json=as_json)
    if as_json:
        print_json(destination=f"{host}:{port}", **answer)
    else:
        verdict = ("allowed", "green") if answer["allowed"] else ("denied", "red")
        out.print(line(f"{host}:{port} ", verdict, " by ", answer["rule"], multiline=False))
        if note is not None:
            out.print(line(("note: ", "yellow"), "the workspace's rules are not included: ", note))
    if not answer["allowed"]:
        raise typer.Exit(1)


def _launch_runtime(role: str | None, runtime: str | None) -> str:
    """The runtime a launch would run: the one given, else the role's only one (as launch
    decides, config.choose_runtime); without a role, `shell`. A git role is fetched into a
    temporary directory, gone when this is done."""
    import tempfile

    from jackin_remote.config import choose_runtime, resolve_role
    from jackin_remote.core.contract import RoleRef, pick_runtime
    from jackin_remote.roles import load_role

    if role is None:
        return runtime or "shell"
    with tempfile.TemporaryDirectory(prefix="jackin-policy-") as scratch:
        loaded = load_role(resolve_role(role, Path.cwd()), Path(scratch))
    chosen = choose_runtime(runtime, loaded.name, tuple(loaded.runtimes))
    ref = RoleRef(loaded.name, loaded.content_hash, "", loaded.user, tuple(loaded.runtimes),
                  loaded.shown_source)  # fmt: skip
    return pick_runtime(chosen, ref).name  # a runtime the role does not declare is refused


def _workspace_rules(workspace: Path, mode: str) -> Any:
    from jackin_remote.workspace_rules import judge

    return judge(workspace, mode=mode, network="allowlist")


def _host_rules(ctx: typer.Context, name: str | None) -> tuple[tuple[str, str, str], ...]:
    if name is None:
        return ()
    host = load(ctx).host(name)
    if host is None:
        raise UsageError(f"--on {name}: no such host", hint="see `jackin-remote hosts list`")
    return tuple(host.egress)


def _destination(text_: str) -> tuple[str, int]:
    from agent_host.egress import normalise_host, parse_pattern
    from agent_host.wire import SpecError

    try:
        pattern = parse_pattern(text_, "DESTINATION")
    except SpecError as exc:
        raise UsageError(f"{exc.field}: {exc.problem}") from None
    if pattern.kind not in ("exact", "ip"):
        raise UsageError("DESTINATION: a host, not a pattern", hint="e.g. api.github.com:443")
    return normalise_host(pattern.host), pattern.port or 443


def _ask_session(ctx: typer.Context, ref: str, host: str, port: int) -> dict[str, Any]:
    from jackin_remote.fleet import Pool
    from jackin_remote.sessions import call, find_session
    from jackin_remote.store import Store

    inventory = load(ctx)

    async def go() -> Any:
        async with Pool(inventory) as pool:
            row, target = await find_session(pool, inventory, Store(), ref)
            return row, await call(pool, target, "egress.check",
                                   {"id": row["id"], "host": host, "port": port})  # fmt: skip

    row, answer = run(go())
    if not isinstance(answer, dict) or not isinstance(answer.get("allowed"), bool):
        raise JackinError(f"{row['host']}: a malformed answer to egress.check")
    return {"session": row["id"], "network": str(answer.get("network")),
            "allowed": answer["allowed"], "rule": str(answer.get("rule"))}  # fmt: skip


def _ask_launch(
    runtime: str,
    allow: list[str],
    deny: list[str],
    host: str,
    port: int,
    inventory: tuple[tuple[str, str, str], ...] = (),
    workspace: tuple[tuple[str, str, str], ...] = (),
) -> dict[str, Any]:
    from agent_host.egress import decide
    from agent_host.wire import SpecError
    from jackin_remote.core.egress_rules import launch_rules

    try:
        rules = launch_rules(runtime, allow, deny, inventory, workspace)
    except SpecError as exc:
        raise UsageError(f"{exc.field}: {exc.problem}") from None
    decision = decide(host, port, rules)
    return {"runtime": runtime, "allowed": decision.allowed, "rule": decision.rule}


def _edit(ctx: typer.Context, action: str, pattern: str, on: str | None, file: Path | None,
          as_json: bool) -> None:  # fmt: skip
    from agent_host.egress import parse_pattern
    from agent_host.wire import SpecError
    from jackin_remote.cli.hosts import _edit_target, _inventory_source
    from jackin_remote.inventory.editor import add_egress_rule

    target = _edit_target(ctx, file)
    try:
        try:
            parse_pattern(pattern, "PATTERN")
        except SpecError as exc:
            raise UsageError(f"{exc.field}: {exc.problem}") from None
        written, changed = add_egress_rule(target, action, pattern, on,
                                           inventory=_inventory_source(ctx, target))  # fmt: skip
    except JackinError as error:
        fail(error, as_json=as_json)
    where = f"[hosts.{on}.egress]" if on else "[defaults.egress]"
    if as_json:
        print_json(action=action, pattern=pattern, file=str(written), table=where,
                   changed=changed)  # fmt: skip
    elif changed:
        out.print(line(f"{action} ", (pattern, "bold"), f": added to {where} in {written}"))
    else:
        out.print(line(f"{action} ", (pattern, "bold"), f": already in {where} in {written}"))


ON_HOST = typer.Option(
    None, "--on", autocompletion=complete.hosts,
    help="The host whose rules to change (default: the file's [defaults.egress], for its hosts).",
)  # fmt: skip
FILE = typer.Option(None, "--file", help="Inventory file to write (without --on).")


@app.command("allow")
def allow_rule(
    ctx: typer.Context,
    pattern: str = typer.Argument(..., help="host, *.domain, **.domain, host:port or an IP."),
    on: str | None = ON_HOST, file: Path | None = FILE, as_json: bool = JSON,
) -> None:  # fmt: skip
    """Allow a destination for --network allowlist sessions, in the inventory (comments kept)."""
    _edit(ctx, "allow", pattern, on, file, as_json)


@app.command("deny")
def deny_rule(
    ctx: typer.Context,
    pattern: str = typer.Argument(..., help="host, *.domain, **.domain, host:port or an IP."),
    on: str | None = ON_HOST, file: Path | None = FILE, as_json: bool = JSON,
) -> None:  # fmt: skip
    """Deny a destination for --network allowlist sessions, in the inventory (deny wins)."""
    _edit(ctx, "deny", pattern, on, file, as_json)


@app.command("approve")
def approve(
    workspace: Path = typer.Argument(Path("."), help="The workspace (default: .)."),
    revoke: bool = typer.Option(False, "--revoke", help="Forget the approval instead."),
    as_json: bool = JSON,
) -> None:  # fmt: skip
    """Approve the egress rules of a workspace's .jackin/config.toml ([egress] allow / deny) as
    the file is now: they then apply to its --network allowlist sessions, until it changes.
    Shows each rule with its line; never prompts."""
    if revoke:
        _revoke(workspace, as_json)
        return
    from jackin_remote.core.egress_rules import APPROVED
    from jackin_remote.store import Store
    from jackin_remote.workspace_rules import (
        RULES_FILE,
        approved_digest,
        read_rules_file,
        status_of,
        workspace_key,
    )

    key = workspace_key(workspace)
    try:
        found = read_rules_file(workspace)
        if found is None:
            raise UsageError(f"{Path(key) / RULES_FILE}: no such file",
                             hint="a workspace's egress rules are [egress] allow = [...] and "
                             "deny = [...] in its .jackin/config.toml")  # fmt: skip
        before = status_of(found, approved_digest(workspace))
        if before != APPROVED:
            Store().approve_workspace_rules(key, str(found.path), found.digest)
    except JackinError as error:
        fail(error, as_json=as_json)
    rules = [{"action": a, "pattern": p, "origin": where} for a, p, where in found.rules]
    if as_json:
        print_json(workspace=key, file=str(found.path), sha256=found.digest, rules=rules,
                   was=before, approved=True)  # fmt: skip
        return
    out.print(line(("approved", "green"), " ", str(found.path), f" (sha256 {found.digest[:16]}; ",
                   f"was: {before})"))  # fmt: skip
    if not rules:
        out.print(text("  it holds no egress rules"))
    for rule in rules:
        style = "red" if rule["action"] == "deny" else "green"
        out.print(line("  ", (f"{rule['action']:<5}", style), " ", (rule["pattern"], "bold"), "  ",
                       (rule["origin"], "dim"), multiline=False))  # fmt: skip
    out.print(text("  they apply to this workspace's --network allowlist sessions until the file "
                   "changes; deny always wins", style="dim"))  # fmt: skip


def _revoke(workspace: Path, as_json: bool) -> None:
    from jackin_remote.store import Store
    from jackin_remote.workspace_rules import workspace_key

    key = workspace_key(workspace)
    store = Store.open_existing()
    revoked = store.revoke_workspace_rules(key) if store is not None else False
    if as_json:
        print_json(workspace=key, revoked=revoked)
    else:
        said = "approval revoked" if revoked else "nothing to revoke: not approved"
        out.print(line((said, "green" if revoked else "yellow"), f" for {key}"))
