"""Snapshots: the pure parts (exclude matching, retention, which snapshot a restore takes, the
wire's policy and answer types, inventory keys, the contract) and the host's take/restore on a
directory of this machine (no docker): incremental links, change detection that the agent's
clock games cannot fool, read-only copies, a restore that shares no inode with a snapshot, and a
hostile checkout."""

from __future__ import annotations

import errno
import gzip
import json
import os
import stat
import subprocess
from pathlib import Path
from textwrap import dedent
from types import SimpleNamespace
from typing import Any

import pytest

from agent_host import layout, snapshots
from agent_host.protocol import RemoteError
from agent_host.wire import (
    DEFAULT_SNAPSHOT_EXCLUDES,
    DEFAULT_SNAPSHOT_KEEP,
    LaunchSpec,
    SnapshotInfo,
    SnapshotPolicy,
    SpecError,
    age_seconds,
    check_exclude,
)
from jackin_remote.core.contract import LaunchRequest, RoleRef, TargetRef, WorkspaceRef
from jackin_remote.core.contract import resolve_contract as resolve
from jackin_remote.errors import InventoryError, UsageError
from jackin_remote.inventory import load_inventory
from jackin_remote.inventory.model import Host
from jackin_remote.snapshots import snapshot_ref

SID = "abcd2345"


# -- exclude matching ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "patterns", "left_out"),
    [
        ("node_modules", ("node_modules",), True),
        ("web/app/node_modules", ("node_modules",), True),
        ("web/node_modules_notes.md", ("node_modules",), False),
        ("logs/a.log", ("*.log",), True),
        ("data/cache", ("data/cache",), True),
        ("x/data/cache", ("data/cache",), False),  # a path pattern is anchored at the top
        ("data/sub/cache", ("data/*",), False),  # '*' never crosses '/'
        ("data/sub", ("data/*",), True),
        (".git", ("*",), False),  # the top-level .git is always taken
        (".git/refs/heads/build", ("build",), False),  # a branch named build stays
        ("src/.git/build", ("build",), True),  # only the top-level .git is exempt
        ("build", (), False),
    ],
)
def test_exclude_matching(path: str, patterns: tuple[str, ...], left_out: bool) -> None:
    assert snapshots.is_excluded(path.split("/"), patterns) is left_out


def test_exclude_pathspecs_leave_out_a_name_at_any_depth_and_a_path_from_the_top() -> None:
    assert snapshots.exclude_pathspecs(["node_modules", "data/cache"]) == [
        ":(exclude,glob)**/node_modules", ":(exclude,glob)**/node_modules/**",
        ":(exclude,glob)data/cache", ":(exclude,glob)data/cache/**",
    ]  # fmt: skip


def test_the_policy_keeps_a_default_with_a_bang_and_adds_the_operators() -> None:
    policy = SnapshotPolicy(excludes=("!build", "*.log", "node_modules"))
    assert "build" not in policy.patterns and policy.patterns[-1] == "*.log"
    assert policy.patterns.count("node_modules") == 1
    assert SnapshotPolicy().patterns == DEFAULT_SNAPSHOT_EXCLUDES
    assert SnapshotPolicy.from_wire(policy.to_wire()) == policy
    assert SnapshotPolicy.from_wire({}) == SnapshotPolicy()  # an older controller's spec


@pytest.mark.parametrize(
    "bad", ["", "/abs", "trailing/", "a//b", "..", "a/../b", "**", "a/**/b", "!nodefault",
            "x\ny", "esc\x1b", "back\\slash", "[ab]"],
)  # fmt: skip
def test_bad_excludes_are_refused_naming_the_field(bad: str) -> None:
    with pytest.raises(SpecError) as caught:
        check_exclude(bad, "snapshot_excludes")
    assert caught.value.field == "snapshot_excludes"


def test_policy_values_are_checked_on_construction() -> None:
    assert age_seconds("7d") == 7 * 86400 and age_seconds("30m") == 1800
    for bad in ("7", "0d", "7 d", "1y", "-1d", 7):
        with pytest.raises(SpecError):
            age_seconds(bad)
    with pytest.raises(SpecError, match=r"snapshots\.keep"):
        SnapshotPolicy(keep=0)
    with pytest.raises(SpecError, match=r"snapshots\.max_age"):
        SnapshotPolicy(max_age="soon")
    with pytest.raises(SpecError, match="unknown field"):
        SnapshotPolicy.from_wire({"keep": 3, "follow_links": True})


