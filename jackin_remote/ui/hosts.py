"""Tables for `hosts list` and `hosts check`.

Facts and error messages are a host's answers: every cell goes through ui/safe.py, and numbers
are formatted only when they are numbers, so a host that answers nonsense cannot break the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text

from jackin_remote.core.tiers import backends_words
from jackin_remote.inventory.model import Host
from jackin_remote.ui.fit import ColumnSpec, FittedTable
from jackin_remote.ui.safe import line, text

STATUS_STYLE = {
    "ok": "green",
    "unreachable": "red",
    "auth_failed": "red",
    "host_key_mismatch": "bold red",
    "host_key_unknown": "yellow",
    "agent_error": "yellow",
}
VERDICT_STYLE = {"ready": "green", "degraded": "yellow", "unusable": "red"}


HOST_COLUMNS = (
    ColumnSpec("name", 0, whole=True),
    ColumnSpec("transport", 3),
    ColumnSpec("address", 1),
    ColumnSpec("user", 4),
    ColumnSpec("labels", 2),
    ColumnSpec("capacity", 2),
    ColumnSpec("root", 5),
    ColumnSpec("from", 6),
)


def hosts_table(hosts: Sequence[Host], *, wide: bool = False) -> FittedTable:
    rows = []
    for host in hosts:
        address = "-" if host.is_local else f"{host.ssh_address}:{host.port or 22}"
        if host.jump:
            address += f" via {host.jump}"
        rows.append([text(cell) for cell in (
            host.name, host.transport, address, host.user or "-", ",".join(host.labels) or "-",
            host.capacity, host.root, host.where,
        )])  # fmt: skip
    return FittedTable("hosts", HOST_COLUMNS, rows, wide=wide)


def _number(value: Any, spec: str, suffix: str = "", scale: float = 1) -> str:
    """`value` formatted with `spec`, or "-" when the host did not give a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return f"{value / scale:{spec}}{suffix}"


def _gib(value: Any) -> str:
    return _number(value, ".1f", "G", 1024**3)


def _load(load: Any) -> str:
    return "load " + (_number(load[0], ".2f") if isinstance(load, list) and load else "-")


def _resources(facts: dict[str, Any]) -> str:
    memory = (facts.get("memory") or {}).get("total")
    free = (facts.get("disk") or {}).get("free")
    return (f"{facts.get('cpus')} cpu, {_gib(memory)} mem, {_gib(free)} free, "
            f"{_load(facts.get('load'))}")  # fmt: skip


def _docker_cell(docker: dict[str, Any]) -> Text:
    if docker.get("access"):
        return text(docker.get("version"), style="green")
    if docker.get("installed"):
        return Text("no access", style="red")
    return Text("missing", style="red")


def _backends_cell(backends: Any) -> Text:
    """docker, gvisor (runsc registered), kvm: green when the host has it, dim when not."""
    words = backends_words(backends)
    if not words:
        return Text("-")
    parts: list[Text | str] = []
    for index, (word, available) in enumerate(words):
        if index:
            parts.append(", ")
        style = {True: "green", False: "dim", None: "yellow"}[available]
        parts.append(text(word, style=style))
    return line(*parts, multiline=False)


def _short_os(name: Any) -> str:
    text = str(name or "?")
    return text.replace("GNU/Linux ", "").split(" (")[0]


# Never cut: the host, its status and its verdict. The rest folds, then goes, in this order.
CHECK_COLUMNS = (
    ColumnSpec("host", 0, whole=True),
    ColumnSpec("status", 0, whole=True),
    ColumnSpec("verdict", 0, whole=True),
    ColumnSpec("rtt", 5),
    ColumnSpec("system", 4),
    ColumnSpec("resources", 1),
    ColumnSpec("tools", 2),
    ColumnSpec("backends", 2),
    ColumnSpec("agent", 3),
    ColumnSpec("skew", 6),
)


# How a command reached the host agent (agent/deploy.py StartedAgent.channel): the resident
# agent's socket over a direct channel, the resident agent through an exec bridge, or a process
# of its own. Our words, whatever the entry holds.
CHANNEL_WORDS = {"direct": "direct", "bridge": "bridge", "exec": "exec"}
REFUSED_NOTE = (
    "sshd refuses channels to Unix sockets (AllowStreamLocalForwarding): commands reach the "
    "resident agent through an exec bridge, one process start each"
)


def _channel(agent: dict[str, Any]) -> str:
    word = CHANNEL_WORDS.get(str(agent.get("channel")), "unknown")
    return f"{word} via daemon" if agent.get("daemon") is True else word


def check_table(entries: Sequence[dict[str, Any]], *, wide: bool = False) -> RenderableType:
    rows: list[list[Text]] = []
    notes: list[Text] = []
    for entry in entries:
        name = text(entry["name"])
        status = text(entry["status"], style=STATUS_STYLE.get(entry["status"], ""))
        verdict = text(entry["verdict"], style=VERDICT_STYLE.get(entry["verdict"], ""))
        facts = entry.get("facts")
        if facts is None:
            rows.append([name, status, verdict, *(Text("-") for _ in range(7))])
            error = entry.get("error") or {}
            notes.append(line((f"{entry['name']}: ", "bold"), error.get("message", "")))
            if error.get("hint"):
                notes.append(line((f"  hint: {error['hint']}", "dim")))
            continue
        agent = entry["agent"]
        docker = facts.get("docker") or {}
        tools = line(
            f"python {facts.get('python')}  docker ", _docker_cell(docker),
            f"  rsync {facts.get('rsync') or 'missing'}  git {facts.get('git') or 'missing'}",
            multiline=False,
        )  # fmt: skip
        rows.append([
            name, status, verdict,
            text(_number(entry.get("latency_ms"), ".1f", "ms")),
            text(f"{_short_os(facts.get('os'))}, {facts.get('kernel')}, {facts.get('arch')}"),
            text(_resources(facts)),
            tools,
            _backends_cell(entry.get("backends")),
            text(f"{agent['version']} ({'deployed' if agent['deployed'] else 'current'}, "
                 f"{_channel(agent)})"),
            text(_number(entry.get("clock_skew_s"), "+.2f", "s")),
        ])  # fmt: skip
        if agent.get("streamlocal_refused"):
            notes.append(line((f"{entry['name']}: ", "bold"), (REFUSED_NOTE, "dim")))
        for problem in entry.get("problems", []):
            style = "red" if problem["severity"] == "fail" else "yellow"
            notes.append(line((f"{entry['name']}: ", "bold"), (problem["message"], style)))
            notes.append(line((f"  hint: {problem['hint']}", "dim")))
    table = FittedTable("hosts check", CHECK_COLUMNS, rows, wide=wide)
    return Group(table, *notes) if notes else table
