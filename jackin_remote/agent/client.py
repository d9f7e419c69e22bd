"""RPC client for the host agent: pipelined requests over one channel, replies matched by id."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from typing import Any

from agent_host import protocol
from agent_host.protocol import Message, RemoteError
from jackin_remote.errors import AgentCallError
from jackin_remote.transport.base import Channel

EventHandler = Callable[[str, Message], None]


class AgentClosed(Exception):
    """The agent's channel ended; `returncode` and `stderr` say why if known."""

    def __init__(self, returncode: int | None, stderr: str) -> None:
        super().__init__(stderr or f"agent exited ({returncode})")
        self.returncode = returncode
        self.stderr = stderr


MAX_RECORDED = 20  # listener failures kept for inspection; more are counted, not kept


class AgentClient:
    """Error replies are mapped here, once, to AgentCallError (a JackinError naming the host):
    callers never see the wire's error objects."""

    def __init__(self, channel: Channel, host: str | None = None) -> None:
        self._channel = channel
        self.host = host
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._listeners: dict[int, EventHandler] = {}
        self._reader: asyncio.Task[None] | None = None
        self._closed: AgentClosed | None = None
        self.hello: Message = {}
        # Exceptions raised by event listeners or by handling one odd message: recorded, never
        # allowed to end the reader (a dead reader leaves every pending call waiting for ever).
        self.listener_errors: list[BaseException] = []
        self.dropped_messages = 0

    async def start(self) -> Message:
        """Start reading replies and say hello; returns the agent's hello."""
        self._reader = asyncio.create_task(self._read_loop())
        self.hello = await self.call("hello", protocol.hello_params())
        return self.hello

    async def call(
        self, method: str, params: Message | None = None, *, on_event: EventHandler | None = None
    ) -> Any:
        if self._closed is not None:
            raise self._closed
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        if on_event is not None:
            self._listeners[request_id] = on_event
        try:
            self._channel.write(protocol.encode(protocol.request(request_id, method, params)))
            await self._channel.drain()
            return await future
        finally:
            self._pending.pop(request_id, None)
            self._listeners.pop(request_id, None)

    async def _read_loop(self) -> None:
        try:
            while True:
                line = await self._channel.readline()
                if not line:
                    break
                try:
                    message = protocol.decode(line)
                except RemoteError:
                    continue  # noise on the channel must not kill the session
                try:
                    self._dispatch(message)
                except Exception as exc:  # a malformed message: drop it, keep reading
                    self._record(exc)
                    self.dropped_messages += 1
            returncode = await self._channel.wait()
            stderr = (await self._channel.read_stderr()).decode(errors="replace").strip()
            self._closed = AgentClosed(returncode, stderr)
        finally:
            # However the reader ends, no caller may be left waiting on a reply.
            if self._closed is None:
                self._closed = AgentClosed(None, "the connection to the host agent was lost")
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(self._closed)

    def _record(self, exc: BaseException) -> None:
        if len(self.listener_errors) < MAX_RECORDED:
            self.listener_errors.append(exc)

    def _dispatch(self, message: Message) -> None:
        request_id = message.get("id")
        if request_id is None:
            params = message.get("params")
            if not isinstance(params, dict):
                return
            listener = self._listeners.get(_int(params.get("request_id")))
            if listener is not None:
                try:
                    listener(str(message.get("method")), params)
                except Exception as exc:  # the caller's rendering bug must not stop the replies
                    self._record(exc)
            return
        future = self._pending.get(request_id)
        if future is None or future.done():
            return
        if "error" in message:
            err = message["error"]
            err = err if isinstance(err, dict) else {"code": "error", "message": err}
            code = err.get("code")
            future.set_exception(
                AgentCallError(
                    self.host,
                    code
                    if isinstance(code, str) and code in protocol.ERROR_CODES
                    else protocol.E_INTERNAL,
                    str(err.get("message")),
                    err.get("data"),
                )
            )
        else:
            future.set_result(message.get("result"))

    async def close(self) -> None:
        self._channel.close_stdin()
        if self._reader is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._reader), 2.0)
            except (TimeoutError, asyncio.CancelledError):
                self._channel.kill()
                self._reader.cancel()
                with contextlib.suppress(BaseException):
                    await self._reader


def _int(value: Any) -> int:
    """A request id from the wire, 0 (no listener) when it is not one."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
