"""The host's disk walk (agent_host/disk.py) and root ownership (agent_host/ownership.py)."""

from __future__ import annotations

import os
from pathlib import Path

from agent_host import disk, ownership

SID = "0123abcd"
OTHER = "4567efgh"
MIB = 1024 * 1024


def blob(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


def walked(root: Path, max_entries: int = disk.DEFAULT_MAX_ENTRIES) -> tuple[disk.Walk, int]:
    walk = disk.Walk(max_entries)
    total = disk.walk_root(str(root), walk)
    return walk, total


def test_parts_of_the_root_go_to_their_figures(tmp_path: Path) -> None:
    root = tmp_path / "root"
    blob(root / "sessions" / SID / "work" / "big.bin", 3 * MIB)
    blob(root / "sessions" / SID / "mounts" / "0" / "data", 100_000)
    blob(root / "sessions" / SID / "egress.log", 10_000)
    blob(root / "snapshots" / SID / "s1" / "tree" / "a", 20_000)
    blob(root / "workspaces" / "ws" / "mirror" / "f", 50_000)
    blob(root / "roles" / "r" / ("a" * 64) / "Dockerfile", 1000)
    blob(root / "agent" / "jackin-agent-x" / "m.py", 5000)
    blob(root / "state.db", 8192)
    walk, total = walked(root)
    checkout = walk.figures["checkout:" + SID]
    assert 3 * MIB <= checkout.bytes < 3 * MIB + 64 * 1024
    assert walk.figures["mounts:" + SID].bytes >= 100_000
    assert walk.figures["files:" + SID].bytes >= 10_000
    assert walk.figures["snapshots:" + SID].bytes >= 20_000
    assert walk.figures["workspace:ws"].bytes >= 50_000
    assert ("role:r/" + "a" * 64) in walk.figures
    assert walk.figures["agent"].bytes >= 5000 and walk.figures["state"].bytes >= 8192
    assert total == sum(f.bytes for f in walk.figures.values())  # nothing linked: no overlap
    kinds = disk.totals(walk, total)
    assert kinds["checkouts"]["bytes"] == checkout.bytes and kinds["root"]["bytes"] == total


def test_a_hard_linked_file_counts_once_per_host_and_says_it_is_shared(tmp_path: Path) -> None:
    root = tmp_path / "root"
    first = blob(root / "snapshots" / SID / "s1" / "tree" / "a.bin", MIB)
    os.link(first, root / "snapshots" / SID / "s1" / "tree" / "again.bin")  # within one figure
    os.link(first, blob(root / "sessions" / SID / "work" / "x", 1).parent / "a.bin")
    walk, total = walked(root)
    snapshots = walk.figures["snapshots:" + SID]
    checkout = walk.figures["checkout:" + SID]
    assert MIB <= snapshots.bytes < 2 * MIB  # two names, one inode: once
    assert snapshots.shared == checkout.shared >= MIB  # the checkout holds it too
    assert total < snapshots.bytes + checkout.bytes  # the host counts it once
    assert total >= snapshots.bytes + checkout.bytes - checkout.shared


def test_symlinks_are_never_followed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = blob(tmp_path / "outside" / "huge.bin", 2 * MIB)
    (root / "sessions" / SID / "work").mkdir(parents=True)
    (root / "sessions" / SID / "work" / "to-dir").symlink_to(outside.parent)
    (root / "sessions" / SID / "work" / "to-file").symlink_to(outside)
    walk, _ = walked(root)
    assert walk.figures["checkout:" + SID].bytes < MIB
    assert walk.figures["checkout:" + SID].entries == 3  # the directory and the two links


def test_the_walk_stops_at_its_bound_and_says_so(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for index in range(50):
        blob(root / "sessions" / SID / "work" / f"f{index}", 10)
    walk, _ = walked(root, max_entries=20)
    assert walk.truncated and walk.entries == 20
    assert walk.summary()["truncated"] is True
    whole, _ = walked(root)
    assert not whole.truncated and whole.entries > 50


def test_a_root_that_does_not_exist_is_empty(tmp_path: Path) -> None:
    walk, total = walked(tmp_path / "nothing")
    assert total == 0 and walk.unreadable == 1


def test_du_output_maps_back_to_volume_names() -> None:
    names = ["jk-0123abcd-v0", "jk-0123abcd-docker-client"]
    found = disk.parse_du("12\t/jackin-du/0\n4\t/jackin-du/1\n", names)
    assert found[names[0]]["bytes"] == 12 * 1024 and found[names[1]]["bytes"] == 4096
    partial = disk.parse_du("12\t/jackin-du/0\n", names, "du: cannot read x")
    assert partial[names[0]]["at_least"] is True and partial[names[1]]["bytes"] is None
    assert "cannot read" in partial[names[1]]["error"]
    junk = disk.parse_du("12\t/jackin-du/9\nnope\n", names)
    assert all(entry["bytes"] is None for entry in junk.values())


def test_an_image_is_split_between_the_sessions_using_it() -> None:
    images = [
        {"id": "sha256:a", "tags": ["jackin-role-r:aaaaaaaaaaaa-u1000"], "size": 300},
        {"id": "sha256:b", "tags": ["jackin-role-r:bbbbbbbbbbbb"], "size": 100},
    ]
    used = {
        SID: "jackin-role-r:aaaaaaaaaaaa-u1000",
        OTHER: "jackin-role-r:aaaaaaaaaaaa-u1000",
        "zzzzzzzz": "jackin-role-r:bbbbbbbbbbbb",
        "yyyyyyyy": "gone:tag",
    }
    shares, users = disk.image_shares(images, used)
    assert shares[SID] == {
        "ref": used[SID],
        "image": "sha256:a",
        "size": 300,
        "split": 2,
        "share": 150,
    }
    assert shares["zzzzzzzz"]["split"] == 1 and shares["zzzzzzzz"]["share"] == 100
    assert "yyyyyyyy" not in shares
    assert users == {"sha256:a": [SID, OTHER], "sha256:b": ["zzzzzzzz"]}


# -- ownership ------------------------------------------------------------------------------------
OUR_ID = "a" * 32
THEIR_ID = "b" * 32


def labels(root_id: str, path: str) -> dict[str, str]:
    return {ownership.LABEL_ROOT: root_id, ownership.LABEL_ROOT_PATH: path}


def test_an_object_is_ours_by_our_id_whatever_its_session() -> None:
    assert ownership.owner(labels(OUR_ID, "/r"), False, OUR_ID, "/r") == ownership.OURS


def test_another_roots_object_is_left_alone_while_that_root_holds_its_id() -> None:
    alive = ownership.owner(labels(THEIR_ID, "/other"), False, OUR_ID, "/r", lambda p: THEIR_ID)
    unreadable = ownership.owner(
        labels(THEIR_ID, "/other"), False, OUR_ID, "/r", lambda p: ownership.ROOT_UNKNOWN
    )
    relative = ownership.owner(labels(THEIR_ID, "other"), False, OUR_ID, "/r", lambda p: "x")
    assert alive == unreadable == relative == ownership.OTHER_ROOT


def test_a_gone_roots_object_is_an_orphan() -> None:
    missing = ownership.owner(
        labels(THEIR_ID, "/other"), False, OUR_ID, "/r", lambda p: ownership.ROOT_MISSING
    )
    remade = ownership.owner(labels(THEIR_ID, "/other"), False, OUR_ID, "/r", lambda p: "c" * 32)
    ours_remade = ownership.owner(labels(THEIR_ID, "/r/"), False, OUR_ID, "/r")
    assert missing == remade == ours_remade == ownership.GONE_ROOT


def test_an_unlabelled_object_is_ours_only_if_we_know_its_session() -> None:
    assert ownership.owner({}, True, OUR_ID, "/r") == ownership.OURS
    assert ownership.owner(None, False, OUR_ID, "/r") == ownership.UNATTRIBUTED


def test_reading_a_roots_id(tmp_path: Path) -> None:
    assert ownership.read_root_id(str(tmp_path / "none")) == ownership.ROOT_MISSING
    (tmp_path / "r").mkdir()
    assert ownership.read_root_id(str(tmp_path / "r")) == ownership.ROOT_UNKNOWN
    (tmp_path / "r" / "root-id").write_text(OUR_ID + "\n")
    assert ownership.read_root_id(str(tmp_path / "r")) == OUR_ID
    assert ownership.this_root_id(str(tmp_path / "r")) == OUR_ID
    (tmp_path / "r" / "root-id").write_text("not an id\n")
    assert ownership.this_root_id(str(tmp_path / "r")) is None
    made = ownership.root_labels(str(tmp_path / "fresh"))  # made on first use
    assert made[ownership.LABEL_ROOT] == ownership.read_root_id(str(tmp_path / "fresh"))
    assert made[ownership.LABEL_ROOT_PATH] == str(tmp_path / "fresh")


def test_git_freshening_its_objects_is_no_sign_of_a_writer(tmp_path: Path) -> None:
    """Reading a checkout through an alternate (review, gc) touches its objects' mtimes: the
    newest mtime, which keeps a recent directory from gc, leaves them out."""
    root = tmp_path / "root"
    work = root / "sessions" / SID / "work"
    old = blob(work / "file", 10)
    fresh = blob(work / ".git" / "objects" / "aa" / "bbbb", 10)
    for path in (root, *root.rglob("*")):
        os.utime(path, (1000, 1000), follow_symlinks=False)
    os.utime(fresh, (5000, 5000))
    walk, _ = walked(root)
    assert walk.figures["checkout:" + SID].newest == 1000
    os.utime(old, (6000, 6000))
    walk, _ = walked(root)
    assert walk.figures["checkout:" + SID].newest == 6000


def test_log_output_is_counted_without_the_engines_frame_headers() -> None:
    def frame(stream: int, payload: bytes) -> bytes:
        return bytes([stream, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload

    raw = frame(1, b"hello\n") + frame(2, b"oops\n") + frame(1, b"x" * 100)
    for size in (1, 3, 7, 8, 9, len(raw)):  # frames split anywhere across chunks
        chunks = [raw[i : i + size] for i in range(0, len(raw), size)]
        assert disk.output_bytes(chunks, tty=False) == (111, False)
    assert disk.output_bytes([b"abc", b"de"], tty=True) == (5, False)
    assert disk.output_bytes([frame(1, b"y" * 50)], tty=False, cap=10) == (50, True)
