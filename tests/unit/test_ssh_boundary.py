"""The SSH boundary's pure decisions: what ~/.ssh/config may not turn on, which known_hosts
lines count as knowing a host, how `hosts trust` is confirmed, and jump-host naming.

The end-to-end attacks are in tests/integration/test_host_trust.py and
tests/e2e/test_ssh_forwarding.py; these pin the rules themselves."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import subprocess
from pathlib import Path

import asyncssh
import pytest

from jackin_remote.core.names import is_valid_name
from jackin_remote.errors import UsageError
from jackin_remote.fleet import _adhoc_jump_host
from jackin_remote.inventory.model import Host
from jackin_remote.transport.hostkeys import mentions_host, read_known_hosts
from jackin_remote.transport.openssh import SSHTarget, host_key_alias, openssh_base_argv
from jackin_remote.transport.ssh import SSHSettings, connect_kwargs

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExCSxoR0OlpMM834iMb6daMpF6thf5W81/r52zH/nQP"

HOSTILE_CONFIG = """Host *
  ForwardAgent yes
  ForwardX11 yes
  ForwardX11Trusted yes
  LocalForward 127.0.0.1:40001 127.0.0.1:22
  RemoteForward 127.0.0.1:40002 127.0.0.1:22
  DynamicForward 127.0.0.1:40003
  PermitLocalCommand yes
  LocalCommand touch /tmp/should-never-exist
  Tunnel yes
  RequestTTY force
  RemoteCommand echo hijacked
  GSSAPIDelegateCredentials yes
  SendEnv LANG
  SetEnv LEAK=1
  ControlMaster auto
  ControlPath /tmp/user-cm-%C
