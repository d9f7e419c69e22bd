"""Disk usage on this host: what jackin's files under the root and its engine objects take.

RPC `host.du {max_entries?}` -> per session (checkout, synced mounts, other files, snapshots,
the role image's share, the container's writable layer, its logs, its volumes) and host totals
(workspace mirrors, role contexts, the agent, the state, the whole root, role images).

The root is walked once, never following a symlink nor leaving the root's filesystem, and at
most `max_entries` entries are looked at (past that the figures are lower bounds and say so).
A file with several hard links (snapshots share unchanged files that way) is counted once for
the host: a figure holding an inode that another figure holds too counts it in its `shared`
part. Sizes are allocated blocks (what `du` says), not apparent lengths.

Engine objects: only this root's (agent_host/ownership.py). A log or a volume this account may
not read directly (a non-root host: /var/lib/docker is root's) is measured through the engine
instead: the log's output bytes, a volume by `du` in a one-shot container of the session's own
image as the agent's uid. Python 3.9 compatible.
"""

from __future__ import annotations

import contextlib
import os
import stat
from typing import Any, Dict, Iterable, Iterator, List, Optional, Set, Tuple

from agent_host import ownership
from agent_host.protocol import E_INVALID_PARAMS, Message, RemoteError
from agent_host.server import Context
from agent_host.state import Store
from agent_host.wire import (
    LABEL_ROLE,
    LABEL_SESSION,
    LOG_MAX_FILES,
    LOG_MAX_SIZE,
    SECURITY_OPT,
    is_session_id,
    memory_bytes,
)

DEFAULT_MAX_ENTRIES = 2000000  # a few seconds of lstat; a bigger root gives lower bounds
MAX_MAX_ENTRIES = 50000000
LOG_CAP = memory_bytes(LOG_MAX_SIZE) * LOG_MAX_FILES  # json-file rotation keeps at most this
_GIT_OBJECTS = os.sep + os.path.join(".git", "objects") + os.sep
LABEL_PART = "jackin.part"  # private_docker's: "private-docker"; ours: "du" (a measuring run)
VOLUME_PROBE_TIMEOUT = 120


# -- the walk ------------------------------------------------------------------------------------
class Figure:
    """What one part of the root takes: `bytes` counts each inode it holds once; `shared` is the
    part of it whose inodes another figure holds too (hard links)."""

    __slots__ = ("bytes", "entries", "newest", "shared")

    def __init__(self) -> None:
        self.bytes = 0
        self.shared = 0
        self.entries = 0
        # The newest mtime seen (a directory's changes when entries come/go), git objects aside.
        self.newest = 0.0

    def to_wire(self) -> Dict[str, Any]:
        return {"bytes": self.bytes, "shared": self.shared, "entries": self.entries}


