"""The RPC client against a real process that answers like a compromised (or buggy) host agent.

The reader must survive anything one message can do: a listener that raises (a rendering bug
fed by a host's text), notifications with nonsense request ids or params, replies with odd ids
or a bare string as error. Before, any of these killed the reader and every call waited for ever.
"""

from __future__ import annotations

import asyncio
import shlex
import sys

import pytest

from agent_host.protocol import Message
from jackin_remote.agent.client import AgentClient
from jackin_remote.errors import AgentCallError
from jackin_remote.transport.local import LocalTransport

# The scripted agent: answers hello, then for "stream" sends hostile notifications and odd
# replies before the real result; "fail" gets an error that is a bare string.
SCRIPT = r"""
import json, sys
def send(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()
for line in sys.stdin:
    request = json.loads(line)
    rid, method = request["id"], request["method"]
    if method == "hello":
        send({"id": rid, "result": {"agent_version": "hostile"}})
    elif method == "stream":
        send({"method": "progress", "params": {"request_id": rid, "line": "boom"}})
        send({"method": "progress", "params": {"request_id": "zz", "line": "x"}})
        send({"method": "progress", "params": {"request_id": [rid], "line": "x"}})
        send({"method": "progress", "params": ["not", "an", "object"]})
        send({"method": "progress", "params": {"request_id": rid, "line": "kept"}})
        send({"id": [rid], "result": "an unhashable id"})
        send({"id": 99999, "result": "nobody asked"})
        sys.stdout.write("not json at all\n")
        send({"id": rid, "result": {"done": True}})
    elif method == "fail":
        send({"id": rid, "error": "[/red] a bare string"})
"""


async def test_a_raising_listener_and_malformed_messages_never_kill_the_reader() -> None:
    transport = LocalTransport()
    channel = await transport.spawn(f"{shlex.quote(sys.executable)} -c {shlex.quote(SCRIPT)}")
    client = AgentClient(channel)
    seen: list[str] = []

    def listener(_method: str, params: Message) -> None:
        seen.append(str(params["line"]))
        if params["line"] == "boom":
            raise ValueError("a listener bug, e.g. rich markup in a host's text")

    try:
        await client.start()
        # The guard only turns a dead reader (a hang) into a failure; nothing races it.
        result = await asyncio.wait_for(client.call("stream", on_event=listener), 120)
        assert result == {"done": True}
        assert seen == ["boom", "kept"]
        assert any(isinstance(e, ValueError) for e in client.listener_errors)
        with pytest.raises(AgentCallError, match=r"\[/red\] a bare string"):
            await asyncio.wait_for(client.call("fail"), 120)
    finally:
        await client.close()
        await transport.close()
