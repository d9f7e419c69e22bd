"""The docker probe speaks the engine's HTTP API on its unix socket (no SDK import)."""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_host.facts import docker_facts


class _Engine(socketserver.UnixStreamServer):
    reply = b""


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.rfile.readline()  # GET /version HTTP/1.1
        while self.rfile.readline() not in (b"\r\n", b""):
            pass
        self.wfile.write(self.server.reply)  # type: ignore[attr-defined]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[_Engine]:
    server = _Engine(str(tmp_path / "docker.sock"), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _http(status: str, body: bytes) -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    return head.encode() + body


def test_version_and_access_from_the_engine(engine: _Engine, tmp_path: Path) -> None:
    engine.reply = _http("200 OK", b'{"Version": "27.3.1", "ApiVersion": "1.47"}')
    facts = docker_facts(str(tmp_path / "docker.sock"))
    assert facts == {"installed": True, "version": "27.3.1", "api_version": "1.47",
                     "access": True, "error": None}  # fmt: skip


def test_an_engine_error_means_no_access(engine: _Engine, tmp_path: Path) -> None:
    engine.reply = _http("500 Internal Server Error", b"{}")
    facts = docker_facts(str(tmp_path / "docker.sock"))
    assert facts["access"] is False and "500" in facts["error"]


def test_no_socket_means_no_access(tmp_path: Path) -> None:
    facts = docker_facts(str(tmp_path / "missing.sock"))
    assert facts["access"] is False and facts["version"] is None