class Walk:
    """One bounded walk of a tree, its parts attributed to named figures."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self.entries = 0
        self.truncated = False
        self.unreadable = 0  # entries that could not be listed or looked at
        self.other_fs = 0  # mount points inside the tree, not entered
        self.figures: Dict[str, Figure] = {}
        self._links: Dict[Tuple[int, int], Tuple[int, Set[str]]] = {}
        self._dev: Optional[int] = None
        self._done = False

    def figure(self, name: str) -> Figure:
        found = self.figures.get(name)
        if found is None:
            found = self.figures[name] = Figure()
        return found

    def _count(self, st: os.stat_result, name: str, fresh: bool = True) -> None:
        self.entries += 1
        figure = self.figure(name)
        figure.entries += 1
        if fresh:
            figure.newest = max(figure.newest, st.st_mtime)
        size = st.st_blocks * 512
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            key = (st.st_dev, st.st_ino)
            known = self._links.get(key)
            if known is None:
                self._links[key] = (size, {name})
            else:
                known[1].add(name)
            return
        figure.bytes += size

    def _full(self) -> bool:
        if self.entries >= self.max_entries:
            self.truncated = True
        return self.truncated

    def entry(self, path: str, name: str) -> Optional[os.stat_result]:
        """Count `path` itself (not what is below it) into figure `name`; its stat, or None."""
        if self._full():
            return None
        try:
            st = os.lstat(path)
        except OSError:
            self.unreadable += 1
            return None
        if self._dev is None:
            self._dev = st.st_dev
        elif st.st_dev != self._dev:
            self.other_fs += 1
            return None
        self._count(st, name)
        return st

    def tree(self, path: str, name: str) -> None:
        """Count `path` and everything below it into figure `name`."""
        st = self.entry(path, name)
        if st is not None and stat.S_ISDIR(st.st_mode):
            self.below(path, name)

    def below(self, path: str, name: str) -> None:
        """Everything below directory `path` (not itself) into figure `name`."""
        stack = [path]
        while stack and not self._full():
            current = stack.pop()
            try:
                listing = os.scandir(current)
            except OSError:
                self.unreadable += 1
                continue
            with listing:
                for item in listing:
                    if self._full():
                        break
                    try:
                        st = item.stat(follow_symlinks=False)
                    except OSError:
                        self.unreadable += 1
                        continue
                    if self._dev is not None and st.st_dev != self._dev:
                        self.other_fs += 1
                        continue
                    # git freshens an object's mtime whenever it is read through an alternate
                    # (review, gc): that is no sign of anyone writing there.
                    self._count(st, name, _GIT_OBJECTS not in item.path)
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(item.path)

    def finish(self) -> int:
        """Attribute the hard-linked inodes; the bytes of everything walked, each inode once."""
        if not self._done:
            self._done = True
            for size, names in self._links.values():
                for name in names:
                    self.figures[name].bytes += size
                    if len(names) > 1:
                        self.figures[name].shared += size
        once = sum(size for size, names in self._links.values() if len(names) > 1)
        return sum(f.bytes - f.shared for f in self.figures.values()) + once

    def summary(self) -> Dict[str, Any]:
        return {"entries": self.entries, "max_entries": self.max_entries,
                "truncated": self.truncated, "unreadable": self.unreadable,
                "other_filesystems": self.other_fs}  # fmt: skip


def _children(path: str) -> List[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _is_dir(path: str) -> bool:
    return os.path.isdir(path) and not os.path.islink(path)


def walk_root(root: str, walk: Walk) -> int:
    """Walk the whole root into named figures; its total (each inode once).

    Figures: `checkout:<id>` `mounts:<id>` `files:<id>` (the rest of sessions/<id>),
    `snapshots:<id>`, `workspace:<name>`, `role:<name>/<hash>`, `agent`, `state` (state.db and
    its WAL, root-id), `other` (everything else, the directories in between included)."""
    if walk.entry(root, "other") is None or not _is_dir(root):
        return walk.finish()
    for name in _children(root):
        path = os.path.join(root, name)
        if name == "sessions" and _is_dir(path):
            walk.entry(path, "other")
            for sid in _children(path):
                _walk_session(walk, os.path.join(path, sid), sid)
        elif name == "snapshots" and _is_dir(path):
            walk.entry(path, "other")
            for sid in _children(path):
                walk.tree(os.path.join(path, sid),
                          "snapshots:" + sid if is_session_id(sid) else "other")  # fmt: skip
        elif name == "workspaces" and _is_dir(path):
            walk.entry(path, "other")
            for workspace in _children(path):
                walk.tree(os.path.join(path, workspace), "workspace:" + workspace)
        elif name == "roles" and _is_dir(path):
            walk.entry(path, "other")
            for role in _children(path):
                role_path = os.path.join(path, role)
                if not _is_dir(role_path):
                    walk.tree(role_path, "other")
                    continue
                walk.entry(role_path, "other")
                for content_hash in _children(role_path):
                    walk.tree(os.path.join(role_path, content_hash),
                              "role:%s/%s" % (role, content_hash))  # fmt: skip
        elif name == "agent":
            walk.tree(path, "agent")
        elif name.startswith("state.db") or name == "root-id":
            walk.tree(path, "state")
        else:
            walk.tree(path, "other")
    return walk.finish()


def _walk_session(walk: Walk, path: str, sid: str) -> None:
    if not is_session_id(sid) or not _is_dir(path):
        walk.tree(path, "other")
        return
    walk.entry(path, "files:" + sid)
    for name in _children(path):
        part = {"work": "checkout", "mounts": "mounts"}.get(name, "files")
        walk.tree(os.path.join(path, name), "%s:%s" % (part, sid))


def totals(walk: Walk, root_bytes: int) -> Dict[str, Any]:
    """The root's parts summed by kind (each figure's bytes; `shared` as in Figure)."""
    kinds = {
        "checkout": "checkouts",
        "mounts": "synced_mounts",
        "files": "session_files",
        "snapshots": "snapshots",
        "workspace": "workspace_mirrors",
        "role": "role_contexts",
        "agent": "agent",
        "state": "state",
        "other": "other",
    }
    out: Dict[str, Dict[str, int]] = {kind: {"bytes": 0, "shared": 0} for kind in kinds.values()}
    for name, figure in walk.figures.items():
        kind = kinds[name.split(":", 1)[0]]
        out[kind]["bytes"] += figure.bytes
        out[kind]["shared"] += figure.shared
    result: Dict[str, Any] = dict(out)
    result["root"] = {"bytes": root_bytes, "shared": 0}
    return result


# -- the engine ----------------------------------------------------------------------------------
DOCKER_SOCKET = "/var/run/docker.sock"
ENGINE_TIMEOUT = 120.0


class Engine:
    """The engine's API read over its socket with http.client (as facts.py does): du and a gc
    dry run never import the docker SDK (0.3 CPU-s per agent). The methods answer like the
    SDK's low-level APIClient's; `sdk` is that client, for what changes something."""

    def __init__(self, socket_path: str = DOCKER_SOCKET) -> None:
        self.socket_path = socket_path
        self._sdk: Any = None

    @property
    def sdk(self) -> Any:
        if self._sdk is None:
            from agent_host.sessions import _docker

            self._sdk = _docker().api
        return self._sdk

    def _get(self, path: str, query: Optional[Dict[str, Any]] = None) -> Any:
        import json

        body = b"".join(self._stream(path, query))
        return json.loads(body.decode("utf-8"))

    def _stream(self, path: str, query: Optional[Dict[str, Any]] = None) -> Iterator[bytes]:
        """The body of GET `path`, in chunks; OSError on anything but 200."""
        import json
        from urllib.parse import urlencode

        from agent_host.facts import _unix_http

        params = {}
        for key, value in (query or {}).items():
            if isinstance(value, bool):
                value = "1" if value else "0"
            elif isinstance(value, dict):
                value = json.dumps({k: v if isinstance(v, list) else [v]
                                   for k, v in value.items()})  # fmt: skip
            params[key] = value
        conn = _unix_http(self.socket_path)
        conn.timeout = ENGINE_TIMEOUT
        try:
            conn.request("GET", path + ("?" + urlencode(params) if params else ""))
            reply = conn.getresponse()
            if reply.status != 200:
                raise OSError("the engine answered HTTP %d to GET %s: %s" % (
                    reply.status, path, reply.read(300).decode("utf-8", "replace")))  # fmt: skip
            while True:
                chunk = reply.read(65536)
                if not chunk:
                    return
                yield chunk
        finally:
            conn.close()

    def containers(self, all: bool = False, size: bool = False,
                   filters: Optional[Dict[str, Any]] = None) -> Any:  # fmt: skip
        return self._get("/containers/json", {"all": all, "size": size, "filters": filters or {}})

    def inspect_container(self, container_id: str) -> Any:
        return self._get("/containers/%s/json" % container_id)

    def logs(self, container_id: str, stream: bool = False, **_: Any) -> Any:
        """Both streams' raw frames (their 8-byte headers included: a byte count is close
        enough; what reads them back is this module's log_size)."""
        chunks = self._stream("/containers/%s/logs" % container_id,
                              {"stdout": True, "stderr": True})  # fmt: skip
        return chunks if stream else b"".join(chunks)

    def volumes(self, filters: Optional[Dict[str, Any]] = None) -> Any:
        return self._get("/volumes", {"filters": filters or {}})

    def images(self, filters: Optional[Dict[str, Any]] = None) -> Any:
        return self._get("/images/json", {"filters": filters or {}})

    def networks(self) -> Any:
        return self._get("/networks")

    def __getattr__(self, name: str) -> Any:  # create, start, remove...: the SDK's
        return getattr(self.sdk, name)


