"""What every command shares: the inventory option, JSON envelopes, exit codes, errors."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console

from jackin_remote.errors import JackinError

SCHEMA_VERSION = "v1"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_SOME_HOSTS_FAILED = 3

T = TypeVar("T")

# Piped output is read by people in logs too: give tables room instead of 80 columns.
out = Console(highlight=False, soft_wrap=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, soft_wrap=True)  # never break a path in two


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


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def fail(error: JackinError, *, as_json: bool = False) -> NoReturn:
    if as_json:
        print_json(
            error={"message": error.message, "hint": error.hint, "type": type(error).__name__}
        )
    else:
        err.print(f"[bold red]error:[/] {error.message}", markup=True, highlight=False)
        if error.hint:
            err.print(f"  [dim]hint: {error.hint}[/]")
    raise typer.Exit(error.exit_code)
