"""The resident host agent (agent_host/resident.py): one per root and version, found again by
every command, restarted after a kill, gone once its code is replaced; and its samples."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import agent_host
from agent_host import protocol, resident, sampler
from agent_host.server import Server

CODE = ("import sys; sys.path.insert(0, sys.argv[1]); from agent_host.resident import main; "
        "sys.exit(main(sys.argv[2:]))")  # fmt: skip


def _hello_and_ping(sock: socket.socket) -> tuple[dict, dict]:
    stream = sock.makefile("rwb")
    for request in (protocol.request(1, "hello", protocol.hello_params()),
                    protocol.request(2, "ping", {})):  # fmt: skip
        stream.write(protocol.encode(request))
    stream.flush()
    replies = {}
    while len(replies) < 2:
        message = json.loads(stream.readline())
        replies[message["id"]] = message
    return replies[1]["result"], replies[2]["result"]


@pytest.fixture
def root(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "root")
    os.makedirs(path)
    yield path
    for pid in _residents(path):
        os.kill(pid, signal.SIGKILL)


def _residents(root: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if resident.MARK.encode() in argv and root.encode() in argv:
            found.append(int(entry))
    return found


def test_should_exit_decides_from_connections_code_and_idle_time() -> None:
    assert not resident.should_exit(1, False, 10_000, 5, False)  # a connection holds it
    assert resident.should_exit(0, False, 0, 900, True)  # replaced: leaves at once
    assert not resident.should_exit(0, True, 10, 900, False)  # lingering
    assert not resident.should_exit(0, True, 1000, 900, True)  # a session is active
    assert resident.should_exit(0, True, 1000, 900, False)


def test_one_resident_serves_every_connection_and_a_second_start_is_busy(root: str) -> None:
    said = resident.start(root, "h1", 900)
    assert said.startswith("ready ")
    pid = int(said.split()[1])
    assert resident.start(root, "h1", 900) == "busy"
    first = resident._connect(root, "h1")
    second = resident._connect(root, "h1")
    assert first is not None and second is not None
    hello_one, pong = _hello_and_ping(first)
    hello_two, _ = _hello_and_ping(second)
    assert pong["pong"] is True
    assert hello_one["pid"] == hello_two["pid"] == pid
    assert hello_two["resident"]["connections"] == 2
    assert hello_one["resident"]["socket"] == resident.socket_path(root, "h1")
    assert oct(os.stat(resident.run_dir(root)).st_mode & 0o777) == "0o700"
    first.close()
    second.close()
    # Another version has its own socket and its own process.
    assert resident._connect(root, "h2") is None


def test_a_killed_resident_is_replaced_by_the_next_start(root: str) -> None:
    pid = int(resident.start(root, "h1", 900).split()[1])
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)  # start() made it our child: reaped, its socket is closed
    assert resident._connect(root, "h1") is None  # its socket file is left, nobody answers
    again = resident.start(root, "h1", 900)
    assert again.startswith("ready ")
    sock = resident._connect(root, "h1")
    assert sock is not None
    hello, _ = _hello_and_ping(sock)
    assert hello["pid"] == int(again.split()[1]) != pid
    sock.close()


def test_the_exec_bridge_starts_the_resident_and_relays_both_ways(root: str) -> None:
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from agent_host import resident; "
            "sys.exit(resident.connect(sys.argv[2], 'h1', 900))")  # fmt: skip
    package_parent = str(Path(agent_host.__file__).parent.parent)
    requests = protocol.encode(protocol.request(1, "hello", protocol.hello_params())) + \
        protocol.encode(protocol.request(2, "ping", {}))  # fmt: skip
    done = subprocess.run([sys.executable, "-I", "-c", code, package_parent, root],
                          input=requests, capture_output=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    replies = [json.loads(line) for line in done.stdout.splitlines()]
    assert {reply["id"] for reply in replies} == {1, 2}
    assert _residents(root), "the resident outlives the bridge"
    # The next bridge finds the same resident.
    again = subprocess.run([sys.executable, "-I", "-c", code, package_parent, root],
                           input=requests, capture_output=True, timeout=60)  # fmt: skip
    pids = {json.loads(line).get("result", {}).get("pid") for line in again.stdout.splitlines()}
    assert {p for p in pids if p} == {r["result"]["pid"] for r in replies if r["id"] == 1}


def test_a_resident_whose_code_is_removed_leaves(root: str, tmp_path: Path) -> None:
    copy = tmp_path / "old-agent"
    shutil.copytree(Path(agent_host.__file__).parent, copy / "agent_host")
    proc = subprocess.Popen(
        [sys.executable, "-I", "-c", CODE, str(copy), resident.MARK, "--root", root,
         "--hash", "old", "--linger", "900"], stdout=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith(b"ready ")
    shutil.rmtree(copy)  # what the install of a newer version does
    assert proc.wait(timeout=60) == 0
    assert resident._connect(root, "old") is None
    assert not os.path.exists(resident.socket_path(root, "old"))


def test_a_closed_connection_runs_its_cancel_callbacks() -> None:
    read, write = os.pipe()
    out = open(os.devnull, "wb")  # noqa: SIM115
    server = Server("/nonexistent", {}, out)
    called: list[str] = []
    server.on_close(lambda: called.append("stream closed"))
    os.close(write)
    with open(read, "rb") as inp:
        server.serve(inp)
    assert called == ["stream closed"]
    server.on_close(lambda: called.append("late"))  # after the close: called at once
    assert called == ["stream closed", "late"]
    out.close()


# -- sampler -------------------------------------------------------------------------------------
STAT = "cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 50 0 50 350 50 0 0 0 0 0\n"
STAT_LATER = "cpu  200 0 200 750 150 0 0 0 0 0\n"


def test_host_cpu_is_the_busy_share_between_two_readings() -> None:
    first, second = sampler.cpu_times(STAT), sampler.cpu_times(STAT_LATER)
    assert first == sampler.CpuTimes(200, 1000)
    assert second == sampler.CpuTimes(400, 1300)
    assert sampler.host_cpu_percent(first, second) == pytest.approx(66.7)
    assert sampler.host_cpu_percent(second, first) is None  # a counter that went back
    assert sampler.host_cpu_percent(None, second) is None
    assert sampler.cpu_times("cpu  a b c d") is None
    assert sampler.cpu_times("") is None


def test_memory_and_load_parse_tolerantly() -> None:
    text = "MemTotal:  2048 kB\nMemFree: 1 kB\nMemAvailable: 1024 kB\n"
    assert sampler.memory(text) == {"memory_total_bytes": 2048 * 1024,
                                    "memory_available_bytes": 1024 * 1024}  # fmt: skip
    assert sampler.memory("MemTotal: lots kB") == {"memory_total_bytes": None,
                                                   "memory_available_bytes": None}  # fmt: skip
    assert sampler.load("0.50 1.00 2.00 1/100 42") == [0.5, 1.0, 2.0]
    assert sampler.load("x y z") is None
    assert sampler.load(None) is None


def test_a_round_records_the_host_and_keeps_a_bounded_history(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "stat").write_text(STAT)
    (proc / "loadavg").write_text("0.1 0.2 0.3 1/1 1\n")
    (proc / "meminfo").write_text("MemTotal: 4 kB\nMemAvailable: 2 kB\n")
    watcher = sampler.Sampler(str(tmp_path), proc_root=str(proc))
    watcher._running_targets = lambda: []  # type: ignore[method-assign]
    first = watcher.round(now=1.0)
    assert first["cpu_percent"] is None  # one reading: no change to measure yet
    (proc / "stat").write_text(STAT_LATER)
    second = watcher.round(now=3.0)
    assert second["cpu_percent"] == pytest.approx(66.7)
    assert second["load"] == [0.1, 0.2, 0.3]
    assert second["memory_total_bytes"] == 4096
    assert second["disk_total_bytes"] and second["disk_total_bytes"] > 0
    for tick in range(sampler.HISTORY + 10):
        watcher.round(now=5.0 + tick)
    host, sessions = watcher.history()
    assert len(host) == sampler.HISTORY
    assert sessions == {}


def test_samples_from_an_agent_that_is_not_resident_is_a_clear_error() -> None:
    class Ctx:
        resident = None

    with pytest.raises(protocol.RemoteError, match="not resident"):
        sampler.samples(Ctx(), {})