def _api() -> Engine:
    return Engine()


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def session_containers(
    api: Any, root: str, known: Set[str], root_id: Optional[str]
) -> List[Dict[str, Any]]:
    """This root's containers of sessions in `known` (sandboxes, private-docker sidecars,
    measuring runs): the engine's list entries."""
    found = []
    for entry in api.containers(all=True, filters={"label": LABEL_SESSION}):
        labels = entry.get("Labels") or {}
        sid = labels.get(LABEL_SESSION)
        if sid not in known:
            continue
        if ownership.owner(labels, True, root_id, root) == ownership.OURS:
            found.append(entry)
    return found


def container_name(entry: Dict[str, Any]) -> str:
    names = entry.get("Names") or []
    return str(names[0]).lstrip("/") if names else str(entry.get("Id", ""))[:12]


def writable_sizes(api: Any, ids: List[str]) -> Dict[str, Optional[int]]:
    """Each container's writable layer (SizeRw): sized by the engine for these ids alone."""
    if not ids:
        return {}
    sizes: Dict[str, Optional[int]] = {}
    for entry in api.containers(all=True, size=True, filters={"id": ids}):
        value = entry.get("SizeRw")  # omitted by the engine when it is 0
        sizes[str(entry.get("Id"))] = int(value) if isinstance(value, int) else 0
    return sizes


