"""The `jackin-remote` command: a thin shell over functions that return data.

Imports are lazy: commands that touch no network never import asyncssh. Importing this package
imports nothing heavy: `main()` answers a bare `--version` before typer or any command module
is imported, and the typer app (`app`) is built on first use.
"""

# No `from __future__ import annotations`: typer reads the annotations of `root`, defined in
# _build() where `typer` is a local name, so they are evaluated there, when it is defined.
# No `typing` either (its import is a good part of what a bare --version costs).
import os
import sys

from jackin_remote import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:
    import typer

    app: typer.Typer

_app: "typer.Typer | None" = None


def _build() -> "typer.Typer":
    import typer

    from jackin_remote.cli import (
        agents,
        audit,
        config,
        console,
        daemon,
        disk,
        hosts,
        policy,
        ports,
        sessions,
        snapshots,
    )
    from jackin_remote.cli.common import Options

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
    app.add_typer(daemon.app, name="daemon")
    sessions.register(app)
    disk.register(app)
    snapshots.register(app)
    agents.register(app)
    console.register(app)
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

    return app


def __getattr__(name: str) -> "typer.Typer":
    """`app`: the typer app, built (with every command module imported) on first use."""
    global _app
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _app is None:
        _app = _build()
    return _app


def _bare_version() -> bool:
    """`jackin-remote --version` and nothing else (not a shell completion request)."""
    return sys.argv[1:] == ["--version"] and "_JACKIN_REMOTE_COMPLETE" not in os.environ


def main() -> None:
    if _bare_version():  # answered before typer or any command module is imported
        sys.stdout.write(f"jackin-remote {__version__}\n")
        sys.stdout.flush()
        return
    from jackin_remote.cli.common import fail
    from jackin_remote.errors import JackinError

    app = __getattr__("app")
    try:
        # One name however it is started (`python -m jackin_remote` too): shell completion is
        # keyed by it (_JACKIN_REMOTE_COMPLETE).
        app(prog_name="jackin-remote")
    except JackinError as error:  # raised outside a command's own handling
        fail(error)
    except Exception as error:
        # AgentClosed: a host's link died under a command that did not expect it. Only a
        # command that imported the agent client can raise it, so it is not imported here.
        client = sys.modules.get("jackin_remote.agent.client")
        if client is None or not isinstance(error, client.AgentClosed):
            raise
        fail(JackinError(f"the connection to a host agent was lost ({error})",
                         hint="`jackin-remote ls` shows what each host holds; then run the "
                         "command again"))  # fmt: skip
