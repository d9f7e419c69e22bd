"""The laptop daemon's pure parts (jackin_remote/daemon.py): a host crosses its socket whole,
a malformed one is refused, and each host definition gets a connection of its own."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jackin_remote import daemon
from jackin_remote.inventory.model import Host, Limits

NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)


@given(
    name=NAMES,
    port=st.none() | st.integers(1, 65535),
    labels=st.lists(NAMES, max_size=3),
    egress=st.lists(st.tuples(st.sampled_from(["allow", "deny"]), NAMES, NAMES), max_size=3),
    memory=st.none() | st.sampled_from(["1g", "512m"]),
)
def test_a_host_crosses_the_socket_whole(
    name: str, port: int | None, labels: list[str], egress: list[tuple[str, str, str]],
    memory: str | None,
) -> None:  # fmt: skip
    host = Host(name=name, address="10.0.0.5", port=port, user="dev", labels=tuple(labels),
                egress=tuple(egress), limits=Limits(memory=memory), host_mounts=("/srv",),
                snapshot_excludes=("node_modules",), source_line=3)  # fmt: skip
    assert daemon.host_from_wire(daemon.host_to_wire(host)) == host


@pytest.mark.parametrize(
    "bad",
    [{}, {"address": "x"}, {"name": "a", "evil": 1}, {"name": "a", "limits": {"rm": 1}}, [],
     {"name": "a", "port": "22", "labels": 5}],
)  # fmt: skip
def test_a_malformed_host_is_refused(bad: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        daemon.host_from_wire(bad)  # type: ignore[arg-type]


def test_each_definition_of_a_name_has_its_own_connection() -> None:
    web = Host(name="web", address="10.0.0.5")
    assert daemon.pool_key(web, None) == daemon.pool_key(Host(name="web", address="10.0.0.5"),
                                                         None)  # fmt: skip
    for other in (dataclasses.replace(web, address="10.0.0.6"), dataclasses.replace(web, port=2),
                  dataclasses.replace(web, user="root"),
                  dataclasses.replace(web, host_key="ssh-ed25519 AAAA")):  # fmt: skip
        assert daemon.pool_key(other, None) != daemon.pool_key(web, None)
    assert daemon.pool_key(web, Host(name="bastion")) != daemon.pool_key(web, None)


def test_a_long_socket_path_is_reached_through_its_directory(tmp_path: Path) -> None:
    short = tmp_path / "d.sock"
    with daemon.unix_address(short) as address:
        assert address == str(short) or address.startswith("/proc/self/fd/")
    deep = tmp_path / ("x" * 120)
    deep.mkdir()
    with daemon.unix_address(deep / "daemon.sock") as address:
        assert address.startswith("/proc/self/fd/") and address.endswith("/daemon.sock")
        assert len(address) < 100


def test_the_daemon_is_off_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    assert daemon.enabled({}) and daemon.enabled({daemon.DAEMON_ENV: "auto"})
    assert not daemon.enabled({daemon.DAEMON_ENV: "off"})
    assert daemon.idle_seconds({}) == daemon.IDLE
    assert daemon.idle_seconds({daemon.IDLE_ENV: "5"}) == 5.0
    from jackin_remote.errors import UsageError

    with pytest.raises(UsageError, match="JACKIN_DAEMON_IDLE"):
        daemon.idle_seconds({daemon.IDLE_ENV: "soon"})


def test_a_connection_is_kept_across_edits_that_change_nothing_of_it() -> None:
    web = Host(name="web", address="10.0.0.5", source_file="a.toml", source_line=3)
    moved = dataclasses.replace(web, source_file="b.toml", source_line=40, labels=("x",))
    assert daemon.pool_key(moved, None) == daemon.pool_key(web, None)
    assert daemon.pool_key(web, None, "trust-1") != daemon.pool_key(web, None, "trust-2")


def test_the_trust_state_follows_known_hosts_ssh_config_and_the_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("JACKIN_HOME", str(tmp_path / "jackin"))
    before = daemon.trust_state({})
    assert daemon.trust_state({}) == before
    assert daemon.trust_state({"SSH_AUTH_SOCK": "/run/agent.sock"}) != before
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "known_hosts").write_text("web ssh-ed25519 AAAA\n")
    assert daemon.trust_state({}) != before


def test_the_daemon_keeps_no_token_of_the_command_that_started_it() -> None:
    env = daemon.daemon_env({"HOME": "/h", "PATH": "/bin", "ANTHROPIC_API_KEY": "sk-ant-x",
                             "GITHUB_TOKEN": "ghp_x", "SSH_AUTH_SOCK": "/s"})  # fmt: skip
    assert env == {"HOME": "/h", "PATH": "/bin", "SSH_AUTH_SOCK": "/s"}


def test_a_daemon_answers_on_its_socket_refuses_what_it_cannot_serve_and_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real `daemon run` in a fresh laptop home (no host needed for these answers)."""
    import asyncio
    import json
    import os
    import selectors
    import socket
    import stat
    import subprocess
    import sys

    env = {**os.environ, "JACKIN_HOME": str(tmp_path / "jh"), daemon.IDLE_ENV: "600"}
    proc = subprocess.Popen([sys.executable, "-m", "jackin_remote", "daemon", "run"], env=env,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as waiting:  # a daemon that never says ready fails
            waiting.register(proc.stdout, selectors.EVENT_READ)
            assert waiting.select(120), "the daemon never said ready"
        assert proc.stdout.readline().startswith("ready ")
        path = tmp_path / "jh" / "state" / "daemon" / "daemon.sock"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700

        def ask(line: bytes) -> dict[str, object]:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.connect(str(path))
                sock.sendall(line)
                answer: dict[str, object] = json.loads(sock.makefile("rb").readline())
                return answer

        assert ask(b"not json\n") == {"ok": False, "why": "unknown request"}
        wire = daemon.host_to_wire(Host(name="web", address="10.0.0.5"))
        other = ask(json.dumps({"op": "agent", "version": "0.0.0+old", "host": wire}).encode()
                    + b"\n")  # fmt: skip
        assert other == {"ok": False, "why": daemon.OTHER_VERSION}
        status = ask(b'{"op": "status"}\n')
        assert status["ok"] is True and status["pid"] == proc.pid and status["hosts"] == []
        mine = str(status["version"])
        local = daemon.host_to_wire(Host(name="local", transport="local"))
        answer = ask(json.dumps({"op": "agent", "version": mine, "host": local}).encode() + b"\n")
        assert answer == {"ok": False, "why": "a local host"}
        broken = ask(json.dumps({"op": "run", "version": mine, "host": {"evil": 1}}).encode()
                     + b"\n")  # fmt: skip
        assert broken == {"ok": False, "why": "a malformed request"}
        monkeypatch.setenv("JACKIN_HOME", env["JACKIN_HOME"])
        assert asyncio.run(daemon.request("stop")) == {"ok": True, "pid": proc.pid}
        assert proc.wait(timeout=60) == 0
        assert not path.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
