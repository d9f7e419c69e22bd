"""The one small interface every transport implements."""

from __future__ import annotations

import abc
import contextlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Completed:
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def stderr_text(self) -> str:
        return self.stderr.decode(errors="replace").strip()


class Channel(abc.ABC):
    """A running command with piped stdio: how the controller talks to the host agent."""

    @abc.abstractmethod
    def write(self, data: bytes) -> None: ...

    @abc.abstractmethod
    async def drain(self) -> None: ...

    @abc.abstractmethod
    async def readline(self) -> bytes:
        """One line including b"\\n", or b"" at end of stream."""

    @abc.abstractmethod
    def close_stdin(self) -> None: ...

    @abc.abstractmethod
    async def wait(self) -> int:
        """Wait for the command to exit; its exit status (-1 if unknown)."""

    @abc.abstractmethod
    async def read_stderr(self) -> bytes: ...

    @abc.abstractmethod
    def kill(self) -> None: ...


class StreamChannel(Channel):
    """A channel over a connected stream (reader, writer): the resident agent's socket, opened
    directly (agent_host/resident.py). No process behind it: it "exits" when the stream ends,
    0 when we closed our side first, -1 when the agent went away."""

    def __init__(self, reader: Any, writer: Any, max_line: int) -> None:
        self._reader = reader
        self._writer = writer
        self._max_line = max_line
        self._closed_ours = False

    def write(self, data: bytes) -> None:
        with contextlib.suppress(Exception):  # a dead peer is noticed by the reader (EOF)
            self._writer.write(data)

    async def drain(self) -> None:
        with contextlib.suppress(Exception):
            await self._writer.drain()

    async def readline(self) -> bytes:
        # A line longer than a receive window may come in pieces: join them.
        parts: list[bytes] = []
        size = 0
        while True:
            try:
                piece = await self._reader.readline()
            except Exception:  # the stream broke: end of stream for the caller
                return b""
            parts.append(piece)
            size += len(piece)
            if not piece or piece.endswith(b"\n") or size > self._max_line:
                return b"".join(parts)

    def close_stdin(self) -> None:
        self._closed_ours = True
        with contextlib.suppress(Exception):
            self._writer.write_eof()

    async def wait(self) -> int:
        self.kill()
        return 0 if self._closed_ours else -1

    async def read_stderr(self) -> bytes:
        return b""

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()


class Transport(abc.ABC):
    """Runs POSIX shell command strings on one host."""

    kind: str
    unix_refused = False  # the host refused a channel to a Unix socket (sshd's setting)

    @abc.abstractmethod
    async def run(
        self, command: str, *, input: bytes | None = None, timeout: float | None = None
    ) -> Completed: ...

    @abc.abstractmethod
    async def spawn(self, command: str) -> Channel: ...

    @abc.abstractmethod
    async def open_tcp(self, address: str, port: int) -> tuple[Any, Any]:
        """A TCP connection made from the host to address:port: (reader, writer), with the
        asyncio stream methods read, write, drain, write_eof and close."""

    def verified_key(self) -> str | None:
        """ "ssh-ed25519 SHA256:..." of the host key this transport's connection verified;
        None where nothing was verified (the local host)."""
        return None

    async def open_unix(self, path: str) -> Channel | None:
        """A channel to the Unix socket `path` on the host, or None when this transport cannot
        open one (or the host refused): the caller then runs a command instead."""
        return None

    @abc.abstractmethod
    async def close(self) -> None: ...
