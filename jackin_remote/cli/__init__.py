"""The `jackin-remote` command: a thin shell over functions that return data.

Imports are lazy: commands that touch no network never import asyncssh.
"""

from __future__ import annotations

import typer

from jackin_remote import __version__
from jackin_remote.agent.client import AgentClosed
from jackin_remote.cli import audit, config, disk, hosts, policy, ports, sessions, snapshots
from jackin_remote.cli.common import Options, fail
from jackin_remote.errors import JackinError

app = typer.Typer(
    name="jackin-remote",
    help="Run sandboxed coding agents on servers you own (or on this machine).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Plain help: rich's option table marks flags `<bool>` and cuts long help at 80 columns.
    rich_markup_mode=None,
)
app.add_typer(hosts.app, name="hosts")
app.add_typer(config.app, name="config")
app.add_typer(policy.app, name="policy")
sessions.register(app)
disk.register(app)
snapshots.register(app)
app.command("ports")(ports.ports)
app.command("audit")(audit.audit)
hosts.app.command("janitor")(audit.janitor)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"jackin-remote {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    inventory: str | None = typer.Option(
        None, "--inventory", "-i", envvar="JACKIN_INVENTORY",
        help="Inventory file or directory (default: ./inventory/, else just the local host).",
    ),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True),
) -> None:  # fmt: skip
    ctx.obj = Options(inventory=inventory)


def main() -> None:
    try:
        # One name however it is started (`python -m jackin_remote` too): shell completion is
        # keyed by it (_JACKIN_REMOTE_COMPLETE).
        app(prog_name="jackin-remote")
    except JackinError as error:  # raised outside a command's own handling
        fail(error)
    except AgentClosed as closed:  # a host's link died under a command that did not expect it
        fail(JackinError(f"the connection to a host agent was lost ({closed})",
                         hint="`jackin-remote ls` shows what each host holds; then run the "
                         "command again"))  # fmt: skip
