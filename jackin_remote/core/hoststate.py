"""Per-host connection states, as reported by `hosts check`, `ls` and every fan-out."""

from __future__ import annotations

import enum


class HostState(enum.StrEnum):
    OK = "ok"
    UNREACHABLE = "unreachable"
    AUTH_FAILED = "auth_failed"
    HOST_KEY_UNKNOWN = "host_key_unknown"  # nothing trusts the key yet: `hosts trust` it
    HOST_KEY_MISMATCH = "host_key_mismatch"  # the host presents another key than the known one
    AGENT_ERROR = "agent_error"
