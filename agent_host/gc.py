"""Garbage: what jackin made on this host that no session record owns any more.

RPC `host.gc {apply?, min_age?, images?}`
    -> {items, other_roots, unattributed, engine_error, applied}

Found, each with its kind, size and why it is an orphan:
- containers (sandboxes, private-docker sidecars), networks (jk-<id>-egress, jk-<id>-docker)
  and volumes (jk-<id>-v<i>, jk-<id>-docker-client) of a session this root has no record of, or
  whose record is purged, or made by a host root that is gone (agent_host/ownership.py: another
  root's objects on the same engine are never touched);
- directories under the root: sessions/<id> without a live record (a crash between the synced
  mount copy and session.create leaves sessions/<id>/mounts/), snapshots/<id> without any record
  (rm keeps a purged session's snapshots on purpose), role contexts no session uses (the newest
  of each role stays: the next launch of that role needs no upload), workspace mirrors no
  session uses (the next launch from that workspace syncs it in full);
- role images no session of this root names and no container uses, except the newest of each
  role and the images derived from it (the next launch needs no build); only with `images`:
  they are the engine's, shared by every root on it, and another root's launch may be about
  to use one;
- egress proxies of sessions that ended or are gone (found in /proc by their mark and this
  root), pid files of proxies that are not running, /dev/shm/jackin-secrets-<id> of sessions
  with no record and no container on this engine.

Never removed: a checkout (or snapshot) holding work the laptop never pulled. With a record,
what `rm` checks decides (agent_host/review.py); without one (clone and copy cannot be told
apart: a copy of a git workspace has a .git too) it counts as pulled only if its whole tree,
ignored files included, is its HEAD's and HEAD is in a workspace mirror here; anything else,
or a check that cannot run (a full disk), is unpulled. Such an item is kept and reported as
recoverable, with its path and commit. Directories and /dev/shm entries changed less than
`min_age` seconds ago are kept too: a launch in progress writes the mirror, the role context
and the synced mounts before its record exists. Also kept: a running container, or a volume or
network a running container uses, whose only fault is a root that looks gone (its path may be
another user's unmounted home, or in another mount namespace); a session's directories while
any of its containers stays; every /dev/shm secrets directory when the engine's containers
cannot be listed.

On a full disk the state database opens read-only and may miss recent records: `apply` is
refused, and a dry run keeps (saying why) whatever only a missing record condemns.

Dry run by default: nothing is changed. `apply` removes the items marked `remove`, each
recorded in the audit (agent_host/audit.py). Everything is listed before the records are read,
so an object made meanwhile always has its record by then. Python 3.9 compatible.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import stat
import tempfile
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

from agent_host import disk, layout, ownership
from agent_host.protocol import E_FAILED, E_INVALID_PARAMS, Message, RemoteError
from agent_host.server import Context
from agent_host.state import Store
from agent_host.wire import (
    ACTIVE_STATES,
    LABEL_SESSION,
    ROLE_IMAGE_PREFIX,
    is_session_id,
)

DEFAULT_MIN_AGE = 600  # seconds; a launch writes files before its record (sessions.SETUP_GRACE)
MAX_MIN_AGE = 10 * 365 * 86400
STOP_GRACE = 5.0  # seconds a leftover proxy gets before SIGKILL (egressd.STOP_GRACE)
SECRETS_PARENT = "/dev/shm"
SECRETS_PREFIX = "jackin-secrets-"

_NETWORK_NAME = re.compile(r"^jk-([0-9a-z]{8})-(egress|docker)\Z")
_VOLUME_NAME = re.compile(r"^jk-([0-9a-z]{8})-(v[0-9]{1,3}|docker-client)\Z")
_BASE_TAG = re.compile(r"^%s([a-z0-9][a-z0-9-]*):([0-9a-f]{12})\Z" % re.escape(ROLE_IMAGE_PREFIX))

REMOVE = "remove"
KEEP = "keep"

RUNNING_STATES = ("running", "restarting", "paused")
RUNNING_BECAUSE = "running (a root whose path cannot be seen from here may still be alive)"
IN_USE_BECAUSE = ("running: a running container uses it (a root whose path cannot be seen from "
                  "here may still be alive)")  # fmt: skip
READ_ONLY_BECAUSE = (
    "the host's disk is full: the state database opened read-only and may miss recent records, "
    "so a missing record proves nothing (free space, then run gc again)"
)


# -- decisions (pure) ----------------------------------------------------------------------------
def record_reason(session: Optional[str], records: Dict[str, str]) -> Optional[str]:
    """Why something of `session` has no owner (None: a live record owns it). `records`: session
    id -> state, purged ones included."""
    if session is None:
        return "it names no session"
    state = records.get(session)
    if state is None:
        return "no record of session %s on this host" % session
    if state == "purged":
        return "session %s was removed (its record is purged)" % session
    return None


def item(kind: str, name: str, session: Optional[str], reason: str, size: Optional[int] = None,
         what: Optional[str] = None, **extra: Any) -> Dict[str, Any]:  # fmt: skip
    """One thing gc found. `what` says more than `kind` (a sandbox or a sidecar container, a
    session directory or a mirror)."""
    found = {"kind": kind, "name": name, "session": session, "bytes": size, "reason": reason,
             "what": what, "action": REMOVE, "kept_because": None, "recover": None}  # fmt: skip
    found.update(extra)
    return found


def keep(found: Dict[str, Any], because: str) -> Dict[str, Any]:
    found["action"] = KEEP
    found["kept_because"] = because
    return found


def classify_engine(
    objects: Iterable[Dict[str, Any]],
    records: Dict[str, str],
    known_dirs: Set[str],
    root_id: Optional[str],
    root: str,
    read_id: Callable[[str], str] = ownership.read_root_id,
) -> Tuple[List[Dict[str, Any]], int, List[Dict[str, Any]]]:
    """Containers, networks and volumes -> (orphans, how many are another root's, those that
    cannot be attributed). Each object: kind, name, id, session, labels, bytes."""
    orphans: List[Dict[str, Any]] = []
    others = 0
    unattributed: List[Dict[str, Any]] = []
    for obj in objects:
        session = obj.get("session")
        known = session is not None and (session in records or session in known_dirs)
        whose = ownership.owner(obj.get("labels"), known, root_id, root, read_id)
        if whose == ownership.OTHER_ROOT:
            others += 1
            continue
        if whose == ownership.UNATTRIBUTED:
            unattributed.append({"kind": obj["kind"], "name": obj["name"], "session": session})
            continue
        if whose == ownership.GONE_ROOT:
            path = (obj.get("labels") or {}).get(ownership.LABEL_ROOT_PATH, "?")
            reason: Optional[str] = "made by the host root %s, which is gone" % path
        else:
            reason = record_reason(session, records)
        if reason is not None:
            orphan = item(obj["kind"], obj["name"], session, reason, obj.get("bytes"),
                          id=obj.get("id"), what=obj.get("what"))  # fmt: skip
            if whose == ownership.GONE_ROOT and (obj.get("running") or obj.get("in_use")):
                # A root that looks gone may be another user's unmounted home or live in
                # another mount namespace: what runs is never stopped on that ground alone.
                keep(orphan, RUNNING_BECAUSE if obj.get("running") else IN_USE_BECAUSE)
            orphans.append(orphan)
    return orphans, others, unattributed


def is_recent(newest: float, now: float, min_age: float) -> bool:
    return now - newest < min_age


def recent_because(newest: float, now: float) -> str:
    return ("changed %ds ago: it may belong to a launch in progress (see --min-age)"
            % max(0, int(now - newest)))  # fmt: skip


def classify_dirs(
    dirs: Iterable[Dict[str, Any]], records: Dict[str, str], now: float, min_age: float
) -> List[Dict[str, Any]]:
    """sessions/<id> and snapshots/<id> -> orphans (the recent ones kept). Each dir: kind
    (`session-dir` | `snapshots`), session, path, bytes, newest."""
    found = []
    for entry in dirs:
        session = entry["session"]
        if entry["kind"] == "snapshots":
            # `rm` keeps a purged session's snapshots on purpose (`rm --purge` removes them).
            state = records.get(session)
            reason = None if state is not None else "no record of session %s on this host" % (
                session)  # fmt: skip
        else:
            reason = record_reason(session, records)
        if reason is None:
            continue
        orphan = item("directory", entry["path"], session, reason, entry["bytes"],
                      what=entry["kind"])  # fmt: skip
        if is_recent(entry["newest"], now, min_age):
            keep(orphan, recent_because(entry["newest"], now))
        found.append(orphan)
    return found


def classify_role_contexts(
    contexts: Iterable[Dict[str, Any]], used: Set[Tuple[str, str]], now: float, min_age: float
) -> List[Dict[str, Any]]:
    """roles/<role>/<hash> no live session uses, except the newest of each role."""
    contexts = list(contexts)
    newest: Dict[str, Dict[str, Any]] = {}
    for entry in contexts:
        best = newest.get(entry["role"])
        if best is None or entry["newest"] > best["newest"]:
            newest[entry["role"]] = entry
    found = []
    for entry in contexts:
        if (entry["role"], entry["hash"]) in used or newest[entry["role"]] is entry:
            continue
        orphan = item("directory", entry["path"], None, "context of role %s no session uses "
                      "(a newer one of that role is kept)" % entry["role"], entry["bytes"],
                      what="role-context")  # fmt: skip
        if is_recent(entry["newest"], now, min_age):
            keep(orphan, recent_because(entry["newest"], now))
        found.append(orphan)
    return found


def classify_mirrors(
    mirrors: Iterable[Dict[str, Any]], used: Set[str], now: float, min_age: float
) -> List[Dict[str, Any]]:
    """workspaces/<name> no live session uses (a cache: the next launch syncs it again)."""
    found = []
    for entry in mirrors:
        if entry["workspace"] in used:
            continue
        orphan = item("directory", entry["path"], None, "mirror of workspace %s no session uses "
                      "(the next launch from it syncs it in full)" % entry["workspace"],
                      entry["bytes"], "workspace-mirror",
                      workspace=entry["workspace"])  # fmt: skip
        if is_recent(entry["newest"], now, min_age):
            keep(orphan, recent_because(entry["newest"], now))
        found.append(orphan)
    return found


def base_tag_of(tag: str) -> Optional[str]:
    """The role image a tag is or derives from (`<base>-u<uid>`, `<base>-candidate-<x>`)."""
    if _BASE_TAG.match(tag):
        return tag
    for marker in ("-u", "-candidate-"):
        head, sep, _ = tag.rpartition(marker)
        if sep and _BASE_TAG.match(head):
            return head
    return None


def classify_images(
    images: Iterable[Dict[str, Any]],
    used_refs: Set[str],
    used_ids: Set[str],
    now: float,
    min_age: float,
) -> List[Dict[str, Any]]:
    """Role images no live session of this root names and no container on the engine uses, but
    for the newest base image of each role and the images derived from it. An unfinished build's
    candidate (or an untagged role image) goes once it is older than `min_age`."""
    images = list(images)
    newest: Dict[str, Tuple[float, str]] = {}
    for image in images:
        for tag in image["tags"]:
            match = _BASE_TAG.match(tag)
            created = float(image.get("created") or 0)
            if match and (match.group(1) not in newest or created > newest[match.group(1)][0]):
                newest[match.group(1)] = (created, tag)
    kept_bases = {tag for _, tag in newest.values()}
    found = []
    for image in images:
        tags = image["tags"]
        if image["id"] in used_ids or used_refs.intersection(tags):
            continue
        bases = {base_tag_of(tag) for tag in tags} - {None}
        if bases & kept_bases:
            continue
        created = float(image.get("created") or 0)
        candidate = not tags or all("-candidate-" in tag for tag in tags)
        if candidate:
            reason = ("an unfinished role build's image" if tags
                      else "an untagged role image")  # fmt: skip
        else:
            reason = "role image no session uses (the newest of role %s is kept)" % (
                image.get("role") or "?")  # fmt: skip
        orphan = item("image", tags[0] if tags else image["id"][:19], None, reason,
                      image.get("size"), id=image["id"], tags=tags)  # fmt: skip
        if candidate and is_recent(created, now, min_age):
            keep(orphan, recent_because(created, now))
        found.append(orphan)
    return found


def classify_proxies(
    proxies: Iterable[Dict[str, Any]], records: Dict[str, str]
) -> List[Dict[str, Any]]:
    """Egress proxies (pid, session) whose session ended, was removed or is unknown here."""
    found = []
    for proxy in proxies:
        session = proxy["session"]
        reason = record_reason(session, records)
        if reason is None and records[session] not in ACTIVE_STATES:
            reason = "session %s is %s" % (session, records[session])
        if reason is not None:
            found.append(item("process", "egress proxy pid %d" % proxy["pid"], session, reason,
                              None, pid=proxy["pid"]))  # fmt: skip
    return found


def classify_secrets(
    entries: Iterable[Dict[str, Any]],
    records: Dict[str, str],
    engine_sessions: Optional[Set[str]],
    now: float,
    min_age: float,
    engine_error: Optional[str] = None,
) -> List[Dict[str, Any]]:
    """/dev/shm/jackin-secrets-<id> with no live record here and no container of that session
    on this engine (then no root can start it again: they serve nobody). `engine_sessions` None:
    the engine's containers could not be listed, so every one is kept."""
    found = []
    for entry in entries:
        session = entry["session"]
        reason = record_reason(session, records)
        if reason is None or (engine_sessions is not None and session in engine_sessions):
            continue
        orphan = item("secrets", entry["path"], session, reason + (
            "; no container of it on this engine" if engine_sessions is not None else ""),
            entry["bytes"], uid=entry.get("uid"), dev=entry.get("dev"),
            ino=entry.get("ino"))  # fmt: skip
        if engine_sessions is None:
            keep(orphan, "the engine's containers could not be listed (%s): a container of "
                 "another root may still use it" % (engine_error or "unknown error"))  # fmt: skip
        elif is_recent(entry["newest"], now, min_age):
            keep(orphan, recent_because(entry["newest"], now))
        found.append(orphan)
    return found


