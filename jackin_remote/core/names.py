"""Names that reach a shell, a path or a docker call. The rules are the boundary's own
(agent_host.wire): the host checks the very same patterns, so nothing accepted here is
refused there."""

from __future__ import annotations

import secrets

from agent_host.wire import (
    CROCKFORD,
    NAME_RE,
    NAME_RULE,
    SESSION_ID_LEN,
    SESSION_ID_RE,
    is_session_id,
    is_valid_name,
)

__all__ = [
    "CROCKFORD",
    "NAME_RE",
    "NAME_RULE",
    "SESSION_ID_LEN",
    "SESSION_ID_RE",
    "is_session_id",
    "is_valid_name",
    "new_session_id",
]


def new_session_id() -> str:
    return "".join(secrets.choice(CROCKFORD) for _ in range(SESSION_ID_LEN))
