"""Trust that matches the docs and connection errors that say what happened (issue 10, items 2
and 6), through the CLI against the SSH fleet and local sockets (never an outside address)."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import fleet as fleet_mod
from tests.conftest import CLI

pytestmark = pytest.mark.fleet


def flat(output: str) -> str:
    """Console output with the terminal's line wrapping undone."""
    return " ".join(output.split())


def _unpinned(tmp_path: Path, fleet: fleet_mod.FleetInfo, name: str) -> Path:
    inv = tmp_path / "unpinned.toml"
    inv.write_text(
        f'[hosts.box]\naddress = "127.0.0.1"\nport = {fleet.host(name).port}\nuser = "jackin"\n'
        f'identity_file = "{fleet.identity_file}"\n'
    )
    return inv


def test_an_unknown_host_shows_the_ed25519_key_the_docs_compare_against(
    cli: CLI, fleet: fleet_mod.FleetInfo, tmp_path: Path, laptop: Path
) -> None:
    """It used to show the RSA key, with no type, as `host_key_mismatch`."""
    expected = fleet_mod.ed25519_fingerprint("fleet-3")
    inv = _unpinned(tmp_path, fleet, "fleet-3")
    entry = cli.json("-i", str(inv), "hosts", "check", "--on", "box", ok_codes=(3,))["hosts"][0]
    assert entry["status"] == "host_key_unknown", entry
    assert entry["error"]["key_changed"] is False
    assert entry["error"]["fingerprint"] == expected
    assert f"ssh-ed25519 {expected}" in entry["error"]["message"]
    table = cli.run("-i", str(inv), "hosts", "check", "--on", "box")
    assert table.returncode == 3 and "host_key_unknown" in table.stdout

    unconfirmed = cli.run("-i", str(inv), "hosts", "trust", "box")  # no terminal: not recorded
    assert unconfirmed.returncode != 0
    assert f"ssh-ed25519 {expected}" in flat(unconfirmed.stderr)
    done = cli.run("-i", str(inv), "hosts", "trust", "box", "--fingerprint", expected)
    assert done.returncode == 0, done.stderr
    known_hosts = laptop / "jackin" / "config" / "known_hosts"
    assert f"recorded ssh-ed25519 {expected} in {known_hosts}" in flat(done.stdout)
    again = cli.json("-i", str(inv), "hosts", "trust", "box")
    assert again["recorded"] is False
    assert (again["key_type"], again["fingerprint"]) == ("ssh-ed25519", expected)


def test_a_host_known_by_another_key_type_is_asked_for_that_type(
    cli: CLI, fleet: fleet_mod.FleetInfo, tmp_path: Path, laptop: Path
) -> None:
    """Preferring ed25519 must not turn a host known by its RSA key into a changed key."""
    rsa = fleet_mod.docker_exec(
        fleet_mod.container("fleet-3"), "cat", "/etc/ssh/ssh_host_rsa_key.pub"
    ).stdout.split()[:2]
    ssh_dir = laptop / "home" / ".ssh"
    ssh_dir.mkdir()
    port = fleet.host("fleet-3").port
    (ssh_dir / "known_hosts").write_text(f"[127.0.0.1]:{port} {' '.join(rsa)}\n")
    inv = _unpinned(tmp_path, fleet, "fleet-3")
    entry = cli.json("-i", str(inv), "hosts", "check", "--on", "box")["hosts"][0]
    assert entry["status"] == "ok", entry
    assert cli.json("-i", str(inv), "hosts", "trust", "box")["key_type"] == "ssh-rsa"


