"""Shell completion of session ids and host names, from what the laptop already knows.

A completion runs on every Tab: it reads the local view and the inventory only (no host is
asked), and any problem completes nothing rather than printing an error into the shell.
"""

from __future__ import annotations

import contextlib

import typer


def sessions(incomplete: str) -> list[tuple[str, str]]:
    """Session ids (and names) in the local view, with where each runs."""
    from jackin_remote.store import Store

    found: list[tuple[str, str]] = []
    with contextlib.suppress(Exception):
        store = Store.open_existing()
        for row in store.sessions() if store is not None else []:
            help_text = f"{row['state']} on {row['host']}"
            for value in (row["id"], row.get("name")):
                if value and str(value).startswith(incomplete):
                    found.append((str(value), help_text))
    return found


def hosts(ctx: typer.Context, incomplete: str) -> list[str]:
    """Host and group names of the inventory (the one `--inventory` names, when given)."""
    from jackin_remote.inventory import load_inventory

    names: list[str] = []
    with contextlib.suppress(Exception):
        inventory = load_inventory(ctx.find_root().params.get("inventory"))
        names = ["all", *inventory.hosts, *inventory.groups]
    head, _, last = incomplete.rpartition(",")  # a selector may list several terms
    prefix = f"{head}," if head else ""
    return [prefix + name for name in names if name.startswith(last)]
