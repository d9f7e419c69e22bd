"""Session commands: explain, launch, ls, logs, attach, stop, rm, pull, diff."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from jackin_remote.cli import complete
from jackin_remote.cli.common import (
    EXIT_SOME_HOSTS_FAILED,
    err,
    fail,
    load,
    out,
    print_json,
    run,
    write_text,
)
from jackin_remote.errors import JackinError, UsageError
from jackin_remote.ui.safe import line

if TYPE_CHECKING:
    import asyncio

JSON = typer.Option(False, "--json", help="Print a versioned JSON envelope.")
ON = typer.Option(
    None,
    "--on",
    help="Host, group, label:X or all; sessions go to the least-loaded matching host with free "
    "capacity. Default: `on` in a config file, else local (a launch never sends the workspace "
    "to a server you did not name; see `jackin-remote config show`).",
    show_default=False,
    autocompletion=complete.hosts,
)
ROLE = typer.Option(
    None,
    "--role",
    help="Role directory (relative: to the current directory) or git URL (jackin.role.toml + "
    "Dockerfile). Default: `role` in a config file.",
    show_default=False,
)
RUNTIME = typer.Option(
    None,
    "--runtime",
    help="claude|codex|amp|opencode|gemini|shell|demo. Default: `runtime` in a config file, "
    "else the role's runtime when it declares only one; required otherwise.",
    show_default=False,
)
IGNORE_WS = typer.Option(
    False,
    "--ignore-workspace-config",
    help="Do not read the workspace's .jackin/config.toml (approved or not).",
)
WORKSPACE_RULES = typer.Option(
    "apply",
    "--workspace-rules",
    help="apply | ignore: the [egress] rules of the workspace's .jackin/config.toml, for "
    "--network allowlist. apply (default): once approved (`jackin-remote policy approve`); launch "
    "refuses rules that are not, or changed since. ignore: launch without them.",
)
TASK = typer.Option(None, "--task", help="Run headless on this task (else: interactive, in tmux).")
TASK_FILE = typer.Option(None, "--task-file", help="Read the task from a file.")
NETWORK = typer.Option(
    None,
    "--network",
    help="allowlist | none | open. allowlist (the default where the host can enforce it): only "
    "what the rules allow, through the host's egress proxy (--allow, --deny). none: no network "
    "(the engine enforces it). open: the internet and the host's network.",
)
DOCKER = typer.Option(
    "none",
    "--docker",
    help="none | private. private: a docker daemon of the session's own in a sidecar, reached "
    "over TLS (DOCKER_HOST); the sidecar is privileged on the host. The host's docker socket is "
    "never offered.",
)
MOUNT = typer.Option(
    [],
    "--mount",
    help="host:DIR:TARGET: a host directory the inventory lists in host_mounts, read-only at "
    "TARGET. LAPTOP_DIR:TARGET[:ro|rw]: a laptop directory copied to the host for this session "
    "(ro by default; rw writes stay on the host and are deleted by rm). Repeatable.",
)
TMPFS = typer.Option([], "--tmpfs", help="TARGET:SIZE: a tmpfs of that size (repeatable).")
VOLUME = typer.Option(
    [],
    "--volume",
    help="TARGET: an engine volume of the session's own, writable, removed by rm (repeatable).",
)
ACK_SENSITIVE = typer.Option(
    [],
    "--ack-sensitive",
    help="NAME: allow a mount that is or holds "
    "this credential store (.ssh, .aws, .npmrc, ...; repeatable).",
)
SECRET = typer.Option(
    [],
    "--secret",
    help="NAME=SOURCE: a credential for the agent, as the file /run/jackin/secrets/NAME and the "
    "variable $NAME of the agent's process only. SOURCE: env:VAR, file:PATH, command:PROGRAM "
    "ARGS or op://VAULT/ITEM/FIELD, read on this laptop at launch (repeatable).",
)
MODEL_API = typer.Option(
    None,
    "--model-api",
    help="With --network allowlist: the URL the proxy sends the runtime's model calls to, adding "
    "its key (default: the runtime's own API; e.g. your gateway).",
)
BACKEND = typer.Option(
    None,
    "--backend",
    help="docker | gvisor: what runs the sandbox (default: the host's `backend` in the inventory).",
)
ALLOW = typer.Option(
    [],
    "--allow",
    help="With --network allowlist: allow a destination "
    "(host, *.domain, **.domain, host:port; repeatable).",
)
DENY = typer.Option(
    [],
    "--deny",
    help="With --network allowlist: deny a destination (same "
    "patterns; deny always wins; repeatable).",
)
ENV = typer.Option([], "--env", help="KEY=VALUE plain setting for the sandbox (repeatable).")
COUNT = typer.Option(1, "--count", help="Launch N sessions across the matching hosts.")
# The limits: these win over a config's [limits] and the inventory's (a role never sets them).
MEMORY = typer.Option(None, "--memory", help='Memory limit of each sandbox, e.g. "512m", "4g".')
CPUS = typer.Option(None, "--cpus", help="CPU limit of each sandbox, e.g. 0.5 or 2.")
PIDS = typer.Option(None, "--pids", help="Process limit of each sandbox.")
NOFILE = typer.Option(None, "--nofile", help="Open-file limit of each sandbox's processes.")
ISOLATION = typer.Option(None, "--isolation", help="clone (git, default) | copy.")
NAME = typer.Option(None, "--name", help="A name for the session (lowercase, digits, '-').")
KEY_FROM = typer.Option(
    None,
    "--key-from",
    help="Laptop env var holding the runtime's API key "
    "(default: the runtime's own, e.g. ANTHROPIC_API_KEY).",
)
INCLUDE = typer.Option([], "--include", help="Send this secret-shaped file anyway (repeatable).")
BUILD_NETWORK = typer.Option(
    "none",
    "--build-network",
    help="Network of the role image build: none (default: RUN steps get no network) | default "
    "(the engine's network, for a Dockerfile that downloads).",
)
WORKSPACE = typer.Argument(Path("."), help="The workspace directory (default: .).")
WIDE = typer.Option(
    False, "--wide", help="Every column, unfolded (wider than the terminal if need be)."
)
SESSION = typer.Argument(
    ..., help="Session id, unique id prefix or name.", autocompletion=complete.sessions
)
FULL_CONTRACT = typer.Option(
    False,
    "--full-contract",
    help="Print every session's contract in full (default: one per batch, with what differs "
    "per session).",
)
VERBOSE = typer.Option(
    False,
    "--verbose",
    "-v",
    help="Print the role build's output as it comes, and every contract in full.",
)
RAW = typer.Option(
    False, "--raw", help="Pass the text through untouched (escape sequences included)."
)
IDLE_TIMEOUT = typer.Option(
    None,
    "--idle-timeout",
    help='Stop the session once idle this long ("30m", "2h", "1d"; interactive: no tmux '
    "activity; task: exited), even with no controller connected; its checkout stays. "
    '"off": never. Default: the host\'s idle_timeout in the inventory.',
)
NO_SNAPSHOT = typer.Option(
    False, "--no-snapshot",
    help="Do not snapshot the checkout before the agent starts (snapshot, restore and "
    "diff --since still work, from the first manual snapshot).",
)  # fmt: skip

IGNORE_FLOOR = typer.Option(
    False,
    "--ignore-disk-floor",
    help="Launch even where free disk space would fall below the host's disk_floor.",
)


def _options(
    on: str | None,
    role: str | None,
    runtime: str | None,
    workspace: Path,
    task: str | None,
    task_file: Path | None,
    network: str | None,
    env: list[str],
    count: int,
    isolation: str | None,
    name: str | None,
    key_from: str | None,
    include: list[str],
    build_network: str = "none",
    *,
    ignore_workspace: bool = False,
    as_json: bool = False,
    limits: dict[str, Any] | None = None,
    allow: list[str] | None = None,
    deny: list[str] | None = None,
    backend: str | None = None,
    model_api: str | None = None,
    secrets: list[str] | None = None,
    resolve_commands: bool = False,
    mounts: tuple[list[str], list[str], list[str], list[str]] = ([], [], [], []),
    docker: str = "none",
    snapshot: bool = True,
) -> Any:
    from jackin_remote.cli.config import interactive, launch_defaults
    from jackin_remote.launch import LaunchOptions, read_task

    chosen = launch_defaults(workspace, on=on, role=role, runtime=runtime, limits=limits or {},
                             ignore_workspace=ignore_workspace,
                             interactive=interactive(as_json))  # fmt: skip
    return LaunchOptions(
        selector=chosen.on, role=chosen.role, runtime=chosen.runtime, workspace=workspace,
        task=read_task(task, task_file), network=network, env=tuple(env), count=count,
        isolation=isolation, name=name, key_from=key_from, include=tuple(include),
        build_network=build_network, limits=chosen.limits, allow=tuple(allow or ()),
        deny=tuple(deny or ()), backend=backend, model_api=model_api,
        secrets=tuple(secrets or ()), resolve_commands=resolve_commands,
        mounts=tuple(mounts[0]), tmpfs=tuple(mounts[1]), volumes=tuple(mounts[2]),
        acknowledged=tuple(mounts[3]), docker=docker, snapshot=snapshot,
    )  # fmt: skip


def _with_idle_timeout(options: Any, idle_timeout: Any) -> Any:
    """--idle-timeout (checked by prepare, with the inventory's rule)."""
    import dataclasses

    if not isinstance(idle_timeout, str):  # not given (or called without typer's parsing)
        return options
    return dataclasses.replace(options, idle_timeout=idle_timeout)


def _rules_mode(options: Any, mode: str, ignore_workspace: bool) -> Any:
    """--workspace-rules; --ignore-workspace-config leaves the whole file aside, rules too."""
    import dataclasses

    return dataclasses.replace(options, workspace_rules="ignore" if ignore_workspace else mode)


def _limit_flags(
    memory: str | None, cpus: float | None, pids: int | None, nofile: int | None
) -> dict[str, Any]:
    """The limits given as flags, checked by the inventory's own rules."""
    from jackin_remote.inventory.loader import LIMIT_VALIDATORS
    from jackin_remote.inventory.values import ValueProblem

    given = {"memory": memory, "cpus": cpus, "pids": pids, "nofile": nofile}
    checked = {}
    for key, value in given.items():
        if value is None:
            continue
        try:
            checked[key] = LIMIT_VALIDATORS[key](value)
        except ValueProblem as problem:
            raise UsageError(f"--{key}: {problem.message}", hint=problem.hint) from None
    return checked


def _resolve(ctx: typer.Context, options: Any) -> tuple[Any, list[Any]]:
    """Read-only: load, check and resolve. Creates nothing anywhere (explain: with several
    candidates it connects to them, and starts nothing)."""
    from jackin_remote.launch import explain_contracts, prepare
    from jackin_remote.store import Store

    prepared = prepare(load(ctx), options)
    return prepared, run(explain_contracts(prepared, Store.open_existing()))


def _resolve_live(
    ctx: typer.Context, options: Any, runner: asyncio.Runner
) -> tuple[Any, list[Any], Any]:
    """launch: like _resolve, but every candidate is asked first (live counts), on the pool
    that then applies the plan. Nothing is started when the sessions do not all fit."""
    from jackin_remote.fleet import Pool
    from jackin_remote.launch import launch_contracts, prepare
    from jackin_remote.store import Store

    prepared = prepare(load(ctx), options)
    pool = Pool(prepared.inventory)
    try:
        items = runner.run(launch_contracts(pool, prepared, Store.open_existing()))
    except BaseException:
        runner.run(pool.close())
        raise
    return prepared, items, pool


def _show_contracts(items: list[Any], prepared: Any, *, full: bool = False) -> None:
    """Every contract in full (`full`), else one per batch with what differs per session."""
    from jackin_remote.ui.contract import contract_panel
    from jackin_remote.ui.launch import batch_view

    if full:
        for contract in items:
            out.print(contract_panel(contract.to_dict()))
        return
    roots = {host.name: host.root for host in prepared.hosts}
    out.print(batch_view([contract.to_dict() for contract in items], roots))


def explain(
    ctx: typer.Context, workspace: Path = WORKSPACE, on: str | None = ON,
    role: str | None = ROLE, runtime: str | None = RUNTIME, task: str | None = TASK,
    task_file: Path | None = TASK_FILE,
    network: str | None = NETWORK, env: list[str] = ENV, count: int = COUNT,
    isolation: str | None = ISOLATION, name: str | None = NAME, key_from: str | None = KEY_FROM,
    include: list[str] = INCLUDE, build_network: str = BUILD_NETWORK, as_json: bool = JSON,
    ignore_workspace_config: bool = IGNORE_WS, full_contract: bool = FULL_CONTRACT,
    workspace_rules: str = WORKSPACE_RULES,
    memory: str | None = MEMORY, cpus: float | None = CPUS, pids: int | None = PIDS,
    nofile: int | None = NOFILE, allow: list[str] = ALLOW, deny: list[str] = DENY,
    backend: str | None = BACKEND, model_api: str | None = MODEL_API,
    secret: list[str] = SECRET, mount: list[str] = MOUNT, tmpfs: list[str] = TMPFS,
    volume: list[str] = VOLUME, ack_sensitive: list[str] = ACK_SENSITIVE,
    docker: str = DOCKER, no_snapshot: bool = NO_SNAPSHOT,
    ignore_disk_floor: bool = IGNORE_FLOOR,
    idle_timeout: str | None = IDLE_TIMEOUT,
) -> None:  # fmt: skip
    """Show the session contract a launch would apply. No side effects anywhere."""
    import dataclasses
    import tempfile

    # A git role is fetched into a temporary directory, gone when explain is done.
    with tempfile.TemporaryDirectory(prefix="jackin-explain-") as scratch:
        try:
            options = _options(on, role, runtime, workspace, task, task_file, network, env,
                               count, isolation, name, key_from, include, build_network,
                               ignore_workspace=ignore_workspace_config, as_json=as_json,
                               limits=_limit_flags(memory, cpus, pids, nofile),
                               allow=allow, deny=deny, backend=backend, model_api=model_api,
                               secrets=secret,
                               mounts=(mount, tmpfs, volume, ack_sensitive),
                               docker=docker, snapshot=not no_snapshot)  # fmt: skip
            options = dataclasses.replace(
                _rules_mode(options, workspace_rules, ignore_workspace_config),
                role_cache=Path(scratch), explain_only=True,
                ignore_disk_floor=ignore_disk_floor,
            )  # fmt: skip
            options = _with_idle_timeout(options, idle_timeout)
            prepared, items = _resolve(ctx, options)
        except JackinError as error:
            fail(error, as_json=as_json)
    if as_json:
        print_json(contracts=[c.to_dict() for c in items])
    else:
        _show_contracts(items, prepared, full=full_contract)


def launch(
    ctx: typer.Context, workspace: Path = WORKSPACE, on: str | None = ON,
    role: str | None = ROLE, runtime: str | None = RUNTIME, task: str | None = TASK,
    task_file: Path | None = TASK_FILE,
    network: str | None = NETWORK, env: list[str] = ENV, count: int = COUNT,
    isolation: str | None = ISOLATION, name: str | None = NAME, key_from: str | None = KEY_FROM,
    include: list[str] = INCLUDE, build_network: str = BUILD_NETWORK, as_json: bool = JSON,
    ignore_workspace_config: bool = IGNORE_WS, full_contract: bool = FULL_CONTRACT,
    workspace_rules: str = WORKSPACE_RULES,
    verbose: bool = VERBOSE, memory: str | None = MEMORY, cpus: float | None = CPUS,
    pids: int | None = PIDS, nofile: int | None = NOFILE, allow: list[str] = ALLOW,
    deny: list[str] = DENY, backend: str | None = BACKEND, model_api: str | None = MODEL_API,
    secret: list[str] = SECRET, mount: list[str] = MOUNT, tmpfs: list[str] = TMPFS,
    volume: list[str] = VOLUME, ack_sensitive: list[str] = ACK_SENSITIVE,
    docker: str = DOCKER, no_snapshot: bool = NO_SNAPSHOT,
    ignore_disk_floor: bool = IGNORE_FLOOR,
    idle_timeout: str | None = IDLE_TIMEOUT,
) -> None:  # fmt: skip
    """Launch sandboxed agent session(s): print the contract, then apply its plan."""
    import asyncio
    import dataclasses

    from jackin_remote.launch import apply
    from jackin_remote.store import Store

    try:
        options = _options(on, role, runtime, workspace, task, task_file, network, env, count,
                           isolation, name, key_from, include, build_network,
                           ignore_workspace=ignore_workspace_config, as_json=as_json,
                           limits=_limit_flags(memory, cpus, pids, nofile),
                           allow=allow, deny=deny, backend=backend, model_api=model_api,
                           secrets=secret, resolve_commands=True,
                           mounts=(mount, tmpfs, volume, ack_sensitive),
                           docker=docker, snapshot=not no_snapshot)  # fmt: skip
        # One event loop and pool for placement and apply: the agents asked stay in use.
        runner = asyncio.Runner()
        options = _rules_mode(options, workspace_rules, ignore_workspace_config)
        options = dataclasses.replace(options, ignore_disk_floor=ignore_disk_floor)
        options = _with_idle_timeout(options, idle_timeout)
        prepared, items, pool = _resolve_live(ctx, options, runner)
    except JackinError as error:
        fail(error, as_json=as_json)
    if not as_json:
        _show_contracts(items, prepared, full=full_contract or verbose)
    from jackin_remote.ui.launch import LaunchProgress, next_steps

    shown = LaunchProgress(err, verbose=verbose)  # build output folded into a line per host

    creating: dict[str, list[str]] = {}  # host -> sessions whose create was sent (for Ctrl-C)

    def step(host: str, message: str) -> None:
        if message.startswith(CREATING):
            creating.setdefault(host, []).append(message.removeprefix(CREATING).strip())
        if not as_json:
            shown.step(host, message)

    def build(host: str, output: str) -> None:
        if not as_json:
            shown.build(host, output)

    async def go() -> list[dict[str, Any]]:
        async with pool:
            return await apply(pool, prepared, items, Store(), step,
                               shown if shown.live and not as_json else None, build)  # fmt: skip

    try:
        with shown if not as_json else contextlib.nullcontext(), runner:
            results = runner.run(go())
    except KeyboardInterrupt:
        _interrupted(sorted({c.identity["host"] for c in items}), creating)
        raise typer.Exit(130) from None
    by_id = {c.identity["session"]: c for c in items}
    if as_json:
        print_json(sessions=[{**r, "contract": by_id[r["id"]].to_dict()} for r in results])
    else:
        for entry in results:
            if entry["error"]:
                err.print(line((f"{entry['id']} on {entry['host']}: {entry['state']}:", "red"),
                               " ", entry["error"]))  # fmt: skip
            else:
                out.print(line(
                    ("launched", "green"), f" {entry['id']} on {entry['host']} ",
                    f"({entry['container']})",
                    f", branch {entry['branch']}" if entry.get("branch") else "",
                ))  # fmt: skip
        for host in sorted({e["host"] for e in results if e["state"] == "not_started"}):
            log = shown.failed_build_log(host)  # the whole build output of a failed host
            if log is not None:
                err.print(log)
        steps = next_steps(results, str(items[0].identity["mode"]) if items else "task")
        if steps is not None:
            out.print(steps)
    if any(entry["error"] for entry in results):
        raise typer.Exit(EXIT_SOME_HOSTS_FAILED)


CREATING = "creating session "  # launch.apply's step for a session.create sent to a host


def _interrupted(hosts: list[str], creating: dict[str, list[str]]) -> None:
    """What a Ctrl-C during launch left, host by host: nothing is undone, so say what stays."""
    err.print(line(("interrupted:", "yellow"), " the launch stopped; nothing was undone."))
    for host in hosts:
        ids = creating.get(host, [])
        if ids:
            err.print(line(f"  {host}: session {', '.join(ids)} may exist: its creation was "
                           "asked for, and a host that got the request finishes it on its own. "
                           f"See `jackin-remote ls`; remove it with `jackin-remote rm --force "
                           f"{' '.join(ids)}`."))  # fmt: skip
        else:
            err.print(line(f"  {host}: no session was created. Files already synced and a role "
                           "image already built stay on the host; the next launch reuses "
                           "them."))  # fmt: skip


def ls(
    ctx: typer.Context,
    on: str = typer.Option(
        "all", "--on", help="Host, group, label:X or all.", autocompletion=complete.hosts
    ),
    cached: bool = typer.Option(False, "--cached", help="Answer from the local view only."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Drop the local view, ask every host."),
    wide: bool = WIDE,
    watch: bool = typer.Option(
        False,
        "--watch",
        help="Keep the view fresh (Ctrl-C ends): one "
        "held connection per host; the bell rings when an agent is "
        "blocked.",
    ),
    interval: float = typer.Option(2.0, "--interval", help="Seconds between --watch rounds."),
    notify: str | None = typer.Option(
        None,
        "--notify",
        help="With --watch: a command run when "
        "an agent becomes blocked (JACKIN_SESSION, JACKIN_HOST in "
        "its environment).",
    ),
    as_json: bool = JSON,
) -> None:
    """Every session on every host, merged into one view."""
    if watch:
        _watch(ctx, on, interval, notify, wide=wide, as_json=as_json)
        return
    hosts, rows, failed = fleet_rows(ctx, on, cached=cached, rebuild=rebuild, as_json=as_json)
    from jackin_remote.ui.sessions import (
        capacity,
        capacity_line,
        failure_notes,
        rollup,
        sessions_table,
    )

    errors = {r.host.name: getattr(r.error, "reason", str(r.error)) for r in failed}
    summary = capacity(hosts, rows, {r.host.name: str(r.state) for r in failed})
    if as_json:
        for entry in summary:
            entry["error"] = errors.get(entry["name"])
        published = _published_ports()
        print_json(sessions=[{**_session_json(row),
                              "ports": published.get((row["host"], row["id"]), [])}
                             for row in rows], hosts=summary,
                   fleet={"agents": rollup([entry["agents"] for entry in summary])})  # fmt: skip
    else:
        out.print(sessions_table(rows, wide=wide), crop=not wide)
        out.print(capacity_line(summary))
        for note in failure_notes(rows):
            out.print(note)
        for result in failed:
            err.print(line((f"{result.host.name}: {result.state}:", "yellow"), " ",
                           getattr(result.error, "reason", result.error)))  # fmt: skip
    if failed:
        raise typer.Exit(EXIT_SOME_HOSTS_FAILED)


def _watch(
    ctx: typer.Context, on: str, interval: float, notify: str | None, *, wide: bool,
    as_json: bool,
) -> None:  # fmt: skip
    """`ls --watch`: jackin_remote/watch.py refreshes; this draws. On a terminal the view is
    redrawn in place; piped, each round is printed (as JSON lines with --json)."""
    import json
    import sys

    from rich.console import Group
    from rich.live import Live

    from jackin_remote.inventory import select_hosts
    from jackin_remote.ui.sessions import capacity, capacity_line, rollup, sessions_table
    from jackin_remote.watch import notify_argv, run_notify, watch

    try:
        inventory = load(ctx)
        hosts = select_hosts(inventory, on)
        argv = notify_argv(notify) if notify is not None else None
    except JackinError as error:
        fail(error, as_json=as_json)
    live = Live(console=out, auto_refresh=False, transient=False) if out.is_terminal else None

    def show(rows: list[dict[str, Any]], failed: list[Any], blocked: list[dict[str, Any]]) -> None:
        summary = capacity(hosts, rows, {r.host.name: str(r.state) for r in failed})
        if as_json:
            line_ = {"sessions": [_session_json(row) for row in rows], "hosts": summary,
                     "fleet": {"agents": rollup([e["agents"] for e in summary])},
                     "blocked": [row["id"] for row in blocked]}  # fmt: skip
            sys.stdout.write(json.dumps(line_, default=str) + "\n")
        else:
            view = Group(sessions_table(rows, wide=wide), capacity_line(summary))
            if live is not None:
                live.update(view, refresh=True)
            else:
                out.print(view, crop=not wide)
        if blocked and not as_json:
            sys.stdout.write("\a")  # the terminal's bell: an agent waits for the operator
        sys.stdout.flush()
        for row in blocked if argv else []:
            run_notify(argv or [], row)

    try:
        if live is not None:
            live.start()
        run(watch(inventory, hosts, interval, show))
    except KeyboardInterrupt:
        pass
    finally:
        if live is not None:
            live.stop()


def fleet_rows(
    ctx: typer.Context, on: str, *, cached: bool, rebuild: bool = False, as_json: bool = False
) -> tuple[list[Any], list[dict[str, Any]], list[Any]]:
    """(hosts chosen by `on`, their sessions merged into the local view, the hosts that failed):
    asked of every host, or read from the local view alone when `cached`."""
    from jackin_remote.inventory import select_hosts
    from jackin_remote.store import Store

    try:
        inventory = load(ctx)
        hosts = select_hosts(inventory, on)
    except JackinError as error:
        fail(error, as_json=as_json)
    names = [h.name for h in hosts]
    if cached:
        existing = Store.open_existing()
        return hosts, existing.view(names) if existing is not None else [], []
    from jackin_remote.fleet import Pool
    from jackin_remote.sessions import refresh

    store = Store()
    if rebuild:
        store.clear()

    async def go() -> list[Any]:
        async with Pool(inventory) as pool:
            return await refresh(pool, hosts, store)

    failed = [r for r in run(go()) if not r.ok]
    return hosts, store.view(names), failed


def _published_ports() -> dict[tuple[str, str], list[dict[str, Any]]]:
    """`ports --publish` mappings running now, by (host, session)."""
    from jackin_remote.store import Store

    existing = Store.open_existing()
    found: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for mapping in existing.active_ports() if existing is not None else []:
        found.setdefault((mapping["host"], mapping["id"]), []).append(
            {"local": mapping["local"], "remote_port": mapping["remote_port"]}
        )
    return found


def _session_json(row: dict[str, Any]) -> dict[str, Any]:
    data = {k: v for k, v in row.items() if k not in ("key", "shown_state")}
    data["state"] = row.get("shown_state") or row["state"]
    data["last_known_state"] = row["state"]
    return data


def _session_call(
    ctx: typer.Context, ref: str, method: str, params: dict[str, Any], on_event: Any = None,
    when_gone: Any = None,
) -> tuple[dict[str, Any], Any]:  # fmt: skip
    """`when_gone(row, error)`: what to raise instead when the host says the session's
    container is gone; `row` is the host's record of it, asked again."""
    from agent_host.protocol import E_NOT_FOUND
    from jackin_remote.errors import AgentCallError
    from jackin_remote.fleet import Pool
    from jackin_remote.sessions import call, find_session, refresh
    from jackin_remote.store import Store

    inventory = load(ctx)
    store = Store()

    async def go() -> tuple[dict[str, Any], Any]:
        async with Pool(inventory) as pool:
            row, host = await find_session(pool, inventory, store, ref)
            try:
                result = await call(pool, host, method, {"id": row["id"], **params}, on_event)
            except AgentCallError as exc:
                if when_gone is None or exc.code != E_NOT_FOUND:
                    raise
                await refresh(pool, [host], store)
                fresh = [r for r in store.sessions([host.name]) if r["id"] == row["id"]]
                raise when_gone(fresh[0] if fresh else row, exc) from None
            return row, result

    return run(go())


def _recorded_error(row: dict[str, Any], gone: Any) -> Any:
    """A session whose sandbox never ran (failed_setup): its recorded reason, else `gone`."""
    error = row.get("error")
    if not isinstance(error, str) or not error.strip():
        return gone
    return JackinError(
        f"{row['id']} on {row['host']} has no container ({row['state']}): {error}",
        hint=f"fix what the reason says, then launch again; `jackin-remote rm {row['id']}` "
        "forgets this session",
    )


def logs(
    ctx: typer.Context,
    session: str = SESSION,
    follow: bool = typer.Option(False, "--follow", "-f", help="Stream until the session ends."),
    tail: int | None = typer.Option(None, "--tail", help="Only the last N lines."),
    raw: bool = RAW,
    as_json: bool = JSON,
) -> None:
    """Show a session's output (task mode) or its tmux screen (interactive mode).

    Control characters the agent printed are shown visibly (`\x1b`); --raw passes them through.
    """
    held = ""  # a "\r" at a chunk's end may be the first half of a "\r\n" line ending

    def on_event(_method: str, params: dict[str, Any]) -> None:
        nonlocal held
        chunk = held + str(params.get("data", ""))
        held = "\r" if chunk.endswith("\r") and not raw else ""
        write_text(chunk[: len(chunk) - len(held)], raw=raw)

    try:
        row, result = _session_call(ctx, session, "session.logs",
                                    {"follow": follow and not as_json, "tail": tail},
                                    on_event, when_gone=_recorded_error)  # fmt: skip
    except JackinError as error:
        fail(error, as_json=as_json)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    if not str(result["text"]).strip() and row.get("state") == "failed_setup":
        # A sandbox that never started has no output: its recorded reason is what there is.
        recorded = _recorded_error(row, None)
        if recorded is not None:
            fail(recorded, as_json=as_json)
    if as_json:
        print_json(session=row["id"], host=row["host"], text=result["text"])
    else:
        write_text(held + str(result["text"]), raw=raw)


def stop(ctx: typer.Context, session: str = SESSION, as_json: bool = JSON) -> None:
    """Stop a session's sandbox. Its checkout stays until rm."""
    try:
        row, result = _session_call(ctx, session, "session.stop", {})
    except JackinError as error:
        fail(error, as_json=as_json)
    if as_json:
        print_json(session=row["id"], host=row["host"], state=result["state"])
    else:
        out.print(line(f"{row['id']} on {row['host']}: {result['state']}"))


FINISHED = ("exited", "crashed", "failed_setup", "stopped")  # rm --all-exited takes these


def rm(
    ctx: typer.Context,
    sessions: list[str] = typer.Argument(
        None, help="Session ids, unique id prefixes or names.", autocompletion=complete.sessions,
        show_default=False,
    ),
    all_exited: bool = typer.Option(
        False, "--all-exited",
        help="Also every session whose sandbox has ended: exited, crashed, failed_setup, stopped.",
    ),
    on: str = typer.Option(
        "all", "--on", help="With --all-exited: only on these hosts.",
        autocompletion=complete.hosts,
    ),
    force: bool = typer.Option(False, "--force", help="Discard work that was not pulled."),
    purge: bool = typer.Option(
        False, "--purge",
        help="Also remove the session's snapshots and its record on the host (a session rm "
        "already removed can be purged).",
    ),
    as_json: bool = JSON,
) -> None:  # fmt: skip
    """Remove sessions: their containers and checkouts (snapshots stay until --purge).
    Refuses while work is unpulled."""
    from jackin_remote import snapshots as snap
    from jackin_remote.fleet import Pool
    from jackin_remote.inventory import select_hosts
    from jackin_remote.sessions import call, find_session, host_of, refresh
    from jackin_remote.store import Store

    if not sessions and not all_exited:
        problem = UsageError("name the sessions to remove, or give --all-exited",
                             hint="see `jackin-remote ls` for session ids")  # fmt: skip
        fail(problem, as_json=as_json)
    try:
        inventory = load(ctx)
        scope = select_hosts(inventory, on) if all_exited else []
    except JackinError as error:
        fail(error, as_json=as_json)
    store = Store()
    done: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []

    async def go() -> None:
        async with Pool(inventory) as pool:
            rows: dict[str, tuple[dict[str, Any], Any]] = {}
            for ref in sessions or []:
                try:
                    find = snap.find if purge else find_session  # a removed one, to purge
                    row, host = await find(pool, inventory, store, ref)
                    rows.setdefault(row["key"], (row, host))
                except JackinError as error:
                    failed.append({"session": ref, "host": None, "error": error.message,
                                   "hint": error.hint})  # fmt: skip
            if all_exited:
                for result in await refresh(pool, scope, store):
                    if not result.ok:
                        reason = getattr(result.error, "reason", str(result.error))
                        failed.append({"session": None, "host": result.host.name,
                                       "error": reason, "hint": None})  # fmt: skip
                for row in store.view([h.name for h in scope]):
                    if row["shown_state"] in FINISHED:
                        rows.setdefault(row["key"], (row, host_of(inventory, row)))
            for row, host in rows.values():
                try:
                    asked = {"id": row["id"], "force": force, "purge": purge}
                    result = await call(pool, host, "session.rm", asked)
                except JackinError as error:
                    failed.append({"session": row["id"], "host": row["host"],
                                   "error": error.message, "hint": error.hint})  # fmt: skip
                    continue
                store.forget(row["key"])
                done.append({"session": row["id"], "host": row["host"], "removed": True,
                             "discarded_unpulled": result["discarded_unpulled"],
                             "discarded_commit": result.get("discarded_commit")
                             if result["discarded_unpulled"] else None,
                             "not_inspected": result.get("not_inspected"),
                             "snapshots_kept": _count(result.get("snapshots_kept")),
                             "snapshots_removed": _count(
                                 result.get("snapshots_removed"))})  # fmt: skip

    try:
        run(go())
    except JackinError as error:
        fail(error, as_json=as_json)
    _report_rm(done, failed, single=len(sessions or []) == 1 and not all_exited, as_json=as_json)
    if failed:
        raise typer.Exit(1 if not done and len(failed) == 1 else EXIT_SOME_HOSTS_FAILED)


def _count(value: Any) -> int:
    """A count from a host's answer: a number >= 0, else 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _report_rm(done: list[dict[str, Any]], failed: list[dict[str, Any]], *, single: bool,
               as_json: bool) -> None:  # fmt: skip
    if as_json:
        # One session named: its fields at the top too, as before several could be named.
        top = (done or failed)[0] if single and (done or failed) else {}
        print_json(**top, removed_sessions=done, failed=failed)
        return
    for entry in done:
        out.print(line(f"removed {entry['session']} from {entry['host']}"))
        if entry["discarded_unpulled"]:
            commit = entry["discarded_commit"]
            what = f"commit {commit[:12]}" if commit else "its checkout"
            out.print(line(f"  discarded work that was never pulled ({what})"))
        if entry["not_inspected"]:
            out.print(line(f"  the sandbox was removed first; its checkout could not be "
                           f"inspected: {entry['not_inspected']}"))  # fmt: skip
        if entry["snapshots_removed"]:
            out.print(line(f"  removed its {entry['snapshots_removed']} snapshot(s)"))
        if entry["snapshots_kept"]:
            out.print(line(f"  kept its {entry['snapshots_kept']} snapshot(s): `jackin-remote "
                           f"rm --purge {entry['session']}` removes them"))  # fmt: skip
    if not done and not failed:
        out.print(line("nothing to remove: no session has ended"))
    for entry in failed:
        who = entry["session"] or entry["host"]
        err.print(line(("error:", "bold red"), f" {who}: ", entry["error"]))
        if entry["hint"]:
            err.print(line(("  hint: ", "dim"), (entry["hint"], "dim")))


def start(ctx: typer.Context, session: str = SESSION, as_json: bool = JSON) -> None:
    """Start a stopped, exited or crashed session again (its own container and checkout)."""
    from jackin_remote.sessions import checked_records
    from jackin_remote.store import Store

    try:
        row, result = _session_call(ctx, session, "session.start", {})
        (entry,) = checked_records(row["host"], [result])  # a host's answer is parsed, typed
    except JackinError as error:
        fail(error, as_json=as_json)
    Store().record(row["host"], entry)
    if as_json:
        print_json(session=entry["id"], host=row["host"], state=entry["state"])
    else:
        out.print(line(f"{entry['id']} on {row['host']}: {entry['state']}"))
        if entry["mode"] == "interactive":
            out.print(line(f"  attach: jackin-remote attach {entry['id']}"))


def attach(ctx: typer.Context, session: str = SESSION) -> None:
    """Attach this terminal to an interactive session's tmux.

    Detach with Ctrl-b d (the session keeps running). Inside your own tmux, whose prefix is
    also Ctrl-b, press Ctrl-b Ctrl-b d: the first Ctrl-b goes to the outer tmux, which sends
    the second one on to the session's.
    """
    from jackin_remote.agent.deploy import attach_script
    from jackin_remote.fleet import Pool
    from jackin_remote.sessions import find_session
    from jackin_remote.store import Store
    from jackin_remote.sync import openssh_target
    from jackin_remote.transport.openssh import openssh_argv

    inventory = load(ctx)

    async def go() -> list[str]:
        async with Pool(inventory) as pool:
            row, host = await find_session(pool, inventory, Store(), session)
            await pool.agent(host)  # the agent that checks the session is on the host
            script = attach_script(host.root, pool.artifact(), row["id"])
            if host.is_local:
                return ["/bin/sh", "-c", script]
            # OpenSSH for a real terminal, pinned to the key our connection verified.
            return openssh_argv(await openssh_target(pool, host), script, tty=True)

    try:
        argv = run(go())
    except JackinError as error:
        fail(error)
    os.execvp(argv[0], argv)


def pull(
    ctx: typer.Context,
    session: str = SESSION,
    workspace: Path | None = typer.Option(
        None,
        "--into",
        "--workspace",
        help="Local repo/directory to pull into (default: the workspace this laptop launched "
        "the session from; required for a session launched elsewhere).",
    ),
    max_size: str = typer.Option(
        "4G", "--max-size", help="Refuse work larger than this (bytes, or 500M, 2G...)."
    ),
    as_json: bool = JSON,
) -> None:
    """Bring a session's work back: branch jackin/<session> (git) or .jackin/pulled/<session>/."""
    from jackin_remote.fleet import Pool
    from jackin_remote.review import parse_size, pull_session, pull_target
    from jackin_remote.sessions import find_session
    from jackin_remote.store import Store

    try:
        limit = parse_size(max_size)
        inventory = load(ctx)
    except JackinError as error:
        fail(error, as_json=as_json)
    store = Store()

    async def go() -> tuple[dict[str, Any], Any]:
        async with Pool(inventory) as pool:
            row, host = await find_session(pool, inventory, store, session)
            target = pull_target(host.name, row, workspace)  # the laptop's record, not a host's
            link = await pool.agent(host)
            return row, await pull_session(link, row, target, max_bytes=limit)

    try:
        row, result = run(go())
    except JackinError as error:
        fail(error, as_json=as_json)
    data = {key: value for key, value in vars(result).items() if key != "session"}
    data["skipped"] = [{"path": name, "why": why} for name, why in result.skipped]
    data["outside_links"] = [{"path": name, "target": to} for name, to in result.outside_links]
    if as_json:
        print_json(session=row["id"], host=row["host"], **data)
    else:
        where = (f"branch {result.branch} of {result.path}" if result.branch
                 else str(result.path))  # fmt: skip
        out.print(line(f"pulled {row['id']} from {row['host']} into {where}"))
        fate = ("not created" if result.isolation == "copy"
                else f"a checkout of {result.branch} would create it")  # fmt: skip
        for name, target in result.outside_links:
            err.print(line(("warning:", "yellow"), " link ", (name, "bold"), " -> ", target,
                           f" points outside the pulled tree: {fate}",
                           multiline=False))  # fmt: skip
        for name, why in result.skipped:
            err.print(line(("warning:", "yellow"), " skipped ", (name, "bold"), f": {why}",
                           multiline=False))  # fmt: skip


SINCE = typer.Option(
    None, "--since", metavar="SNAPSHOT",
    help="Against a snapshot of its checkout (s1, s2...: `jackin-remote snapshots SESSION`).",
)  # fmt: skip


def diff(ctx: typer.Context, session: str = SESSION, raw: bool = RAW, as_json: bool = JSON,
         since: str | None = SINCE) -> None:  # fmt: skip
    """Show what a session changed, against where it started (or a snapshot: --since)."""
    from jackin_remote.snapshots import snapshot_ref

    try:
        if not isinstance(since, str):  # not given (or called without typer's parsing)
            row, result = _session_call(ctx, session, "session.diff", {})
        else:
            snapshot = snapshot_ref(since, "--since")
            row, result = _session_call(ctx, session, "snapshot.diff", {"snapshot": snapshot})
    except JackinError as error:
        fail(error, as_json=as_json)
    # Only the fields a diff has: a host's answer never chooses the envelope's keys.
    answer = result if isinstance(result, dict) else {}
    fields = {key: answer.get(key) for key in ("text", "stat", "from", "truncated")}
    if as_json:
        print_json(session=row["id"], host=row["host"], **fields)
    else:
        write_text(str(fields["text"] or ""), raw=raw)


def register(app: typer.Typer) -> None:
    for command in (explain, launch, ls, logs, attach, stop, start, rm, pull, diff):
        app.command(command.__name__)(command)
