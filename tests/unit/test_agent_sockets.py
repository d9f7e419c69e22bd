"""Where a host's resident agent listens, as the laptop remembers it (agent/sockets.py): only a
usable path a host reported, only for that agent version, and never after sshd refused."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from agent_host import resident
from jackin_remote.agent import sockets
from jackin_remote.inventory.model import Host

WEB = Host(name="web-1", address="10.0.0.5", port=2222, user="dev")


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JACKIN_HOME", str(tmp_path / "jackin"))


@pytest.mark.parametrize(
    ("path", "ok"),
    [
        ("/home/dev/.jackin/run/agent-0123456789abcdef.sock", True),
        ("run/agent.sock", False),  # relative: sshd would resolve it somewhere else
        ("/" + "a" * 104, False),  # longer than a socket address holds
        ("/tmp/a\nb.sock", False),
        ("/tmp/\x1b[31m.sock", False),
        ("/home/dev/../../etc/x.sock", False),
        ("", False),
        (None, False),
        (["/tmp/x.sock"], False),
    ],
)
def test_only_a_usable_path_is_ever_handed_to_sshd(path: object, ok: bool) -> None:
    assert sockets.usable(path) is ok


def test_a_local_host_needs_no_memory_of_it(tmp_path: Path) -> None:
    local = Host(name="local", transport="local", root=str(tmp_path / "root"))
    assert sockets.known(local, "abc") == resident.socket_path(str(tmp_path / "root"), "abc")
    sockets.remember(local, "abc", "/elsewhere.sock")
    assert not sockets.cache_file().exists()


def test_a_remembered_socket_serves_only_its_version_and_only_until_refused() -> None:
    assert sockets.known(WEB, "v1") is None  # nothing learnt yet: run the command
    sockets.remember(WEB, "v1", "/home/dev/.jackin/run/agent-v1.sock")
    assert sockets.known(WEB, "v1") == "/home/dev/.jackin/run/agent-v1.sock"
    assert sockets.known(WEB, "v2") is None  # an upgrade: that socket is the old agent's
    other = Host(name="web-1", address="10.0.0.6", port=2222, user="dev")
    assert sockets.known(other, "v1") is None  # the name now points at another machine
    sockets.remember(WEB, "v1", "/home/dev/.jackin/run/agent-v1.sock", refused=True)
    assert sockets.known(WEB, "v1") is None and sockets.refused(WEB)
    later = time.time() + sockets.RETRY_REFUSED + 1  # tried again after an hour
    assert sockets.known(WEB, "v1", now=later) == "/home/dev/.jackin/run/agent-v1.sock"
    assert not sockets.refused(WEB, now=later)


def test_what_a_host_reports_or_a_damaged_file_never_becomes_a_path() -> None:
    sockets.remember(WEB, "v1", "relative.sock")  # refused, not recorded
    assert not sockets.cache_file().exists()
    sockets.cache_file().parent.mkdir(parents=True)
    sockets.cache_file().write_text("{not json")
    assert sockets.known(WEB, "v1") is None
    key = next(iter(json.loads(_written())))
    data = {key: {"hash": "v1", "socket": "/tmp/x\n.sock", "refused": False}}
    sockets.cache_file().write_text(json.dumps(data))
    assert sockets.known(WEB, "v1") is None


def _written() -> str:
    sockets.cache_file().unlink()
    sockets.remember(WEB, "v1", "/ok.sock")
    return sockets.cache_file().read_text()


class _Hello:
    def __init__(self, hello: dict[str, object]) -> None:
        self.hello = hello


@pytest.mark.parametrize(
    ("failed", "resident", "refused"),
    [
        (True, {"served": 3}, True),  # it was listening, and the channel still failed
        (True, {"served": 1}, False),  # this command's bridge started it: nobody listened
        (False, {"served": 9}, False),  # no socket channel was tried
        (True, None, False),  # an agent of its own: nothing to conclude
        (True, {"served": "9"}, False),  # the host's claim is not a count
    ],
)
def test_a_refused_socket_channel_is_told_from_nobody_listening(
    failed: bool, resident: object, refused: bool
) -> None:
    from jackin_remote.agent.deploy import StartedAgent

    started = StartedAgent(_Hello({"resident": resident}), False, 0,  # type: ignore[arg-type]
                           direct_failed=failed)  # fmt: skip
    assert started.direct_refused is refused
