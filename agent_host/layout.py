"""Where things live under a host's root (default ~/.jackin). The one place that decides it.

    <root>/agent/jackin-agent-<hash>/         the agent itself (unpacked, byte-compiled)
    <root>/state.db                           sessions on this host (source of truth)
    <root>/root-id                            random id of this root, made once (host identity)
    <root>/workspaces/<ws>/mirror/            workspace mirror (rsync target)
    <root>/workspaces/<ws>/manifest.json      hash + file list of the last completed sync
    <root>/roles/<role>/<content-hash>/       role build context
    <root>/sessions/<id>/work/                the session's own checkout (clone or copy)
    <root>/sessions/<id>/pull.bundle          work handed back by `pull` (git)
    <root>/sessions/<id>/mounts/<index>/      a laptop directory synced for mount <index>
    <root>/snapshots/<id>/<snap>/             a snapshot of the session's checkout (s1, s2...):
                                              outside the session dir, never mounted; kept by
                                              rm, removed by rm --purge (agent_host/snapshots.py)

Python 3.9 compatible.
"""

from __future__ import annotations

import os

from agent_host.wire import check_hash as _check_hash
from agent_host.wire import check_name, check_session_id, check_snapshot_id

__all__ = ["check_hash", "check_name", "check_session_id"]


def check_hash(value: object) -> str:
    return _check_hash(value, "content hash")


def agent_dir(root: str) -> str:
    """Where deployed agent versions live (`jackin-agent-<hash>/` each)."""
    return os.path.join(root, "agent")


def state_db(root: str) -> str:
    return os.path.join(root, "state.db")


def root_id_file(root: str) -> str:
    return os.path.join(root, "root-id")


def workspace_dir(root: str, workspace: str) -> str:
    return os.path.join(root, "workspaces", check_name(workspace, "workspace"))


def mirror_dir(root: str, workspace: str) -> str:
    return os.path.join(workspace_dir(root, workspace), "mirror")


def manifest_file(root: str, workspace: str) -> str:
    return os.path.join(workspace_dir(root, workspace), "manifest.json")


def role_dir(root: str, role: str, content_hash: str) -> str:
    return os.path.join(root, "roles", check_name(role, "role"), check_hash(content_hash))


def session_dir(root: str, session_id: str) -> str:
    return os.path.join(root, "sessions", check_session_id(session_id))


def work_dir(root: str, session_id: str) -> str:
    return os.path.join(session_dir(root, session_id), "work")


def bundle_file(root: str, session_id: str) -> str:
    return os.path.join(session_dir(root, session_id), "pull.bundle")


def synced_mounts_dir(root: str, session_id: str) -> str:
    """Where a session's synced laptop directories are copied (one per --mount LAPTOP_DIR)."""
    return os.path.join(session_dir(root, session_id), "mounts")


def synced_dir(root: str, session_id: str, index: int) -> str:
    """The host copy of the laptop directory of the session's mount number `index` (its place
    in the spec's mounts): derived from the session id, never taken from the wire."""
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < 1000:
        raise ValueError("mount index %r out of range" % (index,))
    return os.path.join(synced_mounts_dir(root, session_id), str(index))


def snapshots_dir(root: str, session_id: str) -> str:
    """A session's snapshots: outside its session directory (which rm deletes) and never
    mounted into any container, so the agent can neither read, change nor delete them."""
    return os.path.join(root, "snapshots", check_session_id(session_id))


def snapshot_dir(root: str, session_id: str, snapshot_id: str) -> str:
    return os.path.join(snapshots_dir(root, session_id), check_snapshot_id(snapshot_id))