def test_a_snapshot_answer_is_checked_field_by_field() -> None:
    good = SnapshotInfo("s2", SID, 1.0, "manual", files=3).to_wire()
    assert SnapshotInfo.from_wire(good).files == 3
    for key, value in (("id", "2"), ("id", "s0"), ("session", "nope"), ("reason", "cron"),
                       ("files", -1), ("bytes", "9"), ("taken_at", None),
                       ("skipped_sample", ["x"] * 50)):  # fmt: skip
        with pytest.raises(SpecError):
            SnapshotInfo.from_wire({**good, key: value})


def test_a_snapshot_flag_names_itself_when_it_is_not_an_id() -> None:
    assert snapshot_ref("s12", "--since") == "s12" and snapshot_ref("3", "--since") == "s3"
    for bad in ("s0", "latest", "s1;rm", ""):
        with pytest.raises(UsageError, match="--since"):
            snapshot_ref(bad, "--since")


# -- retention and the restore's choice ---------------------------------------------------------
def test_retention_keeps_the_newest_n_and_none_too_old_but_never_the_newest_or_protected() -> None:
    items = [(f"s{n}", float(n * 100)) for n in (1, 2, 3, 9, 10)]  # s10 sorts after s9
    assert snapshots.prune_selection(items, 3, None, 1000.0) == ["s1", "s2"]
    assert snapshots.prune_selection(items, 3, None, 1000.0, protect=("s1",)) == ["s2"]
    # max age 250s at t=1000: only s9 (900) and s10 (1000) are young enough.
    assert snapshots.prune_selection(items, 20, 250, 1000.0) == ["s1", "s2", "s3"]
    # Everything is too old: the newest one stays all the same, and what a restore protects.
    assert snapshots.prune_selection(items, 1, 1, 10**6, protect=("s3",)) == ["s1", "s2", "s9"]
    assert snapshots.prune_selection([], 1, 1, 0.0) == []


def test_a_plain_restore_takes_the_newest_snapshot_a_restore_did_not_make() -> None:
    items = [("s1", "before-start"), ("s2", "manual"), ("s3", "before-restore")]
    assert snapshots.restore_choice(items, None) == "s2"
    assert snapshots.restore_choice(items, "s3") == "s3"
    assert snapshots.restore_choice([("s4", "before-restore")], None) == "s4"
    with pytest.raises(RemoteError, match=r"no snapshot s9 .*s1, s2, s3"):
        snapshots.restore_choice(items, "s9")
    with pytest.raises(RemoteError, match="no snapshot to restore"):
        snapshots.restore_choice([], None)


# -- inventory and contract ---------------------------------------------------------------------
def test_inventory_snapshot_keys_reach_the_host_and_bad_ones_name_file_line_and_key(
    tmp_path: Path,
) -> None:
    inv = tmp_path / "fleet.toml"
    inv.write_text(
        dedent("""\
        [defaults]
        snapshot_keep = 5
        snapshot_excludes = ["*.log", "!build"]

        [hosts.web-1]
        address = "10.0.0.5"
        snapshot_max_age = "7d"
    """)
    )
    host = load_inventory(inv).hosts["web-1"]
    assert (host.snapshot_keep, host.snapshot_max_age, host.snapshot_excludes) == (
        5, "7d", ("*.log", "!build"))  # fmt: skip
    assert Host("x").snapshot_keep == DEFAULT_SNAPSHOT_KEEP
    cases = (("snapshot_keep = 0", "snapshot_keep", "between 1 and"),
             ('snapshot_max_age = "soon"', "snapshot_max_age", "invalid age"),
             ('snapshot_excludes = ["../up"]', "snapshot_excludes", "relative"),
             ('snapshot_excludes = "x"', "snapshot_excludes", "list"))  # fmt: skip
    for line, key, fragment in cases:
        inv.write_text(f'[hosts.web-1]\naddress = "10.0.0.5"\n{line}\n')
        with pytest.raises(InventoryError) as caught:
            load_inventory(inv)
        assert (caught.value.line, caught.value.field) == (3, f"hosts.web-1.{key}"), caught.value
        assert fragment in str(caught.value) and caught.value.hint


ROLE = RoleRef("test-agent", "ab" * 32, "jackin-role-test-agent:abababababab", "agent",
               ("shell",), "/roles/test-agent")  # fmt: skip
WS = WorkspaceRef("/home/me/app", "app-123abc", True, "c0ffee" * 6 + "abcd", "main", False, 1, 1)


