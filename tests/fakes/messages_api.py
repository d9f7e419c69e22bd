"""A tiny Anthropic Messages API that replies from a script: lets the real Claude Code CLI run
offline in tests (ANTHROPIC_BASE_URL=http://<addr>:<port>).

The reply to a main-loop request is chosen by how many `tool_result` blocks the conversation
already holds, not by call order: Claude Code makes side calls (title/topic generation, quota
checks) whose number and order change between releases. A request that offers no tools, or not
the tool a scripted turn needs, is a side call and gets a short text reply.

    script = [[tool_use("Write", {"file_path": "/workspace/hello.txt", "content": "hi\\n"})],
              [text("done")]]
    with MessagesAPI(script) as api:      # binds 0.0.0.0:<free port>
        ... ANTHROPIC_BASE_URL=api.url_for(gateway) ...
        api.tool_results()                # every tool_result the CLI sent back

Also runnable by hand: `python tests/fakes/messages_api.py --port 8099` (a Write-then-done script).
"""

from __future__ import annotations

import argparse
import itertools
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Block = dict[str, Any]
Turn = list[Block]

SIDE_CALL_TEXT = "Scripted session"
_ids = itertools.count(1)


def text(value: str) -> Block:
    return {"type": "text", "text": value}


def tool_use(name: str, tool_input: dict[str, Any]) -> Block:
    return {"type": "tool_use", "id": f"toolu_fake{next(_ids):06d}", "name": name,
            "input": tool_input}  # fmt: skip


@dataclass
class Request:
    """One request as the server saw it (for assertions)."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    reply_kind: str = ""  # "script:N", "side", "count_tokens", "probe", "unknown"
    at: float = field(default_factory=time.time)


def count_tool_results(body: Any) -> int:
    """How many tool_result blocks the conversation holds: the script's position."""
    if not isinstance(body, dict):
        return 0
    total = 0
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            total += sum(
                1 for b in content if isinstance(b, dict) and b.get("type") == "tool_result"
            )
    return total


def offered_tools(body: Any) -> set[str]:
    if not isinstance(body, dict):
        return set()
    return {t.get("name", "") for t in body.get("tools") or [] if isinstance(t, dict)}


def choose_turn(script: list[Turn], body: Any) -> tuple[str, Turn]:
    """The scripted turn for this request, or a short text for a side call."""
    tools = offered_tools(body)
    position = count_tool_results(body)
    if not tools or position >= len(script):
        return "side", [text(SIDE_CALL_TEXT)]
    turn = script[position]
    needed = {b["name"] for b in turn if b["type"] == "tool_use"}
    if not needed <= tools:
        return "side", [text(SIDE_CALL_TEXT)]
    # Fresh tool ids each time: a retried request must not reuse an id already answered.
    fresh = [dict(b, id=f"toolu_fake{next(_ids):06d}") if b["type"] == "tool_use" else b
             for b in turn]  # fmt: skip
    return f"script:{position}", fresh


