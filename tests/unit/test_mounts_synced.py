"""--mount LAPTOP_DIR:TARGET[:ro|rw]: parsing and the laptop's checks, the wire's rules, the host's
path for the copy, the host's checks of what arrived, and what the contract says. No I/O beyond
tmp directories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent_host import layout
from agent_host.protocol import E_INVALID_PARAMS, E_NOT_FOUND, RemoteError
from agent_host.sessions import checked_synced_copy
from agent_host.wire import LaunchSpec, Mount, SpecError, held_sensitive
from jackin_remote.core.contract import (
    LaunchRequest,
    RoleRef,
    TargetRef,
    WorkspaceRef,
    resolve_contract,
)
from jackin_remote.errors import UsageError
from jackin_remote.launch import mount_options, synced_mount
from jackin_remote.sync import scan_laptop_dir
from jackin_remote.transport.rsync import RsyncInfo, rsync_argv

ROLE = RoleRef("test-agent", "ab" * 32, "jackin-role-test-agent:abababababab", "agent",
               ("shell",), "/roles/test-agent")  # fmt: skip
SID = "abcd1234"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The laptop's home, under tmp; the workspace and the data directories live beside it."""
    path = tmp_path / "home" / "me"
    path.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(path))
    return path


@pytest.fixture
def data(home: Path) -> Path:
    path = home / "data"
    (path / "sub").mkdir(parents=True)
    (path / "hello.txt").write_text("hello\n")
    return path


@pytest.fixture
def workspace(home: Path) -> Path:
    path = home / "src" / "app"
    path.mkdir(parents=True)
    return path


def refusal(text: str, workspace: Path, *ack: str) -> str:
    with pytest.raises(UsageError) as caught:
        synced_mount(text, workspace, ack)
    return " ".join(f"{caught.value} {caught.value.hint or ''}".split())


# -- parsing -----------------------------------------------------------------------------------
def test_mode_is_read_only_unless_rw_is_asked(data: Path, workspace: Path) -> None:
    assert synced_mount(f"{data}:/data", workspace) == Mount(
        "synced", "/data", source=str(data), mode="ro"
    )
    assert synced_mount(f"{data}:/data:ro", workspace).mode == "ro"
    assert synced_mount(f"{data}:/data:rw", workspace).mode == "rw"