def log_size(api: Any, container_id: str) -> Dict[str, Any]:
    """A container's json-file log: its files' blocks where this account may read them
    (`basis` file), else the bytes of output the engine gives back (`basis` output; the file
    is larger by its framing), stopping at LOG_CAP (`at_least`)."""
    try:
        info = api.inspect_container(container_id)
    except Exception as exc:
        return {"bytes": None, "basis": None, "error": _short(exc)}
    path = info.get("LogPath") or ""
    if path:
        directory, base = os.path.split(path)
        try:
            names = [n for n in os.listdir(directory) if n.startswith(base)]
            total = sum(os.lstat(os.path.join(directory, n)).st_blocks * 512 for n in names)
            return {"bytes": total, "basis": "file", "error": None}
        except OSError:
            pass  # a non-root host: the engine's directory is root's
    tty = bool((info.get("Config") or {}).get("Tty"))
    try:
        total, capped = output_bytes(api.logs(container_id, stream=True), tty)
    except Exception as exc:
        return {"bytes": None, "basis": None, "error": _short(exc)}
    return {"bytes": total, "basis": "output", "at_least": capped, "error": None}


def output_bytes(chunks: Iterable[bytes], tty: bool, cap: int = LOG_CAP) -> Tuple[int, bool]:
    """(bytes of output, whether it stopped at `cap`) of a raw logs body: a tty container's is
    the output as is, any other's comes in frames of an 8-byte header (stream, 0, 0, 0, size
    big-endian) and `size` bytes. Pure."""
    total = 0
    header = b""
    left = 0  # payload bytes of the current frame still to come
    for chunk in chunks:
        if tty:
            total += len(chunk)
        else:
            at = 0
            while at < len(chunk):
                if left:
                    step = min(left, len(chunk) - at)
                    total, left, at = total + step, left - step, at + step
                    continue
                need = 8 - len(header)
                header += chunk[at : at + need]
                at += need
                if len(header) == 8:
                    left = int.from_bytes(header[4:8], "big")
                    header = b""
        if total > cap:
            return total, True
    return total, False


def session_volumes(
    api: Any, root: str, known: Set[str], root_id: Optional[str]
) -> List[Dict[str, Any]]:
    found = []
    answer = api.volumes(filters={"label": LABEL_SESSION}) or {}
    for entry in answer.get("Volumes") or []:
        labels = entry.get("Labels") or {}
        if labels.get(LABEL_SESSION) not in known:
            continue
        if ownership.owner(labels, True, root_id, root) == ownership.OURS:
            found.append(entry)
    return found


def volume_sizes(
    api: Any, volumes: List[Dict[str, Any]], record: Optional[Dict[str, Any]], root: str
) -> Dict[str, Dict[str, Any]]:
    """Each volume's size: walked where this account may read the engine's directory (root),
    else by `du` in a one-shot container of the session's image as the agent's uid."""
    sizes: Dict[str, Dict[str, Any]] = {}
    unread = []
    for volume in volumes:
        name = str(volume.get("Name"))
        mountpoint = str(volume.get("Mountpoint") or "")
        if mountpoint and os.access(mountpoint, os.R_OK | os.X_OK):
            walk = Walk()
            walk.tree(mountpoint, "v")
            walk.finish()
            figure = walk.figures.get("v", Figure())
            sizes[name] = {"bytes": figure.bytes, "basis": "walk",
                           "at_least": walk.truncated or walk.unreadable > 0,
                           "error": None}  # fmt: skip
        else:
            unread.append(name)
    if unread:
        sizes.update(_probe_volumes(api, unread, record, root))
    return sizes


