"""Host-key trust fails closed (issue 6, item 6) and an anonymous jump host has a name no
inventory host can take (item 12): attacked through the CLI against the SSH fleet."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import fleet as fleet_mod
from tests.conftest import CLI, DISRUPTIVE_HOST

pytestmark = pytest.mark.fleet

# A well-formed key that no fleet host has.
STRANGER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExCSxoR0OlpMM834iMb6daMpF6thf5W81/r52zH/nQP"


def _hashed(name: str) -> str:
    salt = os.urandom(20)
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


# Each: the ~/.ssh/known_hosts text for a host at [127.0.0.1]:port that it does NOT present.
# Every one used to let --accept-new record whatever key the host showed.
KNOWN_HOSTS_CASES: dict[str, Callable[[int], str]] = {
    # One malformed line made the whole file count as empty, the host's old key included.
    "changed key and a malformed line": lambda port: (
        f"[127.0.0.1]:{port} {STRANGER_KEY}\nthis line is garbage\n"
    ),
    "changed key under a hashed name, and a malformed line": lambda port: (
        f"{_hashed(f'[127.0.0.1]:{port}')} {STRANGER_KEY}\n@garbage\n"
    ),
    "trusted only through @cert-authority": lambda port: (
        f"@cert-authority [127.0.0.1]:{port} {STRANGER_KEY}\n"
    ),
    "listed only as @revoked": lambda port: f"@revoked [127.0.0.1]:{port} {STRANGER_KEY}\n",
    "listed with another port": lambda port: f"[127.0.0.1]:{port + 1} {STRANGER_KEY}\n",
    "an unknown marker": lambda port: f"@trusted [127.0.0.1]:{port} {STRANGER_KEY}\n",
    "a key type asyncssh skips": lambda port: f"[127.0.0.1]:{port} ssh-foo AAAAB3NzaC1mb28=\n",
    "a malformed line about another host": lambda port: "[10.9.9.9]:22 ssh-ed25519 !!!\n",
}


def _unpinned(tmp_path: Path, fleet: fleet_mod.FleetInfo, name: str) -> Path:
    host = fleet.host(name)
    inv = tmp_path / "unpinned.toml"
    inv.write_text(
        f'[hosts.box]\naddress = "127.0.0.1"\nport = {host.port}\nuser = "jackin"\n'
        f'identity_file = "{fleet.identity_file}"\n'
    )
    return inv


@pytest.mark.parametrize("case", sorted(KNOWN_HOSTS_CASES))
def test_accept_new_refuses_a_host_any_known_hosts_line_is_unsure_about(
    cli: CLI, fleet: fleet_mod.FleetInfo, tmp_path: Path, laptop: Path, case: str
) -> None:
    inv = _unpinned(tmp_path, fleet, "fleet-3")
    ssh_dir = laptop / "home" / ".ssh"
    ssh_dir.mkdir()
    (ssh_dir / "known_hosts").write_text(KNOWN_HOSTS_CASES[case](fleet.host("fleet-3").port))
    # Plain keys allowed: with only a CA known, asyncssh would otherwise offer certificate
    # algorithms alone and the handshake would end before any key is shown.
    (ssh_dir / "config").write_text("Host *\n  HostKeyAlgorithms ssh-ed25519\n")
    data = cli.json("-i", str(inv), "hosts", "check", "--on", "box", "--accept-new",
                    ok_codes=(3,))  # fmt: skip
    entry = data["hosts"][0]
    # A line about this host makes the key a changed one; trouble elsewhere leaves it unknown.
    unknown = case == "a malformed line about another host"
    assert entry["status"] == ("host_key_unknown" if unknown else "host_key_mismatch"), entry
    assert not (laptop / "jackin" / "config" / "known_hosts").exists()  # nothing recorded
    assert str(ssh_dir / "known_hosts") in entry["error"]["message"]  # names the line


def test_a_malformed_line_does_not_hide_the_keys_on_the_other_lines(
    cli: CLI, fleet: fleet_mod.FleetInfo, tmp_path: Path, laptop: Path
) -> None:
    host = fleet.host("fleet-3")
    inv = _unpinned(tmp_path, fleet, "fleet-3")
    ssh_dir = laptop / "home" / ".ssh"
    ssh_dir.mkdir()
    (ssh_dir / "known_hosts").write_text(f"garbage\n[127.0.0.1]:{host.port} {host.host_key}\n")
    entry = cli.json("-i", str(inv), "hosts", "check", "--on", "box")["hosts"][0]
    assert entry["status"] == "ok", entry


def test_trust_without_a_fingerprint_records_nothing_under_json_or_without_a_tty(
    cli: CLI, fleet: fleet_mod.FleetInfo, tmp_path: Path, laptop: Path
) -> None:
    inv = _unpinned(tmp_path, fleet, "fleet-3")
    proc = cli.run("-i", str(inv), "hosts", "trust", "box", "--json")
    assert proc.returncode != 0 and "--fingerprint SHA256:" in proc.stdout
    proc = cli.run("-i", str(inv), "hosts", "trust", "box")  # stdin is not a terminal
    assert proc.returncode != 0 and "--fingerprint SHA256:" in proc.stderr
    assert not (laptop / "jackin" / "config" / "known_hosts").exists()
    wrong = cli.run("-i", str(inv), "hosts", "trust", "box", "--fingerprint", "SHA256:nope")
    assert wrong.returncode != 0 and not (laptop / "jackin" / "config" / "known_hosts").exists()

    seen = cli.json("-i", str(inv), "hosts", "check", "--on", "box", ok_codes=(3,))
    fingerprint = seen["hosts"][0]["error"]["fingerprint"]
    done = cli.json("-i", str(inv), "hosts", "trust", "box", "--fingerprint", fingerprint)
    assert done["recorded"] is True and done["fingerprint"] == fingerprint
    assert done["key_type"].startswith(("ssh-", "ecdsa-"))
    assert cli.json("-i", str(inv), "hosts", "check", "--on", "box")["hosts"][0]["status"] == "ok"


@pytest.mark.disruptive
def test_replacing_a_changed_key_needs_its_fingerprint_named(
    cli: CLI, fleet: fleet_mod.FleetInfo, tmp_path: Path, laptop: Path
) -> None:
    host = fleet.host(DISRUPTIVE_HOST)
    inv = _unpinned(tmp_path, fleet, DISRUPTIVE_HOST)
    ssh_dir = laptop / "home" / ".ssh"
    ssh_dir.mkdir()
    (ssh_dir / "known_hosts").write_text(f"[127.0.0.1]:{host.port} {host.host_key}\n")
    recorded = laptop / "jackin" / "config" / "known_hosts"
    with fleet_mod.rekeyed(DISRUPTIVE_HOST) as new_key:
        new_fp = _fingerprint(new_key)
        entry = cli.json("-i", str(inv), "hosts", "check", "--on", "box", ok_codes=(3,))
        error = entry["hosts"][0]["error"]
        assert error["key_changed"] is True and error["fingerprint"] == new_fp
        assert f"ssh-ed25519 {new_fp}" in error["message"]  # the key type goes with it
        for flags in (
            [],
            ["--replace"],
            ["--replace", "--yes"],
            ["--yes"],
            ["--replace", "--fingerprint", _fingerprint(host.host_key)],  # the old one
            ["--fingerprint", new_fp],  # without --replace
        ):
            proc = cli.run("-i", str(inv), "hosts", "trust", "box", "--json", *flags)
            assert proc.returncode != 0, (flags, proc.stdout)
            assert "HOST KEY CHANGED" in proc.stdout or "not the fingerprint" in proc.stdout
            assert not recorded.exists(), flags
        done = cli.json("-i", str(inv), "hosts", "trust", "box", "--replace",
                        "--fingerprint", new_fp)  # fmt: skip
        assert done["recorded"] is True and done["fingerprint"] == new_fp
        status = cli.json("-i", str(inv), "hosts", "check", "--on", "box")["hosts"][0]["status"]
        assert status == "ok"


def _fingerprint(key_line: str) -> str:
    blob = base64.b64decode(key_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def test_an_anonymous_jump_host_never_stands_in_for_an_inventory_host(
    cli: CLI, fleet: fleet_mod.FleetInfo, tmp_path: Path, laptop: Path
) -> None:
    """`web` jumps through fleet-1 given only by address; `web-jump` is fleet-2. The jump
    used to be called `web-jump` internally: whichever connected first served both."""
    bastion, other = fleet.host("fleet-1"), fleet.host("fleet-2")
    ssh_dir = laptop / "home" / ".ssh"
    ssh_dir.mkdir()
    # The anonymous jump is trusted and logged into through the user's own ssh files.
    (ssh_dir / "known_hosts").write_text(f"[127.0.0.1]:{bastion.port} {bastion.host_key}\n")
    (ssh_dir / "config").write_text(f"Host 127.0.0.1\n  IdentityFile {fleet.identity_file}\n")
    inv = tmp_path / "jump.toml"
    inv.write_text(
        # Seen from the bastion, 127.0.0.1:22 is the bastion itself: through any other jump
        # host this address is another machine, with another key.
        f'[hosts.web]\naddress = "127.0.0.1"\nport = 22\nuser = "jackin"\n'
        f'identity_file = "{fleet.identity_file}"\nhost_key = "{bastion.host_key}"\n'
        f'jump = "jackin@127.0.0.1:{bastion.port}"\n'
        f'[hosts.web-jump]\naddress = "127.0.0.1"\nport = {other.port}\nuser = "jackin"\n'
        f'identity_file = "{fleet.identity_file}"\nhost_key = "{other.host_key}"\n'
    )
    for on in ("web,web-jump", "web-jump,web"):
        data = cli.json("-i", str(inv), "hosts", "check", "--on", on, ok_codes=(0, 3))
        hosts = {h["name"]: h for h in data["hosts"]}
        assert hosts["web"]["status"] == "ok", hosts["web"]
        assert hosts["web-jump"]["status"] == "ok", hosts["web-jump"]
        assert hosts["web"]["facts"]["hostname"] == "fleet-1"
        assert hosts["web-jump"]["facts"]["hostname"] == "fleet-2"


def test_ssh_keygen_agrees_with_our_fingerprint(tmp_path: Path, fleet: fleet_mod.FleetInfo) -> None:
    """The helper above computes what `ssh-keygen -l` prints, so tests compare like with like."""
    key = fleet.host("fleet-1").host_key
    (tmp_path / "k.pub").write_text(key + "\n")
    out = subprocess.run(["ssh-keygen", "-l", "-f", str(tmp_path / "k.pub")],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert out.split()[1] == _fingerprint(key)
