"""What every command shares: the inventory option, JSON envelopes, exit codes, errors."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import typer

from jackin_remote.errors import JackinError
from jackin_remote.ui.safe import SafeConsole, line, visible

SCHEMA_VERSION = "v1"

EXIT_SOME_HOSTS_FAILED = 3  # the others come from the error: JackinError.exit_code

T = TypeVar("T")


def _piped_width() -> int:
    """Piped output is read by people in logs too: give tables room instead of 80 columns,
    unless COLUMNS names a width (as a terminal's would be)."""
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and int(columns) > 0 else 160


# SafeConsole: no markup, and external text is shown literally (see ui/safe.py).
# Piped, lines are never broken (a script greps a path whole); tables still fit the width.
_PIPED = not sys.stdout.isatty()
out = SafeConsole(soft_wrap=_PIPED, width=_piped_width() if _PIPED else None)
err = SafeConsole(stderr=True, soft_wrap=True)  # never break a path in two


@dataclass
class Options:
    inventory: str | None = None


def options(ctx: typer.Context) -> Options:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, Options) else Options()


def load(ctx: typer.Context) -> Any:
    from jackin_remote.inventory import load_inventory

    return load_inventory(options(ctx).inventory)


def envelope(**data: Any) -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, **data}


def print_json(**data: Any) -> None:
    sys.stdout.write(json.dumps(envelope(**data), indent=2, sort_keys=False, default=str) + "\n")


def write_text(text: str, *, raw: bool = False) -> None:
    """External text (logs, diffs) to stdout: control characters shown visibly unless `raw`."""
    sys.stdout.write(text if raw else visible(text))
    sys.stdout.flush()


def run(coro: Coroutine[Any, Any, T]) -> T:
    import asyncio  # only commands that run a coroutine pay for asyncio (and ssl)

    return asyncio.run(coro)


def fail(error: JackinError, *, as_json: bool = False) -> NoReturn:
    if as_json:
        print_json(
            error={"message": error.message, "hint": error.hint, "type": type(error).__name__}
        )
    else:
        # Messages quote hosts, paths and git's words: external text, never markup.
        err.print(line(("error:", "bold red"), " ", error.message))
        if error.hint:
            err.print(line(("  hint: ", "dim"), (error.hint, "dim")))
    raise typer.Exit(error.exit_code)
