"""The docker probe speaks the engine's HTTP API on its unix socket (no SDK import)."""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from agent_host.facts import docker_facts, kvm_facts


class _Engine(socketserver.UnixStreamServer):
    reply = b""  # for any path not in `replies`
    replies: ClassVar[dict[str, bytes]] = {}


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        path = self.rfile.readline().split()[1].decode()  # GET /version HTTP/1.1
        while self.rfile.readline() not in (b"\r\n", b""):
            pass
        server: _Engine = self.server  # type: ignore[assignment]
        self.wfile.write(server.replies.get(path, server.reply))


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
    info = (b'{"Runtimes": {"runc": {"path": "runc"}, "runsc": {"path": "/usr/bin/runsc", '
            b'"runtimeArgs": ["--network=none"]}, "odd": "not an object"}}')  # fmt: skip
    engine.replies = {"/info": _http("200 OK", info)}
    facts = docker_facts(str(tmp_path / "docker.sock"))
    runtimes = {
        "runc": {"path": "runc", "runtimeArgs": []},
        "runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none"]},
    }
    assert facts == {"installed": True, "version": "27.3.1", "api_version": "1.47",
                     "access": True, "error": None, "runtimes": runtimes,
                     "runtimes_error": None}  # fmt: skip


def test_runtimes_the_engine_would_not_list_say_why(engine: _Engine, tmp_path: Path) -> None:
    engine.reply = _http("200 OK", b'{"Version": "27.3.1", "ApiVersion": "1.47"}')
    engine.replies = {"/info": _http("403 Forbidden", b"{}")}
    facts = docker_facts(str(tmp_path / "docker.sock"))
    assert facts["access"] is True and facts["runtimes"] is None
    assert "403" in facts["runtimes_error"]


def test_kvm_facts_say_whether_the_device_exists(tmp_path: Path) -> None:
    assert kvm_facts(str(tmp_path / "kvm")) == {"present": False, "access": False}
    (tmp_path / "kvm").write_text("")
    assert kvm_facts(str(tmp_path / "kvm"))["present"] is True


def test_an_engine_error_means_no_access(engine: _Engine, tmp_path: Path) -> None:
    engine.reply = _http("500 Internal Server Error", b"{}")
    facts = docker_facts(str(tmp_path / "docker.sock"))
    assert facts["access"] is False and "500" in facts["error"]


def test_no_socket_means_no_access(tmp_path: Path) -> None:
    facts = docker_facts(str(tmp_path / "missing.sock"))
    assert facts["access"] is False and facts["version"] is None
