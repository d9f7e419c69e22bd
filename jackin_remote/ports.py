"""Service ports: laptop -> host -> sandbox, over the connection the controller already holds.

`ports SESSION --publish [LOCAL:]PORT` listens on the laptop's loopback; each connection there
becomes a TCP connection made by the host (a direct-tcpip channel of the SSH connection, or a
plain connection in local mode) to the sandbox's address on its own network. Nothing listens on
the host, and the sandbox's network stays as it is (an allowlist sandbox still reaches nothing
else). The forwarding lives as long as the command: it ends when the session stops.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from jackin_remote.errors import UsageError

LOOPBACK = "127.0.0.1"
_CHUNK = 65536


@dataclass(frozen=True)
class Publish:
    local: int  # 0: any free port
    remote: int


def parse_publish(text: str) -> Publish:
    """`PORT` or `LOCAL:PORT` (LOCAL 0: any free port). UsageError naming --publish."""
    local, sep, remote = text.rpartition(":")
    try:
        remote_port = int(remote)
        local_port = int(local) if sep else remote_port
    except ValueError:
        raise UsageError(f"--publish {text!r}: expected PORT or LOCAL:PORT") from None
    if not 1 <= remote_port <= 65535 or not 0 <= local_port <= 65535:
        raise UsageError(f"--publish {text!r}: ports are numbers from 1 to 65535 (LOCAL 0: any)")
    return Publish(local_port, remote_port)


Opener = Callable[[], Awaitable[tuple[Any, Any]]]


async def serve(publish: Publish, open_remote: Opener) -> asyncio.Server:
    """A loopback listener whose connections are relayed to what `open_remote` opens."""

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await open_remote()
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for end in (writer, up_writer):
                with contextlib.suppress(Exception):
                    end.close()

    return await asyncio.start_server(accept, LOOPBACK, publish.local)


async def _pipe(src: Any, dst: Any) -> None:
    try:
        while data := await src.read(_CHUNK):
            dst.write(data)
            await dst.drain()
        with contextlib.suppress(Exception):
            dst.write_eof()
    except Exception:
        with contextlib.suppress(Exception):
            dst.close()
