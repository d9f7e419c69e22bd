"""The RPC loop: read requests from stdin, run handlers, write replies to stdout.

Requests after `hello` run on a small thread pool, so a slow one (an image build) never blocks a
quick one (a status read): replies may come back out of order and carry the request id.
Python 3.9 compatible.
"""

from __future__ import annotations

import contextlib
import os
import threading
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, BinaryIO, Callable, Dict, List, Optional, Set

from agent_host import AGENT_VERSION, protocol
from agent_host.protocol import Message, RemoteError


class Context:
    """What a handler may use: the agent's root directory and a way to stream events."""

    def __init__(self, server: "Server", request_id: Any) -> None:
        self.root = server.root
        self._server = server
        self.request_id = request_id
        # The resident agent serving this request (agent_host/resident.py), or None when this
        # process serves one controller on its stdio and ends with it.
        self.resident = server.resident

    def notify(self, method: str, params: Message) -> None:
        """Stream an event to the caller. Raises ChannelClosed once nobody is listening."""
        params = dict(params)
        params["request_id"] = self.request_id
        self._server.send(protocol.notification(method, params))

    def streaming(self) -> None:
        """Mark this request as abandonable: when the controller goes away, it is not waited for.

        Anything else (creating a session, say) runs to completion even if the controller
        dies, so a half-made session never exists.
        """
        self._server.abandonable.add(self.request_id)

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from another thread) once the controller goes away: a stream that
        blocks waiting for data is closed, not left behind in a resident agent."""
        self._server.on_close(callback)

    @property
    def cancelled(self) -> bool:
        return self._server.closed.is_set()


class ChannelClosed(Exception):
    """The controller closed the channel: stop streaming."""


Handler = Callable[[Context, Message], Any]


class Server:
    def __init__(
        self,
        root: str,
        handlers: Dict[str, Handler],
        out: BinaryIO,
        agent_hash: Optional[str] = None,
        workers: int = 8,
        resident: Any = None,
    ) -> None:
        self.root = root
        self.resident = resident
        self.handlers = handlers
        self.agent_hash = agent_hash
        self._out = out
        self._write_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers)
        self._greeted = False
        self._futures: Dict[Any, "Future[None]"] = {}
        self.abandonable: Set[Any] = set()
        self.closed = threading.Event()
        self._out_broken = False
        self._close_callbacks: List[Callable[[], None]] = []
        self._callbacks_lock = threading.Lock()

    def on_close(self, callback: Callable[[], None]) -> None:
        with self._callbacks_lock:
            if not self.closed.is_set():
                self._close_callbacks.append(callback)
                return
        _quietly(callback)

    def _run_close_callbacks(self) -> None:
        with self._callbacks_lock:
            callbacks, self._close_callbacks = self._close_callbacks, []
        for callback in callbacks:
            _quietly(callback)

    def send(self, message: Message) -> None:
        data = protocol.encode(message)
        with self._write_lock:
            if self.closed.is_set() and self._out_broken:
                raise ChannelClosed()
            try:
                self._out.write(data)
                self._out.flush()
            except (BrokenPipeError, OSError, ValueError):
                self._out_broken = True
                self.closed.set()
                raise ChannelClosed() from None

    def serve(self, inp: BinaryIO) -> None:
        """Serve until stdin closes, then finish every request that must not be cut short.

        The caller exits the process right after, which ends abandoned streams (logs -f).
        """
        try:
            while True:
                line = inp.readline(protocol.MAX_LINE_BYTES)
                if not line:
                    break
                if line.strip():
                    self._handle_line(line)
        finally:
            with self._callbacks_lock:
                self.closed.set()
            self._run_close_callbacks()
            for request_id, future in list(self._futures.items()):
                if request_id not in self.abandonable:
                    future.exception()  # waits; errors were already reported (or unreachable)
            self._pool.shutdown(wait=False)

    def _handle_line(self, line: bytes) -> None:
        try:
            message = protocol.decode(line)
        except RemoteError as exc:
            self.send(protocol.error(None, exc))
            return
        request_id = message.get("id")
        method = message.get("method")
        params = message.get("params", {})
        if not isinstance(method, str) or not isinstance(params, dict):
            self.send(
                protocol.error(
                    request_id,
                    RemoteError(
                        protocol.E_BAD_REQUEST,
                        "a request needs a string 'method' and object 'params'",
                    ),
                )
            )
            return
        if method == "hello":
            self._reply(request_id, self._hello, params)
            return
        if not self._greeted:
            self.send(
                protocol.error(
                    request_id,
                    RemoteError(protocol.E_PROTOCOL_MISMATCH, "the first request must be 'hello'"),
                )
            )
            return
        handler = self.handlers.get(method)
        if handler is None:
            self.send(
                protocol.error(
                    request_id,
                    RemoteError(
                        protocol.E_UNKNOWN_METHOD,
                        "unknown method %r" % method,
                        {"methods": sorted(self.handlers)},
                    ),
                )
            )
            return
        context = Context(self, request_id)
        future = self._pool.submit(self._reply, request_id, lambda p: handler(context, p), params)
        self._futures[request_id] = future
        future.add_done_callback(lambda _: self._futures.pop(request_id, None))

    def _reply(self, request_id: Any, call: Callable[[Message], Any], params: Message) -> None:
        try:
            value = call(params)
        except ChannelClosed:
            return
        except RemoteError as exc:
            message = protocol.error(request_id, exc)
        except Exception as exc:  # a bug (or a full disk): report it typed, keep serving
            full = disk_full(exc)
            message = (
                protocol.error(request_id, full)
                if full
                else protocol.error(
                    request_id,
                    RemoteError(
                        protocol.E_INTERNAL,
                        "%s: %s" % (type(exc).__name__, exc),
                        {"traceback": traceback.format_exc(limit=8)},
                    ),
                )
            )
        else:
            message = protocol.result(request_id, value)
        if request_id is not None:
            # If the controller is gone, the work itself is still done and recorded.
            with contextlib.suppress(ChannelClosed):
                self.send(message)

    def _hello(self, params: Message) -> Message:
        theirs = params.get("protocol")
        if theirs != protocol.PROTOCOL_VERSION:
            raise RemoteError(
                protocol.E_PROTOCOL_MISMATCH,
                "controller speaks protocol %r, this agent speaks %d"
                % (theirs, protocol.PROTOCOL_VERSION),
            )
        self._greeted = True
        return {
            "protocol": protocol.PROTOCOL_VERSION,
            "agent_version": AGENT_VERSION,
            "agent_hash": self.agent_hash,
            "pid": os.getpid(),
            "methods": sorted(self.handlers),
            "resident": None if self.resident is None else self.resident.info(),
        }


def _quietly(callback: Callable[[], None]) -> None:
    with contextlib.suppress(Exception):  # closing what is closed, say: nobody to tell
        callback()


def disk_full(exc: BaseException) -> Optional[RemoteError]:
    """A full disk (or quota) under the host root, however it surfaced (an OSError, or sqlite's
    "disk I/O error" / "database or disk is full"), as one clear error; None for anything else."""
    import errno
    import sqlite3

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        detail = exc.strerror or str(exc)
    elif isinstance(exc, sqlite3.OperationalError) and (
        "disk I/O error" in str(exc) or "database or disk is full" in str(exc)
    ):
        detail = "the state database cannot write: %s" % exc
    else:
        return None
    return RemoteError(
        protocol.E_FAILED,
        "the host's disk is full (%s): the request did not complete" % detail,
        {
            "hint": "free space on the host (`jackin-remote du` shows what jackin holds there, "
            "`jackin-remote gc` what it left behind), then try again"
        },
    )
