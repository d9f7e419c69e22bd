"""Commands run inside a sandbox by the host (its tmux screen, its status file), read with the
host's own bounds.

The sandbox owns every process started in it: an agent can stop a `timeout` wrapper (SIGSTOP),
swap a file for a FIFO, or keep writing. docker-py's `exec_run` waits for the end of the
output with no time limit, so a hostile agent could hold a host thread and a docker socket for
ever, or fill the host agent's memory. Here the output is read from the raw exec socket until
it ends, a deadline passes or a byte cap is reached, whichever is first; then the socket is
closed. Python 3.9 compatible.
"""

from __future__ import annotations

import contextlib
import socket
import time
from typing import Any, List, Optional, Tuple

DEFAULT_SECONDS = 3.0
DEFAULT_BYTES = 4 * 1024 * 1024
_STREAMS = (0, 1, 2)  # stdin, stdout, stderr in docker's multiplexed frames


def demux(data: bytes) -> bytes:
    """The payloads of docker's multiplexed exec frames (8-byte headers: stream, 3 zero bytes,
    big-endian size), in order; a truncated last frame gives what it holds. Data that does not
    start with a frame header is returned as it is (a tty exec is not multiplexed). Pure."""
    out: List[bytes] = []
    view = memoryview(data)
    while len(view) >= 8:
        stream, pad, size = view[0], bytes(view[1:4]), int.from_bytes(view[4:8], "big")
        if stream not in _STREAMS or pad != b"\0\0\0":
            if not out:
                return bytes(data)
            break
        out.append(bytes(view[8 : 8 + size]))
        view = view[8 + size :]
    return b"".join(out)


def bounded_exec(
    container: Any, argv: List[str], seconds: float = DEFAULT_SECONDS,
    cap: int = DEFAULT_BYTES,
) -> Tuple[Optional[int], bytes]:  # fmt: skip
    """(exit code, or None if it had not ended when the read stopped; its stdout and stderr,
    at most `cap` bytes), read for at most `seconds`."""
    api = container.client.api
    exec_id = api.exec_create(container.id, argv)["Id"]
    sock = api.exec_start(exec_id, socket=True)
    raw = getattr(sock, "_sock", sock)
    deadline = time.monotonic() + seconds
    data = bytearray()
    ended = False
    try:
        while len(data) < 2 * cap + 64:  # the frame headers' room, bounded all the same
            left = deadline - time.monotonic()
            if left <= 0:
                break
            raw.settimeout(left)
            try:
                chunk = raw.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                ended = True
                break
            data += chunk
    finally:
        with contextlib.suppress(OSError):
            raw.close()
        with contextlib.suppress(Exception):
            sock.close()
    code: Optional[int] = None
    if ended:
        with contextlib.suppress(Exception):
            code = api.exec_inspect(exec_id).get("ExitCode")
    return code, demux(bytes(data))[:cap]
