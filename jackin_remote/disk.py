"""`du` and `gc` across the fleet: each host's agent measures (`host.du`) or collects
(`host.gc`, agent_host/gc.py), concurrently, and the answers are checked field by field here.

A host is not trusted: an answer is rebuilt from the fields we know, each of its expected type
(a count is an int >= 0, a session id is one, a path is text), and anything else fails that host,
named, instead of reaching the table. Text still goes through ui/safe.py when shown.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from agent_host.wire import is_session_id
from jackin_remote.core.hoststate import HostState
from jackin_remote.errors import HostError
from jackin_remote.inventory import Host

if TYPE_CHECKING:
    from jackin_remote.fleet import HostLink, HostResult, Pool

DEFAULT_MIN_AGE = 600  # agent_host/gc.py DEFAULT_MIN_AGE
GC_KINDS = ("container", "network", "volume", "image", "directory", "process", "file", "secrets")
_COMMIT = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?\Z")
_TEXT_LIMIT = 4096


class BadAnswer(ValueError):
    pass


def _count(value: Any, what: str, optional: bool = True) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadAnswer(f"{what} is not a count: {value!r:.60}")
    return value


def _text(value: Any, what: str, optional: bool = True) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > _TEXT_LIMIT:
        raise BadAnswer(f"{what} is not text")
    return value


def _session(value: Any, what: str, optional: bool = True) -> str | None:
    if value is None and optional:
        return None
    if not is_session_id(value):
        raise BadAnswer(f"{what} is not a session id: {value!r:.60}")
    return str(value)


def _dict(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadAnswer(f"{what} is not an object")
    return value


def _list(value: Any, what: str, limit: int = 100000) -> list[Any]:
    if not isinstance(value, list) or len(value) > limit:
        raise BadAnswer(f"{what} is not a list")
    return value


def _figure(value: Any, what: str) -> dict[str, int | None]:
    data = _dict(value, what)
    return {key: _count(data.get(key), f"{what}.{key}") for key in ("bytes", "shared", "entries")}


def _measured(value: Any, what: str) -> dict[str, Any]:
    """A log's or a volume's size: bytes (None: unknown), how it was measured, why not."""
    data = _dict(value, what)
    basis = data.get("basis")
    if basis not in (None, "file", "output", "walk", "du"):
        raise BadAnswer(f"{what}.basis is unknown")
    return {"bytes": _count(data.get("bytes"), f"{what}.bytes"), "basis": basis,
            "at_least": data.get("at_least") is True,
            "error": _text(data.get("error"), f"{what}.error")}  # fmt: skip


def checked_du(answer: Any) -> dict[str, Any]:
    """A host's `host.du` answer, rebuilt from the fields we know (BadAnswer otherwise)."""
    data = _dict(answer, "the answer")
    walk = _dict(data.get("walk"), "walk")
    totals = _dict(data.get("totals"), "totals")
    sessions = []
    for index, raw in enumerate(_list(data.get("sessions"), "sessions")):
        where = f"sessions[{index}]"
        entry = _dict(raw, where)
        image = entry.get("image")
        if image is not None:
            image = _dict(image, f"{where}.image")
            image = {"ref": _text(image.get("ref"), "image.ref"),
                     "size": _count(image.get("size"), "image.size"),
                     "split": _count(image.get("split"), "image.split", optional=False),
                     "share": _count(image.get("share"), "image.share")}  # fmt: skip
        containers = []
        for c_index, item in enumerate(_list(entry.get("containers"), f"{where}.containers")):
            item = _dict(item, f"{where}.containers[{c_index}]")
            containers.append({
                "name": _text(item.get("name"), "container.name", optional=False),
                "part": _text(item.get("part"), "container.part"),
                "state": _text(item.get("state"), "container.state"),
                "writable": _count(item.get("writable"), "container.writable"),
                "logs": _measured(item.get("logs"), "container.logs"),
            })  # fmt: skip
        volumes = []
        for v_index, item in enumerate(_list(entry.get("volumes"), f"{where}.volumes")):
            item = _dict(item, f"{where}.volumes[{v_index}]")
            volumes.append({"name": _text(item.get("name"), "volume.name", optional=False),
                            **_measured(item, "volume")})  # fmt: skip
        snapshots = _dict(entry.get("snapshots"), f"{where}.snapshots")
        sessions.append({
            "id": _session(entry.get("id"), f"{where}.id", optional=False),
            "state": _text(entry.get("state"), f"{where}.state"),
            "workspace": _text(entry.get("workspace"), f"{where}.workspace"),
            "role": _text(entry.get("role"), f"{where}.role"),
            **{part: _figure(entry.get(part), f"{where}.{part}")
               for part in ("checkout", "mounts", "files")},
            "snapshots": {**_figure(snapshots, f"{where}.snapshots"),
                          "count": _count(snapshots.get("count"), "snapshots.count")},
            "image": image,
            "containers": containers,
            "volumes": volumes,
        })  # fmt: skip
    images = []
    for index, raw in enumerate(_list(data.get("images"), "images")):
        entry = _dict(raw, f"images[{index}]")
        images.append({
            "id": _text(entry.get("id"), "image.id", optional=False),
            "tags": [_text(t, "image.tag", optional=False) for t in _list(entry.get("tags"),
                                                                          "image.tags")],
            "size": _count(entry.get("size"), "image.size"),
            "role": _text(entry.get("role"), "image.role"),
            "sessions": [_session(s, "image.sessions", optional=False)
                         for s in _list(entry.get("sessions"), "image.sessions")],
        })  # fmt: skip
    named = []
    for key in ("workspaces", "roles"):
        for index, raw in enumerate(_list(data.get(key), key)):
            entry = _dict(raw, f"{key}[{index}]")
            name = _text(entry.get("name"), f"{key}.name", optional=False)
            users = _count(entry.get("sessions"), "sessions")
            named.append((key, {"name": name, **_figure(entry, f"{key}[{index}]"),
                                "sessions": users}))  # fmt: skip
    return {
        "root": _text(data.get("root"), "root", optional=False),
        "walk": {"entries": _count(walk.get("entries"), "walk.entries"),
                 "max_entries": _count(walk.get("max_entries"), "walk.max_entries"),
                 "truncated": walk.get("truncated") is True,
                 "unreadable": _count(walk.get("unreadable"), "walk.unreadable"),
                 "other_filesystems": _count(walk.get("other_filesystems"), "walk.other")},
        "totals": {key: _figure(value, f"totals.{key}") for key, value in totals.items()
                   if isinstance(key, str) and len(key) < 40},
        "workspaces": [entry for key, entry in named if key == "workspaces"],
        "roles": [entry for key, entry in named if key == "roles"],
        "images": images,
        "sessions": sessions,
        "engine_error": _text(data.get("engine_error"), "engine_error"),
    }  # fmt: skip