# -- what is there (I/O) -------------------------------------------------------------------------
def engine_objects(api: Any) -> Tuple[List[Dict[str, Any]], Set[str], Set[str]]:
    """Session containers, networks and volumes (kind, name, id, session, labels); the image
    ids any container uses; the sessions any container belongs to (whatever its root)."""
    objects: List[Dict[str, Any]] = []
    used_images: Set[str] = set()
    running_uses: Set[str] = set()  # volume names, network names and ids running containers use
    for entry in api.containers(all=True):
        used_images.add(str(entry.get("ImageID") or ""))
        if entry.get("State") in RUNNING_STATES:
            running_uses.update(str(m.get("Name")) for m in entry.get("Mounts") or []
                                if m.get("Type") == "volume" and m.get("Name"))  # fmt: skip
            networks = (entry.get("NetworkSettings") or {}).get("Networks") or {}
            for name, net in networks.items():
                running_uses.add(str(name))
                if (net or {}).get("NetworkID"):
                    running_uses.add(str(net["NetworkID"]))
    engine_sessions: Set[str] = set()
    for entry in api.containers(all=True, filters={"label": LABEL_SESSION}):
        labels = entry.get("Labels") or {}
        session = labels.get(LABEL_SESSION)
        if not is_session_id(session):
            continue
        engine_sessions.add(str(session))
        part = labels.get(disk.LABEL_PART)
        what = {"private-docker": "private docker daemon", "du": "volume measuring run"}.get(
            str(part), "sandbox")  # fmt: skip
        objects.append({"kind": "container", "name": disk.container_name(entry),
                        "id": str(entry["Id"]), "session": session, "labels": labels,
                        "what": what, "running": entry.get("State") in RUNNING_STATES})  # fmt: skip
    for entry in api.networks():
        labels = entry.get("Labels") or {}
        match = _NETWORK_NAME.match(str(entry.get("Name") or ""))
        session = labels.get(LABEL_SESSION) or (match.group(1) if match else None)
        if match is None and not labels.get(LABEL_SESSION):
            continue
        if not is_session_id(session):
            continue
        in_use = bool({str(entry["Name"]), str(entry["Id"])} & running_uses)
        objects.append({"kind": "network", "name": str(entry["Name"]), "id": str(entry["Id"]),
                        "session": session, "labels": labels, "in_use": in_use})  # fmt: skip
    for entry in (api.volumes() or {}).get("Volumes") or []:
        labels = entry.get("Labels") or {}
        match = _VOLUME_NAME.match(str(entry.get("Name") or ""))
        session = labels.get(LABEL_SESSION) or (match.group(1) if match else None)
        if match is None and not labels.get(LABEL_SESSION):
            continue
        if not is_session_id(session):
            continue
        objects.append({"kind": "volume", "name": str(entry["Name"]), "id": str(entry["Name"]),
                        "session": session, "labels": labels,
                        "mountpoint": entry.get("Mountpoint"),
                        "in_use": str(entry["Name"]) in running_uses})  # fmt: skip
    return objects, used_images, engine_sessions