def _probe_volumes(
    api: Any, names: List[str], record: Optional[Dict[str, Any]], root: str
) -> Dict[str, Dict[str, Any]]:
    api = getattr(api, "sdk", api)  # this one creates a container: the SDK's client
    image, uid = (record or {}).get("image"), (record or {}).get("uid")
    if not image or not isinstance(uid, int):
        why = "not readable here, and the session has no image or uid to measure it with"
        return {name: {"bytes": None, "basis": None, "error": why} for name in names}
    binds = ["%s:/jackin-du/%d:ro" % (name, index) for index, name in enumerate(names)]
    assert record is not None
    labels = {LABEL_SESSION: str(record["id"]), LABEL_PART: "du"}  # never jackin.managed
    labels.update(ownership.root_labels(root))
    host_config = api.create_host_config(
        binds=binds, network_mode="none", cap_drop=["ALL"], security_opt=list(SECURITY_OPT),
        read_only=True, mem_limit="64m", pids_limit=16,
    )  # fmt: skip
    argv = ["-skx"] + ["/jackin-du/%d" % index for index in range(len(names))]
    try:
        created = api.create_container(
            str(image), command=argv, entrypoint=["du"], user="%d:%d" % (uid, uid),
            host_config=host_config, labels=labels, network_disabled=True,
        )  # fmt: skip
    except Exception as exc:
        return {name: {"bytes": None, "basis": None, "error": _short(exc)} for name in names}
    cid = created["Id"]
    try:
        api.start(cid)
        api.wait(cid, timeout=VOLUME_PROBE_TIMEOUT)
        out = api.logs(cid, stdout=True, stderr=False).decode("utf-8", "replace")
        err = api.logs(cid, stdout=False, stderr=True).decode("utf-8", "replace").strip()
    except Exception as exc:
        return {name: {"bytes": None, "basis": None, "error": _short(exc)} for name in names}
    finally:
        with contextlib.suppress(Exception):  # already gone
            api.remove_container(cid, force=True)
    return parse_du(out, names, err)


def parse_du(out: str, names: List[str], err: str = "") -> Dict[str, Dict[str, Any]]:
    """`du -sk` lines (`<KiB>\\t/jackin-du/<index>`) back to the volumes' names. Pure."""
    sizes: Dict[str, Dict[str, Any]] = {}
    for line in out.splitlines():
        kib, _, path = line.partition("\t")
        index = path.rsplit("/", 1)[-1]
        if kib.isdigit() and index.isdigit() and int(index) < len(names):
            sizes[names[int(index)]] = {"bytes": int(kib) * 1024, "basis": "du",
                                        "at_least": bool(err), "error": None}  # fmt: skip
    for name in names:
        sizes.setdefault(name, {"bytes": None, "basis": None,
                                "error": (err or "du printed nothing")[-300:]})  # fmt: skip
    return sizes


def role_images(api: Any) -> List[Dict[str, Any]]:
    """Every role image on the engine (built by some root's agent): id, tags, size, created."""
    found = []
    for entry in api.images(filters={"label": LABEL_ROLE}):
        found.append({
            "id": str(entry.get("Id")),
            "tags": [str(t) for t in entry.get("RepoTags") or [] if t != "<none>:<none>"],
            "size": int(entry["Size"]) if isinstance(entry.get("Size"), int) else None,
            "created": entry.get("Created"),
            "role": (entry.get("Labels") or {}).get(LABEL_ROLE),
        })  # fmt: skip
    return found


