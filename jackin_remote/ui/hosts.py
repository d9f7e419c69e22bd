"""Tables for `hosts list` and `hosts check`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from jackin_remote.inventory.model import Host

STATUS_STYLE = {
    "ok": "green",
    "unreachable": "red",
    "auth_failed": "red",
    "host_key_mismatch": "bold red",
    "agent_error": "yellow",
}
VERDICT_STYLE = {"ready": "green", "degraded": "yellow", "unusable": "red"}


def hosts_table(hosts: Sequence[Host]) -> Table:
    table = Table(title="hosts", title_justify="left")
    for column in ("name", "transport", "address", "user", "labels", "capacity", "root", "from"):
        table.add_column(column)
    for host in hosts:
        address = "-" if host.is_local else f"{host.ssh_address}:{host.port or 22}"
        if host.jump:
            address += f" via {host.jump}"
        table.add_row(
            host.name, host.transport, address, host.user or "-", ",".join(host.labels) or "-",
            str(host.capacity), host.root, host.where,
        )  # fmt: skip
    return table


def _gib(value: Any) -> str:
    return f"{value / 1024**3:.1f}G" if isinstance(value, int | float) else "-"


def _docker_cell(docker: dict[str, Any]) -> Text:
    if docker.get("access"):
        return Text(str(docker.get("version")), style="green")
    if docker.get("installed"):
        return Text("no access", style="red")
    return Text("missing", style="red")


def _short_os(name: Any) -> str:
    text = str(name or "?")
    return text.replace("GNU/Linux ", "").split(" (")[0]


def check_table(entries: Sequence[dict[str, Any]]) -> RenderableType:
    table = Table(title="hosts check", title_justify="left")
    for column in (
        "host",
        "status",
        "verdict",
        "rtt",
        "system",
        "resources",
        "tools",
        "agent",
        "skew",
    ):
        table.add_column(column, no_wrap=column in ("host", "status", "verdict", "rtt"))
    notes: list[Text] = []
    for entry in entries:
        status = Text(entry["status"], style=STATUS_STYLE.get(entry["status"], ""))
        verdict = Text(entry["verdict"], style=VERDICT_STYLE.get(entry["verdict"], ""))
        facts = entry.get("facts")
        if facts is None:
            table.add_row(entry["name"], status, verdict, *["-"] * 6)
            error = entry.get("error") or {}
            notes.append(Text.assemble((f"{entry['name']}: ", "bold"), error.get("message", "")))
            if error.get("hint"):
                notes.append(Text(f"  hint: {error['hint']}", style="dim"))
            continue
        agent = entry["agent"]
        load = facts.get("load")
        docker = facts.get("docker") or {}
        tools = Text.assemble(
            f"python {facts.get('python')}  docker ", _docker_cell(docker),
            f"  rsync {facts.get('rsync') or 'missing'}  git {facts.get('git') or 'missing'}",
        )  # fmt: skip
        table.add_row(
            entry["name"], status, verdict,
            f"{entry['latency_ms']:.1f}ms",
            f"{_short_os(facts.get('os'))}, {facts.get('kernel')}, {facts.get('arch')}",
            f"{facts.get('cpus')} cpu, {_gib((facts.get('memory') or {}).get('total'))} mem, "
            f"{_gib((facts.get('disk') or {}).get('free'))} free, "
            f"load {load[0]:.2f}" if load else "load -",
            tools,
            f"{agent['version']} ({'deployed' if agent['deployed'] else 'current'})",
            f"{entry['clock_skew_s']:+.2f}s",
        )  # fmt: skip
        for problem in entry.get("problems", []):
            style = "red" if problem["severity"] == "fail" else "yellow"
            notes.append(Text.assemble((f"{entry['name']}: ", "bold"), (problem["message"], style)))
            notes.append(Text(f"  hint: {problem['hint']}", style="dim"))
    return Group(table, *notes) if notes else table