def test_the_contract_says_whether_and_where_snapshots_are_taken() -> None:
    target = TargetRef("web-1", "ssh", "10.0.0.5", "/srv/jk", "docker", None, None, None,
                       snapshot_keep=3, snapshot_max_age="2w",
                       snapshot_excludes=("*.log",))  # fmt: skip
    on = resolve(SID, target, ROLE, WS, LaunchRequest("shell", network="none"))
    off = resolve(SID, target, ROLE, WS, LaunchRequest("shell", network="none", snapshot=False))
    assert on.spec.snapshots == SnapshotPolicy(True, 3, "2w", ("*.log",))
    assert off.spec.snapshots.before_start is False
    assert on.recovery["snapshot_before_start"] is True
    assert off.recovery["snapshot_before_start"] is False
    assert f"/srv/jk/snapshots/{SID}/ on the host" in on.recovery["snapshots"]
    assert "never mounted" in on.recovery["snapshots"]
    assert "newest 3" in on.recovery["snapshot_retention"] and "2w" in on.recovery[
        "snapshot_retention"]  # fmt: skip
    assert on.recovery["snapshot_excludes"][-1] == "*.log"
    taken = [e.target for e in on.plan if e.action.startswith("snapshot")]
    assert taken == [layout.snapshot_dir("/srv/jk", SID, "s1")]
    assert not [e for e in off.plan if e.action.startswith("snapshot")]
    # The spec round-trips with its policy (the host parses it with from_wire).
    assert LaunchSpec.from_wire(on.spec.to_wire()).snapshots == on.spec.snapshots


# -- the host's take and restore, on this machine -----------------------------------------------
@pytest.fixture
def root(tmp_path: Path) -> Path:
    work = Path(layout.work_dir(str(tmp_path / "root"), SID))
    work.mkdir(parents=True)
    (work / "a.txt").write_text("one\n")
    (work / "src").mkdir()
    (work / "src" / "run.sh").write_text("#!/bin/sh\n")
    (work / "src" / "run.sh").chmod(0o755)
    (work / "node_modules" / "pkg").mkdir(parents=True)
    (work / "node_modules" / "pkg" / "index.js").write_text("rebuildable\n")
    return tmp_path / "root"


def _tree(root: Path, snap: str) -> Path:
    return Path(layout.snapshot_dir(str(root), SID, snap)) / "tree"


def _work(root: Path) -> Path:
    return Path(layout.work_dir(str(root), SID))


def _take(root: Path, policy: SnapshotPolicy | None = None) -> SnapshotInfo:
    return snapshots.take(str(root), SID, "manual", policy or SnapshotPolicy())


def test_unchanged_files_are_links_to_the_previous_snapshot_and_copies_are_read_only(
    root: Path,
) -> None:
    first = _take(root)
    assert (first.files, first.files_new, first.excluded) == (2, 2, 1)
    (_work(root) / "a.txt").write_text("two\n")
    second = _take(root)
    assert (second.files_linked, second.files_new, second.bytes_new) == (1, 1, 4)
    old, new = _tree(root, "s1"), _tree(root, "s2")
    assert (old / "src/run.sh").stat().st_ino == (new / "src/run.sh").stat().st_ino
    assert (old / "a.txt").stat().st_ino != (new / "a.txt").stat().st_ino
    assert (old / "a.txt").read_text() == "one\n" and (new / "a.txt").read_text() == "two\n"
    assert stat.S_IMODE((new / "a.txt").stat().st_mode) == 0o444
    assert stat.S_IMODE((new / "src/run.sh").stat().st_mode) == 0o555
    assert stat.S_IMODE((new / "src").stat().st_mode) == 0o555
    assert not (new / "node_modules").exists()
    base = Path(layout.snapshots_dir(str(root), SID))
    assert stat.S_IMODE(base.stat().st_mode) == 0o700
    assert stat.S_IMODE(base.parent.stat().st_mode) == 0o700
    assert [i.id for i in snapshots.infos(str(root), SID)] == ["s1", "s2"]
    assert snapshots.count(str(root), SID) == 2


def test_a_rewrite_that_puts_back_size_and_mtime_is_still_seen(root: Path) -> None:
    """The agent controls mtimes (touch -d), not ctimes: the copy is the new content."""
    _take(root)
    target = _work(root) / "a.txt"
    before = target.stat()
    target.write_text("TWO\n")  # same size
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    second = _take(root)
    assert second.files_new == 1 and (_tree(root, "s2") / "a.txt").read_text() == "TWO\n"
    # A touch alone (new ctime, same bytes) costs a read, not a copy.
    os.utime(target)
    third = _take(root)
    assert (third.files_new, third.files_linked) == (0, 2)


