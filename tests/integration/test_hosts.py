"""`hosts check` and the SSH transport against real sshd test hosts (and the local host)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests import fleet as fleet_mod
from tests.conftest import CLI, DISRUPTIVE_HOST, STABLE_HOSTS, add_host_copy

pytestmark = pytest.mark.fleet
ON_STABLE = ",".join(("local", *STABLE_HOSTS))


def agent_files(container: str) -> str:
    return fleet_mod.docker_exec(
        container, "sh", "-c", "ls -l --time-style=+%s.%N /home/jackin/.jackin/agent/"
    ).stdout


def test_check_reports_every_host_and_a_second_deploy_sends_nothing(
    cli: CLI, fleet_inventory: Path
) -> None:
    first = cli.json("-i", str(fleet_inventory), "hosts", "check", "--on", ON_STABLE)
    hosts = {h["name"]: h for h in first["hosts"]}
    assert set(hosts) == {"local", *STABLE_HOSTS}
    for name, entry in hosts.items():
        assert entry["status"] == "ok", entry
        facts = entry["facts"]
        assert facts["python"].startswith("3.")
        assert facts["docker"]["access"] is True, (name, facts["docker"])
        assert facts["rsync"] and facts["git"]
        assert facts["cpus"] >= 1 and facts["memory"]["total"] > 0
        assert entry["latency_ms"] > 0
        assert abs(entry["clock_skew_s"]) < 2
        assert entry["verdict"] == "ready", entry["problems"]
    assert hosts["fleet-1"]["facts"]["user"] == "jackin"
    before = agent_files(fleet_mod.container("fleet-1"))

    second = cli.json("-i", str(fleet_inventory), "hosts", "check", "--on", ON_STABLE)
    for entry in second["hosts"]:
        assert entry["agent"]["deployed"] is False
        assert entry["agent"]["bytes_sent"] == 0
    assert agent_files(fleet_mod.container("fleet-1")) == before


def test_a_missing_agent_is_redeployed_atomically(cli: CLI, fleet_inventory: Path) -> None:
    root = f"/home/jackin/redeploy-{os.urandom(4).hex()}"
    add_host_copy(fleet_inventory, "fleet-2", "probe", root)
    cli.json("-i", str(fleet_inventory), "hosts", "check", "--on", "probe")
    fleet_mod.docker_exec(fleet_mod.container("fleet-2"), "sh", "-c", f"rm -rf {root}/agent/*")
    entry = cli.json("-i", str(fleet_inventory), "hosts", "check", "--on", "probe")["hosts"][0]
    assert entry["agent"]["deployed"] is True and entry["agent"]["bytes_sent"] > 100_000
    listing = fleet_mod.docker_exec(
        fleet_mod.container("fleet-2"), "ls", "-a", f"{root}/agent"
    ).stdout
    assert f"jackin-agent-{entry['agent']['hash']}" in listing
    assert ".incoming" not in listing
    unpacked = f"{root}/agent/jackin-agent-{entry['agent']['hash']}"
    compiled = fleet_mod.docker_exec(
        fleet_mod.container("fleet-2"), "ls", f"{unpacked}/agent_host/__pycache__"
    ).stdout
    assert ".pyc" in compiled  # byte-compiled once at deploy, not at every start


def test_unknown_host_key_is_refused_then_trusted(
    cli: CLI, fleet: fleet_mod.FleetInfo, tmp_path: Path
) -> None:
    host = fleet.host("fleet-3")
    inv = tmp_path / "unpinned.toml"
    inv.write_text(
        f'[hosts.box]\naddress = "127.0.0.1"\nport = {host.port}\nuser = "jackin"\n'
        f'identity_file = "{fleet.identity_file}"\n'
    )
    refused = cli.json("-i", str(inv), "hosts", "check", "--on", "box", ok_codes=(3,))
    entry = refused["hosts"][0]
    assert entry["status"] == "host_key_unknown"  # not a changed key: nothing knew it
    assert entry["error"]["key_changed"] is False
    assert re.match(r"SHA256:\S+", entry["error"]["fingerprint"])
    assert "jackin-remote hosts trust box" in entry["error"]["hint"]

    trusted = cli.json("-i", str(inv), "hosts", "trust", "box", "--yes")
    assert trusted["recorded"] is True and trusted["fingerprint"] == entry["error"]["fingerprint"]
    assert cli.json("-i", str(inv), "hosts", "check", "--on", "box")["hosts"][0]["status"] == "ok"


def test_accept_new_records_the_key_on_first_use(
    cli: CLI, fleet: fleet_mod.FleetInfo, tmp_path: Path, laptop: Path
) -> None:
    host = fleet.host("fleet-3")
    inv = tmp_path / "unpinned.toml"
    inv.write_text(
        f'[hosts.box]\naddress = "127.0.0.1"\nport = {host.port}\nuser = "jackin"\n'
        f'identity_file = "{fleet.identity_file}"\n'
    )
    entry = cli.json("-i", str(inv), "hosts", "check", "--on", "box", "--accept-new")["hosts"][0]
    assert entry["status"] == "ok"
    (line,) = (laptop / "jackin" / "config" / "known_hosts").read_text().splitlines()
    pattern, key_type, blob = line.split()
    assert pattern == f"[127.0.0.1]:{host.port}"
    host_keys = fleet_mod.docker_exec(
        fleet_mod.container("fleet-3"), "sh", "-c", "cat /etc/ssh/*.pub"
    ).stdout
    assert f"{key_type} {blob}" in host_keys
    # Recorded: the next check trusts it without --accept-new.
    assert cli.json("-i", str(inv), "hosts", "check", "--on", "box")["hosts"][0]["status"] == "ok"


def test_wrong_identity_is_auth_failed(
    cli: CLI, fleet: fleet_mod.FleetInfo, tmp_path: Path
) -> None:
    key = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    host = fleet.host("fleet-1")
    inv = tmp_path / "stranger.toml"
    inv.write_text(
        f'[hosts.box]\naddress = "127.0.0.1"\nport = {host.port}\nuser = "jackin"\n'
        f'identity_file = "{key}"\nhost_key = "{host.host_key}"\n'
    )
    entry = cli.json("-i", str(inv), "hosts", "check", "--on", "box", ok_codes=(3,))["hosts"][0]
    assert entry["status"] == "auth_failed"


def test_proxy_jump_through_another_host(
    cli: CLI, fleet: fleet_mod.FleetInfo, fleet_inventory: Path
) -> None:
    target = fleet.host("fleet-3")
    (fleet_inventory / "behind.toml").write_text(
        f'[hosts.behind]\naddress = "{target.ip}"\nport = 22\nuser = "jackin"\n'
        f'identity_file = "{fleet.identity_file}"\nhost_key = "{target.host_key}"\n'
        'jump = "fleet-1"\n'
    )
    entry = cli.json("-i", str(fleet_inventory), "hosts", "check", "--on", "behind")["hosts"][0]
    assert entry["status"] == "ok", entry
    assert entry["facts"]["hostname"] == "fleet-3"


@pytest.mark.disruptive
def test_changed_host_key_is_refused_without_logging_in(cli: CLI, fleet_inventory: Path) -> None:
    container = fleet_mod.container(DISRUPTIVE_HOST)
    with fleet_mod.rekeyed(DISRUPTIVE_HOST):
        logins_before = _accepted_logins(container)
        proc = cli.run("-i", str(fleet_inventory), "hosts", "check", "--on", DISRUPTIVE_HOST)
        assert proc.returncode == 3
        assert "HOST KEY CHANGED" in proc.stdout + proc.stderr
        data = cli.json("-i", str(fleet_inventory), "hosts", "check", "--on", DISRUPTIVE_HOST,
                        ok_codes=(3,))  # fmt: skip
        entry = data["hosts"][0]
        assert entry["status"] == "host_key_mismatch"
        assert entry["error"]["key_changed"] is True
        assert _accepted_logins(container) == logins_before
        # --accept-new never applies to a changed key.
        data = cli.json("-i", str(fleet_inventory), "hosts", "check", "--on", DISRUPTIVE_HOST,
                        "--accept-new", ok_codes=(3,))  # fmt: skip
        assert data["hosts"][0]["status"] == "host_key_mismatch"


def _accepted_logins(container: str) -> int:
    logs = subprocess.run(["docker", "logs", container], capture_output=True, text=True).stderr
    return logs.count("Accepted publickey")


@pytest.mark.disruptive
def test_a_stopped_host_is_unreachable_and_the_others_still_report(
    cli: CLI, fleet_inventory: Path
) -> None:
    fleet_mod.stop_host(DISRUPTIVE_HOST)
    try:
        proc = cli.run("-i", str(fleet_inventory), "hosts", "check", "--json",
                       "--on", f"{DISRUPTIVE_HOST},fleet-1,local")  # fmt: skip
    finally:
        fleet_mod.start_host(DISRUPTIVE_HOST)
    assert proc.returncode == 3
    import json

    states = {h["name"]: h["status"] for h in json.loads(proc.stdout)["hosts"]}
    assert states == {DISRUPTIVE_HOST: "unreachable", "fleet-1": "ok", "local": "ok"}


def test_an_ssh_config_alias_supplies_hostname_port_user_and_key(
    cli: CLI, fleet: fleet_mod.FleetInfo, tmp_path: Path, laptop: Path
) -> None:
    host = fleet.host("fleet-2")
    ssh_dir = laptop / "home" / ".ssh"
    ssh_dir.mkdir()
    (ssh_dir / "config").write_text(
        f"Host buildbox\n  HostName 127.0.0.1\n  Port {host.port}\n  User jackin\n"
        f"  IdentityFile {fleet.identity_file}\n"
    )
    inv = tmp_path / "alias.toml"
    inv.write_text(f'[hosts.box]\naddress = "buildbox"\nhost_key = "{host.host_key}"\n')
    entry = cli.json("-i", str(inv), "hosts", "check", "--on", "box")["hosts"][0]
    assert entry["status"] == "ok", entry
    assert entry["facts"]["hostname"] == "fleet-2"
