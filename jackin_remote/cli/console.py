"""`console`: the full-screen, live fleet view, with keys to act on a session.

Like `ls --watch`, it holds one SSH connection and one agent channel per host (a `Pool`) for its
whole life, and each round asks every host once (`session.list`), merges into the local view and
redraws. Between rounds it reads keys; jackin_remote/console.py decides what each does. An
action runs the matching jackin-remote command on the selected session as a child process
(`attach`, `logs`, `stop`, `pull`, `open`), so the console adds no second way to do any of them:
each keeps its own checks and messages. Attach and logs get the terminal; while stop, pull or
open runs the screen waits (only `q` or Ctrl-C are read: they end it and the console), then
shows its outcome. A child is killed, never left behind, when the console ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
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
MAX_DENIALS = 3  # the selected session's latest egress denials shown


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

    from jackin_remote.fleet import Pool

    screen = _Screen(hosts, interval, notify, inventory_option)
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    ended_by: list[int] = []

    def end(signum: int) -> None:
        ended_by.append(signum)
        if task is not None:
            task.cancel()

    with _keys_mode(screen.fd):
        screen.keyed = termios.tcgetattr(screen.fd)
        for signum in (signal.SIGTERM, signal.SIGHUP):  # the terminal is given back on these too
            loop.add_signal_handler(signum, end, signum)
        try:
            screen.live.start()
            loop.add_reader(screen.fd, screen.readable)
            screen.draw()  # at once: the first round may wait on a slow host
            async with Pool(inventory) as pool:
                await screen.run(pool)
        except asyncio.CancelledError:
            if not ended_by:
                raise
        finally:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(screen.fd)
            for signum in (signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            for notifying in list(screen.notifying):
                notifying.cancel()
            screen.live.stop()
    if ended_by:
        raise typer.Exit(128 + ended_by[0])


class _Screen:
    """The console's loop: a refresh round, then `interval` of keys, again; keys are read while
    a round runs too, so `q` ends the console even when a host never answers."""

    def __init__(self, hosts: list[Any], interval: float, notify: list[str] | None,
                 inventory_option: str | None) -> None:  # fmt: skip
        import asyncio

        from rich.live import Live

        from jackin_remote.console import ConsoleState
        from jackin_remote.store import Store
        from jackin_remote.watch import MIN_INTERVAL

        self.hosts, self.notify, self.inventory_option = hosts, notify, inventory_option
        self.interval = max(interval, MIN_INTERVAL)
        self.fd = sys.stdin.fileno()
        self.cooked = termios.tcgetattr(self.fd)
        self.keyed = self.cooked
        self.keys: asyncio.Queue[str] = asyncio.Queue()
        self.store = Store()
        self.state = ConsoleState()
        self.rows: list[dict[str, Any]] = []
        self.summary: list[dict[str, Any]] = []
        self.failed: dict[str, str] = {}
        self.before: dict[str, str] = {}
        self.notifying: set[Any] = set()
        self.feed: Any = None  # jackin_remote/feed.py, once the loop runs
        self.denials: list[dict[str, Any]] = []  # the selected session's, newest first
        self.live = Live(console=out, screen=True, auto_refresh=False, transient=True)

    def readable(self) -> None:
        import asyncio

        from jackin_remote.console import INTERRUPT, decode_keys

        try:
            data = os.read(self.fd, 1024)
        except OSError:
            data = b""
        if not data:  # the terminal is gone: stop reading it (no busy loop), and end
            asyncio.get_running_loop().remove_reader(self.fd)
            self.keys.put_nowait(INTERRUPT)
            return
        for key in decode_keys(data.decode(errors="replace")):
            self.keys.put_nowait(key)

    def draw(self) -> None:
        from jackin_remote.ui.console import render

        size = out.size
        view = render(self.rows, self.summary, self.failed, self.state, height=size.height,
                      width=size.width, denials=self.denials)  # fmt: skip
        self.live.update(view, refresh=True)

    async def run(self, pool: Any) -> None:
        """Rounds of the feed (pushed changes, or every interval), keys read meanwhile; after an
        action, the hosts that do not push are asked at once."""
        import asyncio

        from jackin_remote.feed import Feed

        self.feed = feed = Feed(pool, self.hosts, self.store)
        try:
            while True:
                round_ = asyncio.ensure_future(self._round(pool, feed))
                if await self._keys_until(round_):
                    return
                results, self.denials = round_.result()
                self._take(results)
        finally:
            await feed.close()

    async def _round(self, pool: Any, feed: Any) -> tuple[list[Any], list[dict[str, Any]]]:
        """Every host's sessions (jackin_remote/feed.py), then what the selected session's egress
        proxy denied lately (asked of its host only: one question more per round)."""
        from agent_host.wire import EgressEntry
        from jackin_remote.answers import merged_entries
        from jackin_remote.console import selected_row
        from jackin_remote.sessions import call

        results = await feed.round(self.interval)
        row = selected_row(self.state, self.store.view([host.name for host in self.hosts]))
        answered = {r.host.name: r.host for r in results if r.ok}
        if row is None or row["host"] not in answered:
            return results, []
        host = answered[row["host"]]

        async def ask(link: Any) -> Any:
            return await call(pool, link.host, "egress.log", {"id": row["id"]})

        entries, _ = merged_entries(await pool.map([host], ask), EgressEntry.from_wire)
        denied = [e for e in entries if e["decision"] == "denied"]
        return results, sorted(denied, key=lambda e: -e["last_seen"])[:MAX_DENIALS]

    def _take(self, results: list[Any]) -> None:
        from jackin_remote.console import NOTIFY_PER_ROUND
        from jackin_remote.ui.sessions import capacity
        from jackin_remote.watch import newly_blocked, statuses

        silent = [r for r in results if not r.ok]
        self.failed = {r.host.name: str(getattr(r.error, "reason", r.error)) for r in silent}
        self.rows = self.store.view([host.name for host in self.hosts])
        self.summary = capacity(self.hosts, self.rows, {r.host.name: str(r.state) for r in silent})
        blocked = newly_blocked(self.before, self.rows)
        self.before = statuses(self.rows)
        self.draw()
        if blocked:
            out.bell()  # an agent waits for the operator: once a round, however many
        for row in blocked[:NOTIFY_PER_ROUND] if self.notify else []:
            self._notify(row)

    def _notify(self, row: dict[str, Any]) -> None:
        """The notify command, in the background: it never holds the screen, nor writes on it."""
        import asyncio

        from jackin_remote.watch import notify_env

        async def go() -> None:
            with contextlib.suppress(OSError):
                proc = await asyncio.create_subprocess_exec(
                    *(self.notify or []), env=notify_env(row), stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(_reaped(proc), 30)  # killed when it times out

        task = asyncio.ensure_future(go())
        self.notifying.add(task)
        task.add_done_callback(self.notifying.discard)

    async def _next_key(self, pending: Any) -> str | None:
        """The next key, or None once `pending` is done first."""
        import asyncio

        getter = asyncio.ensure_future(self.keys.get())
        done, _ = await asyncio.wait({pending, getter}, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            return str(getter.result())
        getter.cancel()
        return None

    async def _keys_until(self, pending: Any) -> bool:
        """Handle keys until `pending` (a round) is done; an action makes the round end at once
        (its effect is shown right after). True when the operator quit. The round is never
        cancelled: it may be inside the pool's shared agent start, which must survive."""
        from jackin_remote.console import on_key

        while not pending.done():
            key = await self._next_key(pending)
            if key is None:
                break
            self.state, action = on_key(self.state, key, self.rows)
            if action is not None and (action.verb == "quit" or action.row is not None):
                if action.verb == "quit" or await self._act(action.verb, action.row or {}):
                    pending.cancel()
                    return True
                if self.feed is not None:
                    self.feed.ask_now()
            self.draw()
        return False

    async def _act(self, verb: str, row: dict[str, Any]) -> bool:
        """Run one action's command. True when the operator quit while it ran."""
        argv = _command(self.inventory_option, verb, row)
        if verb in INTERACTIVE:
            await self._give_terminal(argv, pause=verb == "logs")
            return False
        return await self._in_background(verb, row, argv)

    async def _give_terminal(self, argv: list[str], pause: bool) -> None:
        """The command gets the terminal (its Ctrl-C is its own), then the console takes it
        back; after `logs` it waits for a key first, so the output can be read."""
        import asyncio

        loop = asyncio.get_running_loop()
        loop.remove_reader(self.fd)
        self.live.stop()
        termios.tcsetattr(self.fd, termios.TCSADRAIN, self.cooked)
        loop.add_signal_handler(signal.SIGINT, lambda: None)
        try:
            with contextlib.suppress(OSError):
                child = await asyncio.create_subprocess_exec(*argv)
                await _reaped(child)
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            termios.tcflush(self.fd, termios.TCIFLUSH)  # keys typed meanwhile were the child's
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.keyed)
            while not self.keys.empty():
                self.keys.get_nowait()
            loop.add_reader(self.fd, self.readable)
        if pause:
            sys.stdout.write("\n-- any key goes back to the console --")
            sys.stdout.flush()
            await self.keys.get()
        self.live.start()

    async def _in_background(self, verb: str, row: dict[str, Any], argv: list[str]) -> bool:
        """Stop, pull or open, with its outcome under the table; `q` or Ctrl-C meanwhile ends
        it and the console."""
        import asyncio

        from jackin_remote.console import INTERRUPT

        self.state = replace(self.state, message=f"{verb} {row['id']}...")
        self.draw()
        pipe = subprocess.PIPE
        child = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=pipe, stderr=pipe
        )
        talk = asyncio.ensure_future(_reaped(child, child.communicate()))
        while not talk.done():
            key = await self._next_key(talk)
            if key in ("q", INTERRUPT):
                talk.cancel()  # kills the child
                with contextlib.suppress(asyncio.CancelledError):
                    await talk
                return True
        stdout, stderr = talk.result()
        done = subprocess.CompletedProcess(argv, child.returncode or 0,
                                           stdout.decode(errors="replace"),
                                           stderr.decode(errors="replace"))  # fmt: skip
        self.state = replace(self.state, message=outcome(verb, row, done))
        return False


async def _reaped(child: Any, waiting: Any = None) -> Any:
    """Await `waiting` (default: the child's exit); if that is cancelled (the console ends, or
    gives up on it), the child is killed and reaped first, never left running."""
    try:
        return await (waiting if waiting is not None else child.wait())
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        await child.wait()
        raise


def register(app: typer.Typer) -> None:
    app.command("console")(console)
