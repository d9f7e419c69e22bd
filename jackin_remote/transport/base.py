"""The one small interface every transport implements."""

from __future__ import annotations

import abc
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


class Transport(abc.ABC):
    """Runs POSIX shell command strings on one host."""

    kind: str

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

    @abc.abstractmethod
    async def close(self) -> None: ...
