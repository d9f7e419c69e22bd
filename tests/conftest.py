"""Shared fixtures: an isolated laptop (JACKIN_HOME, HOME), the CLI as a subprocess, the fleet."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import fleet as fleet_mod

# Hosts fleet-1..3 are shared and never disturbed; fleet-4 is for tests that stop, pause or rekey
# a host. Those are marked `disruptive` and hold a lock file while they run, so they never
# overlap, whichever pytest-xdist worker runs them.
FLEET_SIZE = 4
STABLE_HOSTS = ("fleet-1", "fleet-2", "fleet-3")
DISRUPTIVE_HOST = "fleet-4"


@dataclass
class CLI:
    env: dict[str, str]
    cwd: Path

    def run(self, *args: str, check: bool = False, timeout: float = 600,
            input: str | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
        proc = subprocess.run(
            [sys.executable, "-m", "jackin_remote", *args],
            env=self.env, cwd=self.cwd, capture_output=True, text=True, timeout=timeout,
            input=input, stdin=None if input is not None else subprocess.DEVNULL,
        )  # fmt: skip
        if check and proc.returncode != 0:
            raise AssertionError(
                f"jackin-remote {' '.join(args)} exited {proc.returncode}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    def json(self, *args: str, ok_codes: tuple[int, ...] = (0,), **kw: Any) -> dict[str, Any]:
        proc = self.run(*args, "--json", **kw)
        assert proc.returncode in ok_codes, (proc.returncode, proc.stdout, proc.stderr)
        data: dict[str, Any] = json.loads(proc.stdout)
        assert data["schema_version"] == "v1"
        return data


@pytest.fixture
def laptop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh laptop: jackin's own files and ~ both under tmp, in this process and children."""
    home = tmp_path / "laptop"
    (home / "home").mkdir(parents=True)
    monkeypatch.setenv("JACKIN_HOME", str(home / "jackin"))
    monkeypatch.setenv("HOME", str(home / "home"))
    monkeypatch.delenv("JACKIN_INVENTORY", raising=False)
    return home


@pytest.fixture
def cli(laptop: Path, tmp_path: Path) -> CLI:
    env = dict(os.environ)
    # pytest-xdist workers set COLUMNS=80 and LINES=24: the CLI's width must not depend on how
    # the tests are run. A test that wants a width sets COLUMNS itself.
    for name in ("COLUMNS", "LINES"):
        env.pop(name, None)
    return CLI(env=env, cwd=tmp_path)


@pytest.fixture
def local_inventory(tmp_path: Path) -> Path:
    """An inventory whose `local` host keeps its root under tmp."""
    inv = tmp_path / "inventory"
    inv.mkdir()
    root = tmp_path / "host-root"
    (inv / "local.toml").write_text(f'[hosts.local]\ntransport = "local"\nroot = "{root}"\n')
    return inv


@contextlib.contextmanager
def _disruption_lock() -> Iterator[None]:
    """Held while fleet-4 is disturbed (stopped, paused, rekeyed), and while the fleet's state is
    read: so nobody records a disturbed host's temporary key or starts it under a test."""
    lock_path = fleet_mod.ROOT / ".fleet" / "disruptive.lock"
    lock_path.parent.mkdir(exist_ok=True)
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="session")
def fleet() -> fleet_mod.FleetInfo:
    with _disruption_lock():
        return fleet_mod.fleet_up(FLEET_SIZE)


@pytest.fixture
def fleet_inventory(
    fleet: fleet_mod.FleetInfo, local_inventory: Path, request: pytest.FixtureRequest
) -> Path:
    """The fleet's hosts plus a local host with a tmp root, in one directory.

    fleet-4 only for a `disruptive` test: another test may have it stopped or rekeyed at any
    moment, and a `ls` across all hosts would then report it (exit 3) in a test that never
    touched it."""
    disruptive = request.node.get_closest_marker("disruptive") is not None
    hosts = [h for h in fleet.hosts if disruptive or h.name != DISRUPTIVE_HOST]
    blocks = [
        f'[hosts.{h.name}]\naddress = "{fleet_mod.ADDRESS}"\nport = {h.port}\n'
        f'user = "{fleet_mod.USER}"\nidentity_file = "{fleet.identity_file}"\n'
        f'host_key = "{h.host_key}"\nlabels = ["fleet"]\n'
        for h in hosts
    ]
    members = ", ".join(f'"{h.name}"' for h in hosts)
    text = "\n".join(blocks) + f"\n[groups]\nfleet = [{members}]\n"
    (local_inventory / "fleet.toml").write_text(text)
    return local_inventory


def add_host_copy(inventory: Path, host: str, name: str, root: str) -> None:
    """Declare `name`: the fleet host `host` under another name, with a host root of its own,
    so a test's files on that host cannot meet other tests' (which run at the same time)."""
    block = (inventory / "fleet.toml").read_text().split(f"[hosts.{host}]", 1)[1]
    (inventory / f"{name}.toml").write_text(f'[hosts.{name}]{block.split(chr(10) + "[", 1)[0]}'
                                            f'root = "{root}"\n')  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "fleet" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.fleet)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "disruptive: stops, pauses or rekeys the fleet's fleet-4")
    # Resident host agents (agent_host/resident.py) of the tests' many roots leave soon after
    # their last command, not 15 minutes later; what is left at the end is stopped below.
    os.environ.setdefault("JACKIN_AGENT_LINGER", "5")
    # The laptop daemon (jackin_remote/daemon.py) is per laptop home: each test has its own, and
    # one daemon per test would hold connections for ten minutes. tests/e2e/test_daemon.py
    # turns it on where it is under test.
    os.environ.setdefault("JACKIN_DAEMON", "off")


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stop the resident agents this session's tests started under its temporary roots."""
    import signal

    from agent_host.resident import MARK

    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None:
        return
    base = str(factory.getbasetemp()).encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if MARK.encode() in argv and any(word.startswith(base) for word in argv):
            with contextlib.suppress(OSError):
                os.kill(int(entry), signal.SIGTERM)


@pytest.fixture(autouse=True)
def _one_disruptive_test_at_a_time(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.get_closest_marker("disruptive") is None:
        yield
        return
    with _disruption_lock():
        yield


@pytest.fixture(autouse=True)
def _no_stray_inventory(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("JACKIN_INVENTORY", raising=False)
    yield
