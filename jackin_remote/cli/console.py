"""`console`: the full-screen, live fleet view, with keys to act on a session.

Like `ls --watch`, it holds one SSH connection and one agent channel per host (a `Pool`) for its
whole life, and each round asks every host once (`session.list`), merges into the local view and
redraws. Between rounds it reads keys; jackin_remote/console.py decides what each does. An
action runs the matching jackin-remote command on the selected session as a child process
(`attach`, `logs`, `stop`, `pull`, `open`), so the console adds no second way to do any of them:
each keeps its own checks and messages. Attach and logs get the terminal; the others run in the
background of the screen and their outcome is shown under the table.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import termios
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import typer

from jackin_remote.cli import complete
from jackin_remote.cli.common import fail, load, options, out, run
from jackin_remote.errors import JackinError, UsageError

INTERACTIVE = {"attach", "logs"}  # these get the terminal while they run


@contextlib.contextmanager
def _keys_mode(fd: int) -> Iterator[None]:
    """Keys one at a time, unechoed, Ctrl-C as a key (so the console quits cleanly)."""
    saved = termios.tcgetattr(fd)
    mode = termios.tcgetattr(fd)
    mode[3] &= ~(termios.ECHO | termios.ICANON | termios.ISIG)
    mode[6][termios.VMIN], mode[6][termios.VTIME] = 1, 0
    termios.tcsetattr(fd, termios.TCSADRAIN, mode)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _command(inventory: str | None, verb: str, row: dict[str, Any]) -> list[str]:
    """The jackin-remote command line for an action on one session (HOST:ID names it whole)."""
    base = [sys.executable, "-m", "jackin_remote", *(["-i", inventory] if inventory else [])]
    ref = f"{row['host']}:{row['id']}"
    if verb in INTERACTIVE:
        return [*base, verb, ref]
    return [*base, verb, ref, "--json"]


def outcome(verb: str, row: dict[str, Any], proc: subprocess.CompletedProcess[str]) -> str:
    """One line on how a background action went: its error message (from its --json envelope)
    or that it was done. Pure."""
    said: Any = None
    with contextlib.suppress(ValueError):
        said = json.loads(proc.stdout or "null")
    error = said.get("error") if isinstance(said, dict) else None
    if proc.returncode == 0 and not error:
        return f"{verb} {row['id']}: done"
    if isinstance(error, dict) and error.get("message"):
        return f"{verb} {row['id']}: {error['message']}"
    last = (proc.stderr or proc.stdout or "").strip().splitlines()
    return f"{verb} {row['id']}: failed ({last[-1] if last else f'exit {proc.returncode}'})"


def console(
    ctx: typer.Context,
    on: str = typer.Option(
        "all", "--on", help="Host, group, label:X or all.", autocompletion=complete.hosts
    ),
    interval: float = typer.Option(2.0, "--interval", help="Seconds between refreshes."),
    notify: str | None = typer.Option(
        None, "--notify", help="A command run when an agent becomes blocked (JACKIN_SESSION, "
        "JACKIN_HOST in its environment).",
    ),
) -> None:  # fmt: skip
    """A live full-screen view of every session: keys attach, show logs, stop, pull, open a
    link and filter. `ls --watch` is the same view without the screen or keys."""
    from jackin_remote.inventory import select_hosts
    from jackin_remote.watch import notify_argv

    try:
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            hint = "piped, use `jackin-remote ls --watch` (or `ls --json`)"
            raise UsageError("the console needs a terminal", hint=hint)
        inventory = load(ctx)
        hosts = select_hosts(inventory, on)
        argv = notify_argv(notify) if notify is not None else None
    except JackinError as error:
        fail(error)
    run(_console(inventory, hosts, interval, argv, options(ctx).inventory))


async def _console(
    inventory: Any, hosts: list[Any], interval: float, notify: list[str] | None,
    inventory_option: str | None,
) -> None:  # fmt: skip
    import asyncio  # here: `ls --cached` imports this module and must not pay for asyncio

    from rich.live import Live

    from jackin_remote.console import ConsoleState, decode_keys, on_key
    from jackin_remote.fleet import Pool
    from jackin_remote.sessions import refresh
    from jackin_remote.store import Store
    from jackin_remote.ui.console import render
    from jackin_remote.ui.sessions import capacity
    from jackin_remote.watch import MIN_INTERVAL, newly_blocked, run_notify, statuses

    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()
    keys: asyncio.Queue[str] = asyncio.Queue()
    store, names = Store(), [host.name for host in hosts]
    state = ConsoleState()
    rows: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    before: dict[str, str] = {}
    live = Live(console=out, screen=True, auto_refresh=False, transient=True)

    def readable() -> None:
        with contextlib.suppress(OSError):
            for key in decode_keys(os.read(fd, 1024).decode(errors="replace")):
                keys.put_nowait(key)

    def draw() -> None:
        live.update(render(rows, summary, failed, state), refresh=True)

    async def interactive(argv: list[str], pause: bool) -> None:
        """Hands the terminal to a command, then takes it back."""
        loop.remove_reader(fd)
        live.stop()
        termios.tcsetattr(fd, termios.TCSADRAIN, cooked)
        try:
            await asyncio.to_thread(subprocess.run, argv, check=False)
            if pause:
                sys.stdout.write("\n-- Enter goes back to the console --")
                sys.stdout.flush()
                await asyncio.to_thread(sys.stdin.readline)
        finally:
            termios.tcsetattr(fd, termios.TCSADRAIN, keyed)
            live.start()
            loop.add_reader(fd, readable)

    cooked = termios.tcgetattr(fd)
    with _keys_mode(fd):
        keyed = termios.tcgetattr(fd)
        live.start()
        loop.add_reader(fd, readable)
        try:
            async with Pool(inventory) as pool:
                while True:
                    results = await refresh(pool, hosts, store)
                    failed = {r.host.name: str(getattr(r.error, "reason", r.error))
                              for r in results if not r.ok}  # fmt: skip
                    rows = store.view(names)
                    summary = capacity(hosts, rows, {r.host.name: str(r.state)
                                                     for r in results if not r.ok})  # fmt: skip
                    blocked = newly_blocked(before, rows)
                    before = statuses(rows)
                    draw()
                    if blocked:
                        out.bell()  # an agent waits for the operator
                    for row in blocked if notify else []:
                        run_notify(notify or [], row)
                    deadline = loop.time() + max(interval, MIN_INTERVAL)
                    while (left := deadline - loop.time()) > 0:
                        try:
                            key = await asyncio.wait_for(keys.get(), left)
                        except TimeoutError:
                            break
                        state, action = on_key(state, key, rows)
                        if action is not None and action.verb == "quit":
                            return
                        if action is not None and action.row is not None:
                            argv = _command(inventory_option, action.verb, action.row)
                            if action.verb in INTERACTIVE:
                                await interactive(argv, pause=action.verb == "logs")
                            else:
                                state = replace(
                                    state, message=f"{action.verb} {action.row['id']}..."
                                )
                                draw()
                                proc = await asyncio.to_thread(
                                    subprocess.run, argv, capture_output=True, text=True,
                                    stdin=subprocess.DEVNULL, check=False)  # fmt: skip
                                said = outcome(action.verb, action.row, proc)
                                state = replace(state, message=said)
                            break  # refresh now: the action changed something
                        draw()
        finally:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(fd)
            live.stop()


def register(app: typer.Typer) -> None:
    app.command("console")(console)
