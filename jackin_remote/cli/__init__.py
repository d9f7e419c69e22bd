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


# Each top-level command -> the module that defines it. A run builds only the module of the
# command it names (`_invoked`): typer makes the click parameters of every command it is given
# at start, and the others' cost every command about 50 ms of CPU (docs/benchmarks.md, P3).
# tests/unit/test_cli_build.py keeps this equal to what the whole app holds.
COMMANDS = {
    **dict.fromkeys(("explain", "launch", "ls", "logs", "attach", "stop", "start", "rm",
                     "pull", "diff"), "sessions"),
    **dict.fromkeys(("du", "gc"), "disk"),
    **dict.fromkeys(("snapshot", "snapshots", "restore"), "snapshots"),
    **dict.fromkeys(("usage", "open"), "agents"),
    **{name: name for name in ("console", "ports", "audit", "hosts", "config", "policy",
                               "daemon")},
}  # fmt: skip
GROUPS = ("hosts", "config", "policy", "daemon")  # sub-apps (`jackin-remote hosts check`)
# Every module, in the order `--help` lists their commands.
MODULES = (*GROUPS, "sessions", "disk", "snapshots", "agents", "console", "ports", "audit")
ROOT_VALUE_OPTIONS = ("-i", "--inventory")  # the root's options that take a value


def _invoked(argv: "list[str]") -> "str | None":
    """The module of the command `argv` names, or None for the whole app: no command, an
    unknown one, help or any other option before it, or a shell completion request."""
    if "_JACKIN_REMOTE_COMPLETE" in os.environ:
        return None
    rest = list(argv)
    while rest:
        arg = rest.pop(0)
        if arg in ROOT_VALUE_OPTIONS:
            rest = rest[1:]
        elif arg.startswith("--inventory=") or (arg.startswith("-i") and arg != "-i"):
            continue
        elif arg.startswith("-"):
            return None
        else:
            return COMMANDS.get(arg)
    return None


def _register(app: "typer.Typer", module: str) -> None:
    import importlib

    code = importlib.import_module(f"jackin_remote.cli.{module}")
    if module in GROUPS:
        app.add_typer(code.app, name=module)
    elif module in ("ports", "audit"):
        app.command(module)(getattr(code, module))
    else:
        code.register(app)


def _build(only: "str | None" = None) -> "typer.Typer":
    """The app with every command, or with the commands of module `only` (see COMMANDS)."""
    import typer

    from jackin_remote.cli.common import Options

    app = typer.Typer(
        name="jackin-remote",
        help="Run sandboxed coding agents on servers you own (or on this machine).",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        # Plain help: rich's option table marks flags `<bool>` and cuts long help at 80 columns.
        rich_markup_mode=None,
    )
    for module in MODULES if only is None else (only,):
        _register(app, module)

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

    app = _app if _app is not None else _build(_invoked(sys.argv[1:]))
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