def _measure(path: str) -> Tuple[int, float, bool]:
    """(bytes, newest mtime, complete) of a tree, bounded like `du`'s walk."""
    walk = disk.Walk()
    walk.tree(path, "x")
    walk.finish()
    figure = walk.figures.get("x", disk.Figure())
    return figure.bytes, figure.newest, not (walk.truncated or walk.unreadable)


def _subdirs(path: str) -> List[str]:
    try:
        names = sorted(os.listdir(path))
    except OSError:
        return []
    return [n for n in names if os.path.isdir(os.path.join(path, n))
            and not os.path.islink(os.path.join(path, n))]  # fmt: skip


def root_dirs(root: str) -> List[Dict[str, Any]]:
    found = []
    for parent, kind in (("sessions", "session-dir"), ("snapshots", "snapshots")):
        for session in _subdirs(os.path.join(root, parent)):
            if not is_session_id(session):
                continue
            path = os.path.join(root, parent, session)
            size, newest, _ = _measure(path)
            found.append({"kind": kind, "session": session, "path": path, "bytes": size,
                          "newest": newest})  # fmt: skip
    return found


def role_contexts(root: str) -> List[Dict[str, Any]]:
    found = []
    roles = os.path.join(root, "roles")
    for role in _subdirs(roles):
        for content_hash in _subdirs(os.path.join(roles, role)):
            path = os.path.join(roles, role, content_hash)
            size, newest, _ = _measure(path)
            found.append({"role": role, "hash": content_hash, "path": path, "bytes": size,
                          "newest": newest})  # fmt: skip
    return found