def test_a_relative_or_tilde_source_is_resolved_on_the_laptop(
    data: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(data.parent)
    assert synced_mount("data:/d", workspace).source == str(data)
    assert synced_mount("~/data:/d", workspace).source == str(data)
    # A symlink is resolved: the realpath is what travels, and what is checked.
    (data.parent / "alias").symlink_to(data)
    assert synced_mount("alias:/d:rw", workspace).source == str(data)


def test_a_colon_in_the_laptop_path_is_kept(home: Path, workspace: Path) -> None:
    odd = home / "a:b"
    odd.mkdir()
    assert synced_mount(f"{odd}:/d:rw", workspace) == Mount("synced", "/d", str(odd), mode="rw")


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("data", "expected LAPTOP_DIR:TARGET[:ro|rw]"),
        ("data:relative", "expected LAPTOP_DIR:TARGET[:ro|rw]"),
        (":/d", "expected LAPTOP_DIR:TARGET[:ro|rw]"),
        ("data:/d:rx", "expected LAPTOP_DIR:TARGET[:ro|rw]"),
        ("data:/d:ro:rw", "expected LAPTOP_DIR:TARGET[:ro|rw]"),
        ("missing:/d", "missing is not a directory on this laptop"),
        ("data/hello.txt:/d", "is not a directory on this laptop"),
        ("data:/workspace/x", "is the sandbox's own"),
        ("data:/d/../e", "must be a normal path"),
    ],
)
def test_bad_syntax_is_refused(
    text: str, said: str, data: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(data.parent)
    with pytest.raises(UsageError) as caught:
        mount_options([text], [], [], workspace=workspace)
    assert said in str(caught.value)


def test_host_mounts_are_parsed_as_before(workspace: Path) -> None:
    (mount,) = mount_options(["host:/srv/cache:/cache"], [], [], workspace=workspace)
    assert mount == Mount("host", "/cache", source="/srv/cache")
    assert "mode" not in mount.to_wire()  # the wire of the other kinds is unchanged
    with pytest.raises(UsageError, match="mounted read-only"):
        mount_options(["host:/srv/cache:/cache:rw"], [], [], workspace=workspace)


# -- the laptop's refusals ---------------------------------------------------------------------
def test_home_root_and_above_the_workspace_are_refused(home: Path, workspace: Path) -> None:
    assert "is or holds your home directory" in refusal(f"{home}:/h", workspace)
    assert "is or holds your home directory" in refusal("~:/h", workspace)
    assert "is or holds your home directory" in refusal(f"{home.parent}:/h", workspace)
    assert "is or holds your home directory" in refusal("/:/h", workspace)
    # The workspace's parent holds its siblings; the workspace itself may be mounted.
    assert "holds the workspace" in refusal(f"{workspace.parent}:/p", workspace)
    assert synced_mount(f"{workspace}:/again", workspace).source == str(workspace)


def test_a_sensitive_directory_or_one_inside_it_is_refused_unless_acknowledged(
    home: Path, workspace: Path
) -> None:
    ssh = home / ".ssh"
    (ssh / "keys").mkdir(parents=True)
    said = refusal(f"{ssh}:/k", workspace)
    assert "is or holds .ssh" in said and "--ack-sensitive .ssh" in said
    assert "is or holds .ssh" in refusal(f"{ssh}/keys:/k", workspace)
    assert "is or holds .ssh" in refusal(f"{ssh}/keys:/k", workspace, ".aws")
    assert synced_mount(f"{ssh}/keys:/k", workspace, (".ssh",)).source == str(ssh / "keys")
    # A symlink to it is the same directory.
    (home / "innocent").symlink_to(ssh)
    assert "(it is " + str(ssh) + ") is or holds .ssh" in refusal(f"{home}/innocent:/k", workspace)
    gh = home / ".config" / "gh"
    gh.mkdir(parents=True)
    assert "is or holds .config/gh" in refusal(f"{gh}:/g", workspace)


def test_a_credential_store_two_levels_down_is_found(home: Path, workspace: Path) -> None:
    outer = home / "backups"
    (outer / "laptop" / ".aws").mkdir(parents=True)
    (outer / "old").mkdir()
    (outer / "old" / ".netrc").write_text("machine x login y password z\n")
    said = refusal(f"{outer}:/b", workspace)
    assert "is or holds .aws, .netrc" in said, said
    assert "--ack-sensitive .aws --ack-sensitive .netrc" in said
    assert "is or holds .netrc" in refusal(f"{outer}:/b", workspace, ".aws")
    assert synced_mount(f"{outer}:/b", workspace, (".aws", ".netrc")).source == str(outer)
    # ~/.config holds gh's store: found from its first part.
    (home / ".config" / "gh").mkdir(parents=True)
    assert "is or holds .config/gh" in refusal(f"{home}/.config:/c", workspace)


def test_held_sensitive_looks_two_levels_down_without_following_symlinks(tmp_path: Path) -> None:
    (tmp_path / "a" / "b" / ".kube").mkdir(parents=True)
    assert held_sensitive(str(tmp_path / "a")) == [".kube"]
    assert held_sensitive(str(tmp_path)) == []  # three levels down: past the depth
    assert held_sensitive(str(tmp_path), depth=3) == [".kube"]
    (tmp_path / "link").symlink_to(tmp_path / "a")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "to-a").symlink_to(tmp_path / "a" / "b")
    assert held_sensitive(str(tmp_path / "c")) == []  # not followed
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / ".ssh").symlink_to(tmp_path / "nowhere")
    assert held_sensitive(str(tmp_path / "d")) == [".ssh"]  # a link by that name counts


