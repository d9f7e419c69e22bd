"""The transport of a host reached through the laptop daemon (jackin_remote/daemon.py).

The agent channel came from the daemon; anything else a command needs (a command run, a
port, rsync's pipe) opens the command's own connection on first use, as without a daemon.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from jackin_remote.transport.base import Channel, Completed, Transport

Runner = Callable[[str, "bytes | None", "float | None"], Awaitable["Completed | None"]]


class HeldTransport(Transport):
    kind = "ssh"

    def __init__(
        self,
        connect: Callable[[], Awaitable[Transport]],
        unix_refused: bool,
        verified_key: str | None,
        runner: Runner,
    ) -> None:
        self._connect = connect
        self._runner = runner
        self._verified_key = verified_key
        self.unix_refused = unix_refused

    def verified_key(self) -> str | None:
        return self._verified_key

    async def run(
        self, command: str, *, input: bytes | None = None, timeout: float | None = None
    ) -> Completed:
        """On the daemon's connection; on the command's own when the daemon cannot."""
        done = await self._runner(command, input, timeout)
        if done is not None:
            return done
        return await (await self._connect()).run(command, input=input, timeout=timeout)

    async def spawn(self, command: str) -> Channel:
        return await (await self._connect()).spawn(command)

    async def open_tcp(self, address: str, port: int) -> tuple[Any, Any]:
        return await (await self._connect()).open_tcp(address, port)

    async def open_unix(self, path: str) -> Channel | None:
        return await (await self._connect()).open_unix(path)

    async def close(self) -> None:
        return None  # the command's own connection, if any, is the pool's to close