def test_accept_new_says_what_it_recorded_and_where(
    cli: CLI, fleet: fleet_mod.FleetInfo, tmp_path: Path, laptop: Path
) -> None:
    expected = fleet_mod.ed25519_fingerprint("fleet-3")
    inv = _unpinned(tmp_path, fleet, "fleet-3")
    known_hosts = laptop / "jackin" / "config" / "known_hosts"
    port = fleet.host("fleet-3").port
    proc = cli.run("-i", str(inv), "hosts", "check", "--on", "box", "--accept-new")
    assert proc.returncode == 0, proc.stderr
    assert (
        f"box: recorded new host key ssh-ed25519 {expected} for [127.0.0.1]:{port} "
        f"in {known_hosts}" in flat(proc.stderr)
    ), proc.stderr
    assert known_hosts.read_text().split()[1] == "ssh-ed25519"

    known_hosts.unlink()
    data = cli.json("-i", str(inv), "hosts", "check", "--on", "box", "--accept-new")
    assert data["hosts"][0]["host_key_recorded"] == {
        "pattern": f"[127.0.0.1]:{port}", "key_type": "ssh-ed25519",
        "fingerprint": expected, "file": str(known_hosts),
    }  # fmt: skip
    # Already trusted now: nothing recorded, nothing claimed.
    data = cli.json("-i", str(inv), "hosts", "check", "--on", "box", "--accept-new")
    assert "host_key_recorded" not in data["hosts"][0]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP port that accepts connections (the kernel's backlog) and never says a word."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again when the block ends: refused


def test_each_connection_failure_names_its_cause_and_what_to_do(
    cli: CLI, fleet: fleet_mod.FleetInfo, tmp_path: Path, laptop: Path, silent_port: int
) -> None:
    host = fleet.host("fleet-1")
    key = fleet.identity_file
    pin = f'host_key = "{host.host_key}"\n'
    not_a_file = tmp_path / "a-directory"
    not_a_file.mkdir()
    closed = _closed_port()
    blocks = {
        "nokey": f'address = "127.0.0.1"\nport = {host.port}\nuser = "jackin"\n'
        f'identity_file = "~/.ssh/id_missing"\n{pin}',
        "badkey": f'address = "127.0.0.1"\nport = {host.port}\nuser = "jackin"\n'
        f'identity_file = "{not_a_file}"\n{pin}',
        "noname": f'address = "build-1.invalid"\nuser = "jackin"\nidentity_file = "{key}"\n',
        "refused": f'address = "127.0.0.1"\nport = {closed}\nidentity_file = "{key}"\n',
        "silent": f'address = "127.0.0.1"\nport = {silent_port}\nidentity_file = "{key}"\n',
        "denied": f'address = "127.0.0.1"\nport = {host.port}\nuser = "root"\n'
        f'identity_file = "{key}"\n{pin}',
    }
    inv = tmp_path / "hosts.toml"
    inv.write_text("".join(f"[hosts.{name}]\n{body}\n" for name, body in blocks.items()))
    lines = {name: 1 + inv.read_text().splitlines().index(f"[hosts.{name}]") for name in blocks}
    ssh_dir = laptop / "home" / ".ssh"
    ssh_dir.mkdir()
    # The silent host would otherwise take the default 10 s: ~/.ssh/config's ConnectTimeout
    # is honoured, as OpenSSH does. The outcome does not depend on it, only the wait.
    (ssh_dir / "config").write_text("Host *\n  ConnectTimeout 2\n")

    data = cli.json("-i", str(inv), "hosts", "check", "--on", ",".join(blocks), ok_codes=(3,))
    got = {h["name"]: (h["status"], h["error"]["message"], h["error"]["hint"])
           for h in data["hosts"]}  # fmt: skip

    def where(name: str) -> str:
        return f"{inv}:{lines[name]}"

    status, message, hint = got["nokey"]
    assert status == "auth_failed"
    assert "identity file ~/.ssh/id_missing" in message and "does not exist" in message
    assert str(ssh_dir / "id_missing") in message and where("nokey") in message
    assert "sshd" not in hint and "fix the path" in hint

    status, message, hint = got["badkey"]
    assert status == "auth_failed" and f"identity file {not_a_file} cannot be read" in message
    assert where("badkey") in message and "permissions" in hint

    status, message, hint = got["noname"]
    assert status == "unreachable"
    assert "cannot resolve host name 'build-1.invalid'" in message
    assert "does not resolve" in hint and where("noname") in hint and "sshd" not in hint

    status, message, hint = got["refused"]
    assert status == "unreachable" and message == f"connection refused by 127.0.0.1:{closed}"
    assert f"nothing listens on port {closed}" in hint and where("refused") in hint

    status, message, hint = got["silent"]
    assert status == "unreachable"
    assert message == f"no answer from 127.0.0.1:{silent_port} within 2s"
    assert "firewall" in hint and where("silent") in hint

    status, message, hint = got["denied"]
    assert status == "auth_failed" and message.startswith("authentication failed as root")
    assert f"keys tried: {key} (identity_file in {where('denied')})" in message
    assert "authorized_keys" in hint

    # The table prints each cause once, with its hint; `ls` names the state once.
    table = cli.run("-i", str(inv), "hosts", "check", "--on", "noname,refused")
    assert "hint: the name does not resolve" in flat(table.stdout)
    assert "is the host up and sshd listening" not in flat(table.stdout)
    listing = cli.run("-i", str(inv), "ls", "--on", "noname,refused")
    assert listing.returncode == 3
    shown = flat(listing.stderr)
    assert "noname: unreachable: cannot resolve host name 'build-1.invalid'" in shown
    assert f"refused: unreachable: connection refused by 127.0.0.1:{closed}" in shown
    assert "unreachable: unreachable" not in shown


def test_hosts_add_warns_about_an_identity_file_that_does_not_exist(
    cli: CLI, tmp_path: Path, laptop: Path
) -> None:
    inv = tmp_path / "hosts.toml"
    inv.write_text('[hosts.alpha]\naddress = "10.0.0.9"\n')
    proc = cli.run("-i", str(inv), "hosts", "add", "build-1", "--address", "10.0.0.1",
                   "--identity-file", "~/.ssh/id_missing", "--file", str(inv))  # fmt: skip
    assert proc.returncode == 0, proc.stderr  # recorded: the file may exist elsewhere
    assert "warning: identity file ~/.ssh/id_missing does not exist" in flat(proc.stderr)
    assert 'identity_file = "~/.ssh/id_missing"' in inv.read_text()
    real = laptop / "home" / "id_real"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(real)], check=True)
    data = cli.json("-i", str(inv), "hosts", "add", "build-2", "--address", "10.0.0.2",
                    "--identity-file", str(real), "--file", str(inv))  # fmt: skip
    assert data["warnings"] == []
    data = cli.json("-i", str(inv), "hosts", "add", "build-3", "--address", "10.0.0.3",
                    "--identity-file", str(tmp_path), "--file", str(inv))  # fmt: skip
    assert "cannot be read" in data["warnings"][0]