def image_shares(
    images: Iterable[Dict[str, Any]], used: Dict[str, str]
) -> Tuple[Dict[str, Dict[str, Any]], Dict[str, List[str]]]:
    """Each session's share of the image it runs: (session -> {ref, image, size, split,
    share}, image id -> the sessions using it). `used`: session -> the image reference its
    record names. The size is split evenly between this root's sessions using the image. Pure."""
    by_tag = {tag: image for image in images for tag in image["tags"]}
    users: Dict[str, List[str]] = {}
    for sid, ref in sorted(used.items()):
        image = by_tag.get(ref)
        if image is not None:
            users.setdefault(image["id"], []).append(sid)
    shares: Dict[str, Dict[str, Any]] = {}
    by_id = {image["id"]: image for image in by_tag.values()}
    for image_id, sids in users.items():
        size = by_id[image_id]["size"]
        for sid in sids:
            shares[sid] = {"ref": used[sid], "image": image_id, "size": size, "split": len(sids),
                           "share": None if size is None else size // len(sids)}  # fmt: skip
    return shares, users


# -- the RPC -------------------------------------------------------------------------------------
def _max_entries(params: Message) -> int:
    value = params.get("max_entries", DEFAULT_MAX_ENTRIES)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_MAX_ENTRIES:
        raise RemoteError(E_INVALID_PARAMS, "max_entries must be 1..%d, got %r"
                          % (MAX_MAX_ENTRIES, value))  # fmt: skip
    return value


def _snapshot_count(root: str, session_id: str) -> int:
    path = os.path.join(root, "snapshots", session_id)
    return sum(1 for name in _children(path) if not name.startswith(".") and _is_dir(
        os.path.join(path, name)))  # fmt: skip


def _figure(walk: Walk, name: str) -> Dict[str, Any]:
    figure = walk.figures.get(name)
    return figure.to_wire() if figure is not None else {"bytes": 0, "shared": 0, "entries": 0}


def usage(ctx: Context, params: Message) -> Dict[str, Any]:
    """`host.du`: see the module's doc."""
    root = ctx.root
    walk = Walk(_max_entries(params))
    root_bytes = walk_root(root, walk)
    store = Store(root)
    try:
        records = {r["id"]: r for r in store.all(include_purged=True)}
    finally:
        store.close()
    parts = ("checkout", "mounts", "files", "snapshots")
    on_disk = {name.split(":", 1)[1] for name in walk.figures if name.split(":", 1)[0] in parts}
    live = {sid for sid, r in records.items() if r["state"] != "purged"}
    shown = sorted(live | {sid for sid in on_disk if is_session_id(sid)})
    sessions: Dict[str, Dict[str, Any]] = {}
    for sid in shown:
        record = records.get(sid)
        sessions[sid] = {
            "id": sid,
            "state": record["state"] if record else None,  # None: no record of it here
            "workspace": record["workspace"] if record else None,
            "role": record["role"] if record else None,
            "checkout": _figure(walk, "checkout:" + sid),
            "mounts": _figure(walk, "mounts:" + sid),
            "files": _figure(walk, "files:" + sid),
            "snapshots": dict(_figure(walk, "snapshots:" + sid), count=_snapshot_count(root, sid)),
            "image": None,
            "containers": [],
            "volumes": [],
        }
    workspaces = [
        {"name": name.split(":", 1)[1], **walk.figures[name].to_wire(),
         "sessions": sum(1 for sid in live if records[sid]["workspace"] == name.split(":", 1)[1])}
        for name in sorted(walk.figures) if name.startswith("workspace:")
    ]  # fmt: skip
    roles = [
        {"name": name.split(":", 1)[1], **walk.figures[name].to_wire()}
        for name in sorted(walk.figures) if name.startswith("role:")
    ]  # fmt: skip
    result: Dict[str, Any] = {
        "root": root,
        "walk": walk.summary(),
        "totals": totals(walk, root_bytes),
        "workspaces": workspaces,
        "roles": roles,
        "images": [],
        "sessions": [],
        "engine_error": None,
    }
    try:
        _engine_part(root, sessions, records, live, result)
    except RemoteError as exc:
        result["engine_error"] = exc.message
    except Exception as exc:  # the engine said something odd: the files still count
        result["engine_error"] = _short(exc)
    result["sessions"] = [sessions[sid] for sid in shown]
    return result


def _engine_part(
    root: str,
    sessions: Dict[str, Dict[str, Any]],
    records: Dict[str, Dict[str, Any]],
    live: Set[str],
    result: Dict[str, Any],
) -> None:
    api = _api()
    rid = ownership.this_root_id(root)
    known = set(sessions)
    containers = session_containers(api, root, known, rid)
    sizes = writable_sizes(api, [str(c["Id"]) for c in containers])
    for entry in containers:
        labels = entry.get("Labels") or {}
        sid = labels[LABEL_SESSION]
        part = labels.get(LABEL_PART) or "sandbox"
        sessions[sid]["containers"].append({
            "name": container_name(entry), "part": part, "state": entry.get("State"),
            "writable": sizes.get(str(entry["Id"])), "logs": log_size(api, str(entry["Id"])),
        })  # fmt: skip
    by_session: Dict[str, List[Dict[str, Any]]] = {}
    for volume in session_volumes(api, root, known, rid):
        by_session.setdefault(volume["Labels"][LABEL_SESSION], []).append(volume)
    for sid, volumes in sorted(by_session.items()):
        measured = volume_sizes(api, volumes, records.get(sid), root)
        sessions[sid]["volumes"] = [{"name": name, **measured[name]} for name in sorted(measured)]
    images = role_images(api)
    used = {sid: str(records[sid]["image"]) for sid in live if records[sid].get("image")}
    shares, users = image_shares(images, used)
    for sid, share in shares.items():
        sessions[sid]["image"] = share
    result["images"] = [dict(image, sessions=users.get(image["id"], [])) for image in images]


HANDLERS = {"host.du": usage}
