"""Wire types of the controller <-> host agent RPC. Imported by both sides.

Newline-delimited JSON over the agent's stdio (an SSH channel or a local pipe):

    request       {"id": 7, "method": "facts", "params": {...}}
    result        {"id": 7, "result": ...}
    error         {"id": 7, "error": {"code": "not_found", "message": "...", "data": ...}}
    notification  {"method": "event", "params": {...}}            (no id; streamed events)

Requests may be pipelined: the controller writes several before reading, and the agent may answer
them out of order. The first request on a channel must be `hello`, which checks PROTOCOL_VERSION.

Python 3.9 compatible (runs on hosts).
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional

PROTOCOL_VERSION = 1

# Error codes: a closed set, so both sides can branch on them.
E_BAD_REQUEST = "bad_request"  # not JSON, or not a request object
E_UNKNOWN_METHOD = "unknown_method"
E_INVALID_PARAMS = "invalid_params"
E_PROTOCOL_MISMATCH = "protocol_mismatch"
E_NOT_FOUND = "not_found"
E_CONFLICT = "conflict"
E_DOCKER_UNAVAILABLE = "docker_unavailable"
E_FAILED = "failed"  # the operation ran and failed (a build, a git command...)
E_INTERNAL = "internal"  # a bug in the agent
ERROR_CODES = frozenset(
    {
        E_BAD_REQUEST,
        E_UNKNOWN_METHOD,
        E_INVALID_PARAMS,
        E_PROTOCOL_MISMATCH,
        E_NOT_FOUND,
        E_CONFLICT,
        E_DOCKER_UNAVAILABLE,
        E_FAILED,
        E_INTERNAL,
    }
)

Message = Dict[str, Any]

# A line longer than this is refused: a runaway peer must not exhaust memory.
MAX_LINE_BYTES = 64 * 1024 * 1024


class RemoteError(Exception):
    """An error reply, or a local failure to produce one, with a typed code."""

    def __init__(self, code: str, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code if code in ERROR_CODES else E_INTERNAL
        self.message = message
        self.data = data

    def to_wire(self) -> Message:
        err: Message = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err


class SpecError(RemoteError):
    """A value that crossed the boundary is invalid. `field` names it."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(E_INVALID_PARAMS, "%s: %s" % (field_name, problem), {"field": field_name})
        self.field = field_name
        self.problem = problem


def encode(message: Message) -> bytes:
    return json.dumps(message, separators=(",", ":"), sort_keys=True).encode() + b"\n"


def decode(line: bytes) -> Message:
    try:
        message = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RemoteError(E_BAD_REQUEST, "not a JSON line: %s" % exc) from None
    if not isinstance(message, dict):
        raise RemoteError(E_BAD_REQUEST, "a message must be a JSON object")
    return message


def request(request_id: int, method: str, params: Optional[Message] = None) -> Message:
    return {"id": request_id, "method": method, "params": params or {}}


def result(request_id: Any, value: Any) -> Message:
    return {"id": request_id, "result": value}


def error(request_id: Any, exc: RemoteError) -> Message:
    return {"id": request_id, "error": exc.to_wire()}


def notification(method: str, params: Message) -> Message:
    return {"method": method, "params": params}


def hello_params() -> Message:
    return {"protocol": PROTOCOL_VERSION}
