"""The session contract as a rich panel: DESIGN.md's sections, in order.

Every value is shown through ui/safe.py: paths, names and the task come from the workspace, the
role and the command line, and must never be read as markup or reach the terminal as escapes.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from jackin_remote.ui.safe import line, text

TITLES = {
    "identity": "identity", "routing": "routing", "filesystem": "filesystem",
    "credentials": "credentials", "network": "network", "docker_access": "docker access",
    "service_ports": "service ports", "limits": "limits", "persistence": "persistence",
    "plan": "host-side effects (plan)", "recovery": "recovery", "warnings": "warnings",
}  # fmt: skip


def shown(value: Any) -> str:
    """A value as words: yes/no for booleans (never Python's True/False), "-" for nothing."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None or value == "" or value == [] or value == ():
        return "-"
    if isinstance(value, list | tuple):
        return ", ".join(shown(item) for item in value)
    return str(value)


def _kv(rows: list[tuple[str, Any]]) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    for key, value in rows:
        table.add_row(text(key), text(shown(value)))
    return table


def _candidate(slot: dict[str, Any]) -> str:
    if not slot["answered"]:
        return f"{slot['host']} did not answer"
    return f"{slot['host']} {slot['running']}/{slot['capacity']}"


def _identity(data: dict[str, Any]) -> RenderableType:
    ws, role = data["workspace"], data["role"]
    host = data["host"]
    if data.get("candidates"):
        shown = ", ".join(_candidate(c) for c in data["candidates"])
        basis = f"; {data['placed_by']}" if data.get("placed_by") else ""
        host += f"  (least loaded of {shown}{basis})"
    hooks = ("; status hooks added (claude --settings: they write /tmp/jackin-agent-status)"
             if (data["runtime"], data["mode"]) == ("claude", "interactive") else "")  # fmt: skip
    return _kv([
        ("session", data["session"] + (f" ({data['name']})" if data.get("name") else "")),
        ("host", f"{host}  [{data['transport']}]"),
        ("workspace", f"{ws['name']}  {ws['path']}" + (f"  @ {ws['head'][:12]}" if ws.get("head")
                                                        else "")),
        ("role", f"{role['name']}  {role['source']}  ({role['hash'][:12]})"),
        ("runtime", f"{data['runtime']}  ({data['mode']} mode){hooks}"),
        ("task", data.get("task")),
        ("image", data["image"]),
        ("container", data["container"]),
    ])  # fmt: skip


def _filesystem(data: dict[str, Any]) -> RenderableType:
    table = Table(box=None, pad_edge=False, show_edge=False)
    for column in ("laptop", "host", "container", "mode", "isolation"):
        table.add_column(column, style="dim" if column == "laptop" else None)
    for mount in data["mounts"]:
        table.add_row(*(text(cell) for cell in (mount["laptop"] or "-", mount["host"] or "-",
                        mount["container"], mount["mode"], mount["isolation"])))  # fmt: skip
    extra = _kv([
        ("root fs", data["root_filesystem"]),
        ("working tree", data["working_tree"]),
        ("kept back", ", ".join(data["excluded_secrets"]) or None),
        ("sensitive", ", ".join(data["sensitive_paths"]) or None),
    ])  # fmt: skip
    return Group(table, extra)


def _credentials(items: list[dict[str, Any]]) -> RenderableType:
    if not items:
        return Text("none: no credential enters the sandbox")
    rows = []
    for item in items:
        value = item["value"] or "(not set on the laptop)"
        rows.append(
            (
                item["name"],
                f"from ${item['source']} ({item['source_kind']}) -> "
                f"{item['delivery']} {item['delivered_as']} = {value}",
            )
        )
        rows.append(("", f"exposure: {item['exposure']}"))
    return _kv(rows)


def _network(data: dict[str, Any]) -> RenderableType:
    rows: list[tuple[str, str | None]] = [
        ("policy", data["policy"]),
        ("chosen", data.get("chosen")),
        ("enforcement", data["enforcement"]),
        ("enforced by", data["enforced_by"]),
        ("reaches", ", ".join(data["reaches"]) or "nothing"),
    ]
    rules = data.get("rules") or []
    rows += [("rules" if index == 0 else "", rule) for index, rule in enumerate(rules)]
    workspace = data.get("workspace_rules")  # .jackin/config.toml [egress]: applied or why not
    if workspace:
        rows.append(("workspace rules", f"{workspace['file']}: {workspace['note']}"))
        if workspace["status"] in ("not approved", "changed since approved"):  # pending
            rows += [("", f"(not applied) {rule}") for rule in workspace["rules"]]
    rows.append(("log", data.get("log")))
    caveats = data.get("caveats") or []
    rows += [("caveats" if index == 0 else "", f"- {c}") for index, c in enumerate(caveats)]
    return _kv(rows)


def _section(name: str, data: Any) -> RenderableType:
    if name == "identity":
        return _identity(data)
    if name == "filesystem":
        return _filesystem(data)
    if name == "credentials":
        return _credentials(data)
    if name == "network":
        return _network(data)
    if name == "service_ports":
        return text("none" if not data else ", ".join(map(str, data)))
    if name == "plan":
        table = Table.grid(padding=(0, 1))
        for index, effect in enumerate(data, 1):
            table.add_row(Text(f"{index}."), text(effect["action"]),
                          text(effect["target"], style="cyan"),
                          text(f"({effect['when']})", style="dim"))  # fmt: skip
        return table
    if name == "warnings":
        return Group(*(text(f"! {w}", style="yellow") for w in data)) if data else Text("none")
    if isinstance(data, dict):
        return _kv([(k.replace("_", " "), ", ".join(v) if isinstance(v, list) else v)
                    for k, v in data.items()])  # fmt: skip
    return text(data)


def _publish_hint(contract: dict[str, Any]) -> RenderableType:
    """Nothing is published at launch: how to publish one, and where active ones are listed."""
    session = contract["identity"]["session"]
    if contract["network"]["policy"] == "none":
        return text("network none: no port of it can be reached", style="dim")
    return text(f"publish one with `jackin-remote ports {session} --publish [LOCAL:]PORT` (the "
                "laptop's loopback, through the host); active ones: `jackin-remote ports "
                f"{session}`, `ls --json`; gone when the session stops", style="dim")  # fmt: skip


def contract_panel(contract: dict[str, Any]) -> Panel:
    parts: list[RenderableType] = []
    for name, title in TITLES.items():
        parts.append(Text(title, style="bold magenta"))
        parts.append(_section(name, contract[name]))
        if name == "service_ports" and not contract[name]:
            parts.append(_publish_hint(contract))
        parts.append(Text(""))
    identity = contract["identity"]
    return Panel(
        Group(*parts[:-1]),
        title=line(f"session contract {identity['session']}"),
        subtitle=line(f"{identity['host']} / {identity['runtime']}"),
        expand=False,
    )
