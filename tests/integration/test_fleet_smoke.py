"""The SSH test fleet itself works: strict ssh, an inner dockerd, the base image, host keys."""

from __future__ import annotations

import subprocess

import pytest

from tests import fleet as fleet_mod
from tests.conftest import DISRUPTIVE_HOST

pytestmark = pytest.mark.fleet

SMOKE = (
    "python3 --version && docker info --format '{{.ServerVersion}}'"
    " && docker image inspect jackin-test-base:latest"
)


@pytest.fixture(scope="module")
def two_hosts() -> fleet_mod.FleetInfo:
    return fleet_mod.fleet_up(2)


def ssh(
    info: fleet_mod.FleetInfo, host: fleet_mod.FleetHost, command: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        info.ssh_argv(host, command),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_every_host_answers_strict_ssh(two_hosts: fleet_mod.FleetInfo) -> None:
    assert [h.name for h in two_hosts.hosts] == ["fleet-1", "fleet-2"]
    for host in two_hosts.hosts:
        proc = ssh(two_hosts, host, SMOKE)
        assert proc.returncode == 0, f"{host.name}: {proc.stderr}"
        assert proc.stdout.startswith("Python 3.")


@pytest.mark.disruptive
def test_changed_host_key_is_refused(fleet: fleet_mod.FleetInfo) -> None:
    host = fleet.host(DISRUPTIVE_HOST)
    with fleet_mod.rekeyed(host.name) as new_key:
        assert new_key != host.host_key
        proc = ssh(fleet, host, SMOKE)
        assert proc.returncode == 255
        assert "HOST IDENTIFICATION HAS CHANGED" in proc.stderr
    assert ssh(fleet, host, "true").returncode == 0, "original host key not restored"


@pytest.mark.disruptive
def test_stopped_host_comes_back_on_the_same_port(fleet: fleet_mod.FleetInfo) -> None:
    host = fleet.host(DISRUPTIVE_HOST)
    fleet_mod.stop_host(host.name)
    try:
        assert ssh(fleet, host, "true").returncode == 255
    finally:
        restarted = fleet_mod.start_host(host.name)
    assert (restarted.port, restarted.host_key) == (host.port, host.host_key)
    proc = ssh(fleet, host, SMOKE)
    assert proc.returncode == 0, proc.stderr
