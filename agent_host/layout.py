"""Where things live under a host's root (default ~/.jackin). The one place that decides it.

    <root>/agent/jackin-agent-<hash>.pyz      the agent itself
    <root>/state.db                           sessions on this host (source of truth)
    <root>/workspaces/<ws>/mirror/            workspace mirror (rsync target)
    <root>/workspaces/<ws>/manifest.json      hash + file list of the last completed sync
    <root>/roles/<role>/<content-hash>/       role build context
    <root>/sessions/<id>/work/                the session's own checkout (clone or copy)
    <root>/sessions/<id>/pull.bundle          work handed back by `pull` (git)

Python 3.9 compatible.
"""

from __future__ import annotations

import os
import re

from agent_host.protocol import E_INVALID_PARAMS, RemoteError

_SAFE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_SAFE_ID = re.compile(r"^[0-9a-z]{8}$")
_SAFE_HASH = re.compile(r"^[0-9a-f]{8,64}$")


def check_name(value: object, what: str) -> str:
    """Names reach paths and docker calls: validate again here, whatever the controller did."""
    if not isinstance(value, str) or not _SAFE_NAME.match(value):
        raise RemoteError(E_INVALID_PARAMS, "bad %s name: %r" % (what, value))
    return value


def check_session_id(value: object) -> str:
    if not isinstance(value, str) or not _SAFE_ID.match(value):
        raise RemoteError(E_INVALID_PARAMS, "bad session id: %r" % (value,))
    return value


def check_hash(value: object) -> str:
    if not isinstance(value, str) or not _SAFE_HASH.match(value):
        raise RemoteError(E_INVALID_PARAMS, "bad content hash: %r" % (value,))
    return value


def state_db(root: str) -> str:
    return os.path.join(root, "state.db")


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