def mirrors(root: str) -> List[Dict[str, Any]]:
    found = []
    for workspace in _subdirs(os.path.join(root, "workspaces")):
        path = os.path.join(root, "workspaces", workspace)
        size, newest, _ = _measure(path)
        found.append({"workspace": workspace, "path": path, "bytes": size, "newest": newest})
    return found


def proxy_processes(root: str, proc: str = "/proc") -> List[Dict[str, Any]]:
    """This root's egress proxies, by their mark and --root in /proc/<pid>/cmdline."""
    found = []
    wanted = os.path.normpath(root)
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        try:
            with open(os.path.join(proc, name, "cmdline"), "rb") as handle:
                argv = handle.read(65536).split(b"\0")
        except OSError:
            continue
        parsed = proxy_argv(argv)
        if parsed is not None and os.path.normpath(parsed[0]) == wanted:
            found.append({"pid": int(name), "session": parsed[1]})
    return found


def proxy_argv(argv: List[bytes]) -> Optional[Tuple[str, str]]:
    """(root, session) of an egress proxy's argv, or None for any other process. Pure."""
    from agent_host.egressd import MARK

    if MARK.encode() not in argv:
        return None
    values = {}
    for flag in (b"--root", b"--session"):
        if flag in argv and argv.index(flag) + 1 < len(argv):
            values[flag] = argv[argv.index(flag) + 1].decode("utf-8", "replace")
    session = values.get(b"--session")
    if b"--root" not in values or not is_session_id(session):
        return None
    return values[b"--root"], str(session)


