"""Tables for `du` and `gc`. Every name, path and reason is a host's text: through ui/safe.py;
numbers were checked to be counts (jackin_remote/disk.py) and are formatted here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text

from jackin_remote.core.disk import human, parse_size, recovery
from jackin_remote.inventory.model import Host
from jackin_remote.ui.fit import ColumnSpec, FittedTable
from jackin_remote.ui.safe import line, text

DU_COLUMNS = (
    ColumnSpec("host", 0, whole=True),
    ColumnSpec("session", 0, whole=True),
    ColumnSpec("state", 4),
    ColumnSpec("checkout", 0),
    ColumnSpec("snapshots", 2),
    ColumnSpec("image share", 3),
    ColumnSpec("writable", 5),
    ColumnSpec("logs", 2),
    ColumnSpec("volumes", 2),
    ColumnSpec("other files", 6),
    ColumnSpec("total", 0),
)

GC_COLUMNS = (
    ColumnSpec("host", 0, whole=True),
    ColumnSpec("kind", 0, whole=True),
    ColumnSpec("name", 1),
    ColumnSpec("session", 3, whole=True),
    ColumnSpec("size", 1),
    ColumnSpec("action", 0, whole=True),
    ColumnSpec("why", 2),
)


def size(value: int | None) -> str:
    """A table cell's size: one word, so a narrow column never splits it (4.0KiB, 812B)."""
    return human(value).replace(" ", "")


def _sum(values: Sequence[int | None]) -> int:
    return sum(v for v in values if isinstance(v, int))


def session_total(entry: Mapping[str, Any]) -> int:
    """What one session takes on its host: its files, its share of its image, its containers'
    writable layers and logs, and its volumes (unknown parts count 0)."""
    image = entry.get("image") or {}
    return _sum([
        entry["checkout"]["bytes"], entry["mounts"]["bytes"], entry["files"]["bytes"],
        entry["snapshots"]["bytes"], image.get("share"),
        *(c["writable"] for c in entry["containers"]),
        *(c["logs"]["bytes"] for c in entry["containers"]),
        *(v["bytes"] for v in entry["volumes"]),
    ])  # fmt: skip


def _figure(figure: Mapping[str, Any]) -> str:
    shared = figure.get("shared") or 0
    return size(figure["bytes"]) + (f" ({size(shared)} shared)" if shared else "")


def _measured(items: Sequence[Mapping[str, Any]]) -> str:
    if not items:
        return "-"
    known = [i["bytes"] for i in items if i["bytes"] is not None]
    if not known:
        return "?"
    more = any(i["bytes"] is None or i.get("at_least") for i in items)
    return ("≥" if more else "") + size(_sum(known))


def _snapshots(figure: Mapping[str, Any]) -> str:
    if not figure["bytes"]:
        return "-"
    count = figure.get("count")
    return _figure(figure) + (f" in {count} snapshot(s)" if count else "")


def _image_share(image: Mapping[str, Any] | None) -> str:
    if not image or image.get("share") is None:
        return "-"
    if image["split"] <= 1:
        return f"{size(image['share'])} (its own)"
    return f"{size(image['share'])} ({size(image['size'])} / {image['split']})"


def du_table(results: Sequence[tuple[Host, dict[str, Any]]], *, wide: bool = False) -> FittedTable:
    rows = []
    for host, answer in results:
        for entry in answer["sessions"]:
            logs = [c["logs"] for c in entry["containers"]]
            rows.append([
                text(host.name), text(entry["id"]),
                text(entry["state"] or "no record", style="" if entry["state"] else "yellow"),
                text(_figure(entry["checkout"])),
                text(_snapshots(entry["snapshots"])),
                text(_image_share(entry["image"])),
                text(size(_sum([c["writable"] for c in entry["containers"]]))
                     if entry["containers"] else "-"),
                text(_measured(logs)),
                text(_measured(entry["volumes"])),
                text(size(_sum([entry["mounts"]["bytes"], entry["files"]["bytes"]]))),
                text(size(session_total(entry)), style="bold"),
            ])  # fmt: skip
    return FittedTable("disk usage", DU_COLUMNS, rows, wide=wide)