def test_retention_prunes_after_each_snapshot(root: Path) -> None:
    policy = SnapshotPolicy(keep=2)
    for _ in range(4):
        _take(root, policy)
    assert [i.id for i in snapshots.infos(str(root), SID)] == ["s3", "s4"]


def test_a_restore_brings_back_everything_in_new_inodes_and_keeps_excluded_trees(
    root: Path,
) -> None:
    work = _work(root)
    os.chmod(work / "a.txt", 0o4755)  # a setuid bit never comes back
    _take(root)
    subprocess.run(["rm", "-rf", str(work / "a.txt"), str(work / "src")], check=True)
    (work / "junk").write_text("agent junk\n")
    before, excluded = snapshots._take(str(root), SID, "before-restore", SnapshotPolicy())
    snapshots._restore_checkout(str(root), {"id": SID, "uid": None}, "s1", excluded)
    assert (work / "a.txt").read_text() == "one\n" and not (work / "junk").exists()
    assert stat.S_IMODE((work / "a.txt").stat().st_mode) == 0o755
    assert stat.S_IMODE((work / "src/run.sh").stat().st_mode) == 0o755
    assert (work / "node_modules/pkg/index.js").read_text() == "rebuildable\n"
    snap_inodes = {p.stat().st_ino for p in _tree(root, "s1").rglob("*")}
    assert not snap_inodes & {p.stat().st_ino for p in work.rglob("*")}
    (work / "a.txt").write_text("agent writes\n")  # the agent's own copy, not the snapshot's
    assert (_tree(root, "s1") / "a.txt").read_text() == "one\n"
    # Restoring the pre-restore snapshot undoes the restore.
    snapshots._restore_checkout(str(root), {"id": SID, "uid": None}, before.id, [])
    assert (work / "junk").read_text() == "agent junk\n" and not (work / "a.txt").exists()
    assert [p.name for p in work.parent.iterdir()] == ["work"]  # no staging left behind