# -- what travels ------------------------------------------------------------------------------
def test_the_scan_lists_symlinks_as_links_and_leaves_special_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f.txt").write_text("12345")
    (src / "top.bin").write_bytes(b"x" * 100)
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "deep" / "secret").write_text("canary")
    (src / "to-outside").symlink_to(outside)
    (src / "to-file").symlink_to(outside / "deep" / "secret")
    os.mkfifo(src / "pipe")
    scanned = scan_laptop_dir(str(src))
    assert scanned.entries == ("sub", "to-file", "to-outside", "top.bin", "sub/f.txt")
    assert (scanned.files, scanned.total_bytes, scanned.symlinks) == (2, 105, 2)
    assert scanned.skipped == ("pipe",)
    assert not any("secret" in entry or "deep" in entry for entry in scanned.entries)


def test_the_rsync_argv_copies_links_as_links_and_never_owners_or_devices() -> None:
    for openrsync in (False, True):
        argv = rsync_argv(RsyncInfo("/usr/bin/rsync", "rsync", openrsync), "/src", "/dst")
        flags = [arg for arg in argv[1 : argv.index("--")] if not arg.startswith("--")]
        assert flags == ["-lpt"]  # links as links; permissions and times; no -o -g -D -L -a
        assert not {"--copy-links", "--devices", "--specials", "-a", "-r"} & set(argv)


# -- the wire and the host ---------------------------------------------------------------------
def test_the_wire_refuses_a_synced_mount_without_a_mode_or_with_a_bad_source() -> None:
    good = Mount("synced", "/d", source="/Users/me/My Data", mode="rw")
    assert Mount.from_wire(good.to_wire()) == good
    assert good.to_wire()["mode"] == "rw"
    for kwargs, field in (
        ({"source": "/data"}, "mounts.mode"),
        ({"source": "/data", "mode": "wr"}, "mounts.mode"),
        ({"source": "data", "mode": "ro"}, "mounts.source"),
        ({"source": "/", "mode": "ro"}, "mounts.source"),
        ({"source": "/a/../b", "mode": "ro"}, "mounts.source"),
        ({"source": "/a\nb", "mode": "ro"}, "mounts.source"),
        ({"source": "/data", "mode": "ro", "size": "1g"}, "mounts.size"),
    ):
        with pytest.raises(SpecError) as caught:
            Mount("synced", "/d", **kwargs)  # type: ignore[arg-type]
        assert caught.value.field == field, (kwargs, caught.value)
    with pytest.raises(SpecError, match="only a synced directory has a mode"):
        Mount("host", "/d", source="/srv/x", mode="ro")
    with pytest.raises(SpecError, match="unknown field"):
        Mount.from_wire({**good.to_wire(), "host_path": "/etc"})


def test_the_copy_lives_under_the_session_and_its_index_is_checked() -> None:
    assert layout.synced_dir("/r", SID, 3) == f"/r/sessions/{SID}/mounts/3"
    assert layout.synced_dir("/r", SID, 0).startswith(layout.session_dir("/r", SID) + "/")
    for bad in (-1, 1000, True, "0"):
        with pytest.raises(ValueError):
            layout.synced_dir("/r", SID, bad)  # type: ignore[arg-type]
    with pytest.raises(SpecError):
        layout.synced_dir("/r", "../x", 0)


def _spec(*mounts: Mount, ack: tuple[str, ...] = ()) -> LaunchSpec:
    request = LaunchRequest("shell", task="true", network="none", mounts=mounts, acknowledged=ack)
    return _contract(request).spec


def _contract(request: LaunchRequest, root: str = "/srv/jk") -> object:
    ws = WorkspaceRef("/home/me/app", "app-123abc", True, "c0ffee" * 6 + "abcd", "main", False,
                      1, 1)  # fmt: skip
    target = TargetRef("fleet-1", "ssh", "10.0.0.5", root, "docker", None, None, None)
    return resolve_contract(SID, target, ROLE, ws, request)


def test_the_spec_refuses_a_sensitive_laptop_source_unless_acknowledged() -> None:
    mount = Mount("synced", "/k", source="/home/me/.aws/prod", mode="ro")
    with pytest.raises(UsageError, match=r"is sensitive \(.aws\)"):
        _spec(mount)
    assert _spec(mount, ack=(".aws",)).mounts == (mount,)


