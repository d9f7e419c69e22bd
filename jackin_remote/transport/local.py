"""Local transport: the laptop is the host. Same commands as over SSH, run by /bin/sh."""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

from agent_host.protocol import MAX_LINE_BYTES
from jackin_remote.transport.base import Channel, Completed, StreamChannel, Transport


class LocalChannel(Channel):
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process
        assert process.stdin and process.stdout and process.stderr
        self._stdin = process.stdin
        self._stdout = process.stdout
        self._stderr = process.stderr

    def write(self, data: bytes) -> None:
        # A dead peer is noticed by the reader (EOF), which fails every pending call.
        with contextlib.suppress(ConnectionError, RuntimeError):
            self._stdin.write(data)

    async def drain(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self._stdin.drain()

    async def readline(self) -> bytes:
        try:
            return await self._stdout.readline()
        except (ConnectionError, asyncio.IncompleteReadError):
            return b""

    def close_stdin(self) -> None:
        with contextlib.suppress(Exception):
            self._stdin.close()

    async def wait(self) -> int:
        return await self._process.wait()

    async def read_stderr(self) -> bytes:
        return await self._stderr.read()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._process.kill()


class LocalTransport(Transport):
    kind = "local"

    async def run(
        self, command: str, *, input: bytes | None = None, timeout: float | None = None
    ) -> Completed:
        process = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", command,
            stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(process.communicate(input), timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
        return Completed(process.returncode or 0, out, err)

    async def open_tcp(self, address: str, port: int) -> tuple[Any, Any]:
        return await asyncio.open_connection(address, port)

    async def spawn(self, command: str) -> Channel:
        process = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=MAX_LINE_BYTES,
        )  # fmt: skip
        return LocalChannel(process)

    async def open_unix(self, path: str) -> Channel | None:
        """Through the socket's directory: the path may be longer than a socket address holds."""
        directory, name = os.path.split(path)
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            return None
        try:
            reader, writer = await asyncio.open_unix_connection(
                f"/proc/self/fd/{fd}/{name}", limit=MAX_LINE_BYTES
            )
        except OSError:
            return None
        finally:
            os.close(fd)
        return StreamChannel(reader, writer, MAX_LINE_BYTES)

    async def close(self) -> None:
        return None
