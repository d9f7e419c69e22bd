"""Names that reach a shell, a path or a docker call are validated here, once."""

from __future__ import annotations

import re
import secrets

# Host, group, workspace and role names: lowercase letters, digits and '-', starting with a letter.
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
NAME_RULE = "lowercase letters, digits and '-', starting with a letter, at most 63 characters"

# Crockford base32 (no I, L, O, U).
CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
SESSION_ID_LEN = 8
SESSION_ID_RE = re.compile(rf"^[{CROCKFORD}]{{{SESSION_ID_LEN}}}$")


def is_valid_name(name: str) -> bool:
    return bool(NAME_RE.match(name)) and not name.endswith("-")


def new_session_id() -> str:
    return "".join(secrets.choice(CROCKFORD) for _ in range(SESSION_ID_LEN))


def is_session_id(text: str) -> bool:
    return bool(SESSION_ID_RE.match(text))