def pid_files(root: str) -> List[Dict[str, Any]]:
    from agent_host.egressd import pid_file, proxy_pid

    found = []
    for session in _subdirs(os.path.join(root, "sessions")):
        if is_session_id(session) and os.path.isfile(pid_file(root, session)):
            found.append({"session": session, "path": pid_file(root, session),
                          "alive": proxy_pid(root, session) is not None})  # fmt: skip
    return found


def secret_dirs(parent: str = SECRETS_PARENT) -> List[Dict[str, Any]]:
    found = []
    try:
        names = os.listdir(parent)
    except OSError:
        return []
    for name in names:
        session = name[len(SECRETS_PREFIX) :] if name.startswith(SECRETS_PREFIX) else None
        if not is_session_id(session):
            continue
        path = os.path.join(parent, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or (os.getuid() != 0 and st.st_uid != os.getuid()):
            continue  # another account's: not ours to judge
        size, newest, _ = _measure(path)
        found.append({"session": session, "path": path, "bytes": size,
                      "newest": max(newest, st.st_mtime), "uid": st.st_uid, "dev": st.st_dev,
                      "ino": st.st_ino})  # fmt: skip
    return found


# -- unpulled work -------------------------------------------------------------------------------
def _scratch(parent: str) -> Any:
    """review.Scratch's scratch repository, made under `parent` (the root: a session directory
    may be gone)."""
    from agent_host import review

    scratch = object.__new__(review.Scratch)
    scratch.dir = tempfile.mkdtemp(prefix=".gc-", dir=parent)
    scratch.git_dir = os.path.join(scratch.dir, "repo.git")
    scratch.config = os.path.join(scratch.dir, "gitconfig")
    with open(scratch.config, "w") as handle:
        handle.write(review._SCRATCH_CONFIG)
    try:
        scratch.git(["init", "-q", "--bare", "--template="])
    except BaseException:
        scratch.close()
        raise
    return scratch


def work_verdict(
    root: str, work: str, record: Optional[Dict[str, Any]], mirror_objects: List[str]
) -> Dict[str, Any]:
    """Whether a checkout (or a snapshot of one) holds work the laptop never pulled:
    {state: none | empty | pulled | unpulled | unknown, commit, why}. Never runs git in the
    agent's repository (review.Scratch borrows its objects)."""
    if not os.path.isdir(work) or os.path.islink(work):
        return {"state": "none", "commit": None, "why": None}
    try:
        if not os.listdir(work):
            return {"state": "empty", "commit": None, "why": None}
    except OSError as exc:
        return {"state": "unknown", "commit": None, "why": "cannot list it: %s" % exc.strerror}
    try:
        if record is not None:
            return _recorded_verdict(root, work, record)
        return _unrecorded_verdict(root, work, mirror_objects)
    except RemoteError as exc:
        return {"state": "unknown", "commit": None, "why": exc.message}
    except OSError as exc:  # a full disk cannot hold the scratch repository: keep, go on
        return {"state": "unknown", "commit": None,
                "why": "cannot check it: %s" % (exc.strerror or exc)}  # fmt: skip


def _recorded_verdict(root: str, work: str, record: Dict[str, Any]) -> Dict[str, Any]:
    """What `rm` checks (agent_host/review.py): the record's pulled (or launch) commit."""
    from agent_host import review

    clone = os.path.isdir(os.path.join(work, ".git"))
    with _scratch(root) as scratch:
        if clone:
            commit = review._snapshot(scratch, work)[0]
        else:
            commit = scratch.tree_of(work, None, force=True)
    launch = record.get("launch_commit") or (record.get("spec") or {}).get("launch_commit")
    pulled = commit == record.get("pulled_commit") or (clone and commit == launch)
    return {"state": "pulled" if pulled else "unpulled", "commit": commit,
            "why": None if pulled else "it was never pulled"}  # fmt: skip


def _unrecorded_verdict(root: str, work: str, mirror_objects: List[str]) -> Dict[str, Any]:
    """Without a record, clone and copy cannot be told apart (a copy of a git workspace has a
    .git too): pulled only if the whole tree, ignored files included, is HEAD's and HEAD is in a
    workspace mirror here. Anything else is unpulled."""
    from agent_host import review

    if not os.path.isdir(os.path.join(work, ".git")):
        with _scratch(root) as scratch:
            tree = scratch.tree_of(work, None, force=True)
        return {"state": "unknown", "commit": tree, "why": "a copy checkout with no record"}
    with _scratch(root) as scratch:
        scratch.borrow_objects(work)
        head = review._agent_head(scratch, work)
        head_tree = scratch.git(["rev-parse", head + "^{tree}"])
        tree = scratch.tree_of(work, head_tree, force=True)
    if tree != head_tree:
        return {"state": "unpulled", "commit": head, "why": "its files (ignored ones included) "
                "differ from its HEAD %s: treated as unpulled" % head[:12]}  # fmt: skip
    if mirror_objects:
        with _scratch(root) as scratch:
            with open(os.path.join(scratch.git_dir, "objects", "info", "alternates"), "w") as fh:
                fh.write("".join(path + "\n" for path in mirror_objects))
            if scratch.has_commit(head):
                return {"state": "pulled", "commit": head, "why": None}
    return {
        "state": "unpulled",
        "commit": head,
        "why": "commit %s is in no workspace mirror here: treated as unpulled" % head[:12],
    }


def snapshot_work(path: str) -> List[str]:
    """The checkouts a snapshots/<id> directory holds: each snapshot's tree/ (the checkout as
    it was, .git included: agent_host/snapshots.py), or the snapshot itself."""
    found = []
    for name in _subdirs(path):
        snap = os.path.join(path, name)
        inner = os.path.join(snap, "tree")
        found.append(inner if os.path.isdir(inner) and not os.path.islink(inner) else snap)
    return found


def mirror_object_dirs(root: str) -> List[str]:
    found = []
    for workspace in _subdirs(os.path.join(root, "workspaces")):
        objects = os.path.join(layout.mirror_dir(root, workspace), ".git", "objects")
        if os.path.isdir(objects) and not os.path.islink(objects):
            found.append(objects)
    return found


def guard_work(
    root: str, found: Dict[str, Any], records: Dict[str, Dict[str, Any]], mirror_objects: List[str]
) -> None:
    """Keep a session directory or snapshots holding unpulled (or unknowable) work."""
    session = found["session"]
    record = records.get(session)
    if found["what"] == "session-dir":
        works = [layout.work_dir(root, session)]
    else:
        works = snapshot_work(found["name"])
    for work in works:
        verdict = work_verdict(root, work, record, mirror_objects)
        if verdict["state"] in ("unpulled", "unknown"):
            keep(found, "it holds work that was never pulled (%s)" % verdict["why"]
                 if verdict["state"] == "unpulled" else
                 "whether its work was pulled cannot be told (%s)" % verdict["why"])  # fmt: skip
            found["recover"] = {"path": work, "commit": verdict["commit"],
                                "clone": os.path.isdir(os.path.join(work, ".git"))}  # fmt: skip
            return


# -- the RPC -------------------------------------------------------------------------------------
def _min_age(params: Message) -> int:
    value = params.get("min_age", DEFAULT_MIN_AGE)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_MIN_AGE:
        raise RemoteError(E_INVALID_PARAMS, "min_age must be 0..%d seconds, got %r"
                          % (MAX_MIN_AGE, value))  # fmt: skip
    return value


def collect(ctx: Context, params: Message) -> Dict[str, Any]:
    """`host.gc`: see the module's doc."""
    root = ctx.root
    min_age = _min_age(params)
    apply = params.get("apply") is True
    with_images = params.get("images") is True
    # Everything is listed first, the records read after: whatever was made meanwhile has its
    # record by then (a session is recorded before anything is made for it).
    engine_error = None
    objects: List[Dict[str, Any]] = []
    used_images: Set[str] = set()
    engine_sessions: Optional[Set[str]] = None  # None: the engine's containers are not known
    images: List[Dict[str, Any]] = []
    api = None
    try:
        api = disk._api()
        objects, used_images, engine_sessions = engine_objects(api)
        images = disk.role_images(api)
    except Exception as exc:  # the files are judged all the same
        engine_error = getattr(exc, "message", None) or disk._short(exc)
    dirs = root_dirs(root)
    contexts = role_contexts(root)
    workspaces = mirrors(root)
    proxies = proxy_processes(root)
    pids = pid_files(root)
    secrets = secret_dirs()
    now = time.time()
    store = Store(root)
    try:
        read_only = store.read_only  # a full disk: its view may miss recent records
        full = {r["id"]: r for r in store.all(include_purged=True)}
    finally:
        store.close()
    if read_only and apply:
        raise RemoteError(E_FAILED, "the host's disk is full: the state database opened "
                          "read-only and may miss recent records, so gc cannot tell what no "
                          "record owns; free space on the host first, then run gc --apply",
                          {"hint": "`jackin-remote du` shows what jackin holds there, "
                           "`jackin-remote gc` (a dry run) what may be left over"})  # fmt: skip
    records = {sid: str(r["state"]) for sid, r in full.items()}
    live = [r for r in full.values() if r["state"] != "purged"]
    rid = ownership.this_root_id(root)
    known_dirs = {entry["session"] for entry in dirs}
    engine_items, others, unattributed = classify_engine(objects, records, known_dirs, rid, root)
    _size_engine_items(api, engine_items, objects, full, root)
    dir_items = classify_dirs(dirs, records, now, min_age)
    mirror_objects = mirror_object_dirs(root)
    for found in dir_items:
        if found["action"] == REMOVE:
            guard_work(root, found, full, mirror_objects)
    used_roles = {(str(r["role"]), str((r.get("spec") or {}).get("role_hash")))
                  for r in live}  # fmt: skip
    used_refs = {str(r["image"]) for r in live if r.get("image")}
    used_refs |= {_spec_image(r) for r in live} - {""}
    items = engine_items + dir_items
    items += classify_role_contexts(contexts, used_roles, now, min_age)
    items += classify_mirrors(workspaces, {str(r["workspace"]) for r in live}, now, min_age)
    for found in classify_images(images, used_refs, used_images, now, min_age):
        if found["action"] == REMOVE and not with_images:
            keep(found, "role images are the engine's, shared by every host root on it "
                 "(gc --images removes them)")  # fmt: skip
        items.append(found)
    items += classify_proxies(proxies, records)
    removed_dirs = {f["session"] for f in dir_items if f["what"] == "session-dir"
                    and f["action"] == REMOVE}  # fmt: skip
    for entry in pids:
        if not entry["alive"] and entry["session"] not in removed_dirs:
            items.append(item("file", entry["path"], entry["session"],
                              "pid file of an egress proxy that is not running", 0))  # fmt: skip
    items += classify_secrets(secrets, records, engine_sessions, now, min_age, engine_error)
    hold_session_dirs(items)
    if read_only:
        for found in items:
            if found["action"] == REMOVE and rests_on_missing_records(found):
                keep(found, READ_ONLY_BECAUSE)
    if apply:
        remove_all(root, api, items)
    return {"applied": apply, "min_age": min_age, "items": items, "other_roots": others,
            "unattributed": unattributed, "engine_error": engine_error}  # fmt: skip


def rests_on_missing_records(found: Dict[str, Any]) -> bool:
    """Whether an orphan was judged so because no (live) record names it: what a stale view of
    the records cannot tell. A purged record, a gone root or a dead proxy's pid file can."""
    if found["kind"] in ("image", "process"):
        return True  # no live record names it / its session may have a newer record
    if found["what"] in ("role-context", "workspace-mirror"):
        return True
    return "no record of session" in str(found["reason"])


def hold_session_dirs(items: List[Dict[str, Any]]) -> None:
    """Keep the directories of a session any of whose containers stays (kept, or its removal
    failed): it may still use them."""
    held: Dict[str, str] = {}
    for found in items:
        if found["kind"] != "container" or not found["session"]:
            continue
        if found["action"] == KEEP:
            held.setdefault(str(found["session"]), "%s is kept: %s" % (
                found["name"], found["kept_because"]))  # fmt: skip
        elif found.get("removed") is False:
            held.setdefault(str(found["session"]), "removing %s failed: %s" % (
                found["name"], found.get("error")))  # fmt: skip
    for found in items:
        if (found["kind"] == "directory" and found["action"] == REMOVE
                and found["session"] in held):  # fmt: skip
            keep(found, "a container of session %s remains (%s)" % (
                found["session"], held[str(found["session"])]))  # fmt: skip


def _spec_image(record: Dict[str, Any]) -> str:
    from agent_host.wire import image_tag

    spec = record.get("spec") or {}
    try:
        return image_tag(str(spec.get("role")), str(spec.get("role_hash")))
    except Exception:
        return ""


def _size_engine_items(
    api: Any,
    found: List[Dict[str, Any]],
    objects: List[Dict[str, Any]],
    records: Dict[str, Dict[str, Any]],
    root: str,
) -> None:
    """Sizes of the orphan containers (writable layer and logs) and volumes."""
    if api is None:
        return
    containers = [f for f in found if f["kind"] == "container"]
    with contextlib.suppress(Exception):
        sizes = disk.writable_sizes(api, [str(f["id"]) for f in containers])
        for entry in containers:
            logs = disk.log_size(api, str(entry["id"])).get("bytes")
            parts = [v for v in (sizes.get(str(entry["id"])), logs) if isinstance(v, int)]
            entry["bytes"] = sum(parts) if parts else None
    volumes = {o["name"]: o for o in objects if o["kind"] == "volume"}
    for entry in found:
        if entry["kind"] != "volume":
            continue
        with contextlib.suppress(Exception):
            record = records.get(str(entry["session"]))
            measured = disk.volume_sizes(api, [{"Name": entry["name"], "Mountpoint": volumes[
                entry["name"]].get("mountpoint")}], record, root)  # fmt: skip
            entry["bytes"] = measured[entry["name"]].get("bytes")


# -- removal -------------------------------------------------------------------------------------
ORDER = ("process", "container", "network", "volume", "secrets", "file", "directory", "image")


def remove_all(root: str, api: Any, items: List[Dict[str, Any]]) -> None:
    """Remove every item marked `remove`, in an order that frees what holds the next (a proxy,
    then containers, then their networks and volumes, ...). Each result is set on the item."""
    for kind in ORDER:
        if kind == "directory":
            hold_session_dirs(items)  # a container whose removal failed keeps its session's
        for found in items:
            if found["kind"] != kind or found["action"] != REMOVE:
                continue
            try:
                _remove_one(root, api, found)
            except Exception as exc:
                found["removed"] = False
                found["error"] = getattr(exc, "message", None) or disk._short(exc)
                continue
            found["removed"] = True
            found["error"] = None
            _audit(root, found)


def _audit(root: str, found: Dict[str, Any]) -> None:
    from agent_host import audit

    kind = {"file": "pidfile", "process": "egress"}.get(found["kind"], found["kind"])
    action = "%s.%s" % (kind, "stop" if found["kind"] == "process" else "remove")
    session = found["session"] if is_session_id(found["session"]) else None
    with contextlib.suppress(Exception):  # the removal happened; its record never fails it
        audit.record(root, session, action, "%s (gc: %s)" % (found["name"], found["reason"]), "")


def _remove_one(root: str, api: Any, found: Dict[str, Any]) -> None:
    kind = found["kind"]
    if kind in ("container", "network", "volume", "image") and api is None:
        raise RemoteError(E_FAILED, "the docker engine is not reachable")
    if kind == "container":
        _engine_call(lambda: api.sdk.remove_container(found["id"], force=True))
    elif kind == "network":
        _engine_call(lambda: api.sdk.remove_network(found["id"]))
    elif kind == "volume":
        _engine_call(lambda: api.sdk.remove_volume(found["id"], force=True))
    elif kind == "image":
        for ref in found.get("tags") or [found["id"]]:
            _engine_call(functools.partial(api.sdk.remove_image, ref))
    elif kind == "process":
        stop_proxy_pid(root, int(found["pid"]), str(found["session"]))
    elif kind == "file":
        with contextlib.suppress(FileNotFoundError):
            os.unlink(found["name"])
    elif kind == "secrets":
        remove_secrets(found)
    elif kind == "directory":
        _remove_dir(root, found)


def remove_secrets(found: Dict[str, Any]) -> None:
    """A /dev/shm/jackin-secrets-<id> directory, never following a link: /dev/shm is
    world-writable, and its entry may have been swapped for a link (to /etc...) since it was
    listed. Only the directory listed (same device and inode), owned by the uid seen then (ours
    unless gc runs as root), is emptied through its descriptor."""
    path = str(found["name"])
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return  # gone meanwhile (an rm ran)
    except OSError as exc:
        raise RemoteError(E_FAILED, "%s is not a plain directory now (%s): left alone"
                          % (path, exc.strerror or exc)) from None  # fmt: skip
    try:
        st = os.fstat(fd)
        expected = found.get("uid") if os.getuid() == 0 else os.getuid()
        same = (found.get("dev"), found.get("ino")) in ((None, None), (st.st_dev, st.st_ino))
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != expected or not same:
            raise RemoteError(E_FAILED, "%s is not the directory gc listed: left alone" % path)
        os.fchmod(fd, 0o700)
        _empty_dir_fd(fd, st.st_uid)
    finally:
        os.close(fd)
    os.rmdir(path)


def _empty_dir_fd(fd: int, uid: int, depth: int = 0) -> None:
    """Remove everything in the directory open at `fd`, by names relative to it, never
    following a link (a subdirectory, unexpected, is opened O_NOFOLLOW and emptied the same)."""
    for name in os.listdir(fd):
        st = os.lstat(name, dir_fd=fd)
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=fd)
            continue
        if depth >= 8:
            raise RemoteError(E_FAILED, "a secrets directory nested too deep: left alone")
        sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        try:
            if os.fstat(sub).st_uid != uid:
                raise RemoteError(E_FAILED, "a secrets directory holds another account's "
                                  "directory: left alone")  # fmt: skip
            os.fchmod(sub, 0o700)
            _empty_dir_fd(sub, uid, depth + 1)
        finally:
            os.close(sub)
        os.rmdir(name, dir_fd=fd)