def test_the_host_checks_the_copy_it_derives_itself(tmp_path: Path) -> None:
    root = str(tmp_path / "root")
    spec = _spec(Mount("volume", "/v"), Mount("synced", "/d", source="/laptop/x", mode="ro"))
    with pytest.raises(RemoteError) as caught:
        checked_synced_copy(root, spec, 1)
    assert caught.value.code == E_NOT_FOUND and "was not synced" in caught.value.message
    copy = Path(layout.synced_dir(root, SID, 1))
    copy.mkdir(parents=True)
    assert checked_synced_copy(root, spec, 1) == str(copy)
    # What arrived holds a credential store: refused unless acknowledged.
    (copy / "deploy" / ".ssh").mkdir(parents=True)
    with pytest.raises(RemoteError) as caught:
        checked_synced_copy(root, spec, 1)
    assert caught.value.code == E_INVALID_PARAMS and "holds .ssh" in caught.value.message
    acked = _spec(Mount("volume", "/v"), Mount("synced", "/d", source="/laptop/x", mode="ro"),
                  ack=(".ssh",))  # fmt: skip
    assert checked_synced_copy(root, acked, 1) == str(copy)
    # The copy replaced by a symlink (to anywhere): refused, whatever it points to.
    (copy / "deploy" / ".ssh").rmdir()
    (copy / "deploy").rmdir()
    copy.rmdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    copy.symlink_to(elsewhere)
    with pytest.raises(RemoteError) as caught:
        checked_synced_copy(root, spec, 1)
    assert caught.value.code == E_INVALID_PARAMS and "symlink" in caught.value.message


# -- the contract ------------------------------------------------------------------------------
def test_the_contract_shows_each_synced_mount_and_plans_its_sync() -> None:
    ro = Mount("synced", "/data", source="/home/me/data", mode="ro")
    rw = Mount("synced", "/out", source="/home/me/data", mode="rw")
    request = LaunchRequest("shell", task="true", network="none", mounts=(ro, rw),
                            synced=(("/home/me/data", 3, 5 * 1024 * 1024),))  # fmt: skip
    contract = _contract(request, root="~/.jackin")
    data = contract.to_dict()  # type: ignore[attr-defined]
    mounts = {m["container"]: m for m in data["filesystem"]["mounts"]}
    first, second = mounts["/data"], mounts["/out"]
    assert (first["laptop"], first["host"], first["mode"]) == (
        "/home/me/data", f"~/.jackin/sessions/{SID}/mounts/0", "ro")  # fmt: skip
    assert (second["host"], second["mode"]) == (f"~/.jackin/sessions/{SID}/mounts/1", "rw")
    assert "3 files, 5.0 MB" in first["note"] and "read-only" in first["note"]
    assert "never travels back to the laptop" in second["note"]
    assert "deleted by rm" in second["note"]
    assert "symlinks are copied as links and never followed" in first["note"]
    actions = [effect["action"] for effect in data["plan"]]
    syncs = [i for i, action in enumerate(actions) if action.startswith("sync laptop directory")]
    assert len(syncs) == 2
    assert syncs[-1] < actions.index("record the session (state: starting)")
    assert data["plan"][syncs[0]]["target"] == first["host"]
    assert "/home/me/data (3 files, 5.0 MB) for /data" in actions[syncs[0]]
    rw_warnings = [w for w in data["warnings"] if "/out is a writable copy" in w]
    assert len(rw_warnings) == 1 and "never travels back to the laptop" in rw_warnings[0]
    assert not any("/data is a writable copy" in w for w in data["warnings"])
    # The spec carries the kind and the mode; the host derives the copy's path itself.
    wire_mounts = data["spec"]["mounts"]
    assert wire_mounts[1] == {"kind": "synced", "target": "/out", "source": "/home/me/data",
                              "size": None, "mode": "rw"}  # fmt: skip
    assert not any("sessions" in str(m) for m in wire_mounts)
