"""OpenSSH argv under our host-key policy, and the rsync argv/output parsing (pure parts)."""

from __future__ import annotations

import itertools
import os
import shlex
from pathlib import Path

import pytest

from jackin_remote.inventory.model import Host
from jackin_remote.transport import openssh
from jackin_remote.transport.openssh import (
    SSHTarget,
    control_dir,
    openssh_base_argv,
    rsync_destination,
    rsync_remote_shell,
    write_known_hosts,
)
from jackin_remote.transport.rsync import RsyncInfo, RsyncTally, rsync_argv

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExCSxoR0OlpMM834iMb6daMpF6thf5W81/r52zH/nQP"


@pytest.fixture(autouse=True)
def jackin_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("JACKIN_HOME", str(tmp_path / "jh"))
    return tmp_path / "jh"


def options(argv: list[str]) -> dict[str, str]:
    found = {}
    for flag, value in itertools.pairwise(argv):
        if flag == "-o":
            key, _, val = value.partition("=")
            found[key] = val
    return found


def test_argv_trusts_only_the_verified_key(jackin_home: Path) -> None:
    host = Host(name="web-1", address="10.0.0.5", port=2222, user="dev", identity_file="~/k")
    target = SSHTarget(host, KEY)
    path = write_known_hosts(target)
    assert path.read_text() == f"jackin-web-1 {KEY}\n"
    assert path.stat().st_mode & 0o777 == 0o600
    argv = openssh_base_argv(target)
    opts = options(argv)
    assert opts["HostKeyAlias"] == "jackin-web-1"
    assert opts["UserKnownHostsFile"] == str(path)
    assert opts["GlobalKnownHostsFile"] == "/dev/null"
    assert opts["StrictHostKeyChecking"] == "yes"
    assert opts["BatchMode"] == "yes"
    assert opts["HostKeyAlgorithms"] == "ssh-ed25519"
    assert opts["ControlPath"].endswith("/%C") and opts["ControlMaster"] == "auto"
    assert opts["IdentitiesOnly"] == "yes"
    assert argv[argv.index("-p") + 1] == "2222" and argv[argv.index("-l") + 1] == "dev"
    assert argv[argv.index("-i") + 1] == str(Path("~/k").expanduser())
    assert "10.0.0.5" not in argv  # rsync appends the destination itself


def test_jump_host_goes_through_our_own_policy(jackin_home: Path) -> None:
    jump = Host(name="bastion", address="bastion.example", user="ops")
    host = Host(name="inner", address="10.1.0.9", jump="bastion")
    target = SSHTarget(host, KEY, jump=SSHTarget(jump, "ssh-rsa AAAAB3NzaC1yc2E"))
    write_known_hosts(target)
    assert (
        (jackin_home / "state/ssh/jackin-bastion.known_hosts")
        .read_text()
        .startswith("jackin-bastion ssh-rsa ")
    )
    proxy = shlex.split(options(openssh_base_argv(target))["ProxyCommand"])
    assert proxy[-3:] == ["-W", "[%h]:%p", "bastion.example"]
    jump_opts = options(proxy)
    assert jump_opts["HostKeyAlias"] == "jackin-bastion"
    assert jump_opts["StrictHostKeyChecking"] == "yes"
    assert jump_opts["HostKeyAlgorithms"].startswith("rsa-sha2-512")
    assert jump_opts["ControlPath"] == "none"  # the target's master carries the jump connection


def test_percent_in_paths_is_escaped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JACKIN_HOME", str(tmp_path / "100%"))
    opts = options(openssh_base_argv(SSHTarget(Host(name="h"), KEY)))
    assert "100%%" in opts["UserKnownHostsFile"]


def test_control_path_stays_short(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JACKIN_HOME", str(tmp_path / ("long" * 30)))
    directory = control_dir()
    assert len(str(directory)) + 41 <= 100
    assert directory.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("length", range(30, 70, 3))
def test_the_master_socket_and_its_temporary_name_fit_in_sun_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, length: int
) -> None:
    # Regression: a 50-byte state dir passed the check, then OpenSSH's own temporary name
    # ("<path>.<16 chars>") was too long for a unix socket and every launch failed.
    home = Path("/tmp") / ("j" * max(1, length - len("/tmp/") - len("/state/cm")))
    monkeypatch.setenv("JACKIN_HOME", str(home))
    try:
        directory = control_dir()
        assert len(os.fsencode(str(directory))) + 1 + 40 + 17 <= 100
    finally:
        import shutil

        shutil.rmtree(home, ignore_errors=True)


def test_remote_shell_round_trips_and_destination_brackets_ipv6() -> None:
    argv = ["ssh", "-o", "UserKnownHostsFile=/tmp/a b/kh", "-p", "22"]
    assert shlex.split(rsync_remote_shell(argv)) == argv
    assert rsync_destination(Host(name="v6", address="::1"), "/m/") == "[::1]:/m/"
    assert rsync_destination(Host(name="h", address="box"), "/m/") == "box:/m/"


def test_openssh_error_maps_host_key_refusal() -> None:
    error = openssh.openssh_error(Host(name="h"), 255, "Host key verification failed.\r\n")
    assert error.state == "host_key_mismatch"
    auth = openssh.openssh_error(Host(name="h"), 255, "jackin@1.2.3.4: Permission denied")
    assert auth.state == "auth_failed"


def test_rsync_argv_keeps_to_openrsync_subset() -> None:
    full = rsync_argv(RsyncInfo("rsync", "3.2.7", False), "/w", "h:/m/", progress=True)
    assert "--modify-window=-1" in full and "--info=progress2" in full
    assert full[-2:] == ["/w/", "h:/m/"] and "-z" not in full
    mac = rsync_argv(RsyncInfo("rsync", "openrsync", True), "/w/", "h:/m/", progress=True)
    assert not [a for a in mac if a.startswith(("--info", "--modify-window", "--out-format"))]


def test_rsync_tally_counts_sent_files_and_progress() -> None:
    tally = RsyncTally()
    lines = [
        "cd+++++++++ 4096 src/",
        "<f+++++++++ 120 src/app.py",
        "<f.st...... 7 README.md",
        "cL+++++++++ 3 link",
        ".d..t...... 4096 ./",
        "      1,234,567  45%   12.34MB/s    0:00:01 (xfr#2, to-chk=3/5)",
    ]
    moved = [tally.feed(line) for line in lines]
    assert (tally.files, tally.bytes) == (3, 127)
    assert moved[-1] and tally.fraction == pytest.approx(0.45)
