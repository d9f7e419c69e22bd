"""The audit: every host-side change jackin makes, with what undoes it.

    record(root, session_id, action, target, undo)   one row in the host's state db (`audit`)
    entries(root, session_id=None)                   the rows, oldest first
    RPC `audit.list` {id?}                           the same, for the controller

`action` is `area.verb` (container.create, network.remove, egress.start, checkout.create ...);
`target` names what was acted on (a docker name or id, a path under the root); `undo` is what
reverses it, as a person would do it (`docker rm -f jk-…`, `rm -rf <path>`), empty for a change
that undoes an earlier one. Text is bounded and control characters are escaped; callers never
pass secret values (names of secrets, paths of secret dirs: yes; their contents: never), and
anything shaped like NAME=VALUE with a secret-looking name is redacted here as a second guard.

Recording never fails the caller's work: a database or file-system error is swallowed (the
change itself happened). Programming errors (a wrong type) still raise.
Python 3.9 compatible.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from agent_host.protocol import SpecError
from agent_host.wire import check_session_id, is_session_id

MAX_ACTION = 64
MAX_TARGET = 1024
MAX_UNDO = 1024
MAX_ANSWER = 5000  # rows in one audit.list answer (the newest)

_ACTION = re.compile(r"^[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)+$")
_SECRETISH = re.compile(
    r"(?i)\b([A-Z0-9_]*(?:TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|APIKEY|PRIVATE_KEY|CREDENTIAL)"
    r"[A-Z0-9_]*)=(\S+)"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _clean(text: str, limit: int) -> str:
    text = _SECRETISH.sub(lambda m: m.group(1) + "=<redacted>", text)
    text = _CONTROL.sub(lambda m: "\\x%02x" % ord(m.group(0)), text)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def record(root: str, session_id: Optional[str], action: str, target: str, undo: str) -> None:
    """Write one audit row. Raises only on a programming error (bad types, a malformed action
    or session id); a failing database is ignored (the change it records already happened)."""
    for name, value in (("action", action), ("target", target), ("undo", undo)):
        if not isinstance(value, str):
            raise TypeError("audit %s must be text, not %s" % (name, type(value).__name__))
    if not _ACTION.match(action) or len(action) > MAX_ACTION:
        raise ValueError("audit action must be area.verb, got %r" % action)
    if session_id is not None:
        check_session_id(session_id, "session")
    from agent_host.state import Store

    try:
        store = Store(root)
        try:
            store.add_audit(session_id, action, _clean(target, MAX_TARGET), _clean(undo, MAX_UNDO))
        finally:
            store.close()
    except (sqlite3.Error, OSError):
        pass


def entries(root: str, session_id: Optional[str] = None) -> List[Dict[str, Any]]:
    """The newest MAX_ANSWER rows (one session's, or the whole host's), oldest first."""
    from agent_host.state import Store

    if session_id is not None:
        check_session_id(session_id, "id")
    store = Store(root)
    try:
        return store.audit(session_id, MAX_ANSWER)
    finally:
        store.close()


@dataclass(frozen=True)
class AuditEntry:
    """One row as the controller takes it from a host: checked field by field (a host is not
    trusted; its text still reaches a terminal only through ui/safe.py)."""

    id: int
    at: float
    session: Optional[str]
    action: str
    target: str
    undo: str

    @classmethod
    def from_wire(cls, data: object) -> "AuditEntry":
        if not isinstance(data, dict):
            raise SpecError("audit", "must be an object")
        row_id, at, session = data.get("id"), data.get("at"), data.get("session")
        if isinstance(row_id, bool) or not isinstance(row_id, int) or row_id < 0:
            raise SpecError("audit.id", "must be a number >= 0")
        if isinstance(at, bool) or not isinstance(at, (int, float)) or not at >= 0:
            raise SpecError("audit.at", "must be a time")
        if session is not None and not is_session_id(session):
            raise SpecError("audit.session", "must be a session id or null")
        texts = []
        for key, limit in (("action", MAX_ACTION), ("target", MAX_TARGET), ("undo", MAX_UNDO)):
            value = data.get(key)
            if not isinstance(value, str) or len(value) > limit:
                raise SpecError("audit." + key, "must be text of at most %d characters" % limit)
            texts.append(value)
        return cls(row_id, float(at), session, texts[0], texts[1], texts[2])


# -- RPC handler (`audit.list`) -----------------------------------------------------------------
def list_entries(ctx: Any, params: Any) -> Dict[str, Any]:
    return {"entries": entries(ctx.root, params.get("id"))}


HANDLERS = {"audit.list": list_entries}