def _engine_call(call: Callable[[], Any]) -> None:
    from docker.errors import NotFound

    with contextlib.suppress(NotFound):  # already gone (an rm ran meanwhile)
        call()


def _remove_dir(root: str, found: Dict[str, Any]) -> None:
    from agent_host.sessions import _rmtree

    path = str(found["name"])
    if found["what"] == "workspace-mirror":
        from agent_host.workspaces import _locked

        # Under the workspace's lock: a sync or checkout of it waits, then finds it gone.
        with _locked(root, str(found["workspace"])):
            for name in os.listdir(path):
                if name != ".lock":
                    target = os.path.join(path, name)
                    if os.path.isdir(target) and not os.path.islink(target):
                        _rmtree(target)
                    else:
                        os.unlink(target)
        return
    if os.path.isdir(path) and not os.path.islink(path):
        _rmtree(path)


def stop_proxy_pid(root: str, pid: int, session: str) -> None:
    """SIGTERM, then SIGKILL after STOP_GRACE; each signal only while /proc still says the pid
    is this root's proxy of `session` (a pid may be reused)."""

    def ours() -> bool:
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as handle:
                parsed = proxy_argv(handle.read(65536).split(b"\0"))
        except OSError:
            return False
        return parsed is not None and parsed[1] == session and os.path.normpath(
            parsed[0]) == os.path.normpath(root)  # fmt: skip

    for signum, wait in ((signal.SIGTERM, STOP_GRACE), (signal.SIGKILL, STOP_GRACE)):
        if not ours():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
        deadline = time.monotonic() + wait
        while ours() and time.monotonic() < deadline:
            time.sleep(0.05)
    if ours():
        raise RemoteError(E_FAILED, "egress proxy pid %d did not stop" % pid)


HANDLERS = {"host.gc": collect}