"""


@pytest.fixture
def hostile_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(HOSTILE_CONFIG)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("JACKIN_HOME", str(tmp_path / "jh"))
    monkeypatch.setenv("SSH_AUTH_SOCK", str(tmp_path / "agent.sock"))
    return home


def test_openssh_resolves_every_forwarding_off_whatever_the_config_says(
    hostile_home: Path,
) -> None:
    target = SSHTarget(Host(name="web", address="192.0.2.7", user="dev"), KEY)
    for argv in (openssh_base_argv(target), openssh_base_argv(target, master=False)):
        resolved = subprocess.run(
            [*argv, "-G", "192.0.2.7"],
            capture_output=True, text=True, check=True,
        ).stdout.splitlines()  # fmt: skip
        opts = {line.split(" ", 1)[0]: line.partition(" ")[2] for line in resolved}
        assert opts["forwardagent"] == "no"
        assert opts["forwardx11"] == "no" and opts["forwardx11trusted"] == "no"
        assert opts["clearallforwardings"] == "yes"
        assert not any(k in opts for k in ("localforward", "remoteforward", "dynamicforward"))
        assert opts["permitlocalcommand"] == "no"
        assert opts["tunnel"] == "false"
        assert opts["requesttty"] == "false"
        assert "remotecommand" not in opts
        assert opts["gssapidelegatecredentials"] == "no"
        assert "/tmp/user-cm-" not in opts.get("controlpath", "")


def test_openssh_reads_the_config_asyncssh_reads(hostile_home: Path) -> None:
    target = SSHTarget(Host(name="web", address="192.0.2.7"), KEY)
    argv = openssh_base_argv(target)
    assert argv[1:3] == ["-F", str(hostile_home / ".ssh" / "config")]
    (hostile_home / ".ssh" / "config").unlink()
    assert openssh_base_argv(target)[1:3] == ["-F", os.devnull]


def test_asyncssh_takes_no_forwarding_from_the_config(hostile_home: Path) -> None:
    host = Host(name="web", address="192.0.2.7", user="dev")
    kwargs = connect_kwargs(host, SSHSettings((), hostile_home / "kh"))
    options = asyncssh.SSHClientConnectionOptions(
        host="192.0.2.7", config=[str(hostile_home / ".ssh" / "config")], **kwargs
    )
    assert options.agent_forward_path is None
    assert options.x11_forwarding is False
    assert options.request_pty is False
    assert options.command is None
    assert not options.env and not options.send_env
    assert options.gss_delegate_creds is False


def _hashed(name: str) -> str:
    salt = b"0123456789abcdefghij"
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


@pytest.mark.parametrize(
    ("patterns", "port", "mentioned"),
    [
        ("web.example", None, True),
        ("WEB.example", None, True),
        ("[web.example]:2222", None, True),  # another port still mentions the host
        ("other,!web.example", None, True),  # so does a negation
        ("*.example", None, True),
        ("w?b.example", None, True),
        ("[10.0.0.5]:22", None, True),  # its address
        (_hashed("web.example"), None, True),
        (_hashed("[web.example]:2222"), 2222, True),
        ("|1|not-base64|x", None, True),  # a hash we cannot read: assume the worst
        ("db.example", None, False),
        ("[db.example]:22", None, False),
        ("web.example.evil", None, False),
        (_hashed("db.example"), None, False),
    ],
)
def test_which_host_fields_mention_a_host(patterns: str, port: int | None, mentioned: bool) -> None:
    assert mentions_host(patterns, ("web.example", "10.0.0.5"), port) is mentioned


def test_every_line_we_cannot_read_is_trouble_and_the_good_ones_stay(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    path.write_text(
        "# comment\n\n"
        f"good.example {KEY}\n"
        "garbage\n"
        f"@bogus web.example {KEY}\n"
        "web.example ssh-foo AAAAB3NzaC1mb28=\n"
        f"@cert-authority *.example {KEY}\n"
        f"@revoked old.example {KEY}\n"
    )
    scan = read_known_hosts(path)
    assert [line.where for line in scan.lines] == [f"{path}:3", f"{path}:7", f"{path}:8"]
    assert [t.split(": ", 1)[0] for t in scan.trouble] == [f"{path}:{n}" for n in (4, 5, 6)]
    assert [line.marker for line in scan.mentions] == [None, "bogus", None, "cert-authority",
                                                       "revoked"]  # fmt: skip
    assert read_known_hosts(tmp_path / "missing").trouble == ()
    (tmp_path / "dir").mkdir()
    assert read_known_hosts(tmp_path / "dir").trouble  # unreadable is trouble, not "empty"


@pytest.mark.parametrize(
    ("changed", "replace", "given", "yes", "outcome"),
    [
        (False, False, None, False, False),  # ask, if there is someone to ask
        (False, False, None, True, True),
        (False, False, "SHA256:abc", False, True),
        (False, False, "ssh-ed25519 SHA256:abc", False, True),
        (False, False, "SHA256:abd", True, UsageError),
        (True, False, None, True, UsageError),
        (True, True, None, True, UsageError),  # --yes never replaces a key
        (True, False, "SHA256:abc", False, UsageError),
        (True, True, "SHA256:old", False, UsageError),
        (True, True, "SHA256:abc", False, True),
    ],
)
def test_trust_confirmation(
    changed: bool, replace: bool, given: str | None, yes: bool, outcome: object
) -> None:
    from jackin_remote.cli.hosts import trust_confirmation

    call = dict(changed=changed, replace=replace, given=given, seen="SHA256:abc", yes=yes)
    if outcome is UsageError:
        with pytest.raises(UsageError):
            trust_confirmation(**call)  # type: ignore[arg-type]
    else:
        assert trust_confirmation(**call) is outcome  # type: ignore[arg-type]


def test_an_anonymous_jump_host_cannot_share_a_name_or_alias_with_an_inventory_host() -> None:
    web = Host(name="web", jump="admin@bastion.example:2222")
    jump = _adhoc_jump_host(web)
    assert not is_valid_name(jump.name)  # no inventory host can be called that
    assert (jump.address, jump.user, jump.port) == ("bastion.example", "admin", 2222)
    assert _adhoc_jump_host(Host(name="api", jump=web.jump)).name == jump.name  # shared
    alias = host_key_alias(jump)
    assert alias != host_key_alias(Host(name="web-jump"))
    assert alias.startswith("jackin.") and all(c.isalnum() or c in ".-" for c in alias)
