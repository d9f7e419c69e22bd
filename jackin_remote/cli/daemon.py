"""`jackin-remote daemon`: the laptop daemon that holds SSH connections between commands
(jackin_remote/daemon.py). Commands start it when they need a remote host and none runs;
these subcommands run it in the foreground, start, stop and describe it."""

from __future__ import annotations

import sys
from typing import Any

import typer

from jackin_remote.cli.common import err, out, print_json, run

app = typer.Typer(help="The laptop daemon: SSH connections held between commands.",
                  no_args_is_help=True)  # fmt: skip
JSON = typer.Option(False, "--json", help="Machine-readable output.")


IDLE_HELP = "Seconds without a command before it exits (default 600, or JACKIN_DAEMON_IDLE)."


@app.command("run")
def run_daemon(
    idle: float = typer.Option(None, "--idle", help=IDLE_HELP), as_json: bool = JSON
) -> None:
    """Run the daemon in the foreground (what a command starts in the background). Says
    `ready PID` (with --json, a JSON line) once it serves, and exits when idle or stopped."""
    from jackin_remote import daemon

    def say(state: dict[str, Any]) -> None:
        if as_json:
            print_json(daemon=state)
        elif state["ready"]:
            out.print(f"ready {state['pid']}", markup=False, highlight=False)
        else:
            err.print(str(state["why"]), markup=False, highlight=False)
        sys.stdout.flush()

    seconds = daemon.idle_seconds() if idle is None else idle
    raise typer.Exit(run(daemon.serve(seconds, say)))


@app.command("start")
def start(as_json: bool = JSON) -> None:
    """Start the daemon in the background, if none runs."""
    from jackin_remote import daemon

    running = run(daemon.request("status"))
    if running is None:
        daemon.start_detached()
    if as_json:
        print_json(daemon={"started": running is None, "socket": str(daemon.socket_path())})
    else:
        out.print("already running" if running else f"starting ({daemon.socket_path()})",
                  markup=False, highlight=False)  # fmt: skip


@app.command("stop")
def stop(as_json: bool = JSON) -> None:
    """Stop the daemon: its held connections close; commands connect directly again."""
    from jackin_remote import daemon

    answer = run(daemon.request("stop"))
    if as_json:
        print_json(daemon={"stopped": answer is not None})
    else:
        out.print("stopped" if answer else "not running", markup=False, highlight=False)


@app.command("status")
def status(as_json: bool = JSON) -> None:
    """Whether the daemon runs, and the hosts it holds connections to."""
    from jackin_remote import daemon

    answer = run(daemon.request("status")) or {}
    hosts = [str(name) for name in answer.get("hosts") or []]
    state = {
        "running": bool(answer.get("ok")),
        "pid": answer.get("pid"),
        "hosts": hosts,
        "relayed": answer.get("relayed"),
        "socket": str(daemon.socket_path()),
        "enabled": daemon.enabled(),
    }
    if as_json:
        print_json(daemon=state)
        return
    if not state["running"]:
        out.print("not running" + ("" if state["enabled"] else f" ({daemon.DAEMON_ENV}=off)"),
                  markup=False, highlight=False)  # fmt: skip
        return
    held = ", ".join(hosts) or "none"
    out.print(f"running, pid {state['pid']}; holding {held}", markup=False, highlight=False)
