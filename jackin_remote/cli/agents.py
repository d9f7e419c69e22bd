"""What agents say of themselves: `usage` (tokens and cost) and `open` (a link an agent tagged).

Both read the merged view, which `ls` (or these commands, unless `--cached`) refreshes from the
hosts. Links and counts were checked at the wire (agent_host/wire.py: check_links, check_usage)
and are checked again before anything is handed to the laptop's opener.
"""

from __future__ import annotations

import re
from typing import Any

import typer

from jackin_remote.cli import complete
from jackin_remote.cli.common import EXIT_SOME_HOSTS_FAILED, fail, out, print_json
from jackin_remote.cli.sessions import fleet_rows
from jackin_remote.errors import UsageError

JSON = typer.Option(False, "--json", help="Machine-readable output.")
LINK_KINDS = ("pr", "issue", "repo", "link")  # agent_host.wire's (a test holds them equal)
USAGE_COUNTS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
GROUPS = ("host", "workspace", "role", "runtime", "session")
_SINCE = re.compile(r"(\d{1,6})([mhdw])\Z")
_UNIT = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def since_seconds(value: str) -> int:
    """`30m`, `12h`, `7d`, `2w` as seconds; anything else is refused, named."""
    match = _SINCE.match(value.strip())
    if match is None:
        raise UsageError(f"--since {value!r} is not a duration",
                         hint="write a number and a unit: 30m, 12h, 7d or 2w")  # fmt: skip
    return int(match.group(1)) * _UNIT[match.group(2)]


def usage_totals(
    rows: list[dict[str, Any]], by: str, since: float | None = None
) -> list[dict[str, Any]]:
    """Tokens and cost summed per `by` (one of GROUPS), over the sessions created at or after
    `since`. Pure. A group's cost is None when no session of it reported one (codex reports
    tokens only), and `sessions_without_cost` counts those that reported tokens but no cost."""
    groups: dict[str, dict[str, Any]] = {}
    for row in rows:
        created = row.get("created_at")
        if since is not None and not (isinstance(created, int | float) and created >= since):
            continue
        usage = row.get("usage")
        key = str(row.get("id") if by == "session" else row.get(by))
        group = groups.setdefault(key, {by: key, "sessions": 0, **dict.fromkeys(USAGE_COUNTS, 0),
                                        "cost_usd": None, "sessions_without_cost": 0})  # fmt: skip
        group["sessions"] += 1
        if not isinstance(usage, dict):
            continue
        for name in USAGE_COUNTS:
            group[name] += usage.get(name) or 0
        cost = usage.get("cost_usd")
        if cost is None:
            group["sessions_without_cost"] += 1
        else:
            group["cost_usd"] = (group["cost_usd"] or 0.0) + cost
    return sorted(groups.values(), key=lambda group: group[by])


def usage(
    ctx: typer.Context,
    by: str = typer.Option(
        "host", "--by", help="Sum per host, workspace, role, runtime or session."
    ),
    since: str | None = typer.Option(
        None, "--since", help="Only sessions started within this long: 30m, 12h, 7d, 2w."
    ),
    on: str = typer.Option(
        "all", "--on", help="Host, group, label:X or all.", autocompletion=complete.hosts
    ),
    cached: bool = typer.Option(False, "--cached", help="Answer from the local view only."),
    as_json: bool = JSON,
) -> None:
    """Tokens and cost the runtimes reported, per host (or workspace, role, session), and for
    the fleet."""
    import time

    from jackin_remote.ui.safe import text
    from jackin_remote.ui.sessions import tokens

    if by not in GROUPS:
        fail(UsageError(f"--by {by!r} is not one of {', '.join(GROUPS)}"), as_json=as_json)
    try:
        start = None if since is None else time.time() - since_seconds(since)
    except UsageError as error:
        fail(error, as_json=as_json)
    _, rows, failed = fleet_rows(ctx, on, cached=cached, as_json=as_json)
    groups = usage_totals(rows, by, start)
    fleet = usage_totals([{**row, "fleet": "fleet"} for row in rows], "fleet", start)
    total = fleet[0] if fleet else usage_totals([], "fleet")
    if as_json:
        print_json(by=by, groups=groups, fleet=total or None,
                   failed_hosts=[r.host.name for r in failed])  # fmt: skip
    else:
        from rich.table import Table

        table = Table(by, "sessions", "tokens", "no cost reported", box=None,
                      header_style="bold")  # fmt: skip
        for group in [*groups, *(fleet and [{**fleet[0], by: "(fleet)"}])]:
            # a cost summed over only some sessions is marked: the others reported none (codex)
            table.add_row(text(group[by]), text(str(group["sessions"])), text(tokens(group)),
                          text(str(group["sessions_without_cost"] or "-")))  # fmt: skip
        out.print(table)
        for result in failed:
            out.print(text(f"{result.host.name}: not counted ({result.state})", style="yellow"))
    if failed:
        raise typer.Exit(EXIT_SOME_HOSTS_FAILED)


def open_link(
    ctx: typer.Context,
    session: str = typer.Argument(
        ..., help="Session id, unique prefix, name or HOST:ID.", autocompletion=complete.sessions
    ),
    kind: str | None = typer.Argument(
        None, help="pr, issue, repo or link (default: the first of those the agent named)."
    ),
    print_only: bool = typer.Option(False, "--print", help="Print the URL; open nothing."),
    as_json: bool = JSON,
) -> None:
    """Open a link the agent named with a <jackin:pr|issue|repo|link> tag, in the laptop's
    browser (the local view: `ls` refreshes it)."""
    from jackin_remote.store import Store

    try:
        if kind is not None and kind not in LINK_KINDS:
            raise UsageError(f"{kind!r} is not a link kind",
                             hint=f"use one of {', '.join(LINK_KINDS)}")  # fmt: skip
        existing = Store.open_existing()
        if existing is None:
            raise UsageError("no sessions are known here yet", hint="run `jackin-remote ls`")
        row = existing.find(session)
        url = pick_link(row.get("links"), kind)
        if url is None:
            what = f"a link of kind {kind}" if kind else "any link"
            raise UsageError(f"session {row['id']} has not named {what}",
                             hint="an agent names one by printing <jackin:pr>URL</jackin:pr>; "
                             "`jackin-remote ls` refreshes what is known")  # fmt: skip
    except UsageError as error:
        fail(error, as_json=as_json)
    if as_json:
        print_json(session=row["id"], host=row["host"], url=url, opened=not print_only)
    elif print_only:
        typer.echo(url)
    if not print_only:
        import webbrowser

        webbrowser.open(url)


def pick_link(links: Any, kind: str | None) -> str | None:
    """The URL `open` hands over: the first of `kind`, else the first pr, issue, repo, link.
    Checked again here (valid_url): only an http(s) URL of printable characters is opened."""
    from agent_host.wire import valid_url

    if not isinstance(links, dict):
        return None
    for each in [kind] if kind else LINK_KINDS:
        for url in links.get(each) or []:
            if valid_url(url):
                return str(url)
    return None


def register(app: typer.Typer) -> None:
    app.command("usage")(usage)
    app.command("open")(open_link)