def host_summary(host: Host, answer: Mapping[str, Any]) -> list[Text]:
    """What the host root holds, the engine's part, and the budget; then anything partial."""
    totals = answer["totals"]
    parts = [("checkouts", "checkouts"), ("snapshots", "snapshots"),
             ("workspace_mirrors", "mirrors"), ("role_contexts", "role contexts"),
             ("synced_mounts", "synced mounts"), ("session_files", "session files"),
             ("agent", "agent"), ("state", "state"), ("other", "other")]  # fmt: skip
    inner = ", ".join(f"{label} {_figure(totals[key])}" for key, label in parts
                      if key in totals and totals[key]["bytes"])  # fmt: skip
    root_bytes = totals.get("root", {}).get("bytes")
    sessions = answer["sessions"]
    containers = [c for s in sessions for c in s["containers"]]
    volumes = [v for s in sessions for v in s["volumes"]]
    images = [i for i in answer["images"] if i["sessions"]]
    pieces = [
        line((host.name, "bold"), " root ", answer["root"], ": ", (human(root_bytes), "bold"),
             f" ({inner})" if inner else ""),
        line(f"  engine: role images in use {human(_sum([i['size'] for i in images]))} "
             f"({len(images)} image(s) shared by {_sum([len(i['sessions']) for i in images])} "
             f"session(s); each session's share is its image's size / the sessions using it), "
             f"writable layers {human(_sum([c['writable'] for c in containers]))}, "
             f"logs {_measured([c['logs'] for c in containers])}, "
             f"volumes {_measured(volumes)}"),
    ]  # fmt: skip
    if host.disk_budget and isinstance(root_bytes, int):
        budget = parse_size(host.disk_budget)
        over = root_bytes > budget
        pieces.append(line("  disk_budget ", host.disk_budget, ": ",
                           (f"{human(root_bytes)} of {human(budget)} "
                            f"({100 * root_bytes // budget}%)", "red" if over else "green"),
                           " under the root" + (": over budget" if over else "")))  # fmt: skip
    walk = answer["walk"]
    if walk["truncated"]:
        pieces.append(line(("  partial: ", "yellow"), f"stopped after {walk['entries']} entries: "
                           "the figures are lower bounds"))  # fmt: skip
    if walk.get("unreadable"):
        pieces.append(line(("  partial: ", "yellow"), f"{walk['unreadable']} entries could not "
                           "be read (not counted)"))  # fmt: skip
    if answer["engine_error"]:
        pieces.append(line(("  engine not measured: ", "yellow"), answer["engine_error"]))
    if any(c["logs"]["basis"] == "output" for c in containers):
        why = ("the engine's log files are not readable by this account: their output bytes are "
               "shown (the files are larger)")  # fmt: skip
        pieces.append(line(("  logs: ", "dim"), (why, "dim")))
    return pieces


def du_view(
    results: Sequence[tuple[Host, dict[str, Any]]], *, wide: bool = False
) -> RenderableType:
    notes = [piece for host, answer in results for piece in host_summary(host, answer)]
    if not any(answer["sessions"] for _, answer in results):
        return Group(line("no sessions on these hosts"), *notes)
    return Group(du_table(results, wide=wide), *notes)


ACTION_STYLE = {"remove": "yellow", "removed": "green", "kept": "cyan", "failed": "red"}


def gc_action(item: Mapping[str, Any], applied: bool) -> str:
    """One word: `remove` (a dry run's), `removed`, `failed`, `kept`."""
    if item["action"] == "keep":
        return "kept"
    if not applied:
        return "remove"
    return "removed" if item["removed"] else "failed"


def _target(host: Host) -> tuple[str | None, int | None]:
    if host.is_local:
        return None, None
    return (f"{host.user}@" if host.user else "") + host.ssh_address, host.port


def gc_view(
    results: Sequence[tuple[Host, dict[str, Any]]], *, applied: bool, wide: bool = False
) -> RenderableType:
    rows = []
    notes: list[Text] = []
    images_kept = 0
    images_bytes = 0
    for host, answer in results:
        for found in answer["items"]:
            if found["kind"] == "image" and "--images" in (found["kept_because"] or ""):
                images_kept += 1  # summarized below: the engine's, removed only with --images
                images_bytes += found["bytes"] or 0
                continue
            action = gc_action(found, applied)
            why = found["reason"]
            if found["kept_because"]:
                why += "; kept: " + found["kept_because"]
            if found["error"]:
                why += "; " + found["error"]
            rows.append([
                text(host.name), text(found["what"] or found["kind"]), text(found["name"]),
                text(found["session"] or "-"),
                text(size(found["bytes"]) if found["bytes"] is not None else "-"),
                text(action, style=ACTION_STYLE.get(action, "")), text(why),
            ])  # fmt: skip
            if found["recover"]:
                target, port = _target(host)
                saved = found["recover"]
                how = recovery(saved["path"], saved["commit"], saved["clone"], found["session"],
                               target, port)  # fmt: skip
                notes.append(line((f"{host.name}: ", "bold"), ("recoverable ", "cyan"),
                                  found["name"], ": ", how))  # fmt: skip
        if answer["unattributed"]:
            alone = (f"{len(answer['unattributed'])} engine object(s) carry no host-root label "
                     "and no session of this root: left alone (made by an older agent or "
                     "another root; see --json)")  # fmt: skip
            notes.append(line((f"{host.name}: ", "bold"), (alone, "dim")))
        if answer["engine_error"]:
            notes.append(line((f"{host.name}: ", "bold"), ("engine not checked: ", "yellow"),
                              answer["engine_error"]))  # fmt: skip
    if images_kept:
        notes.append(line((f"{images_kept} unused role image(s), {human(images_bytes)}, kept: ",
                           "dim"), ("the engine's, shared by every host root on it; "
                           "gc --images removes them", "dim")))  # fmt: skip
    removable = [f for _, answer in results for f in answer["items"] if f["action"] == "remove"]
    freed = human(_sum([f["bytes"] for f in removable]))
    if not applied:
        summary = (line(f"{len(removable)} item(s), {freed}, would be removed: run with --apply")
                   if removable else line("nothing to remove"))  # fmt: skip
    else:
        done = [f for f in removable if f["removed"]]
        summary = line(f"removed {len(done)} item(s), {human(_sum([f['bytes'] for f in done]))}"
                       + (f"; {len(removable) - len(done)} failed" if len(done) < len(removable)
                          else ""))  # fmt: skip
    if not rows:
        return Group(summary, *notes)
    title = "gc --apply" if applied else "gc (dry run: nothing is removed without --apply)"
    return Group(FittedTable(title, GC_COLUMNS, rows, wide=wide), *notes, summary)