def test_a_hostile_checkout_is_snapshotted_without_following_anything(
    root: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host secret\n")
    work = _work(root)
    (work / "to-secret").symlink_to(outside / "secret")
    (work / "to-root").symlink_to("/")
    (work / "to-dir").symlink_to(outside)
    os.mkfifo(work / "fifo")
    (work / "file\nname").write_text("newline\n")
    (work / os.fsdecode(b"bad\xffname")).write_text("not utf-8\n")
    deep = work / "d"
    for _ in range(5):
        deep = deep / "d"
    deep.mkdir(parents=True)
    (deep / "bottom").write_text("deep\n")
    info = _take(root)
    tree = _tree(root, "s1")
    assert os.readlink(tree / "to-secret") == str(outside / "secret")
    assert os.readlink(tree / "to-root") == "/" and (tree / "to-dir").is_symlink()
    assert info.links == 3 and info.skipped == 1 and "fifo (special file)" in info.skipped_sample
    assert not (tree / "fifo").exists() and (tree / "file\nname").read_text() == "newline\n"
    assert info.bytes < 1024  # nothing behind a link was read
    snapshots._restore_checkout(str(root), {"id": SID, "uid": None}, "s1", [])
    assert os.readlink(work / "to-secret") == str(outside / "secret")
    assert (outside / "secret").read_text() == "host secret\n"
    assert stat.S_IMODE((outside / "secret").stat().st_mode) == 0o644
    assert (work / os.fsdecode(b"bad\xffname")).read_text() == "not utf-8\n"


def test_too_deep_too_many_and_too_large_are_skipped_and_named_never_fatal(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = _work(root)
    (work / "x" / "y" / "z").mkdir(parents=True)
    (work / "big.bin").write_bytes(b"\0" * 5000)
    monkeypatch.setattr(snapshots, "MAX_DEPTH", 2)
    monkeypatch.setattr(snapshots, "_free_bytes", lambda _path: 100)
    # Before a restore, what does not fit is skipped and named: the agent cannot block it.
    info = snapshots.take(str(root), SID, "before-restore", SnapshotPolicy())
    sample = "\n".join(info.skipped_sample)
    assert "x/y/z (deeper than 2 directories)" in sample, sample
    assert "big.bin (5000 bytes: more than the free space)" in sample, sample
    assert not (_tree(root, "s1") / "big.bin").exists() and info.skipped == 2
    monkeypatch.setattr(snapshots, "MAX_ENTRIES", 1)
    info = snapshots.take(str(root), SID, "before-restore", SnapshotPolicy())
    assert ". (more than 1 entries: the rest of this directory)" in info.skipped_sample


def test_any_other_snapshot_that_does_not_fit_fails_loudly_and_keeps_nothing(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = _work(root)
    first = _take(root)
    (work / "big.bin").write_bytes(b"\0" * 5000)
    monkeypatch.setattr(snapshots, "_free_bytes", lambda _path: 100)
    for reason in ("manual", "before-start"):
        with pytest.raises(RemoteError, match="the host's disk is full") as raised:
            snapshots.take(str(root), SID, reason, SnapshotPolicy())
        assert "gc" in str(raised.value.data)
    assert [i.id for i in snapshots.infos(str(root), SID)] == [first.id]  # nothing half-kept
    left = sorted(os.listdir(layout.snapshots_dir(str(root), SID)))
    assert left == sorted([first.id, snapshots.LOCK]), left  # no staging tree either


def test_purge_removes_every_snapshot_and_the_empty_parent(root: Path) -> None:
    _take(root)
    _take(root)
    assert snapshots.purge(str(root), SID) == 2
    assert not (root / "snapshots").exists()
    assert snapshots.purge(str(root), SID) == 0


def test_a_start_holds_the_lock_a_restore_swaps_under(tmp_path: Path) -> None:
    import fcntl

    root, sid = str(tmp_path), "abcd2345"
    with snapshots.held_for_start(root, sid):  # no snapshots yet: nothing to wait for
        pass
    base = layout.snapshots_dir(root, sid)
    os.makedirs(base)
    with snapshots.held_for_start(root, sid):
        fd = os.open(os.path.join(base, snapshots.LOCK), os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):  # a restore would wait here
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    fd = os.open(os.path.join(base, snapshots.LOCK), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released once started
    finally:
        os.close(fd)


def _restore(root: Path, monkeypatch: pytest.MonkeyPatch, snap: str, policy: SnapshotPolicy,
             ) -> dict[str, Any]:  # fmt: skip
    """restore_handler with no docker and no state database: a stopped session."""
    record = {"id": SID, "uid": None, "state": "stopped", "container": "jk-" + SID}

    class NoStore:
        def __init__(self, _root: str) -> None: ...
        def get(self, _sid: str) -> None: ...
        def close(self) -> None: ...

    monkeypatch.setattr(snapshots, "_record", lambda _root, _params: record)
    monkeypatch.setattr(snapshots, "_sandbox_running", lambda _record: False)
    monkeypatch.setattr(snapshots, "Store", NoStore)
    ctx: Any = SimpleNamespace(root=str(root))
    return snapshots.restore_handler(ctx, {"id": SID, "snapshot": snap,
                                           "policy": policy.to_wire()})  # fmt: skip


def test_a_tree_the_restored_snapshot_kept_but_the_policy_now_excludes_is_not_lost(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """build/ was kept then ("!build"), is excluded now: the restore puts the snapshot's build/
    in place, so the one before the restore must hold the current build/."""
    work = _work(root)
    (work / "build").mkdir()
    (work / "build" / "out.txt").write_text("then\n")
    _take(root, SnapshotPolicy(excludes=("!build",)))
    (work / "build" / "out.txt").write_text("current work\n")
    done = _restore(root, monkeypatch, "s1", SnapshotPolicy())
    assert (work / "build" / "out.txt").read_text() == "then\n"
    before = done["pre_restore"]["id"]
    assert (_tree(root, before) / "build" / "out.txt").read_text() == "current work\n"
    assert "build" not in done["pre_restore"]["excludes"]
    assert "node_modules" in done["pre_restore"]["excludes"]  # excluded by both: left out
    assert (work / "node_modules/pkg/index.js").read_text() == "rebuildable\n"  # and kept
    assert snapshots.before_restore_excludes(("a", "b", "c"), ("c", "a")) == ("a", "c")


@pytest.mark.parametrize("failing", ["aside", "in"])
def test_a_restore_that_fails_at_the_swap_leaves_the_live_checkout_whole(
    root: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    work = _work(root)
    _take(root)
    (work / "a.txt").write_text("current work\n")
    _, excluded = snapshots._take(str(root), SID, "before-restore", SnapshotPolicy())
    real = os.rename

    def rename(src: Any, dst: Any, **kwargs: Any) -> None:
        aside = str(src) == str(work) and not kwargs
        into = str(dst) == str(work) and str(src).endswith("/work") and not kwargs
        if (aside, into)[failing == "in"]:
            raise OSError(errno.EIO, "injected")
        real(src, dst, **kwargs)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="injected"):
        snapshots._restore_checkout(str(root), {"id": SID, "uid": None}, "s1", excluded)
    monkeypatch.setattr(os, "rename", real)
    assert (work / "a.txt").read_text() == "current work\n"
    assert (work / "src/run.sh").exists()
    assert (work / "node_modules/pkg/index.js").read_text() == "rebuildable\n"  # moved back
    assert [p.name for p in work.parent.iterdir()] == ["work"]  # nothing else left


def _rewrite(path: Path, change: Any) -> None:
    """Edit a snapshot's (read-only) manifest or meta in place."""
    os.chmod(path.parent, 0o755)
    os.chmod(path, 0o644)
    if path.name == snapshots.MANIFEST:
        path.write_bytes(gzip.compress(json.dumps(change(json.loads(
            gzip.decompress(path.read_bytes())))).encode()))  # fmt: skip
    else:
        path.write_text(json.dumps(change(json.loads(path.read_text()))))
    os.chmod(path, 0o444)
    os.chmod(path.parent, 0o555)


def test_a_same_size_write_in_the_clock_tick_of_the_previous_snapshot_is_seen(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The previous snapshot recorded the file's key, and an in-place write of the same size
    kept it (same tick): a key that recent is not trusted, the bytes are compared."""
    _take(root)
    target = _work(root) / "a.txt"
    with open(target, "r+b") as handle:
        handle.write(b"ONE\n")
    key = snapshots._key(os.stat(target))
    s1 = Path(layout.snapshot_dir(str(root), SID, "s1"))
    _rewrite(s1 / snapshots.MANIFEST,
             lambda rows: [r[:2] + key if r[1] == "a.txt" else r for r in rows])  # fmt: skip
    second = _take(root)
    assert (_tree(root, "s2") / "a.txt").read_text() == "ONE\n" and second.files_new == 1
    # A key recorded well before the snapshot was taken is trusted: linked, not even read.
    s2 = Path(layout.snapshot_dir(str(root), SID, "s2"))
    _rewrite(s2 / snapshots.META, lambda meta: {**meta, "taken_at": meta["taken_at"] + 60})
    monkeypatch.setattr(snapshots, "_same_content", lambda *_args: pytest.fail("read"))
    third = _take(root)
    assert (third.files_linked, third.files_new) == (2, 0)


def test_every_listed_name_counts_toward_the_bound_and_a_huge_directory_is_not_listed_whole(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = _work(root)
    (work / "logs").mkdir()
    for n in range(40):
        (work / "logs" / f"{n:02}.log").write_text("x\n")
    monkeypatch.setattr(snapshots, "MAX_ENTRIES", 12)
    listed = []
    real = os.scandir

    class Counting:
        def __init__(self, fd: Any) -> None:
            self.inner = real(fd)

        def __enter__(self) -> Any:
            return self

        def __exit__(self, *_exc: Any) -> None:
            self.inner.close()

        def __iter__(self) -> Any:
            for entry in self.inner:
                listed.append(entry.name)
                yield entry

    monkeypatch.setattr(os, "scandir", Counting)
    info = _take(root, SnapshotPolicy(excludes=("*.log",)))
    monkeypatch.setattr(os, "scandir", real)
    # a.txt, logs, node_modules, src, then 8 of logs/*.log (excluded, counted): 12.
    assert info.files + info.dirs + info.links + info.excluded == 12
    assert len(listed) <= 14  # logs/ and src/ each listed one name past what was left
    assert info.skipped_sample == (
        "logs (more than 12 entries: the rest of this directory)",
        "src (more than 12 entries: the rest of this directory)",
    )
    # Under the bound, a directory's entries are taken in sorted order: deterministic.
    monkeypatch.setattr(snapshots, "MAX_ENTRIES", 10**6)
    _take(root)
    rows = json.loads(
        gzip.decompress(
            (Path(layout.snapshot_dir(str(root), SID, "s2")) / snapshots.MANIFEST).read_bytes()
        )
    )
    assert [r[1] for r in rows if r[1].startswith("logs/")] == [
        f"logs/{n:02}.log" for n in range(40)]  # fmt: skip