def checked_gc(answer: Any) -> dict[str, Any]:
    """A host's `host.gc` answer, rebuilt from the fields we know (BadAnswer otherwise)."""
    data = _dict(answer, "the answer")
    items = []
    for index, raw in enumerate(_list(data.get("items"), "items")):
        where = f"items[{index}]"
        entry = _dict(raw, where)
        if entry.get("kind") not in GC_KINDS or entry.get("action") not in ("remove", "keep"):
            raise BadAnswer(f"{where}: unknown kind or action")
        recover = entry.get("recover")
        if recover is not None:
            recover = _dict(recover, f"{where}.recover")
            commit = recover.get("commit")
            if commit is not None and (not isinstance(commit, str) or not _COMMIT.match(commit)):
                raise BadAnswer(f"{where}.recover.commit is not an object id")
            recover = {"path": _text(recover.get("path"), "recover.path", optional=False),
                       "commit": commit, "clone": recover.get("clone") is True}  # fmt: skip
        removed = entry.get("removed")
        items.append({
            "kind": entry["kind"],
            "what": _text(entry.get("what"), f"{where}.what"),
            "name": _text(entry.get("name"), f"{where}.name", optional=False),
            "session": _session(entry.get("session"), f"{where}.session"),
            "bytes": _count(entry.get("bytes"), f"{where}.bytes"),
            "reason": _text(entry.get("reason"), f"{where}.reason", optional=False),
            "action": entry["action"],
            "kept_because": _text(entry.get("kept_because"), f"{where}.kept_because"),
            "recover": recover,
            "removed": removed if isinstance(removed, bool) else None,
            "error": _text(entry.get("error"), f"{where}.error"),
        })  # fmt: skip
    unattributed = []
    for index, raw in enumerate(_list(data.get("unattributed"), "unattributed")):
        entry = _dict(raw, f"unattributed[{index}]")
        unattributed.append({"kind": _text(entry.get("kind"), "kind", optional=False),
                             "name": _text(entry.get("name"), "name", optional=False),
                             "session": _session(entry.get("session"), "session")})  # fmt: skip
    return {"applied": data.get("applied") is True, "items": items,
            "other_roots": _count(data.get("other_roots"), "other_roots") or 0,
            "unattributed": unattributed,
            "engine_error": _text(data.get("engine_error"), "engine_error")}  # fmt: skip


def _checked(host: str, checker: Any, answer: Any) -> dict[str, Any]:
    try:
        result: dict[str, Any] = checker(answer)
    except BadAnswer as exc:
        raise HostError(
            host, HostState.AGENT_ERROR, f"the host sent an invalid answer ({exc})",
            hint="the host agent is damaged or not ours; run `jackin-remote hosts check` on it",
        ) from None  # fmt: skip
    return result


async def disk_usage(
    pool: Pool, hosts: Sequence[Host], max_entries: int | None = None
) -> list[HostResult[dict[str, Any]]]:
    """Every host's `host.du`, concurrently; a failing host fails alone."""
    params = {} if max_entries is None else {"max_entries": max_entries}

    async def ask(link: HostLink) -> dict[str, Any]:
        return _checked(link.host.name, checked_du, await link.agent.call("host.du", params))

    return await pool.map(hosts, ask)


async def collect_garbage(
    pool: Pool, hosts: Sequence[Host], *, apply: bool, min_age: int = DEFAULT_MIN_AGE,
    images: bool = False,
) -> list[HostResult[dict[str, Any]]]:  # fmt: skip
    """Every host's `host.gc` (a dry run unless `apply`), concurrently."""
    params = {"apply": apply, "min_age": min_age, "images": images}

    async def ask(link: HostLink) -> dict[str, Any]:
        return _checked(link.host.name, checked_gc, await link.agent.call("host.gc", params))

    return await pool.map(hosts, ask)
