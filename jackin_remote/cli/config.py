"""`config show` and `config approve`, and the launch defaults explain/launch read from the config
files (jackin_remote/config.py has the rules)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from jackin_remote import paths
from jackin_remote.cli.common import err, fail, options, out, print_json
from jackin_remote.errors import JackinError, UsageError
from jackin_remote.ui.safe import line, text

if TYPE_CHECKING:
    from jackin_remote import config

app = typer.Typer(help="Launch defaults: the operator's config file and workspace configs.")

WORKSPACE = typer.Argument(Path("."), help="The workspace whose config to read (default: .).")
JSON = typer.Option(False, "--json", help="Print a versioned JSON envelope.")


@dataclass(frozen=True)
class Defaults:
    on: str
    role: str
    runtime: str | None
    limits: tuple[tuple[str, Any, str], ...]  # (limit, value, the flag or file:line)


def launch_defaults(
    workspace: Path,
    *,
    on: str | None,
    role: str | None,
    runtime: str | None,
    ignore_workspace: bool,
    interactive: bool,
    limits: Mapping[str, Any] | None = None,
) -> Defaults:
    """The values a launch uses: flags, then an approved workspace config, then the operator's.
    An unapproved workspace config is approved at a prompt (`interactive`) or refused."""
    from jackin_remote import config

    operator, workspace_file = _files(workspace)
    applied = None if ignore_workspace else workspace_file
    # A file that sets no launch value (only [egress], approved by `policy approve`) needs none.
    if applied is not None and applied.values and not config.is_approved(applied):
        if not (interactive and _ask_approval(applied)):
            raise config.unapproved_error(applied, workspace)
        config.approve(applied)
    flags = {"on": on, "runtime": runtime,
             "role": None if role is None else config.resolve_role(role, Path.cwd()),
             **{f"limits.{key}": value for key, value in (limits or {}).items()}}  # fmt: skip
    settings = config.effective(operator, applied, flags)
    chosen_role = settings["role"].value
    if chosen_role is None:
        raise UsageError(
            "--role is required: no role is set in a config file",
            hint=f"pass --role DIR|GIT-URL, or set `role` under [launch] in "
            f"{config.operator_config_path()}",
        )
    return Defaults(
        on=settings["on"].value,
        role=chosen_role,
        runtime=settings["runtime"].value,
        limits=config.limit_overrides(settings),
    )


def interactive(as_json: bool) -> bool:
    return not as_json and sys.stdin.isatty() and sys.stderr.isatty()


def _files(workspace: Path) -> tuple[config.ConfigFile | None, config.ConfigFile | None]:
    from jackin_remote import config

    operator_path = config.operator_config_path()
    operator = config.read_config(operator_path, relative_to=operator_path.parent)
    root = workspace.expanduser().absolute()
    ws_file = config.read_config(config.workspace_config_path(root), relative_to=root)
    return operator, ws_file


def _ask_approval(file: config.ConfigFile) -> bool:
    err.print(line(("This workspace has its own config, not approved yet: ", "yellow"),
                   str(file.path)))  # fmt: skip
    err.print(text(file.path.read_text(errors="replace")))
    return typer.confirm("Apply it to this and later launches (until it changes)?", err=True)


# -- commands --------------------------------------------------------------------------------
@app.command("show")
def show(ctx: typer.Context, workspace: Path = WORKSPACE, as_json: bool = JSON) -> None:
    """Every path in use and each launch default with where it came from."""
    from jackin_remote import config

    try:
        operator, ws_file = _files(workspace)
        status = config.approval_status(ws_file)
        settings = config.effective(operator, ws_file if status == "approved" else None)
        pending = config.effective(None, ws_file) if ws_file is not None else {}
        inventory = _inventory_source(ctx)
    except JackinError as error:
        fail(error, as_json=as_json)
    root = workspace.expanduser().absolute()
    files: dict[str, dict[str, Any]] = {
        "config": {"path": str(config.operator_config_path()),
                   "exists": operator is not None},
        "workspace_config": {"path": str(config.workspace_config_path(root)),
                             "exists": ws_file is not None, "status": status},
        "approvals": {"path": str(config.approvals_path())},
        "state": {"path": str(paths.state_dir())},
        "cache": {"path": str(paths.cache_dir())},
        "known_hosts": {"path": str(paths.known_hosts_file())},
        "inventory": inventory,
    }  # fmt: skip
    values = {key: {"value": s.value, "source": s.source, "note": s.note}
              for key, s in settings.items()}  # fmt: skip
    if status != "approved":
        for key, setting in pending.items():
            if setting.source.startswith(str(ws_file.path) if ws_file else "\0"):
                values[key]["not_applied"] = {
                    "value": setting.value, "source": setting.source,
                    "why": f"the workspace config is {status}",
                }  # fmt: skip
    if as_json:
        print_json(jackin_home=os.environ.get("JACKIN_HOME") or None, paths=files, values=values)
        return
    out.print(line(("paths", "bold")))
    for name, entry in files.items():
        extra = ""
        if "exists" in entry:
            extra = "" if entry["exists"] else "  (none)"
        if entry.get("status") not in (None, "absent"):
            extra = f"  ({entry['status']})"
        if name == "inventory":
            extra = f"  ({entry['kind']})"
        out.print(line(f"  {name:<17} ", str(entry["path"] or "-"), (extra, "dim")))
    out.print(line(("values", "bold")))
    for key, entry in values.items():
        shown = "-" if entry["value"] is None else str(entry["value"])
        note = f"  {entry['note']}" if entry["note"] else ""
        out.print(line(f"  {key:<14} ", shown, ("  from ", "dim"), entry["source"], (note, "dim")))
        if "not_applied" in entry:
            held = entry["not_applied"]
            out.print(line(("    not applied: ", "yellow"), str(held["value"]), ("  from ", "dim"),
                           held["source"], ("  (" + held["why"] + ")", "dim")))  # fmt: skip
    if status != "approved" and ws_file is not None:
        out.print(line(("to apply the workspace config: ", "yellow"),
                       config.approve_command(root)))  # fmt: skip


def _inventory_source(ctx: typer.Context) -> dict[str, Any]:
    from jackin_remote.inventory.loader import ENV_VAR, resolve_source

    given = options(ctx).inventory
    source = resolve_source(given, env=os.environ)
    if source is None:
        return {"path": None, "kind": "none: the builtin local host only"}
    how = "--inventory" if given is not None else (
        f"${ENV_VAR}" if os.environ.get(ENV_VAR) else "./inventory/")  # fmt: skip
    return {"path": str(source.absolute()), "kind": f"from {how}"}


@app.command("approve")
def approve(workspace: Path = WORKSPACE, as_json: bool = JSON) -> None:
    """Approve a workspace's .jackin/config.toml as it is now (a later change needs a new
    approval)."""
    from jackin_remote import config

    try:
        _, ws_file = _files(workspace)
        if ws_file is None:
            raise UsageError(
                f"{config.workspace_config_path(workspace)}: no such file",
                hint="a workspace config lives at .jackin/config.toml in the workspace",
            )
        config.approve(ws_file)
    except JackinError as error:
        fail(error, as_json=as_json)
    if as_json:
        print_json(path=str(ws_file.path), sha256=ws_file.digest, values=ws_file.values)
        return
    out.print(
        line(("approved", "green"), " ", str(ws_file.path), f" (sha256 {ws_file.digest[:16]})")
    )
    for key, value in ws_file.values.items():
        out.print(line(f"  {key} = ", str(value)))