def _usage(body: Any, output_tokens: int) -> dict[str, int]:
    size = len(json.dumps(body)) if body is not None else 0
    return {"input_tokens": max(1, size // 4), "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}  # fmt: skip


def _stop_reason(turn: Turn) -> str:
    return "tool_use" if any(b["type"] == "tool_use" for b in turn) else "end_turn"


def message_json(turn: Turn, body: Any) -> dict[str, Any]:
    return {
        "id": f"msg_fake{next(_ids):06d}",
        "type": "message",
        "role": "assistant",
        "model": (body or {}).get("model", "claude-fake"),
        "content": turn,
        "stop_reason": _stop_reason(turn),
        "stop_sequence": None,
        "usage": _usage(body, 12),
    }


def sse_events(turn: Turn, body: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """The event sequence of a streamed reply, as the real API sends it."""
    start = message_json([], body)
    start["stop_reason"] = None
    start["usage"] = _usage(body, 1)
    yield "message_start", {"type": "message_start", "message": start}
    yield "ping", {"type": "ping"}
    for index, block in enumerate(turn):
        if block["type"] == "text":
            head: Block = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": block["text"]}]
        else:
            head = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            raw = json.dumps(block["input"])
            # The JSON in two pieces: a client must concatenate partial_json.
            deltas = [{"type": "input_json_delta", "partial_json": part}
                      for part in (raw[: len(raw) // 2], raw[len(raw) // 2 :])]  # fmt: skip
        yield "content_block_start", {"type": "content_block_start", "index": index,
                                      "content_block": head}  # fmt: skip
        for delta in deltas:
            yield "content_block_delta", {"type": "content_block_delta", "index": index,
                                          "delta": delta}  # fmt: skip
        yield "content_block_stop", {"type": "content_block_stop", "index": index}
    yield "message_delta", {"type": "message_delta",
                            "delta": {"stop_reason": _stop_reason(turn), "stop_sequence": None},
                            "usage": {"output_tokens": 12}}  # fmt: skip
    yield "message_stop", {"type": "message_stop"}


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: requests are recorded
        return

    def _record(self, body: Any) -> Request:
        request = Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                          body)  # fmt: skip
        with self.server.lock:
            self.server.requests.append(request)
        return request

    def _send_json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("request-id", f"req_fake{next(_ids):06d}")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _read_body(self) -> Any:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return {"_unparsed": raw.decode(errors="replace")}

    def do_HEAD(self) -> None:
        self._record(None).reply_kind = "probe"
        self._send_json(200, {"ok": True})

    def do_GET(self) -> None:
        request = self._record(None)
        if self.path.split("?")[0] in ("/", "/health"):
            request.reply_kind = "probe"
            self._send_json(200, {"ok": True})
            return
        request.reply_kind = "unknown"
        self._send_json(404, _error("not_found_error", f"fake API: no GET {self.path}"))

    def do_POST(self) -> None:
        body = self._read_body()
        request = self._record(body)
        path = self.path.split("?")[0]
        if path == "/v1/messages/count_tokens":
            request.reply_kind = "count_tokens"
            self._send_json(200, {"input_tokens": _usage(body, 0)["input_tokens"]})
            return
        if path != "/v1/messages":
            request.reply_kind = "unknown"
            self._send_json(404, _error("not_found_error", f"fake API: no POST {self.path}"))
            return
        with self.server.lock:
            kind, turn = choose_turn(self.server.script, body)
        request.reply_kind = kind
        if isinstance(body, dict) and body.get("stream"):
            self._stream(turn, body)
        else:
            self._send_json(200, message_json(turn, body))

    def _stream(self, turn: Turn, body: Any) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("request-id", f"req_fake{next(_ids):06d}")
        self.send_header("connection", "close")
        self.end_headers()
        for event, data in sse_events(turn, body):
            self.wfile.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
            self.wfile.flush()
        self.close_connection = True


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], script: list[Turn]) -> None:
        super().__init__(address, _Handler)
        self.script = script
        self.requests: list[Request] = []
        self.lock = threading.Lock()


class MessagesAPI:
    """The scripted server on a background thread. Use as a context manager."""

    def __init__(self, script: list[Turn], host: str = "0.0.0.0", port: int = 0) -> None:
        self._server = _Server((host, port), script)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url_for(self, address: str) -> str:
        return f"http://{address}:{self.port}"

    @property
    def requests(self) -> list[Request]:
        with self._server.lock:
            return list(self._server.requests)

    def main_calls(self) -> list[Request]:
        return [r for r in self.requests if r.reply_kind.startswith("script:")]

    def tool_results(self) -> list[dict[str, Any]]:
        """Every distinct tool_result block the client sent (by tool_use_id)."""
        seen: dict[str, dict[str, Any]] = {}
        for request in self.requests:
            for message in (request.body or {}).get("messages") or []:
                content = message.get("content")
                if isinstance(content, list):
                    for block in content:
                        if isinstance(block, dict) and block.get("type") == "tool_result":
                            seen[str(block.get("tool_use_id"))] = block
        return list(seen.values())

    def start(self) -> MessagesAPI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MessagesAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def write_then_done(path: str, content: str) -> list[Turn]:
    """The standard script: Write one file, then say done once the tool result arrives."""
    write = tool_use("Write", {"file_path": path, "content": content})
    return [[text("Creating the file."), write], [text("done")]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--file", default="/workspace/hello.txt")
    parser.add_argument("--content", default="hello from the scripted agent\n")
    args = parser.parse_args()
    api = MessagesAPI(write_then_done(args.file, args.content), port=args.port).start()
    print(f"listening on 0.0.0.0:{api.port}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        api.stop()


if __name__ == "__main__":
    main()
