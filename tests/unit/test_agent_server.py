"""The host agent's RPC loop, driven in-process over pipes."""

from __future__ import annotations

import io
import json
import threading
from typing import Any

from agent_host import protocol
from agent_host.protocol import RemoteError
from agent_host.server import Context, Server


def serve(lines: list[dict[str, Any] | bytes], handlers: dict[str, Any]) -> list[dict[str, Any]]:
    data = b"".join(line if isinstance(line, bytes) else protocol.encode(line) for line in lines)
    out = io.BytesIO()
    Server("/tmp", handlers, out).serve(io.BytesIO(data))
    return [json.loads(line) for line in out.getvalue().splitlines()]


HELLO = protocol.request(1, "hello", protocol.hello_params())
HELLO_LINE = protocol.encode(HELLO)


def test_hello_reports_protocol_and_methods() -> None:
    (reply,) = serve([HELLO], {"x": lambda ctx, p: 1})
    assert reply["result"]["protocol"] == protocol.PROTOCOL_VERSION
    assert reply["result"]["methods"] == ["x"]


def test_a_protocol_mismatch_is_a_typed_error() -> None:
    (reply,) = serve([protocol.request(1, "hello", {"protocol": 99})], {})
    assert reply["error"]["code"] == protocol.E_PROTOCOL_MISMATCH


def test_requests_before_hello_are_refused() -> None:
    (reply,) = serve([protocol.request(1, "x")], {"x": lambda ctx, p: 1})
    assert reply["error"]["code"] == protocol.E_PROTOCOL_MISMATCH


def test_pipelined_requests_answer_out_of_order_by_id() -> None:
    release = threading.Event()

    def slow(ctx: Context, params: dict[str, Any]) -> str:
        release.wait(60)  # a bound, not a timing: `fast` sets it
        return "slow"

    def fast(ctx: Context, params: dict[str, Any]) -> str:
        release.set()
        return "fast"

    replies = serve(
        [HELLO, protocol.request(2, "slow"), protocol.request(3, "fast")],
        {"slow": slow, "fast": fast},
    )
    assert [r["id"] for r in replies[1:]] == [3, 2]
    assert {r["id"]: r["result"] for r in replies[1:]} == {2: "slow", 3: "fast"}


def test_errors_are_typed_and_the_loop_keeps_serving() -> None:
    def boom(ctx: Context, params: dict[str, Any]) -> None:
        raise ValueError("bug")

    def missing(ctx: Context, params: dict[str, Any]) -> None:
        raise RemoteError(protocol.E_NOT_FOUND, "nope")

    replies = serve(
        [HELLO, b"not json\n", protocol.request(2, "boom"), protocol.request(3, "missing"),
         protocol.request(4, "nosuch"), protocol.request(5, "ok")],
        {"boom": boom, "missing": missing, "ok": lambda ctx, p: "fine"},
    )  # fmt: skip
    by_id = {r.get("id"): r for r in replies}
    assert by_id[None]["error"]["code"] == protocol.E_BAD_REQUEST
    assert by_id[2]["error"]["code"] == protocol.E_INTERNAL
    assert "ValueError: bug" in by_id[2]["error"]["message"]
    assert by_id[3]["error"]["code"] == protocol.E_NOT_FOUND
    assert by_id[4]["error"]["code"] == protocol.E_UNKNOWN_METHOD
    assert by_id[5]["result"] == "fine"


def test_notifications_carry_the_request_id() -> None:
    def chatty(ctx: Context, params: dict[str, Any]) -> int:
        ctx.notify("progress", {"line": "one"})
        return 1

    replies = serve([HELLO, protocol.request(7, "chatty")], {"chatty": chatty})
    note = next(r for r in replies if "method" in r)
    assert note == {"method": "progress", "params": {"line": "one", "request_id": 7}}


class _HangUp(io.BytesIO):
    """The controller's side of the pipe: `hung_up` is set once the agent has read EOF."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.hung_up = threading.Event()

    def readline(self, size: int | None = -1) -> bytes:
        line = super().readline(size)
        if not line:
            self.hung_up.set()
        return line


def test_work_in_flight_finishes_after_the_controller_hangs_up() -> None:
    done = []
    inp = _HangUp(HELLO_LINE + protocol.encode(protocol.request(2, "create")))

    def create(ctx: Context, params: dict[str, Any]) -> str:
        # Finishes only after the hang-up, whatever the scheduling: no sleep to race it.
        assert inp.hung_up.wait(60)
        done.append(True)
        return "made"

    out = io.BytesIO()
    Server("/tmp", {"create": create}, out).serve(inp)
    assert done == [True]
